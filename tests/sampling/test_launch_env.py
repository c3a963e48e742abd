"""vLLM engines and servers started from a launched rank do not inherit its rank variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from iterdpo.sampling.launch_env import clean_env, launcher_vars_removed

LAUNCH = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": "abc", "GROUP_RANK": "0"}
PRINT_ENV = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def test_clean_env_drops_exactly_the_launcher_variables():
    env = {**LAUNCH, "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "RANKING": "x"}
    assert clean_env(env) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "RANKING": "x"}


def test_an_engine_process_started_inside_the_block_sees_none_and_the_rank_keeps_them(monkeypatch):
    for k, v in LAUNCH.items():
        monkeypatch.setenv(k, v)
    with launcher_vars_removed() as removed:
        child = json.loads(subprocess.run(PRINT_ENV, capture_output=True, text=True, check=True).stdout)
    assert removed == LAUNCH
    assert not set(LAUNCH) & set(child) and child["PATH"] == os.environ["PATH"]
    assert all(os.environ[k] == v for k, v in LAUNCH.items())  # restored for the rank's own code


def test_servers_are_launched_without_them(monkeypatch):
    """The environment ServerPool launches `vllm serve` with, given to a real child process."""
    from iterdpo.sampling.server_fleet import server_env

    for k, v in LAUNCH.items():
        monkeypatch.setenv(k, v)
    env = server_env([2, 3], lora=True)
    child = json.loads(subprocess.run(PRINT_ENV, capture_output=True, text=True, check=True, env=env).stdout)
    assert not set(LAUNCH) & set(child)
    assert child["CUDA_VISIBLE_DEVICES"] == "2,3" and child["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_CPU_KVCACHE_SPACE" in child
