"""The servers of a sampling pool: launching them, their health, restarts and the model they serve.

The pool either launches its servers (one per group of ``tensor_parallel_size`` GPUs, or
``num_servers``; one on CPU) or uses the running ones listed in ``sample.servers``.
:class:`ServerFleet` is that set of servers; :class:`iterdpo.sampling.server.ServerPool` sends
the requests to them and moves the requests of a server that dies to the others.

- Launch: ``python -m vllm.entrypoints.openai.api_server`` with the model's dtype and
  length, ``--disable-uvicorn-access-log --disable-log-stats`` (no per-request logging)
  and the offline engine's batch limits (:func:`offline_batch_limits`), then
  ``server_args``.
- Readiness: ``GET /health`` is polled (every 0.5 s) until it answers 200, the process
  exits (error with the tail of its log) or ``server_start_timeout`` passes. No fixed sleeps.
- Death: :meth:`ServerFleet.mark_dead` takes a server out of rotation; a launched one is
  restarted in the background on its port (up to ``max_restarts`` times), an external one
  is left out (this process cannot restart it).
- Shutdown: launched servers run in their own process group and are stopped (SIGTERM,
  then SIGKILL) by :meth:`ServerFleet.shutdown`, which runs on errors and Ctrl-C in
  sampling, at interpreter exit (``atexit``) and on SIGTERM. (A SIGKILLed driver cannot
  clean up: ``kill -- -PGID`` with the pgid printed at launch does.)
- New checkpoints: with ``keep_servers`` (default on CPU, off on GPUs, where training needs
  the memory) the servers live on between stages and iterations of one process. A new full
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

from iterdpo.errors import UserError
from iterdpo.sampling.vllm_engine import adapter_base, gpu_groups, lora_rank, on_cpu

CONNECT_TIMEOUT = 10.0  # seconds to open a connection to a server


class ServerError(RuntimeError, UserError):
    """A server could not be started, died for good, or a request failed for good."""


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


_FLEETS: weakref.WeakSet = weakref.WeakSet()


def _shutdown_all() -> None:
    for fleet in list(_FLEETS):
        fleet.shutdown()


def _on_sigterm(signum, frame):  # turn SIGTERM into SystemExit so finally/atexit run
    raise SystemExit(128 + signum)


atexit.register(_shutdown_all)


class ServerFleet:
    """Launched or external OpenAI-compatible servers serving one model (or adapter): their
    processes, health, restarts and models. :class:`iterdpo.sampling.server.ServerPool` adds the
    requests on top."""

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
        # connect: a host that is gone (no route, no answer to SYN) fails in seconds, not request_timeout
        self.client = httpx.Client(timeout=httpx.Timeout(sample_cfg.request_timeout, connect=CONNECT_TIMEOUT), limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
        self.stats = {"retries": 0, "resent": 0, "restarts": 0}
        self.closed = threading.Event()  # set by shutdown(): no restarts, no new requests
        self.proc_lock = threading.Lock()  # launching vs stopping a server's process
        _FLEETS.add(self)
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
            if self.healthy(s):
                with self.cond:
                    s.state = "up"
                    self.cond.notify_all()
                return
            if time.monotonic() > deadline:
                raise ServerError(f"server {s.url} not healthy after {self.cfg.server_start_timeout:.0f} s (sample.server_start_timeout); log {s.log_path}:\n{s.log_tail()}")
            time.sleep(0.5)

    def healthy(self, s: Server) -> bool:
        """One ``GET /health`` answered 200 within ``sample.health_timeout`` seconds."""
        try:
            return self.client.get(f"{s.url}/health", timeout=self.cfg.health_timeout).status_code == 200
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

    def mark_dead(self, s: Server) -> None:
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
