"""The trainer: first-step check, outputs (plain model, LoRA adapter + merged, pair margins), resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iterdpo import records
from iterdpo.config import load_config
from iterdpo.training.trainer import TokenisationMismatch, batch_schedule, rank_slice, train

ROOT = Path(__file__).resolve().parents[2]


def cfg_of(*overrides):
    return load_config(None, ["train.epochs=1", "train.batch_size=8", "train.learning_rate=1e-2", "train.warmup_ratio=0", *overrides])


def load_weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def final_logps(model_dir: Path, table):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import score_logps

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    rows = table.to_pylist()
    kw = dict(max_prompt_length=128, max_length=256, batch_tokens=4096)
    c, _ = score_logps(model, tok, [{"prompt": r["prompt"], "completion": r["chosen"], "finish_reason": "stop" if r["chosen_stopped"] else "length"} for r in rows], **kw)
    r_, _ = score_logps(model, tok, [{"prompt": r["prompt"], "completion": r["rejected"], "finish_reason": "stop" if r["rejected_stopped"] else "length"} for r in rows], **kw)
    return c, r_


def test_batch_schedule_is_a_seeded_partition_with_grouped_lengths():
    lengths = [(i * 37) % 101 + 1 for i in range(500)]
    for world in (1, 2, 3):
        s = batch_schedule(lengths, 4, world, seed=1, epoch=0, group_by_length=True)
        assert sorted(i for b in s for i in b) == list(range(500))
        assert all(len(b) == 4 * world for b in s[:-1])
        assert s == batch_schedule(lengths, 4, world, seed=1, epoch=0, group_by_length=True)
        assert s != batch_schedule(lengths, 4, world, seed=1, epoch=1, group_by_length=True)
        for b in s:  # the ranks' slices partition the global batch
            assert sum((rank_slice(b, r, world) for r in range(world)), []) == b
    grouped = batch_schedule(lengths, 8, 1, 0, 0, True)
    plain = batch_schedule(lengths, 8, 1, 0, 0, False)

    def padding(s):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in s)

    assert padding(grouped) < 0.25 * padding(plain)


def test_train_outputs_plain_model_and_final_margins(tiny_model_dir, pairs_file, tmp_path):
    cfg = cfg_of()
    pairs = records.read_table(pairs_file)
    stats = train(pairs, str(tiny_model_dir), tmp_path, tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step one
    assert stats["steps"] == 12
    pm = records.read_table(tmp_path / "pair_margins.parquet").to_pylist()
    assert [r["chosen_id"] for r in pm] == pairs.column("chosen_id").to_pylist()
    # the stored margins are those of the saved plain model
    c, r = final_logps(tmp_path / "model", pairs)
    for row, a, b, p in zip(pm, c, r, pairs.to_pylist(), strict=True):
        assert row["policy_chosen_logps"] == pytest.approx(a, abs=1e-3)
        want = 0.1 * ((a - p["ref_chosen_logps"]) - (b - p["ref_rejected_logps"]))
        assert row["margin"] == pytest.approx(want, abs=1e-3)
    assert stats["final_margin_accuracy"] > 0.6 and stats["final_mean_margin"] > 0  # it learnt the pairs


def test_lora_saves_adapter_and_merged_model(tiny_model_dir, pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = cfg_of("train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=5e-2", "train.lora_target_modules=[q_proj,v_proj]")
    pairs = records.read_table(pairs_file)
    train(pairs, str(tiny_model_dir), tmp_path, tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # a plain model: no peft needed
    assert not any("lora" in k for k in merged.state_dict())
    base, new = load_weights(tiny_model_dir), load_weights(tmp_path / "model")
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    pm = records.read_table(tmp_path / "pair_margins.parquet").to_pylist()
    c, _ = final_logps(tmp_path / "model", pairs)
    assert [r["policy_chosen_logps"] for r in pm] == pytest.approx(c, abs=1e-3)


def test_first_step_check_fires_on_chat_template_mismatch(tiny_model_dir, pairs_file, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = tok.chat_template.replace("<|user|>{{", "<|user|> {{")  # one space more in the prompt
    tok.save_pretrained(tmp_path / "tok")
    cfg = cfg_of()
    with pytest.raises(TokenisationMismatch, match="chat-template"):
        train(records.read_table(pairs_file), str(tiny_model_dir), tmp_path / "out", tokenizer_path=str(tmp_path / "tok"),
              model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)


def test_missing_reference_logps_is_a_clear_error(tiny_model_dir, pairs_file, tmp_path):
    import pyarrow as pa

    t = records.read_table(pairs_file)
    col = t.column("ref_rejected_logps").to_pylist()
    col[3] = math.nan
    t = t.set_column(t.column_names.index("ref_rejected_logps"), "ref_rejected_logps", pa.array(col, pa.float64()))
    cfg = cfg_of()
    with pytest.raises(ValueError, match="row 3 .*ref_chosen_logps/ref_rejected_logps"):
        train(t, str(tiny_model_dir), tmp_path, tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)


def _trainer_cmd(pairs, start, dest, ckpt):
    return [sys.executable, "-m", "iterdpo.training.trainer", str(pairs), str(start), str(dest), "--ckpt-dir", str(ckpt),
            "train.epochs=1", "train.batch_size=2", "train.grad_accum=2", "train.checkpoint_every=4",
            "train.learning_rate=1e-2"]


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tiny_model_dir, pairs_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # an uninterrupted run
    subprocess.run(_trainer_cmd(pairs_file, tiny_model_dir, tmp_path / "a", tmp_path / "ca"), env=env, cwd=ROOT, check=True, capture_output=True)
    # a run killed with SIGKILL once it has written a mid-epoch checkpoint, then restarted
    cmd = _trainer_cmd(pairs_file, tiny_model_dir, tmp_path / "b", tmp_path / "cb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    progress = tmp_path / "cb" / "ckpt" / "progress.json"
    deadline = time.time() + 300
    while not progress.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    killed_at = json.loads(progress.read_text())["micro_step"]
    assert 0 < killed_at < 48
    assert not (tmp_path / "b" / "model").exists()
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    assert "resumed from" in out.stdout
    a, b = load_weights(tmp_path / "a" / "model"), load_weights(tmp_path / "b" / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert json.loads(out.stdout.splitlines()[-1])["steps"] == 48  # losses of the killed part were kept
