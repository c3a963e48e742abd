"""The one log-prob routine: masks, truncation, float32 sums, entropy, pooled embeddings, buckets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iterdpo.logprobs import (
    Encoded,
    collate,
    encode,
    length_buckets,
    render_prompt,
    score_logps,
    sequence_logps,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_encode_masks_only_the_response_and_appends_eos(tiny):
    _, tok = tiny
    e = encode(tok, "Write about the cat.", "the cat is good", stopped=True, max_prompt_length=64, max_length=128)
    p = render_prompt(tok, "Write about the cat.", 64)
    assert e.input_ids[: e.prompt_len] == p
    assert e.input_ids[-1] == tok.eos_token_id
    assert tok.decode(e.input_ids[e.prompt_len : -1]) == "the cat is good"
    batch = collate([e], tok.pad_token_id)
    assert batch["response_mask"].sum() == len(e.input_ids) - e.prompt_len


def test_truncation_policy(tiny):
    _, tok = tiny
    long_prompt = "Write about the cat. " * 30
    e = encode(tok, long_prompt, "good " * 100, stopped=True, max_prompt_length=16, max_length=40)
    p_full = render_prompt(tok, long_prompt, 10_000)
    assert e.prompt_len == 16 and e.input_ids[:16] == p_full[-16:]  # the prompt keeps its end
    assert len(e.input_ids) == 40  # the response is cut at its end (EOS lost with it)
    assert e.input_ids[-1] != tok.eos_token_id


def test_sequence_logps_matches_a_per_token_loop(tiny):
    model, tok = tiny
    texts = ["the cat is good", "bad", "the river is calm and clear and bright"]
    enc = [encode(tok, "Write about the cat.", t, stopped=i != 1, max_prompt_length=64, max_length=128) for i, t in enumerate(texts)]
    batch = collate(enc, tok.pad_token_id)
    out = sequence_logps(model, batch, with_entropy=True, with_embedding=True)
    assert out.logps.dtype == torch.float32
    with torch.no_grad():
        for b, e in enumerate(enc):
            ids = torch.tensor([e.input_ids])
            o = model(ids, output_hidden_states=True)
            lp = torch.log_softmax(o.logits[0].double(), -1)
            resp = range(e.prompt_len, len(e.input_ids))
            want = sum(lp[t - 1, e.input_ids[t]] for t in resp)
            ent = sum(-(lp[t - 1].exp() * lp[t - 1]).sum() for t in resp) / len(resp)
            emb = o.hidden_states[-1][0, e.prompt_len :].mean(0)
            assert float(out.logps[b]) == pytest.approx(float(want), abs=1e-4)
            assert int(out.num_tokens[b]) == len(resp)
            assert float(out.entropy[b]) == pytest.approx(float(ent), abs=1e-4)
            torch.testing.assert_close(out.embedding[b], emb.float(), atol=1e-5, rtol=1e-4)


def test_padding_and_bucketing_do_not_change_logps(tiny):
    model, tok = tiny
    rows = [{"prompt": f"Write about the {w}.", "completion": " ".join([w] * (i + 1)), "finish_reason": "stop"} for i, w in enumerate(["cat", "dog", "sun", "tree", "river"] * 4)]
    kw = dict(max_prompt_length=64, max_length=128)
    one, _ = score_logps(model, tok, rows, batch_tokens=10_000, **kw)
    small, _ = score_logps(model, tok, rows, batch_tokens=64, **kw)
    assert one == pytest.approx(small, abs=1e-4)


def test_shared_prompt_scoring_equals_full_sequences(tiny):
    """Prompt run once + KV cache for its completions = every (prompt, completion) run whole."""
    model, tok = tiny
    words = ["cat", "dog", "sun", "tree", "river", "good", "bad"]
    rows = [{"prompt": f"Write about the {p}, please, at length.", "completion": " ".join(words[(i + k) % 7] for k in range(1 + 3 * i)),
             "finish_reason": "stop" if i % 3 else "length"} for p in ("cat", "dog") for i in range(6)]
    rows.append({"prompt": "A lone prompt.", "completion": "sun", "finish_reason": "stop"})  # a group of one: bucketed
    kw = dict(max_prompt_length=64, max_length=40)  # the longest completions get cut at the right end
    want, want_n = score_logps(model, tok, rows, batch_tokens=10_000, **kw)
    for max_batch in (None, 4):  # one response batch per prompt, and several sharing one prompt cache
        got, got_n = score_logps(model, tok, rows, batch_tokens=10_000, share_prompts=2, max_batch=max_batch, max_pad=0.2, **kw)
        assert got_n == want_n
        assert got == pytest.approx(want, abs=1e-4)
    cut, cut_n = score_logps(model, tok, rows[:6], batch_tokens=10_000, share_prompts=2, max_prompt_length=64, max_length=8)
    assert cut_n == [0] * 6 and cut == [0.0] * 6  # prompt alone fills max_length: nothing to score


def test_sequence_logps_skips_prompt_positions_without_changing_results(tiny):
    """logits_to_keep starts at the batch's first response token; rows with longer prompts are unaffected."""
    model, tok = tiny
    enc = [encode(tok, "Hi.", "the cat", stopped=True, max_prompt_length=64, max_length=128),
           encode(tok, "Write a long story about the river and the sun and the tree.", "calm", stopped=True, max_prompt_length=64, max_length=128)]
    with torch.no_grad():
        both = sequence_logps(model, collate(enc, tok.pad_token_id)).logps
        alone = [float(sequence_logps(model, collate([e], tok.pad_token_id)).logps[0]) for e in enc]
    assert both.tolist() == pytest.approx(alone, abs=1e-5)


@given(st.lists(st.integers(1, 300), min_size=0, max_size=200), st.integers(64, 4096), st.none() | st.integers(1, 16),
       st.none() | st.floats(0.0, 1.0))
def test_length_buckets_partition_under_budget(lengths, budget, max_batch, max_pad):
    batches = length_buckets(lengths, budget, max_batch, max_pad)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert b
        if len(b) > 1:  # a single over-long sequence gets a batch of its own
            assert max(lengths[i] for i in b) * len(b) <= budget
            if max_pad is not None:
                assert max(lengths[i] for i in b) * len(b) <= (1 + max_pad) * sum(lengths[i] for i in b) + 1e-9
        if max_batch:
            assert len(b) <= max_batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_equals_the_models_own_head_values_and_gradients(dtype):
    """The fused, chunked LM head (no [B, T, V] logits) against the model's head + token_logps:
    same log-probs and the same gradient for every parameter, in float32 and bfloat16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(dtype)
    encs = [Encoded(input_ids=torch.randint(1, 300, (n,)).tolist(), prompt_len=p) for n, p in ((12, 4), (20, 9), (7, 6), (15, 2))]
    batch = collate(encs, pad_id=0)
    weight = torch.randn(4)
    grads = {}
    for fused in (True, False):
        model.zero_grad()
        out = sequence_logps(model, batch, fused_head=fused)
        (out.logps * weight).sum().backward()
        grads[fused] = ({k: p.grad.float().clone() for k, p in model.named_parameters()}, out.logps.detach(), out.num_tokens)
    (g_fused, lp_fused, n_fused), (g_plain, lp_plain, n_plain) = grads[True], grads[False]
    assert n_fused.tolist() == n_plain.tolist() == [8, 11, 1, 13]
    exact = dtype == torch.float32
    torch.testing.assert_close(lp_fused, lp_plain, atol=1e-5 if exact else 1e-3, rtol=0)
    for k in g_plain:
        scale = g_plain[k].abs().max().item()
        torch.testing.assert_close(g_fused[k], g_plain[k], atol=(1e-5 if exact else 2e-2) * max(scale, 1e-3), rtol=0, msg=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("capacity", [1, 40, 512])
@pytest.mark.parametrize("fused_head", [True, False])
def test_packed_batches_equal_padded_ones_values_and_gradients(dtype, capacity, fused_head):
    """Sequences packed end to end (restarting position ids, block-diagonal attention, one copy
    of a shared prompt) give the padded batch's log-probs and gradients, through the fused head
    and the model's own; capacity 1 = one group per row, 40 = several rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from iterdpo.logprobs import collate_packed, load_causal_lm

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=True)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(cfg).save_pretrained(d)
        model = load_causal_lm(d, "float32" if dtype == torch.float32 else "bfloat16")
    encs = [Encoded(input_ids=torch.randint(1, 300, (n,)).tolist(), prompt_len=p) for n, p in ((12, 4), (20, 9), (7, 6), (15, 2), (3, 2))]
    # two more responses to the second prompt: three sequences share one prompt copy, one response is empty
    encs += [Encoded(input_ids=encs[1].input_ids[:9] + torch.randint(1, 300, (n,)).tolist(), prompt_len=9) for n in (5, 0)]
    weight = torch.randn(len(encs))
    got = {}
    for name, batch in (("padded", collate(encs, pad_id=0)), ("packed", collate_packed(encs, pad_id=0, capacity=capacity))):
        model.zero_grad()
        out = sequence_logps(model, batch, fused_head=fused_head)
        (out.logps * weight).sum().backward()
        got[name] = (out.logps.detach(), out.num_tokens, {k: p.grad.float().clone() for k, p in model.named_parameters()})
    if capacity == 40:  # groups of 9+11+5 = 25, 15, 12, 7, 3 tokens, first fit: 25+15 | 12+7+3
        assert collate_packed(encs, pad_id=0, capacity=40)["input_ids"].shape == (2, 40)
    exact = dtype == torch.float32
    assert got["packed"][1].tolist() == got["padded"][1].tolist() == [8, 11, 1, 13, 1, 5, 0]
    torch.testing.assert_close(got["packed"][0], got["padded"][0], atol=1e-5 if exact else 1e-3, rtol=0)
    for k, g in got["padded"][2].items():
        scale = max(g.abs().max().item(), 1e-3)
        torch.testing.assert_close(got["packed"][2][k], g, atol=(1e-5 if exact else 2e-2) * scale, rtol=0, msg=k)


def _random_llama(dtype: torch.dtype, attn: str, device: str = "cpu", hidden: int = 64, layers: int = 2, heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=1, tie_word_embeddings=True)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).to(dtype=dtype, device=device).eval()


def _shared_prompt_rows(n_prompts: int, per_prompt: int, seed: int) -> tuple[list[list[int]], list[list[list[int]]]]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 300, (int(torch.randint(4, 30, (1,), generator=g)),), generator=g).tolist() for _ in range(n_prompts)]
    responses = [[torch.randint(1, 300, (int(torch.randint(1, 60, (1,), generator=g)),), generator=g).tolist()
                  for _ in range(per_prompt)] for _ in prompts]
    return prompts, responses


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_forwards_get_an_explicit_causal_mask(dtype):
    """In bf16 every forward of scoring and training (a batch without padding, a padded one, a
    shared prompt and the responses after its KV cache) gets an explicit [B, 1, Q, K] mask, so
    SDPA cannot switch kernels with the padding; in float32 the [B, T] mask goes as it is. The
    log-probs equal a plain forward's with the [B, T] mask (eager attention: the same mask)."""
    from iterdpo.logprobs import shared_prompt_logps

    model = _random_llama(dtype, "eager")
    seen: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["attention_mask"].shape)), with_kwargs=True)
    prompts, responses = _shared_prompt_rows(1, 3, seed=2)
    encs = [Encoded(input_ids=prompts[0] + r, prompt_len=len(prompts[0])) for r in responses[0]]
    alone = [sequence_logps(model, collate([e], pad_id=0)).logps.item() for e in encs]
    batch = collate(encs, pad_id=0)
    batched = sequence_logps(model, batch).logps.tolist()
    shared, _ = shared_prompt_logps(model, prompts[0], responses[0], pad_id=0)
    T, P, R = batch["input_ids"].shape[1], len(prompts[0]), max(map(len, responses[0]))
    lengths = [len(e.input_ids) for e in encs]
    if dtype == torch.float32:
        assert seen == [(1, n) for n in lengths] + [(3, T), (1, P), (3, P + R)]
    else:
        assert seen == [(1, 1, n, n) for n in lengths] + [(3, 1, T, T), (1, 1, P, P), (3, 1, R, P + R)]
    with torch.no_grad():  # the reference: the model's own forward, [B, T] mask, log_softmax over its logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    token = torch.log_softmax(logits[:, :-1], -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(-1)
    want = (token * batch["response_mask"][:, 1:]).sum(-1).tolist()
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    assert batched == pytest.approx(want, abs=tol)
    assert alone == pytest.approx(want, abs=tol)
    assert shared == pytest.approx(want, abs=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_logps_on_cuda_do_not_depend_on_the_batch():
    """On CUDA with SDPA (the loader's kernel there), a bf16 row's log-prob alone, in a padded
    batch, and after its prompt's KV cache agree within training's start-check tolerance: what
    lets training's first step compare itself with scoring whatever the two batches were."""
    from iterdpo.logprobs import check_tolerance, shared_prompt_logps

    model = _random_llama(torch.bfloat16, "sdpa", "cuda", hidden=512, layers=4, heads=8)
    prompts, responses = _shared_prompt_rows(4, 4, seed=5)
    encs = [Encoded(input_ids=p + r, prompt_len=len(p)) for p, rs in zip(prompts, responses, strict=True) for r in rs]
    with torch.no_grad():
        alone = torch.tensor([sequence_logps(model, collate([e], 0, "cuda")).logps.item() for e in encs])
        out = sequence_logps(model, collate(encs, 0, "cuda"))
        shared = torch.tensor([x for p, rs in zip(prompts, responses, strict=True) for x in shared_prompt_logps(model, p, rs, 0)[0]])
    tolerance = check_tolerance(1e-3, "bfloat16", out.num_tokens.cpu())
    assert ((alone - out.logps.cpu()).abs() <= tolerance).all(), (alone - out.logps.cpu()).abs().max()
    assert ((shared - out.logps.cpu()).abs() <= tolerance).all(), (shared - out.logps.cpu()).abs().max()
