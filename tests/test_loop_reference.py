"""Reference modes through the loop: stored log-probs line up with what training computes."""

from __future__ import annotations

import json
import math

import pytest

from iterdpo import records


@pytest.mark.slow
def test_previous_reference_and_previous_iterate_scores(toy_cache, tmp_path):
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import run_all
    from iterdpo.stages import DEFAULT

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.iterations=3", "run.reference=previous", "score.prev_policy=true",
                             "data.prompts_per_iteration=16", "evaluate.num_prompts=4", "train.epochs=1", "score.shard_rows=24"])
    run_all(cfg, DEFAULT)
    root = tmp_path / "toy"
    for k in (1, 2, 3):
        stats = json.loads((root / f"iter_{k}" / "train" / "manifest.json").read_text())["stats"]
        # 'previous' + 'continue': training starts from its reference, and the first forward
        # reproduced the stored log-probs (else TokenisationMismatch), so the first loss is log 2
        assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
        pm = records.read_table(root / f"iter_{k}" / "train" / "pair_margins.parquet")
        assert pm.num_rows == stats["pairs"]
    s2 = records.read_table(root / "iter_2" / "score" / "scored.parquet").to_pylist()
    assert all(math.isnan(r["prev_reward"]) for r in s2)  # pi_0 is no aligned model: lambda = 0
    s3 = records.read_table(root / "iter_3" / "score" / "scored.parquet").to_pylist()
    for r in s3:
        assert r["prev_policy_logp"] == r["ref_logp"]  # pi_1 is pi_2's reference: scored once
        assert not math.isnan(r["prev_ref_logp"]) and r["prev_ref_logp"] != r["prev_policy_logp"]
        assert r["prev_reward"] == pytest.approx(0.1 * (r["prev_policy_logp"] - r["prev_ref_logp"]))


@pytest.mark.slow
def test_explicit_reference_model_differs_from_pi0(toy_cache, tmp_path):
    """model.reference: pi_ref is another model than pi_0, so iteration 1's margins are not all 0 and
    training starts away from log 2 (the default's warning is checked in test_loop)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    ref = tmp_path / "reference"
    shutil.copytree(toy_cache / "sft", ref)
    weights = load_file(ref / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in weights.items()},
              ref / "model.safetensors", metadata={"format": "pt"})
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=explicit", f"model.reference={ref}", "data.prompts_per_iteration=8",
                             "sample.n=3", "train.epochs=1"])
    run_stage(open_run(cfg, DEFAULT), "train", 1)  # runs sample, score, select, annotate first
    scored = records.read_table(tmp_path / "explicit" / "iter_1" / "score" / "scored.parquet").to_pylist()
    assert all(r["ref_logp"] != r["policy_logp"] for r in scored)  # margins are not all 0 at iteration 1
    pairs = records.read_table(tmp_path / "explicit" / "iter_1" / "train" / "pairs.parquet").to_pylist()
    by_id = {r["completion_id"]: r for r in scored}
    assert all(p["ref_chosen_logps"] == by_id[p["chosen_id"]]["ref_logp"] for p in pairs)  # trained against pi_ref
    assert all(p["policy_chosen_logps"] == by_id[p["chosen_id"]]["policy_logp"] for p in pairs)  # starting from pi_0
    stats = json.loads((tmp_path / "explicit" / "iter_1" / "train" / "manifest.json").read_text())["stats"]
    assert abs(stats["first_loss"] - math.log(2)) > 1e-3


def test_reference_settings_compose():
    from iterdpo.config import ConfigError, load_config
    from iterdpo.pipeline.context import Run

    def columns(*over):
        return Run(load_config(None, list(over))).training_columns()

    assert columns() == ("ref_logp", "policy_logp")
    assert columns("run.reference=previous") == ("policy_logp", "policy_logp")
    assert columns("run.init=reset") == ("ref_logp", "ref_logp")  # pi_0 is the scored reference
    assert columns("run.init=reset", "model.reference=/some/sft") == ("ref_logp", None)  # it is not: no start log-probs
    assert columns("train.loss=simpo", "run.reference=none") == (None, "policy_logp")
    with pytest.raises(ConfigError, match="model.reference"):
        load_config(None, ["train.loss=simpo", "run.reference=none", "model.reference=/some/sft"])
    run = Run(load_config(None, ["run.reference=previous", "model.reference=/some/sft", "model.name_or_path=/pi0"]))
    assert (run.reference_of(0), run.reference_of(1), run.reference_of(2)) == ("/some/sft", "/pi0", str(run.policy(1)))
