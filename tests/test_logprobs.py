import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from iterdpo.logprobs import collate, encode, length_buckets, render_prompt, score_logps, sequence_logps


@given(st.lists(st.integers(1, 300), max_size=60), st.integers(64, 2048))
def test_length_buckets_cover_every_index_once_within_budget(lengths, budget):
    batches = length_buckets(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= budget


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def manual_logp(model, tok, prompt, completion, stopped):
    """Token-by-token reference: log pi(y|x) = sum_t log softmax(logits_{t-1})[y_t]."""
    p = render_prompt(tok, prompt, 64)
    r = tok(completion, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if stopped else [])
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(lp[len(p) + i - 1, t].item() for i, t in enumerate(r)), len(r)


def test_encode_masks_and_truncation(model_and_tok):
    _, tok = model_and_tok
    e = encode(tok, "Write about the cat and the dog.", "good cat", stopped=True, max_prompt_length=64, max_length=256)
    assert e.input_ids[e.prompt_len - 1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert e.input_ids[-1] == tok.eos_token_id
    cut = encode(tok, "Write about the cat and the dog.", "good cat " * 40, stopped=True, max_prompt_length=4, max_length=12)
    assert cut.prompt_len == 4 and len(cut.input_ids) == 12
    assert cut.input_ids[3] == tok.convert_tokens_to_ids("<|assistant|>")  # the left end is cut
    batch = collate([e, cut], tok.pad_token_id)
    assert batch["response_mask"].sum(1).tolist() == [len(e.input_ids) - e.prompt_len, 8]
    assert not batch["response_mask"][:, 0].any()


def test_batched_logps_equal_token_by_token(model_and_tok):
    model, tok = model_and_tok
    rows = [
        {"prompt": "Write about the cat and the dog.", "completion": "good cat is very bright", "finish_reason": "stop"},
        {"prompt": "Describe a moon and a sun.", "completion": "sad", "finish_reason": "length"},
        {"prompt": "Tell me of the rain and the snow.", "completion": "", "finish_reason": "stop"},
        {"prompt": "Write about the cat and the dog.", "completion": "the dog and the cat are kind and warm", "finish_reason": "stop"},
    ]
    logps, ntok = score_logps(model, tok, rows, max_prompt_length=64, max_length=256, batch_tokens=64)
    for r, lp, n in zip(rows, logps, ntok):
        want, wn = manual_logp(model, tok, r["prompt"], r["completion"], r["finish_reason"] == "stop")
        assert n == wn
        assert math.isclose(lp, want, abs_tol=1e-4)


def test_entropy_and_embedding(model_and_tok):
    model, tok = model_and_tok
    enc = [encode(tok, "Describe a moon and a sun.", y, stopped=True, max_prompt_length=64, max_length=256) for y in ("kind moon", "cold")]
    out = sequence_logps(model, collate(enc, tok.pad_token_id), with_entropy=True, with_embedding=True)
    V = len(tok)
    assert out.entropy.shape == (2,) and ((out.entropy > 0) & (out.entropy <= math.log(V) + 1e-4)).all()
    assert out.embedding.shape == (2, model.config.hidden_size)
