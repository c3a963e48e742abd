"""The LM-head log-prob routines: values and gradients against log_softmax + gather."""

from __future__ import annotations

import pytest
import torch

from iterdpo.lm_head import fused_token_logps, token_logps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("chunk", [1, 3])
def test_token_logps_value_and_gradient_equal_log_softmax_gather(dtype, inplace, chunk):
    torch.manual_seed(0)
    B, L, V = 4, 7, 50
    base = (3 * torch.randn(B, L + 1, V)).to(dtype)  # one more position than labels: it is not scored
    labels = torch.randint(0, V, (B, L))
    w = torch.randn(B, L)  # arbitrary upstream gradient
    ref_in = base.clone().float().requires_grad_()
    want = torch.log_softmax(ref_in[:, :L], -1).gather(2, labels.unsqueeze(-1)).squeeze(-1)
    (want * w).sum().backward()
    x = base.clone().requires_grad_()
    logits = x * 1  # a non-leaf, like a model's output (the in-place gradient reuses its storage)
    got, lse = token_logps(logits, labels, chunk_rows=chunk, inplace_grad=inplace)
    (got * w).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got, want.detach(), **({"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-4, "rtol": 0}))
    torch.testing.assert_close(lse, torch.logsumexp(base[:, :L].float(), -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.float(), ref_in.grad, **tol)
    assert not x.grad[:, L:].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_chunks_and_kept_softmax_agree(dtype):
    """Chunked with the logits recomputed in the backward (chunks of 1, 3, 10 rows) and the
    softmax kept from the forward (``keep_elements`` large): the same log-probs, logsumexps and
    gradients, all equal to autograd through ``log_softmax(h W^T)``."""
    torch.manual_seed(1)
    hidden, weight = torch.randn(10, 8, dtype=dtype, requires_grad=True), torch.randn(30, 8, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 30, (10,))
    upstream = torch.randn(10)
    logits = (hidden.detach().float() @ weight.detach().float().T).to(dtype).float()  # rounded as the head's output
    want = torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    (torch.log_softmax(h32 @ w32.T, -1).gather(1, labels[:, None]).squeeze(1) * upstream).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for chunk, keep in ((1, 0), (3, 0), (10, 0), (3, 300), (3, 10**9)):
        lp, lse = fused_token_logps(hidden, weight, labels, chunk_rows=chunk, keep_elements=keep)
        gh, gw = torch.autograd.grad((lp * upstream).sum(), (hidden, weight))
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, torch.logsumexp(logits, -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gh.float(), h32.grad, **tol)
        torch.testing.assert_close(gw.float(), w32.grad, **tol)


def test_fused_head_kept_softmax_cannot_serve_a_second_backward():
    """The kept softmax becomes the gradient in place, so a second backward through the same
    graph must fail loudly (autograd's version check), not use the overwritten buffer."""
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    lp, _ = fused_token_logps(hidden, weight, torch.randint(0, 30, (4,)), keep_elements=10**9)
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lp.sum().backward()


def test_fused_head_with_no_positions():
    hidden, weight = torch.zeros(0, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    for keep in (0, 10**9):
        lp, lse = fused_token_logps(hidden, weight, torch.zeros(0, dtype=torch.long), keep_elements=keep)
        assert lp.shape == lse.shape == (0,)
        (lp.sum() + weight.sum() * 0).backward()
        assert weight.grad is not None and not weight.grad.any()
        weight.grad = None
