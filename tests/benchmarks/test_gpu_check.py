"""benchmarks/gpu/check.sh in its CPU smoke mode: the GPU script runs end to end (build, padding
gap, scoring, training with the bf16 start check) before anyone spends GPU time on it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", "benchmarks/gpu/check.sh", "--smoke", "--no-trl", "--workdir", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["params"] > 0 and res["scoring"]["tokens_per_s"] > 0
    gap = res["padding_gap_nats"]  # eager: the kernel iterdpo picks for bf16 on CPU
    assert gap["eager_alone_over_tolerance"] <= 1 and gap["eager_shared_prompt_over_tolerance"] <= 1, gap
    ours = res["training"]["ours"]
    assert ours["s_per_step"] > 0 and ours["peak_mem_mb"] > 0  # trained, past the bf16 start check
    assert "TRL skipped" in out.stdout
