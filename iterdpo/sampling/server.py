"""Sampling through a pool of OpenAI-compatible servers (``vllm serve`` and friends).

The pool either launches its servers (one per group of ``tensor_parallel_size`` GPUs, or
``num_servers``; one on CPU) or uses the running ones listed in ``sample.servers``.

- Launch: ``python -m vllm.entrypoints.openai.api_server`` with the model's dtype and
  length, ``--disable-uvicorn-access-log --disable-log-stats`` (no per-request logging)
  and the offline engine's batch limits (:func:`offline_batch_limits`), then
  ``server_args``.
- Readiness: ``GET /health`` is polled (every 0.5 s) until it answers 200, the process
  exits (error with the tail of its log) or ``server_start_timeout`` passes. No fixed sleeps.
- Fan-out: one request per prompt, or per seed group of ``prompts_per_request`` prompts
  (``POST /v1/completions`` with the prompts as token ids, ``n`` samples,
  ``return_token_ids``; see :func:`iterdpo.sampling.prompt_seed`), at most ``concurrency`` in flight per server, sent
  to the least-loaded live server from one asyncio event loop (aiohttp, keep-alive).
- Failures: a failed request is checked against its server. A dead server (process gone,
  ``/health`` failing, or samples answered with ``finish_reason: "abort"``, which is how a
  server shutting down on SIGTERM ends its requests) is taken out of rotation, restarted in the background (launched
  servers, up to ``max_restarts`` times) and its unfinished requests are re-sent to the
  live servers; they are not counted as retries. Other failures are retried
  ``max_retries`` times. Results are keyed by prompt index, so a re-sent request can
  neither lose nor duplicate completions; with ``request_seed`` it even samples the same ones.
- Shutdown: launched servers run in their own process group and are stopped (SIGTERM,
  then SIGKILL) by :meth:`ServerPool.shutdown`, which runs on errors and Ctrl-C in
  :func:`sample_server`, at interpreter exit (``atexit``) and on SIGTERM. (A SIGKILLed
  driver cannot clean up: ``kill -- -PGID`` with the pgid printed at launch does.)
- New checkpoints: with ``keep_servers`` (default on CPU, off on GPUs, where training needs
  the memory) the pool lives on between stages and iterations of one process. A new full
  checkpoint restarts the launched servers with it. A PEFT LoRA adapter (a folder with
  ``adapter_config.json``) is loaded into the running servers through
  ``POST /v1/load_lora_adapter`` instead; that endpoint needs
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in the server's environment (set for launched
  servers) and servers started with ``--enable-lora``. External servers are never
  restarted: they must serve the policy (checked against ``/v1/models``) or accept its
  adapter.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from iterdpo.errors import UserError
from iterdpo.sampling import (
    SamplingParams,
    collect,
    completion_row,
    pending_shards,
    prompt_seed,
    retokenize_mismatch,
    seed_groups,
    write_shard,
)
from iterdpo.sampling.vllm_engine import adapter_base, gpu_groups, lora_rank, on_cpu


class ServerError(RuntimeError, UserError):
    """A server could not be started, died for good, or a request failed for good."""


ABORTED = "the server aborted the request (finish_reason 'abort')"


def aborted(resp: dict) -> bool:
    """A 200 answer whose samples were cut off by the server, not finished.

    vLLM's server answers the requests in flight with ``finish_reason: "abort"`` when it
    shuts down gracefully (SIGTERM: ``scancel`` of its Slurm job, a time limit, preemption;
    seen on the 2-node test cluster): the server is going away, so the request counts as
    sent to a dead server and goes to the others.
    """
    return any(c.get("finish_reason") == "abort" for c in resp.get("choices", ()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int | None = None  # None: an external server
    gpus: list[int] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    state: str = "down"  # up | restarting | failed | down
    inflight: int = 0
    restarts: int = 0

    @property
    def launched(self) -> bool:
        return self.port is not None

    def log_tail(self, n: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]


def server_env(gpus: list[int], lora: bool) -> dict[str, str]:
    """The environment of a launched server: this process's, without a launcher's rank variables
    (a server started from rank 0 of a launch must not join the training job's process group),
    with its GPUs and vLLM's CPU KV-cache size and runtime LoRA loading."""
    from iterdpo.sampling.launch_env import clean_env

    env = clean_env()
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    if lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return env


def offline_batch_limits(world_size: int, server_args: list[str]) -> list[str]:
    """``--max-num-seqs``/``--max-num-batched-tokens`` of vLLM's offline engine (``vllm.LLM``,
    the ``vllm`` backend) for launched servers, unless ``server_args`` sets them.

    vLLM picks smaller batch limits for its API server than for ``LLM``: on CPU 128
    sequences / 2048 tokens per step against 256 / 4096 (GPUs: e.g. 2048 against 8192
    tokens). With ``concurrency`` 64 requests of n=4 samples in flight, the server then runs
    half the batch per step and needs about twice the steps the in-process engine needs
    for the same work. The same limits make both backends schedule alike.
    """
    limits = _offline_limits(world_size)
    given = {a.split("=")[0] for a in server_args}
    return [x for flag, v in limits.items() if flag not in given for x in (flag, str(v))]


@functools.cache
def _offline_limits(world_size: int) -> dict[str, int]:
    try:  # imports torch and vLLM's config (seconds): once per process
        from vllm.engine.arg_utils import EngineArgs
        from vllm.usage.usage_lib import UsageContext

        tokens, seqs = EngineArgs.get_batch_defaults(world_size)
        return {"--max-num-seqs": seqs[UsageContext.LLM_CLASS], "--max-num-batched-tokens": tokens[UsageContext.LLM_CLASS]}
    except Exception:  # noqa: BLE001 - no vllm here (or another version): vLLM's own defaults
        return {}


def _group_gone(pgid: int, timeout: float) -> bool:
    """Poll until no process of group ``pgid`` is left (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


_POOLS: weakref.WeakSet = weakref.WeakSet()
_POOL: ServerPool | None = None  # the pool sample_server reuses across iterations
_POOL_KEY: tuple | None = None


def _shutdown_all() -> None:
    for pool in list(_POOLS):
        pool.shutdown()


def _on_sigterm(signum, frame):  # turn SIGTERM into SystemExit so finally/atexit run
    raise SystemExit(128 + signum)


atexit.register(_shutdown_all)


class ServerPool:
    """Launched or external OpenAI-compatible servers serving one model (or adapter)."""

    def __init__(self, sample_cfg, model_cfg, *, seed: int = 0, log_dir: Path | None = None):
        import httpx

        self.cfg, self.model_cfg, self.seed = sample_cfg, model_cfg, seed
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="iterdpo-servers-"))
        self.model: str | None = None  # the policy served (model folder or adapter folder)
        self.base: str | None = None  # what launched servers run (the adapter's base for LoRA)
        self.served: str | None = None  # the "model" field of requests
        self.lora = False
        self.servers: list[Server] = []
        self.cond = threading.Condition()
        self.client = httpx.Client(timeout=sample_cfg.request_timeout, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
        self.stats = {"retries": 0, "resent": 0, "restarts": 0}
        self.closed = threading.Event()  # set by shutdown(): no restarts, no new requests
        self.proc_lock = threading.Lock()  # launching vs stopping a server's process
        _POOLS.add(self)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)

    # --- lifecycle -------------------------------------------------------------------

    def ensure_model(self, model_path: str) -> None:
        """Serve ``model_path``: start, restart with a new checkpoint, or load a LoRA adapter."""
        model_path = str(model_path)
        if model_path == self.model:
            return
        base = adapter_base(model_path)
        if self.cfg.servers:
            self.closed.clear()
            if not self.servers:
                self.servers = [Server(url=u.rstrip("/")) for u in self.cfg.servers]
            for s in self.servers:
                self._wait_healthy(s)
            if base is not None:
                self._load_adapter(model_path)
            else:
                self._check_external_model(model_path)
            self.model = model_path
            return
        if base is not None and self.lora and base == self.base and self.servers:
            self._load_adapter(model_path)
            self.model = model_path
            return
        self.shutdown()
        self.closed.clear()
        self.base, self.lora = base or model_path, base is not None
        self.lora_rank = lora_rank(model_path) if self.lora else 0
        count = self.cfg.num_servers or (1 if on_cpu() else 0)
        groups = [[] for _ in range(count)] if on_cpu() else gpu_groups(self.cfg, count)
        ports = [self.cfg.base_port + i if self.cfg.base_port else _free_port() for i in range(len(groups))]
        self.servers = [
            Server(url=f"http://127.0.0.1:{p}", port=p, gpus=g, log_path=self.log_dir / f"server-{i}.log")
            for i, (p, g) in enumerate(zip(ports, groups, strict=True))
        ]
        for s in self.servers:  # launch all, then wait: they load in parallel
            self._launch(s)
        for s in self.servers:
            self._wait_healthy(s)
        self.served = self.base
        if self.lora:
            self._load_adapter(model_path)
        self.model = model_path

    def _command(self, s: Server) -> list[str]:
        c = self.cfg
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            # no access-log line per request, no periodic stats: CPU the engine can use
            "--disable-uvicorn-access-log", "--disable-log-stats",
            "--model", self.base,
            "--tokenizer", self.model_cfg.tokenizer or self.base,
            "--dtype", self.model_cfg.dtype,
            "--max-model-len", str(c.max_model_len or self.model_cfg.max_length),
            "--host", "127.0.0.1", "--port", str(s.port),
            "--seed", str(self.seed),
            "--tensor-parallel-size", str(c.tensor_parallel_size),
        ]
        if c.enforce_eager or on_cpu():
            cmd.append("--enforce-eager")
        if not on_cpu():
            cmd += ["--gpu-memory-utilization", str(c.gpu_memory_utilization)]
        else:  # seeded requests kill a CPU engine that splits a prefill (vllm_engine.cpu_scheduler_kwargs)
            cmd.append("--no-enable-chunked-prefill")
        if self.lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.lora_rank)]
        return cmd + offline_batch_limits(c.tensor_parallel_size, c.server_args) + list(c.server_args)

    def _launch(self, s: Server) -> None:
        env = server_env(s.gpus, self.lora)
        s.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.proc_lock, open(s.log_path, "ab") as log:
            if self.closed.is_set():
                raise ServerError(f"pool shut down; not launching {s.url}")
            # own session/process group: the server's engine processes are stopped with it
            s.proc = subprocess.Popen(self._command(s), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        print(f"[iterdpo] server {s.url} starting: pid/pgid {s.proc.pid}, log {s.log_path}", file=sys.stderr)

    def _wait_healthy(self, s: Server) -> None:
        """Poll /health until 200; fail fast if the process exits."""
        deadline = time.monotonic() + self.cfg.server_start_timeout
        while True:
            if s.proc is not None and s.proc.poll() is not None:
                raise ServerError(f"server {s.url} exited with code {s.proc.returncode} while starting; log {s.log_path}:\n{s.log_tail()}")
            if self._healthy(s):
                with self.cond:
                    s.state = "up"
                    self.cond.notify_all()
                return
            if time.monotonic() > deadline:
                raise ServerError(f"server {s.url} not healthy after {self.cfg.server_start_timeout:.0f} s (sample.server_start_timeout); log {s.log_path}:\n{s.log_tail()}")
            time.sleep(0.5)

    def _healthy(self, s: Server) -> bool:
        try:
            return self.client.get(f"{s.url}/health", timeout=5).status_code == 200
        except Exception:
            return False

    def _stop(self, s: Server) -> None:
        with self.proc_lock:
            proc, s.proc = s.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # the whole group: API server + engine processes
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the API server is gone; its engine processes (same group) may still be exiting,
        # or be left behind by a SIGKILLed server: wait for the group, then SIGKILL it
        if not _group_gone(proc.pid, 15):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            _group_gone(proc.pid, 15)

    def shutdown(self) -> None:
        """Stop every launched server (idempotent)."""
        self.closed.set()
        for s in self.servers:
            if s.launched:
                self._stop(s)
            s.state = "down"
        self.model = None
        if not self.cfg.servers:
            self.servers = []

    def _restart(self, s: Server) -> None:
        """Background thread: replace a dead launched server on the same port."""
        try:
            self._stop(s)
            self._launch(s)
            self._wait_healthy(s)
            if self.lora and self.served != self.base:
                self._load_adapter(self.model, only=[s])
        except Exception as e:  # noqa: BLE001 - reported to the waiting workers
            print(f"[iterdpo] restart of {s.url} failed: {e}", file=sys.stderr)
            with self.cond:
                s.state = "failed"
                self.cond.notify_all()

    def _mark_dead(self, s: Server) -> None:
        with self.cond:
            if s.state != "up" or self.closed.is_set():
                return
            if s.launched and s.restarts < self.cfg.max_restarts:
                s.state, s.restarts = "restarting", s.restarts + 1
                self.stats["restarts"] += 1
                print(f"[iterdpo] server {s.url} died; restarting ({s.restarts}/{self.cfg.max_restarts})", file=sys.stderr)
                threading.Thread(target=self._restart, args=(s,), daemon=True).start()
            else:
                s.state = "failed"
                # an operator reading the log of a run on external servers (e.g. a Slurm pool
                # job that was cancelled) sees where its requests went
                alive = sum(x.state in ("up", "restarting") for x in self.servers)
                print(f"[iterdpo] server {s.url} is gone; its requests go to the {alive} other(s)", file=sys.stderr, flush=True)
            self.cond.notify_all()

    def wait_all_up(self, timeout: float | None = None) -> bool:
        """Block until no server is restarting; True if all are up."""
        with self.cond:
            self.cond.wait_for(lambda: all(s.state != "restarting" for s in self.servers), timeout)
            return all(s.state == "up" for s in self.servers)

    # --- models ------------------------------------------------------------------------

    def _check_external_model(self, model_path: str) -> None:
        for s in self.servers:
            data = self.client.get(f"{s.url}/v1/models").json()["data"]
            names = {m["id"] for m in data} | {m.get("root") for m in data}
            if model_path not in names and str(Path(model_path).resolve()) not in names:
                raise ServerError(
                    f"server {s.url} serves {sorted(m['id'] for m in data)}, not the policy {model_path}; "
                    "restart it with this checkpoint (or train LoRA adapters, which are loaded at run time)"
                )
            self.served = next(m["id"] for m in data if model_path in (m["id"], m.get("root")) or str(Path(model_path).resolve()) in (m["id"], m.get("root")))

    def _load_adapter(self, adapter: str, only: list[Server] | None = None) -> None:
        name = "policy-" + hashlib.sha1(str(Path(adapter).resolve()).encode()).hexdigest()[:10]
        for s in only or self.servers:
            r = self.client.post(f"{s.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
            if r.status_code != 200 and "already" not in r.text:
                raise ServerError(
                    f"server {s.url}: loading LoRA adapter {adapter} failed (HTTP {r.status_code}: {r.text[:500]}); "
                    "the server needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
                )
        self.served = name

    # --- requests ----------------------------------------------------------------------

    def _try_acquire(self) -> Server | None:
        """Take a slot on the least-loaded live server, or None while all are busy or restarting.

        Raises when the pool is closed or no server can come back. Call with ``self.cond`` held.
        """
        if self.closed.is_set():
            raise ServerError("the server pool was shut down")
        free = [s for s in self.servers if s.state == "up" and s.inflight < self.cfg.concurrency]
        if free:
            s = min(free, key=lambda s: s.inflight)
            s.inflight += 1
            return s
        if not any(s.state in ("up", "restarting") for s in self.servers):
            raise ServerError("every server is dead: " + "; ".join(f"{s.url}: {s.state}, log {s.log_path}" for s in self.servers))
        return None

    def _acquire(self) -> Server:
        """A slot on the least-loaded live server; waits for one; fails if none can return."""
        with self.cond:
            while (s := self._try_acquire()) is None:
                self.cond.wait(1.0)
            return s

    def _release(self, s: Server) -> None:
        with self.cond:
            s.inflight -= 1
            self.cond.notify_all()

    def complete(self, body: dict) -> dict:
        """POST one /v1/completions request with retries and dead-server handling."""
        attempts = 0
        while True:
            s = self._acquire()
            error = None
            try:
                r = self.client.post(f"{s.url}/v1/completions", json={**body, "model": self.served})
                if r.status_code == 200:
                    resp = r.json()
                    if not aborted(resp):
                        return resp
                    error = ABORTED
                else:
                    error = f"HTTP {r.status_code}: {r.text[:500]}"
            except Exception as e:  # noqa: BLE001 - transport errors, timeouts
                error = repr(e)
            finally:
                self._release(s)
            gone = error == ABORTED or (s.proc is not None and s.proc.poll() is not None) or not self._healthy(s)
            attempts, wait = self._after_failure(s, gone, attempts, error)
            time.sleep(wait)

    def _after_failure(self, s: Server, gone: bool, attempts: int, error: str | None) -> tuple[int, float]:
        """Bookkeeping after a failed request on ``s``: (attempts so far, seconds to wait before re-sending).

        A server that is ``gone`` (dead or unhealthy) is marked dead and the request re-sent at
        once, not counted against ``sample.max_retries``; a failure on a live server is a retry
        with exponential back-off, and an error past ``max_retries``.
        """
        if gone:
            self._mark_dead(s)
            with self.cond:
                self.stats["resent"] += 1
            return attempts, 0.0
        attempts += 1
        with self.cond:
            self.stats["retries"] += 1
        if attempts > self.cfg.max_retries:
            raise ServerError(f"request failed {attempts} times on live servers (sample.max_retries={self.cfg.max_retries}); last error from {s.url}: {error}")
        return attempts, min(2.0**attempts * 0.1, 5.0)

    def map(self, bodies: dict, on_done) -> None:
        """Send every request of ``bodies`` (key -> body); call ``on_done(key, response)``
        as each finishes (in this thread). Bounded: ``concurrency`` in flight per server.

        The requests run on an asyncio event loop with one aiohttp session (keep-alive
        connections) in this thread: one HTTP request then costs ~0.5 ms of client CPU,
        against ~3 ms with a pool of threads on httpx, whose threads fight over the GIL and
        take CPU from the servers on small machines (``benchmarks/sampling_probe.py``).
        Must not be called from a running event loop.
        """
        import asyncio

        try:
            asyncio.run(self._amap(bodies, on_done))
        except BaseException:
            # stop the servers, so nothing is left running for a failed stage
            self.shutdown()
            raise

    async def _amap(self, bodies: dict, on_done) -> None:
        """``concurrency * servers`` workers take requests from one queue in key order."""
        import asyncio
        from collections import deque

        import aiohttp

        todo = deque(bodies.items())
        workers = min(len(todo), max(1, self.cfg.concurrency * len(self.servers)))
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

            async def worker() -> None:
                while todo:
                    key, body = todo.popleft()
                    on_done(key, await self._acomplete(session, body))

            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            try:
                await asyncio.gather(*tasks)
            finally:  # an error in one worker (or Ctrl-C): stop the others
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _aacquire(self) -> Server:
        """:meth:`_acquire` for the event loop: polls instead of blocking it."""
        import asyncio

        while True:
            with self.cond:
                s = self._try_acquire()
            if s is not None:
                return s
            await asyncio.sleep(0.1)  # a server is restarting (all slots are ours otherwise)

    async def _ahealthy(self, session, s: Server) -> bool:
        import aiohttp

        try:
            async with session.get(f"{s.url}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 - any failure means not healthy
            return False

    async def _acomplete(self, session, body: dict) -> dict:
        """:meth:`complete` on the event loop: the same retry and dead-server rules."""
        import asyncio

        attempts = 0
        while True:
            s = await self._aacquire()
            error = None
            try:
                async with session.post(f"{s.url}/v1/completions", json={**body, "model": self.served}) as r:
                    if r.status == 200:
                        resp = await r.json(content_type=None)
                        if not aborted(resp):
                            return resp
                        error = ABORTED
                    else:
                        error = f"HTTP {r.status}: {(await r.text())[:500]}"
            except Exception as e:  # noqa: BLE001 - transport errors, timeouts
                error = repr(e)
            finally:
                self._release(s)
            gone = error == ABORTED or (s.proc is not None and s.proc.poll() is not None) or not await self._ahealthy(session, s)
            attempts, wait = self._after_failure(s, gone, attempts, error)
            await asyncio.sleep(wait)


def get_pool(sample_cfg, model_cfg, seed: int = 0) -> ServerPool:
    """The process's pool, reused while the pool settings stay the same."""
    global _POOL, _POOL_KEY
    keys = ("servers", "num_servers", "keep_servers", "base_port", "server_args", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager", "concurrency", "request_timeout", "max_retries", "server_start_timeout", "max_restarts")
    key = (tuple(str(getattr(sample_cfg, k)) for k in keys), model_cfg.model_dump_json())
    if _POOL is None or key != _POOL_KEY:
        if _POOL is not None:
            _POOL.shutdown()
        _POOL, _POOL_KEY = ServerPool(sample_cfg, model_cfg, seed=seed), key
    return _POOL


def current_pool() -> ServerPool | None:
    return _POOL


def request_body(prompt_ids: list[int] | list[list[int]], params: SamplingParams, seed: int | None) -> dict:
    greedy = params.temperature == 0
    body = {
        "prompt": prompt_ids,
        "n": params.n,
        "temperature": params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        "max_tokens": params.max_tokens,
        "return_token_ids": True,
    }
    if params.top_k and not greedy:
        body["top_k"] = params.top_k
    if params.stop:
        body["stop"] = list(params.stop)
    if seed is not None:
        body["seed"] = seed
    return body


def sample_server(
    model_path: str,
    prompts: pa.Table,
    params: SamplingParams,
    shard_dir: Path,
    *,
    model_cfg,
    batch_size: int,
    progress: str | None = "sample",
    sample_cfg=None,
) -> pa.Table:
    """N completions per prompt from the server pool; a shard is written when its last
    prompt is answered (requests of all pending shards are in flight together)."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from iterdpo.config import SampleConfig
    from iterdpo.logprobs import render_prompt

    sample_cfg = sample_cfg or SampleConfig(backend="server")
    rows = prompts.to_pylist()
    todo = pending_shards(len(rows), batch_size, shard_dir)
    if not todo:
        return collect(shard_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.tokenizer or adapter_base(model_path) or model_path)
    pool = get_pool(sample_cfg, model_cfg, seed=params.seed)
    try:
        pool.ensure_model(model_path)
        shard_of, left, answers, prompt_ids = {}, {}, {}, {}
        bodies, members = {}, {}  # request key -> body, -> its prompt indices
        ppr = sample_cfg.prompts_per_request
        for s, start, end in todo:
            left[s] = end - start
            for i in range(start, end):
                shard_of[i] = s
                prompt_ids[i] = render_prompt(tokenizer, rows[i]["prompt"], model_cfg.max_prompt_length)
            # one request per seed group (cut at the shard's ends): its prompts share a seed
            for i, j in seed_groups(start, end, ppr):
                members[i] = list(range(i, j))
                ids = prompt_ids[i] if ppr == 1 else [prompt_ids[m] for m in members[i]]
                bodies[i] = request_body(ids, params, prompt_seed(params.seed, i, ppr) if sample_cfg.request_seed else None)
        starts = {s: (start, end) for s, start, end in todo}
        bar = tqdm(total=len(shard_of), desc=progress, disable=progress is None)

        def on_done(key: int, resp: dict) -> None:
            # choice index = position of the prompt in the request * n + sample number
            for pos, i in enumerate(members[key]):
                answers[i] = [c for c in resp["choices"] if c["index"] // params.n == pos]
            bar.update(len(members[key]))
            s = shard_of[key]
            left[s] -= len(members[key])
            if left[s]:
                return
            start, end = starts[s]
            out_rows, all_ids, mismatch = [], [], 0
            for j in range(start, end):
                choices = sorted(answers.pop(j), key=lambda c: c["index"])  # n of them, in order
                pids = prompt_ids.pop(j)
                if len(choices) != params.n:
                    raise ServerError(f"prompt {rows[j]['prompt_id']}: server returned {len(choices)} samples, asked for {params.n}")
                for k, c in enumerate(choices):
                    toks = c["token_ids"]
                    out_rows.append(completion_row(rows[j], k, c["text"], toks, c["finish_reason"]))
                    all_ids.append(toks)
                    if not isinstance(c.get("stop_reason"), str):  # not cut at a stop string
                        mismatch += retokenize_mismatch(tokenizer, pids, c["text"], toks, model_cfg)
            write_shard(shard_dir, s, out_rows, {"retokenize_mismatch": mismatch}, all_ids)

        pool.map(bodies, on_done)
        bar.close()
    except BaseException:
        pool.shutdown()  # errors and Ctrl-C: no server outlives a failed stage
        raise
    keep = sample_cfg.keep_servers if sample_cfg.keep_servers is not None else on_cpu()
    if not keep:
        pool.shutdown()  # training needs the GPUs the servers hold
    return collect(shard_dir)


def server_logps(pool: ServerPool, tokenizer, rows: list[dict], model_cfg) -> list[float]:
    """Fast, approximate ``log pi(y|x)`` of (prompt, completion, finish_reason) rows from
    the servers' ``prompt_logprobs`` (for ranking only, never for training's reference
    log-probs: vLLM's kernels and dtype differ from the exact HF routine).

    The token ids come from :func:`iterdpo.logprobs.encode`, so the sequence is exactly
    the one :func:`iterdpo.logprobs.score_logps` scores; the sum runs over response tokens.
    """
    from iterdpo.logprobs import encode, render_prompt

    encoded, bodies = [], {}
    for i, r in enumerate(rows):
        p = render_prompt(tokenizer, r["prompt"], model_cfg.max_prompt_length)
        e = encode(tokenizer, r["prompt"], r["completion"], stopped=r["finish_reason"] == "stop",
                   max_prompt_length=model_cfg.max_prompt_length, max_length=model_cfg.max_length, prompt_ids=p)
        encoded.append(e)
        bodies[i] = {"prompt": e.input_ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
    out = [0.0] * len(rows)

    def on_done(i: int, resp: dict) -> None:
        e, lp = encoded[i], resp["choices"][0]["prompt_logprobs"]  # [T] of None | {id: {logprob}}
        out[i] = sum(lp[t][str(e.input_ids[t])]["logprob"] for t in range(e.prompt_len, len(e.input_ids)))

    pool.map(bodies, on_done)
    return out
