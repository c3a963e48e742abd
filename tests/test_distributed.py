"""Multi-process runs on CPU: 2-process scoring equals 1-process, 2-process DeepSpeed ZeRO-2/3 loops.

``accelerate launch --cpu --num_processes 2`` silently runs one process, so these use
``torchrun --nproc_per_node 2`` (gloo) and an accelerate DeepSpeed config with ``use_cpu``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from iterdpo import records

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["run.iterations=1", "data.prompts_per_iteration=24", "sample.n=4", "evaluate.num_prompts=8",
         "train.batch_size=4", "train.epochs=1", "score.shard_rows=16", "score.batch_tokens=512"]


def free_port() -> int:
    with socket.socket() as s:  # other jobs on the machine may hold the default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def iterdpo(*args, launcher=(), cwd=ROOT, timeout=600):
    cmd = [*launcher, *(["-m"] if launcher else [sys.executable, "-m"]), "iterdpo", *args]
    out = subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_process_scoring_equals_one_process(toy_cache, tmp_path):
    over = [f"run.output_dir={tmp_path}", *SMALL]
    iterdpo("sample", "-k", "1", "run.name=one", *over)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    iterdpo("score", "-k", "1", "run.name=one", *over)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    iterdpo("score", "-k", "1", "run.name=two", *over, launcher=torchrun)
    one = records.read_table(tmp_path / "one" / "iter_1" / "score" / "scored.parquet").to_pylist()
    two = records.read_table(tmp_path / "two" / "iter_1" / "score" / "scored.parquet").to_pylist()
    assert len(one) == len(two) == 96
    for a, b in zip(one, two, strict=True):
        assert a["completion_id"] == b["completion_id"] and a["num_tokens"] == b["num_tokens"]
        for col in ("policy_logp", "ref_logp", "reward", "reward_norm"):
            assert a[col] == pytest.approx(b[col], abs=1e-5), col
    assert not (tmp_path / "two" / "iter_1" / ".score.partial").exists()  # shards cleaned up on commit


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize(
    ("stage", "extra"),
    [
        ("zero2", []),
        ("zero3", []),
        # optimizer + weights offloaded to CPU: accelerate swaps in DeepSpeed's CPUAdam, whose C++
        # op compiles on first use (~275 CPU-seconds, cached under TORCH_EXTENSIONS_DIR)
        ("zero3_offload", []),
        # LoRA under ZeRO-2: only the adapters train; adapter and merged model are saved
        ("zero2", ["train.lora_r=8", "train.learning_rate=1e-2"]),
    ],
    ids=["zero2", "zero3", "zero3_offload", "zero2_lora"],
)
def test_deepspeed_two_processes(stage, extra, toy_cache, tmp_path):
    """The whole loop under a shipped DeepSpeed config; rank 0 writes a plain model with the trained weights."""
    pytest.importorskip("deepspeed")
    import yaml

    cfg = yaml.safe_load((ROOT / "launch" / "accelerate" / f"{stage}.yaml").read_text())
    cfg["use_cpu"] = True  # DeepSpeed on CPU (DS_ACCELERATOR=cpu); no mixed_precision key
    (tmp_path / "ds_cpu.yaml").write_text(yaml.safe_dump(cfg))
    launcher = ["accelerate", "launch", "--config_file", str(tmp_path / "ds_cpu.yaml"), "--num_processes", "2",
                "--main_process_port", str(free_port())]
    launcher[0] = str(Path(sys.executable).parent / "accelerate")
    out = iterdpo("run", f"run.output_dir={tmp_path}", "train.checkpoint_every=2", *SMALL, *extra, launcher=launcher)
    train = json.loads((tmp_path / "toy" / "iter_1" / "train" / "manifest.json").read_text())["stats"]
    assert train["processes"] == 2, out.stdout[-2000:]
    assert train["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    pm = records.read_table(tmp_path / "toy" / "iter_1" / "train" / "pair_margins.parquet")
    assert pm.num_rows == train["pairs"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import score_logps

    model_dir = tmp_path / "toy" / "iter_1" / "train" / "model"
    pairs = records.read_table(tmp_path / "toy" / "iter_1" / "train" / "pairs.parquet").to_pylist()
    got, _ = score_logps(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                         [{"prompt": r["prompt"], "completion": r["chosen"], "finish_reason": "stop" if r["chosen_stopped"] else "length"} for r in pairs],
                         max_prompt_length=128, max_length=256, batch_tokens=4096)
    assert got == pytest.approx(pm.column("policy_chosen_logps").to_pylist(), abs=1e-3)  # the saved model is the trained one
    assert max(abs(a - r["policy_chosen_logps"]) for a, r in zip(got, pairs, strict=True)) > 1e-2  # and it moved
    assert (tmp_path / "toy" / "summary.json").exists()
    if extra:  # LoRA: the adapter is saved next to the merged model
        assert (tmp_path / "toy" / "iter_1" / "train" / "adapter" / "adapter_config.json").exists()
