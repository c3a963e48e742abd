"""Self-labelling by the implicit reward, and the annotate() plumbing for row annotators."""

from __future__ import annotations

import pytest

from iterdpo.annotation import annotate, attach_logps, get_annotator
from iterdpo.annotation.implicit import ImplicitAnnotator
from iterdpo.config import AnnotateConfig, ConfigError, load_config


@pytest.mark.parametrize("column", ["reward", "reward_norm", "reward_simpo"])
def test_chosen_has_the_higher_implicit_reward(scored, candidates, column):
    ann = get_annotator("implicit", AnnotateConfig(annotator="implicit", implicit_column=column))
    table, stats = annotate(candidates, scored, ann, ties="drop", iteration=2, seed=0)
    by = {r["completion_id"]: r for r in scored.to_pylist()}
    assert table.num_rows == candidates.num_rows == stats["pairs"]
    table = attach_logps(table, scored, ref_column="ref_logp", start_column=None)  # training's reference: fixed
    for r in table.to_pylist():
        assert by[r["chosen_id"]][column] > by[r["rejected_id"]][column]
        assert r["label_source"] == "implicit"
        assert r["ref_chosen_logps"] == by[r["chosen_id"]]["ref_logp"] and r["policy_chosen_logps"] != r["policy_chosen_logps"]


def test_implicit_cannot_judge_text_and_unknown_columns_fail():
    with pytest.raises(TypeError, match="scored rows"):
        ImplicitAnnotator().compare(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="unknown column"):
        ImplicitAnnotator("logp")


def test_nan_labels_are_unlabelled_and_ties_follow_the_policy(scored, candidates):
    class Odd:
        name = "odd"

        def compare_rows(self, a, b):
            return [float("nan"), 0.0, None] + [1.0] * (len(a) - 3)

    kw = dict(iteration=1, seed=0)
    _, s = annotate(candidates, scored, Odd(), ties="drop", **kw)
    assert (s["unlabelled"], s["ties"], s["pairs"]) == (2, 1, candidates.num_rows - 3)
    _, s = annotate(candidates, scored, Odd(), ties="random", **kw)
    assert s["pairs"] == candidates.num_rows - 2


def test_config_fields_validate():
    cfg = load_config(None, ["annotate.annotator=judge", "annotate.judge.concurrency=3", "annotate.noise=0.2", "evaluate.judge=gold"])
    assert cfg.annotate.judge.concurrency == 3 and cfg.annotate.noise == 0.2
    with pytest.raises(ConfigError, match="annotate.noise"):
        load_config(None, ["annotate.noise=1.5"])
    with pytest.raises(ConfigError, match=r"annotate.judge.urll: unknown key; allowed here: url"):
        load_config(None, ["annotate.judge.urll=x"])
