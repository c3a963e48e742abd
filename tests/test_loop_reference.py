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
