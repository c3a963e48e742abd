"""Active reward modelling as the iterative loop's selector (select.selector: arm)."""

import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def test_arm_selects_same_prompt_pairs_with_a_model_fitted_on_earlier_labels(toy_cache, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "iterdpo", "run", f"run.output_dir={tmp_path}", "run.iterations=2", "select.selector=arm",
         "arm.strategy=pa_dopt", "data.prompts_per_iteration=16", "evaluate.num_prompts=8", "train.epochs=1"],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    root = tmp_path / "toy"
    for k in (1, 2):
        scored = pq.read_table(root / f"iter_{k}" / "score" / "scored.parquet").to_pylist()
        prompt_of = {r["completion_id"]: r["prompt_id"] for r in scored}
        cands = pq.read_table(root / f"iter_{k}" / "select" / "candidates.parquet").to_pylist()
        assert len(cands) == math.ceil(0.5 * len(set(prompt_of.values())))
        assert all(prompt_of[c["a_id"]] == prompt_of[c["b_id"]] == c["prompt_id"] for c in cands)
        assert {c["selector"] for c in cands} == {"arm:pa_dopt/greedy"}
    # iteration 2's reward model learned from iteration 1's labels: its margins are no longer those of an untrained MLP
    m1 = [c["margin"] for c in pq.read_table(root / "iter_1" / "select" / "candidates.parquet").to_pylist()]
    m2 = [c["margin"] for c in pq.read_table(root / "iter_2" / "select" / "candidates.parquet").to_pylist()]
    assert sum(m2) / len(m2) > 2 * sum(m1) / len(m1)
    from tests.reading import report_and_wandb_read_every_artifact

    report_and_wandb_read_every_artifact(root)
