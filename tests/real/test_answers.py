"""SmolLM2's answers to the reviews prompts (iterdpo.real.answers) and the lexical reward model the
reviews task fits on them (iterdpo.real.reviews.build_reward_model)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("afinn")

from iterdpo.real import answers, reviews  # noqa: E402


def test_sample_then_fit_on_a_tiny_model(tiny_model_dir, tmp_path):
    """The sampling script's file feeds the build: train answers to training prompts only, held-out pairs scored."""
    out = tmp_path / "answers.jsonl"
    got = answers.sample_answers(out, n_train=1, n_eval=2, max_tokens=6, model=str(tiny_model_dir), batch_size=160)
    rows = reviews.read_answers(out)
    train, held_out = reviews.split_prompts()
    assert got["answers"] == len(rows) == len(train) + 2 * len(held_out)
    assert {r["prompt"] for r in rows if r["split"] == "train"} == {p["prompt"] for p in train}
    assert sorted({r["sample"] for r in rows if r["split"] == "eval"}) == [0, 1]
    stats = reviews.build_reward_model(tmp_path / "rm", out)
    assert stats["rm_fitted_answers"] == len(train) and stats["rm_heldout_prompts"] == len(held_out)
    agreement = stats["rm_heldout_pairwise_agreement"]  # an untrained model's answers may all tie on gold
    assert stats["rm_heldout_pairs"] <= len(held_out)
    assert agreement is None if stats["rm_heldout_pairs"] == 0 else 0.0 <= agreement <= 1.0
    assert (tmp_path / "rm" / "lexical_reward.json").is_file()


def test_the_shipped_file_holds_smollm2_answers_to_both_splits():
    rows = reviews.read_answers(answers.DATA_FILE)
    train, held_out = reviews.split_prompts()
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "eval")}
    assert {r["prompt"] for r in by_split["train"]} == {p["prompt"] for p in train}
    assert {r["prompt"] for r in by_split["eval"]} == {p["prompt"] for p in held_out}
    assert len(by_split["train"]) >= 2 * len(train) and len(by_split["eval"]) >= 2 * len(held_out)
    assert all(0 < r["num_tokens"] <= 48 for r in rows)


@pytest.mark.parametrize(("line", "message"), [
    ("{oops", r"line 2: not valid JSON"),
    (json.dumps({"split": "train", "prompt": "p"}), r"line 2, field 'completion': missing or not a string"),
    (json.dumps({"split": "test", "prompt": "p", "completion": "c"}), r"line 2, field 'split': 'test' is neither"),
])
def test_a_bad_answers_file_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"split": "eval", "prompt": "p", "completion": "c"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"a.jsonl: {message}"):
        reviews.read_answers(path)


def test_fitting_on_held_out_prompts_is_refused(tmp_path):
    _, held_out = reviews.split_prompts()
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"split": "train", "prompt": p["prompt"], "completion": "a fine mug"}) + "\n"
                            for p in held_out[:3]))
    with pytest.raises(ValueError, match=r"a.jsonl: 3 'train' answers are to prompts outside the training split"):
        reviews.build_reward_model(tmp_path / "rm", path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty.jsonl: no answers"):
        reviews.read_answers(tmp_path / "empty.jsonl")
