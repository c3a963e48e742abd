"""The paired gold-difference interval computed from evaluation's parquet files."""

from __future__ import annotations

import json
import math

import pytest

from iterdpo import records
from iterdpo.real.paired import gold_difference, main


def _answers(rows):
    return records.from_rows(
        [{"prompt_id": pid, "completion_id": f"{pid}-0000", "prompt": p, "completion": c, "num_tokens": len(c.split()),
          "finish_reason": "stop"} for pid, p, c in rows], records.COMPLETIONS)


def test_gold_difference_pairs_answers_by_prompt(tmp_path, capsys):
    pytest.importorskip("afinn")
    from iterdpo.real.reviews import gold_reward

    p1, p2, p3 = (f"Write a short positive review of a {x}." for x in ("blender", "desk lamp", "teapot"))
    base = [("a", p1, "The blender is bad and noisy, it broke."), ("b", p2, "The lamp is fine I guess okay."),
            ("c", p3, "The teapot is small and it is blue.")]
    mine = [("c", p3, "The teapot is wonderful, lovely and perfect."), ("a", p1, "The blender is great, I love it."),
            ("b", p2, "The lamp is fine I guess okay.")]
    records.write_table(_answers(base), tmp_path / "baseline" / "completions.parquet")
    records.write_table(_answers(mine), tmp_path / "iter_1" / "eval_responses" / "completions.parquet")
    got = gold_difference(tmp_path, 1, "reviews")
    by_id = {pid: (p, c) for pid, p, c in base}
    diffs = [gold_reward(p, c) - gold_reward(*by_id[pid]) for pid, p, c in mine]
    assert got["gold_reward_gain_n"] == 3 and got["gold_reward_gain"] == pytest.approx(sum(diffs) / 3)
    assert (got["wins"], got["ties"], got["losses"]) == (2, 1, 0)
    assert got["mean_words_policy"] == pytest.approx(sum(len(c.split()) for _, _, c in mine) / 3)
    low, high = got["gold_reward_gain_ci95"]
    assert math.isfinite(low) and low < got["gold_reward_gain"] < high
    (tmp_path / "config.yaml").write_text("annotate:\n  gold: reviews\n")
    assert main([str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["iteration"] == 1


def test_annotator_agreement_counts_gold_ties_apart(tmp_path):
    pytest.importorskip("afinn")
    import pyarrow as pa

    from iterdpo.real.paired import annotator_agreement

    p = "Write a short positive review of a blender."
    good, bad = "The blender is great, I love it.", "The blender is bad and it broke."
    table = pa.table({"prompt": [p, p, p], "chosen": [good, bad, good], "rejected": [bad, good, good]})
    records.write_table(table, tmp_path / "iter_1" / "annotate" / "pairs.parquet")
    got = annotator_agreement(tmp_path, 1, "reviews")
    assert got == {"iteration": 1, "pairs": 3, "gold_ties": 1, "agreement_with_gold": 0.5}
