"""The server pool on the toy model: fan-out, a server SIGKILLed mid-stage, seed groups,
the same samples as the in-process engine, external
endpoints, new checkpoints, shutdown on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from iterdpo.config import ModelConfig, SampleConfig
from iterdpo.sampling import SamplingParams, postprocess

from .helpers import check_complete, retokenize_report, toy_prompts

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

PARAMS = SamplingParams(n=4, temperature=1.0, top_p=1.0, top_k=50, max_tokens=48, seed=5)
CFG = SampleConfig(backend="server", num_servers=2, concurrency=4, keep_servers=True)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def pool(toy_cache):
    """Two launched servers (started in parallel) shared by this module's tests."""
    from iterdpo.sampling import server

    p = server.get_pool(CFG, ModelConfig(), seed=0)
    p.ensure_model(str(toy_cache / "sft"))
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def baseline(pool, toy_cache, tmp_path_factory):
    from iterdpo.sampling.server import sample_server

    d = tmp_path_factory.mktemp("server-base")
    prompts = toy_prompts(toy_cache, 96)
    table = sample_server(str(toy_cache / "sft"), prompts, PARAMS, d, model_cfg=ModelConfig(), batch_size=8, progress=None, sample_cfg=CFG)
    return prompts, table, d


def test_pool_samples_every_prompt(pool, baseline, toy_cache):
    from transformers import AutoTokenizer

    prompts, table, d = baseline
    check_complete(table, prompts, PARAMS.n)
    assert all(s.state == "up" for s in pool.servers) and pool.stats["restarts"] == 0
    tok = AutoTokenizer.from_pretrained(toy_cache / "sft")
    rep = retokenize_report(tok, table, d)
    assert rep["disagree"] == [] and rep["canonical"] >= 0.9 * rep["total"], rep
    assert postprocess(table)[1]["retokenize_mismatch"] == rep["total"] - rep["equal"]


def test_sigkilled_server_loses_and_duplicates_nothing(pool, baseline, toy_cache, tmp_path):
    """SIGKILL one server (its whole process group) once the first shard is on disk."""
    from iterdpo.sampling.server import sample_server

    prompts, base, _ = baseline
    victim = pool.servers[0]
    pgid = victim.proc.pid
    seen = {}

    def killer():
        deadline = time.monotonic() + 600
        while not list(tmp_path.glob("shard-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["shards_at_kill"] = len(list(tmp_path.glob("shard-*.parquet")))
        os.killpg(pgid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    before = dict(pool.stats)
    table = sample_server(str(toy_cache / "sft"), prompts, PARAMS, tmp_path, model_cfg=ModelConfig(), batch_size=8, progress=None, sample_cfg=CFG)
    t.join()
    assert 1 <= seen["shards_at_kill"] < 12, seen  # killed in the middle of the stage
    check_complete(table, prompts, PARAMS.n)
    assert pool.stats["restarts"] == before["restarts"] + 1
    assert pool.stats["resent"] > before["resent"]  # its unfinished requests went elsewhere
    # per-request seeds: re-sent requests sample what they would have sampled anyway
    same = sum(a == b for a, b in zip(table.to_pylist(), base.to_pylist(), strict=True))
    assert same >= 0.95 * table.num_rows, f"{same}/{table.num_rows} equal to the undisturbed run"
    # the dead server comes back on its port with a new process
    assert pool.wait_all_up(timeout=900)
    assert victim.proc.pid != pgid and _gone(pgid)
    r = pool.client.post(f"{victim.url}/v1/completions", json={"model": pool.served, "prompt": [1, 2, 3], "max_tokens": 2})
    assert r.status_code == 200


def _same_rows(a, b) -> list[bool]:
    return [x == y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)]


def test_seed_groups_several_prompts_per_request(pool, baseline, toy_cache, tmp_path):
    """prompts_per_request=3 with request seeds: requests are the seed groups [3g, 3g+3)
    cut at shard ends; choices are split back per prompt; the samples do not depend on
    the sharding; a group's first prompt keeps its k=1 seed, the others get its seed."""
    from iterdpo.sampling.server import sample_server

    prompts, base = baseline[0].slice(0, 20), baseline[1].slice(0, 80)
    cfg = CFG.model_copy(update={"prompts_per_request": 3})
    run = lambda d, bs: sample_server(str(toy_cache / "sft"), prompts, PARAMS, tmp_path / d, model_cfg=ModelConfig(), batch_size=bs, progress=None, sample_cfg=cfg)  # noqa: E731
    t8, t5 = run("bs8", 8), run("bs5", 5)
    check_complete(t8, prompts, PARAMS.n)
    assert sum(_same_rows(t8, t5)) >= 0.9 * t8.num_rows  # shards of 8 vs 5 cut groups differently
    same = _same_rows(t8, base)
    firsts = [same[r] for r in range(t8.num_rows) if (r // PARAMS.n) % 3 == 0]
    others = [same[r] for r in range(t8.num_rows) if (r // PARAMS.n) % 3 != 0]
    assert sum(firsts) >= 0.9 * len(firsts) and sum(others) <= 0.5 * len(others), (sum(firsts), sum(others))
    unseeded = cfg.model_copy(update={"request_seed": False})
    t = sample_server(str(toy_cache / "sft"), prompts, PARAMS, tmp_path / "u", model_cfg=ModelConfig(), batch_size=8, progress=None, sample_cfg=unseeded)
    check_complete(t, prompts, PARAMS.n)


def test_engine_and_server_sample_the_same(pool, baseline, toy_cache, tmp_path):
    """The in-process engine seeds the same groups as the pool's requests (k=1 and k=3)."""
    from iterdpo.sampling import collect, pending_shards
    from iterdpo.sampling.server import sample_server
    from iterdpo.sampling.vllm_engine import generate_shards, open_engine, shutdown_engine

    prompts = baseline[0].slice(0, 24)
    rows = prompts.to_pylist()
    llm, tok, lora = open_engine(str(toy_cache / "sft"), ModelConfig(), SampleConfig(backend="vllm"), PARAMS.seed)
    try:
        for k in (1, 3):
            cfg = CFG.model_copy(update={"prompts_per_request": k})
            d = tmp_path / f"engine-{k}"
            generate_shards(llm, tok, lora, rows, pending_shards(len(rows), 8, d), PARAMS, d, ModelConfig(), cfg.model_copy(update={"backend": "vllm"}))
            served = sample_server(str(toy_cache / "sft"), prompts, PARAMS, tmp_path / f"server-{k}", model_cfg=ModelConfig(), batch_size=8, progress=None, sample_cfg=cfg)
            same = _same_rows(collect(d), served)
            assert sum(same) >= 0.9 * len(same), (k, sum(same), len(same))
    finally:
        shutdown_engine(llm)


def test_external_endpoints(pool, toy_cache, tiny_model_dir):
    from iterdpo.sampling.server import ServerError, ServerPool

    ext = ServerPool(SampleConfig(backend="server", servers=[pool.servers[1].url + "/"]), ModelConfig())
    ext.ensure_model(str(toy_cache / "sft"))  # it serves this model: accepted
    out = ext.complete({"prompt": [1, 2, 3], "max_tokens": 3, "n": 2, "return_token_ids": True})
    assert len(out["choices"]) == 2
    with pytest.raises(ServerError, match="not the policy"):
        ext.ensure_model(str(tiny_model_dir))  # never sample from the wrong checkpoint
    ext.shutdown()  # never stops servers it did not launch
    assert pool.servers[1].proc.poll() is None


def _map_killing(ext, url: str, pgid: int, sig: int, bound: float = 240.0) -> tuple[dict, dict]:
    """``ext.map`` of 48 seeded requests (in a thread); once 4 are answered and some are in flight
    to the server at ``url``, ``sig`` goes to its process group ``pgid``. Returns
    (key -> the responses on_done got for it, info).

    A failover that waits for ``request_timeout`` (600 s) fails on ``bound``: the map must be done
    well before it."""
    from iterdpo.sampling.server import request_body

    bodies = {i: request_body([1, 5 + i, 9, 13], PARAMS, seed=1000 + i) for i in range(48)}
    answers: dict[int, list] = {}
    info: dict = {}

    def on_done(key, resp):
        answers.setdefault(key, []).append(resp)
        # runs on the event loop, so the in-flight sets are exact here
        if "in_flight" not in info and len(answers) >= 4 and ext.in_flight.get(url):
            info["in_flight"] = len(ext.in_flight[url])
            os.killpg(pgid, sig)

    def run():
        try:
            ext.map(bodies, on_done)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            info["error"] = repr(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    info["finished_in_bound"] = not t.is_alive()
    return answers, info


def _check_failover(ext, answers: dict, info: dict) -> None:
    assert info["finished_in_bound"], f"requests to the dead server waited for request_timeout: {info}, {ext.stats}"
    assert "error" not in info, info
    assert info.get("in_flight", 0) >= 1, info  # the server died with requests in flight
    assert sorted(answers) == list(range(48)) and all(len(v) == 1 for v in answers.values())  # none lost, none twice
    for (resp,) in answers.values():
        assert len(resp["choices"]) == PARAMS.n and {c["finish_reason"] for c in resp["choices"]} <= {"stop", "length"}
    assert ext.stats["resent"] >= 1 and ext.servers[0].state == "failed" and ext.servers[1].state == "up"


def _external_pool(pool, toy_cache, **health):
    """A pool of the module's two servers as external ones (``sample.servers``), request_timeout 600 s."""
    from iterdpo.sampling.server import ServerPool

    cfg = SampleConfig(backend="server", servers=[s.url for s in pool.servers], concurrency=2, request_timeout=600, **health)
    ext = ServerPool(cfg, ModelConfig())
    ext.ensure_model(str(toy_cache / "sft"))
    return ext


def test_silent_server_requests_fail_over_at_once(pool, toy_cache):
    """A server that stops answering without closing its connections (SIGSTOP of its process
    group: a hung host, or a network that went away) with request_timeout=600: its requests in
    flight are re-sent once /health has failed health_failures times in a row, not after 600 s."""
    ext = _external_pool(pool, toy_cache, health_interval=0.5, health_failures=3, health_timeout=2)
    victim = pool.servers[0].proc
    try:
        answers, info = _map_killing(ext, ext.servers[0].url, victim.pid, signal.SIGSTOP)
    finally:
        os.killpg(victim.pid, signal.SIGCONT)
    _check_failover(ext, answers, info)
    assert ext.stats["declared_dead"] == 1
    assert victim.poll() is None  # continued: a pool never stops a server it did not launch


def test_sigterm_server_requests_fail_over_at_once(pool, toy_cache):
    """SIGTERM to a vLLM server's process group, as ``scancel`` of its Slurm job sends it, with
    request_timeout=600 and the default health checks: vLLM answers the requests in flight with
    finish_reason "abort", or (its engine process gone first) keeps their connections open and
    never answers; either way they are re-sent within seconds, none lost or duplicated."""
    ext = _external_pool(pool, toy_cache)
    pgid = pool.servers[0].proc.pid
    try:
        answers, info = _map_killing(ext, ext.servers[0].url, pgid, signal.SIGTERM)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # the module pool's server: gone either way
    _check_failover(ext, answers, info)


def test_shutdown_stops_every_server(pool):
    pgids = [s.proc.pid for s in pool.servers]
    pool.shutdown()
    assert all(_gone(g) for g in pgids)


def _adapter(base, dest, seed: int):
    """A PEFT LoRA adapter of ``base`` with random (non-zero) weights, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(dest)
    return str(dest)


CHILD = """
import sys, time, json
from iterdpo.config import ModelConfig, SampleConfig
from iterdpo.sampling.server import ServerPool
base, a1, a2, other = sys.argv[1:]
pool = ServerPool(SampleConfig(backend="server"), ModelConfig())
out = {}
body = {"prompt": [1, 5, 9, 13], "max_tokens": 8, "temperature": 0, "return_token_ids": True}
pool.ensure_model(a1)  # a LoRA policy: the base model with --enable-lora, adapter loaded at run time
out["pgid_a1"], out["name_a1"] = pool.servers[0].proc.pid, pool.served
out["ids_a1"] = pool.complete(body)["choices"][0]["token_ids"]
out["ids_base"] = pool.client.post(pool.servers[0].url + "/v1/completions", json={**body, "model": base}).json()["choices"][0]["token_ids"]
pool.ensure_model(a2)  # next iteration's adapter: loaded through /v1/load_lora_adapter, no restart
out["pgid_a2"], out["name_a2"] = pool.servers[0].proc.pid, pool.served
out["ids_a2"] = pool.complete(body)["choices"][0]["token_ids"]
pool.ensure_model(other)  # a new full checkpoint: the server restarts with it
out["pgid"] = pool.servers[0].proc.pid
out["roots"] = [m["root"] for m in pool.client.get(pool.servers[0].url + "/v1/models").json()["data"]]
print(json.dumps(out), flush=True)
time.sleep(600)
"""


def test_new_checkpoints_lora_and_sigterm(toy_cache, tiny_model_dir, tmp_path):
    """In a child process (one server): LoRA adapters are loaded into the running server
    (and really applied); a new full checkpoint restarts the server with it; SIGTERM to
    the driver stops its servers (SIGTERM handler -> SystemExit -> atexit)."""
    base = str(toy_cache / "sft")
    a1, a2 = _adapter(base, tmp_path / "a1", 1), _adapter(base, tmp_path / "a2", 2)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, base, a1, a2, str(tiny_model_dir)],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
    )
    try:
        info = json.loads(child.stdout.readline())
        assert info["pgid_a2"] == info["pgid_a1"] and info["name_a2"] != info["name_a1"]
        assert len({tuple(info["ids_a1"]), tuple(info["ids_a2"]), tuple(info["ids_base"])}) == 3, info
        assert _gone(info["pgid_a1"])  # the old server is stopped, not left running
        assert info["roots"] == [str(tiny_model_dir)]
        child.send_signal(signal.SIGTERM)
        assert child.wait(120) == 128 + signal.SIGTERM
        assert _gone(info["pgid"])
    finally:
        if child.poll() is None:
            child.kill()
