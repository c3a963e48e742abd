"""Log-probs of labels from an LM's logits, or from its final hidden states and LM head, with
backwards that hold no [positions, vocabulary] tensor beyond what the result needs.

At a 49k-256k vocabulary the LM head's output is the largest activation of a small model:
``log_softmax`` + ``gather`` through autograd keeps several [B, T, V] tensors for the backward.
:func:`token_logps` works from logits the model already computed and writes their gradient
in place; :func:`fused_token_logps` applies the head itself at the positions that have labels
only. :func:`iterdpo.logprobs.sequence_logps` chooses between them.
"""

from __future__ import annotations

import torch


class _TokenLogps(torch.autograd.Function):
    """``logit_y - logsumexp(logits)`` with a backward that allocates at most one [B, L', V] tensor.

    Autograd through gather + logsumexp would build a zero-filled scatter for the gather, the
    softmax for the logsumexp and their sum, each [B, L, V] (plus a full copy for a slice of
    the logits). Here the gradient ``g * (onehot(y) - softmax(logits))`` is written row chunk by
    row chunk into one buffer; with ``inplace`` that buffer is the logits' own storage (they
    are needed by nothing else once the log-probs exist: the LM head's backward needs its
    input, not its output), so the backward adds no [B, L', V] tensor at all. Were the logits
    saved by another op, autograd's version check would raise rather than compute wrong
    gradients.
    """

    @staticmethod
    def forward(ctx, logits, labels, chunk_rows: int, inplace: bool):
        L = labels.shape[1]
        x = logits[:, :L]
        picked = torch.gather(x, 2, labels.unsqueeze(-1)).squeeze(-1).float()  # [B, L]
        lse = torch.cat([torch.logsumexp(c.float(), dim=-1) for c in x.split(chunk_rows, dim=0)])  # [B, L]
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_rows, ctx.inplace = chunk_rows, inplace
        ctx.mark_non_differentiable(lse)
        return picked - lse, lse

    @staticmethod
    def backward(ctx, g, _g_lse):
        logits, labels, lse = ctx.saved_tensors
        L, c = labels.shape[1], ctx.chunk_rows
        grad = logits if ctx.inplace else torch.empty_like(logits)
        g = g.float()
        for b in range(0, logits.shape[0], c):
            x, gb, lb, gg = logits[b : b + c, :L], grad[b : b + c, :L], lse[b : b + c, :, None], g[b : b + c, :, None]
            if logits.dtype == torch.float32:
                torch.sub(x, lb, out=gb)  # the float32 chunk is computed where it is stored
                gb.exp_().mul_(-gg).scatter_add_(2, labels[b : b + c].unsqueeze(-1), gg)
            else:  # low precision logits: compute the chunk in float32, store it rounded
                p = (x.float() - lb).exp_().mul_(-gg).scatter_add_(2, labels[b : b + c].unsqueeze(-1), gg)
                gb.copy_(p)
        if grad.shape[1] > L:
            grad[:, L:].zero_()  # positions not scored (the last logit) get no gradient
        return grad, None, None, None


CHUNK_ELEMENTS = 1 << 22  # a [chunk, L, V] float32 temporary of at most 16 MiB (or one row)
# On CUDA a 16 MiB chunk is 32 positions at a 128k vocabulary: the fused head's [32, H] x [H, V]
# products and their elementwise ops are launch-bound there. Measured on one H200 (1.24 B Llama,
# bf16, 8 pairs a step, benchmarks/gpu/check.sh, 2026-12-04): one micro-step's forward +
# backward 289 ms at 2^22, 161 ms at 2^25, 154 ms at 2^28 (the model's own head: 160 ms); a
# training step 0.369 -> 0.192 s (TRL 0.224 s) for +27 MiB of peak memory at 2^25.
CUDA_CHUNK_ELEMENTS = 1 << 25  # 128 MiB float32


def chunk_elements(device: torch.device) -> int:
    """Logits per chunk of :func:`token_logps` / :func:`fused_token_logps` on ``device``."""
    return CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CHUNK_ELEMENTS


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None, inplace_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(label)`` per position without materialising ``log_softmax`` over the vocabulary.

    ``logits`` [B, L', V] (any float dtype; L' >= L, positions >= L are not scored),
    ``labels`` [B, L] -> (token_logp [B, L] float32, logsumexp [B, L] float32), with
    ``log pi(y) = logit_y - logsumexp(logits)``. log_softmax + gather would keep a second
    [B, L, V] tensor for the backward; this keeps none (the logits exist anyway), takes the
    logsumexp ``chunk_rows`` batch rows at a time (its exp temporary is [chunk, L, V]) and
    computes the gradient in one buffer, the logits' own with ``inplace_grad`` (only when
    nothing else reads the logits after this call). See :class:`_TokenLogps`. ``chunk_rows``
    None: as many rows as keep the temporary under :func:`chunk_elements` (one chunk for small
    vocabularies, where a Python loop over rows would cost more than the memory it saves).
    """
    if chunk_rows is None:
        chunk_rows = max(1, chunk_elements(logits.device) // max(1, labels.shape[1] * logits.shape[-1]))
    return _TokenLogps.apply(logits, labels, chunk_rows, inplace_grad)


KEEP_ELEMENTS = 1 << 24  # float32 probabilities the fused head may keep for its backward (64 MiB)


class _LinearTokenLogps(torch.autograd.Function):
    """``log pi(y_n) = (h_n W^T)_{y_n} - logsumexp(h_n W^T)`` for N selected positions, the LM
    head fused in, so no [N, V] logits outlive the call unless the backward is cheaper with them.

    Forward: logits = ``h W^T`` in the weights' dtype (as the model's own head computes them),
    then the picked logit and the logsumexp in float32. The backward needs the softmax: with
    ``keep`` the forward computes all N rows at once into one float32 [N, V] buffer, turns it into
    the softmax in place and saves it; otherwise it goes ``chunk_rows`` positions at a time and
    saves only ``h`` [N, H] and the logsumexp [N], and the backward recomputes each chunk's
    logits. Backward: ``G = g * (onehot(y) - softmax)`` [c, V] (float32, then stored in the
    weights' dtype like the gradient of the model's own logits) gives ``dL/dh = G W`` and
    ``dL/dW = sum_chunks G^T h``. Recomputing costs one more ``h W^T`` than autograd through the
    head: at SmolLM2's head on one CPU thread, 264 positions, forward + backward take 607 ms kept
    and 913 ms recomputed in float32, 324 vs 398 ms in bfloat16 (``benchmarks/lm_head.py``);
    keeping costs N x V float32, so :func:`fused_token_logps` keeps only up to
    :data:`KEEP_ELEMENTS`. On CUDA a micro-step's N x V is far above it (8 pairs of 50-400 words
    at a 128k vocabulary: ~5,000 x 128,256 = 6e8), so there the logits are recomputed as before.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows: int, keep: bool):
        N = hidden.shape[0]
        if keep:
            chunk_rows = max(N, 1)
            probs = torch.empty(N, weight.shape[0], dtype=torch.float32, device=hidden.device)  # [N, V]
        token_logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        for s in range(0, N, chunk_rows):
            e = min(N, s + chunk_rows)
            if keep and weight.dtype == torch.float32:
                logits = torch.mm(hidden[s:e], weight.t(), out=probs[s:e])  # [c, V], no temporary
            elif keep:
                logits = probs[s:e].copy_(torch.nn.functional.linear(hidden[s:e], weight))
            else:
                logits = torch.nn.functional.linear(hidden[s:e], weight).float()
            lse[s:e] = torch.logsumexp(logits, dim=-1)
            token_logp[s:e] = logits.gather(1, labels[s:e, None]).squeeze(1) - lse[s:e]
        if keep:
            probs.sub_(lse[:, None]).exp_()
            ctx.save_for_backward(hidden, weight, labels, probs)
        else:
            ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_rows, ctx.keep = chunk_rows, keep
        ctx.mark_non_differentiable(lse)
        return token_logp, lse

    @staticmethod
    def backward(ctx, g, _g_lse):
        hidden, weight, labels, saved = ctx.saved_tensors  # saved: probs [N, V] with keep, else lse [N]
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # the weight's gradient accumulates in the weight's dtype: the first chunk's G^T h is written,
        # the next ones added (each a float32 sum rounded once); a float32 buffer would add 2 bytes
        # per weight in bf16
        grad_weight = None
        g = g.float()
        c = ctx.chunk_rows
        for s in range(0, hidden.shape[0], c):
            h, y, gg = hidden[s : s + c], labels[s : s + c, None], g[s : s + c, None]
            if ctx.keep:  # the softmax itself, no longer needed once scaled
                G = saved[s : s + c].mul_(-gg).scatter_add_(1, y, gg)
            else:  # the logits recomputed, then g * (onehot - softmax)
                G = torch.nn.functional.linear(h, weight).float()  # [c, V]
                G.sub_(saved[s : s + c, None]).exp_().mul_(-gg).scatter_add_(1, y, gg)
            G = G.to(weight.dtype)
            if need_hidden:
                torch.mm(G, weight, out=grad_hidden[s : s + c])
            if need_weight:
                grad_weight = G.t().mm(h) if grad_weight is None else grad_weight.addmm_(G.t(), h)
        if need_weight and grad_weight is None:  # no positions at all
            grad_weight = torch.zeros_like(weight)
        return grad_hidden, grad_weight, None, None, None


def fused_token_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      chunk_rows: int | None = None, keep_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(label_n)`` [N] float32 and the logsumexp [N] from final hidden states ``hidden``
    [N, H] and the LM head ``weight`` [V, H]. When a backward will follow and N x V is at most
    ``keep_elements`` (default :data:`KEEP_ELEMENTS`), the float32 softmax [N, V] is kept for it;
    otherwise no more than ``chunk_rows`` x V logits exist at a time (default: as many rows as
    keep a chunk under :func:`chunk_elements`) and the backward recomputes them. See
    :class:`_LinearTokenLogps`."""
    if chunk_rows is None:
        chunk_rows = max(1, chunk_elements(hidden.device) // weight.shape[0])
    budget = KEEP_ELEMENTS if keep_elements is None else keep_elements
    backward = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    keep = backward and hidden.shape[0] * weight.shape[0] <= budget
    return _LinearTokenLogps.apply(hidden, weight, labels, chunk_rows, keep)
