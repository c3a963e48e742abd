"""Sampling through a pool of OpenAI-compatible servers (``vllm serve`` and friends): the
requests, spread over the servers of a :class:`~iterdpo.sampling.server_fleet.ServerFleet`
(which launches them, checks their health and restarts them), and the failover when one dies.

- Fan-out: one request per prompt, or per seed group of ``prompts_per_request`` prompts
  (``POST /v1/completions`` with the prompts as token ids, ``n`` samples,
  ``return_token_ids``; see :func:`iterdpo.sampling.prompt_seed`), at most ``concurrency`` in flight per server, sent
  to the least-loaded live server from one asyncio event loop (aiohttp, keep-alive).
- Failures: a failed request is checked against its server. A dead server (process gone,
  ``/health`` failing, or samples answered with ``finish_reason: "abort"``, which is how a
  server shutting down on SIGTERM ends its requests) is taken out of rotation, restarted in the background (launched
  servers, up to ``max_restarts`` times) and all its unfinished requests are re-sent to the
  live servers at once; they are not counted as retries. Other failures are retried
  ``max_retries`` times. Results are keyed by prompt index, so a re-sent request can
  neither lose nor duplicate completions; with ``request_seed`` it even samples the same ones.
- Dead servers that say nothing: while requests are in flight, every live server's ``/health``
  is checked each ``health_interval`` seconds; ``health_failures`` failures in a row declare it
  dead, as above. This is what catches a server whose requests will never be answered although
  their connections stay open: vLLM 0.32 on SIGTERM (``scancel``), when its engine process
  was signalled too and died before it aborted the requests, closes its listening socket and
  then waits forever in uvicorn's "Waiting for connections to close" with the requests of
  those connections unanswered (``kill -TERM -PGID`` on one machine; after ``scancel`` on the
  2-node test cluster it held the stage for ``request_timeout``: launch/slurm/README.md);
  a hung host or a network that goes away looks alike. A completion request sends
  nothing until it is done, so the socket's silence cannot tell a dead server from a long
  generation; ``/health`` can: a slow server still answers it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa

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
from iterdpo.sampling.server_fleet import (
    CONNECT_TIMEOUT,
    Server,
    ServerError,
    ServerFleet,
    server_env,
)
from iterdpo.sampling.vllm_engine import adapter_base, on_cpu

__all__ = ["ServerError", "ServerPool", "Server", "server_env", "get_pool", "current_pool", "sample_server", "server_logps"]


ABORTED = "the server aborted the request (finish_reason 'abort')"


def aborted(resp: dict) -> bool:
    """A 200 answer whose samples were cut off by the server, not finished.

    vLLM's server answers the requests in flight with ``finish_reason: "abort"`` when it
    shuts down gracefully (SIGTERM: ``scancel`` of its Slurm job, a time limit, preemption;
    seen on the 2-node test cluster): the server is going away, so the request counts as
    sent to a dead server and goes to the others.
    """
    return any(c.get("finish_reason") == "abort" for c in resp.get("choices", ()))


DECLARED_DEAD = "its server was declared dead while the request was in flight"

_POOL: ServerPool | None = None  # the pool sample_server reuses across iterations
_POOL_KEY: tuple | None = None


class ServerPool(ServerFleet):
    """The servers of a :class:`ServerFleet` answering requests: fan-out, retries, failover."""

    def __init__(self, sample_cfg, model_cfg, *, seed: int = 0, log_dir: Path | None = None):
        super().__init__(sample_cfg, model_cfg, seed=seed, log_dir=log_dir)
        self.stats.update(declared_dead=0)  # servers the health checks declared dead
        self.in_flight: dict[str, set] = {}  # server url -> asyncio tasks of its requests in flight (map only)

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
        """POST one /v1/completions request with retries and dead-server handling.

        Blocking, one request at a time, without the health checks of :meth:`map`: a server that
        dies silently fails this request only at ``request_timeout``.
        """
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
            gone = error == ABORTED or (s.proc is not None and s.proc.poll() is not None) or not self.healthy(s)
            attempts, wait = self._after_failure(s, gone, attempts, error)
            time.sleep(wait)

    def _after_failure(self, s: Server, gone: bool, attempts: int, error: str | None) -> tuple[int, float]:
        """Bookkeeping after a failed request on ``s``: (attempts so far, seconds to wait before re-sending).

        A server that is ``gone`` (dead or unhealthy) is marked dead and the request re-sent at
        once, not counted against ``sample.max_retries``; a failure on a live server is a retry
        with exponential back-off, and an error past ``max_retries``.
        """
        if gone:
            self._drop(s)
            with self.cond:
                self.stats["resent"] += 1
            return attempts, 0.0
        attempts += 1
        with self.cond:
            self.stats["retries"] += 1
        if attempts > self.cfg.max_retries:
            raise ServerError(f"request failed {attempts} times on live servers (sample.max_retries={self.cfg.max_retries}); last error from {s.url}: {error}")
        return attempts, min(2.0**attempts * 0.1, 5.0)

    def _drop(self, s: Server) -> None:
        """``s`` is dead: out of rotation (:meth:`ServerFleet.mark_dead`), and its other requests in
        flight are cancelled, so their workers re-send them now rather than at ``request_timeout``.

        Runs on the event loop of :meth:`map` (or in :meth:`complete`, which has no other requests).
        """
        self.mark_dead(s)
        for task in list(self.in_flight.get(s.url, ())):
            task.cancel()

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
        """``concurrency * servers`` workers take requests from one queue in key order; one more
        task checks the servers' health (:meth:`_watch_health`)."""
        import asyncio
        from collections import deque

        import aiohttp

        todo = deque(bodies.items())
        workers = min(len(todo), max(1, self.cfg.concurrency * len(self.servers)))
        # sock_connect: a server whose host is gone fails its connection in seconds
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout, sock_connect=CONNECT_TIMEOUT)
        self.in_flight = {s.url: set() for s in self.servers}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

            async def worker() -> None:
                while todo:
                    key, body = todo.popleft()
                    on_done(key, await self._acomplete(session, body))

            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            watcher = asyncio.create_task(self._watch_health(session)) if self.cfg.health_interval > 0 else None
            try:
                await asyncio.gather(*tasks)
            finally:  # an error in one worker (or Ctrl-C): stop the others
                for t in [*tasks, *([watcher] if watcher else [])]:
                    t.cancel()
                await asyncio.gather(*tasks, *([watcher] if watcher else []), return_exceptions=True)

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
        """One ``GET /health`` answered 200 within ``sample.health_timeout`` seconds."""
        import aiohttp

        try:
            async with session.get(f"{s.url}/health", timeout=aiohttp.ClientTimeout(total=self.cfg.health_timeout)) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 - any failure means not healthy
            return False

    async def _watch_health(self, session) -> None:
        """Every ``health_interval`` s, ``GET /health`` of each live server (in parallel); a launched
        server whose process exited, or ``health_failures`` failed checks in a row, is dead:
        :meth:`_drop` it, which re-sends its requests in flight.

        Only /health decides: a long generation keeps a request silent for minutes on a healthy
        server, while /health answers at once (vLLM's API server answers it on its event loop,
        apart from the engine process).
        """
        import asyncio

        failures: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.cfg.health_interval)
            live = [s for s in self.servers if s.state == "up"]
            results = await asyncio.gather(*(self._ahealthy(session, s) for s in live))
            for s, ok in zip(live, results, strict=True):
                exited = s.proc is not None and s.proc.poll() is not None
                failures[s.url] = 0 if ok and not exited else failures.get(s.url, 0) + 1
                if s.state == "up" and (exited or failures[s.url] >= self.cfg.health_failures):
                    why = "its process exited" if exited else f"{failures[s.url]} /health checks in a row failed"
                    print(f"[iterdpo] server {s.url}: {why}; declared dead with {len(self.in_flight.get(s.url, ()))} request(s) in flight", file=sys.stderr, flush=True)
                    with self.cond:
                        self.stats["declared_dead"] += 1
                    failures[s.url] = 0
                    self._drop(s)

    async def _apost(self, session, s: Server, body: dict) -> tuple[dict | None, str | None]:
        """POST one request to ``s``: (the response, None) or (None, what went wrong)."""
        try:
            async with session.post(f"{s.url}/v1/completions", json={**body, "model": self.served}) as r:
                if r.status == 200:
                    resp = await r.json(content_type=None)
                    return (None, ABORTED) if aborted(resp) else (resp, None)
                return None, f"HTTP {r.status}: {(await r.text())[:500]}"
        except Exception as e:  # noqa: BLE001 - transport errors, timeouts
            return None, repr(e)

    async def _acomplete(self, session, body: dict) -> dict:
        """:meth:`complete` on the event loop: the same retry and dead-server rules.

        The POST runs as its own task, registered in ``in_flight`` under its server, so that
        :meth:`_drop` can cancel it when the server is declared dead; the cancelled request is
        then re-sent like one the server aborted (its result, if any, is never used: no duplicates).
        """
        import asyncio

        attempts = 0
        while True:
            s = await self._aacquire()
            post = asyncio.create_task(self._apost(session, s, body))
            requests = self.in_flight.setdefault(s.url, set())
            requests.add(post)
            try:
                await asyncio.wait({post})
            finally:
                requests.discard(post)
                post.cancel()  # a no-op once it is done; else this worker is being cancelled
                self._release(s)
            resp, error = (None, DECLARED_DEAD) if post.cancelled() else post.result()
            if resp is not None:
                return resp
            gone = error in (ABORTED, DECLARED_DEAD) or (s.proc is not None and s.proc.poll() is not None) or not await self._ahealthy(session, s)
            attempts, wait = self._after_failure(s, gone, attempts, error)
            await asyncio.sleep(wait)


def get_pool(sample_cfg, model_cfg, seed: int = 0) -> ServerPool:
    """The process's pool, reused while the pool settings stay the same."""
    global _POOL, _POOL_KEY
    keys = ("servers", "num_servers", "keep_servers", "base_port", "server_args", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager", "concurrency", "request_timeout", "max_retries", "server_start_timeout", "max_restarts", "health_interval", "health_failures", "health_timeout")
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
