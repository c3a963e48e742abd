"""The one routine that tokenises (prompt, response) pairs and computes response log-probs.

Scoring, training and the samplers' prompt rendering all go through :func:`encode` and
:func:`sequence_logps`, so the reference log-probs stored by scoring are exactly what
training would compute with the same weights (DPO loss = log 2 at step one).

Tokenisation contract:

- prompt ids = ``apply_chat_template([{"role": "user", "content": prompt}],
  add_generation_prompt=True)``; if longer than ``max_prompt_length`` the *left* end is cut
  (the end of a prompt is what the response answers).
- response ids = ``tokenizer(completion, add_special_tokens=False)`` + ``[eos]`` when the
  sampler stopped on EOS (``finish_reason == "stop"``); cut at the right end so that
  prompt + response <= ``max_length``.
- ``logp(y|x) = sum_t log pi(y_t | x, y_<t)`` over response tokens only, accumulated in
  float32 whatever the model's dtype.

Batch invariance in low precision. Scoring computes a row's log-prob in one padded batch,
training in another, and training's first-step check compares the two. In bfloat16 that
only holds if a row's result does not depend on the padding around it. Measured on
SmolLM2-135M-Instruct in bf16 on CPU (32 rows of 5-60 words, ``OMP_NUM_THREADS=1``): with
PyTorch's SDPA attention a row's summed log-prob moves by up to 0.32 nats (0.45 with 5
pad tokens, 72 % of rows by more than 1e-3) between batch size 1 and a right-padded batch:
without padding transformers calls SDPA with ``is_causal`` and no mask, with padding with
an explicit mask, and the CPU kernels split the key axis into blocks whose size depends on
the padded length, so the bf16 rounding differs (forcing the mask on every call does not
help: 0.37-0.50 nats). Position ids and masking are right (eager attention on the same
batches differs by 6e-5 nats; with no padding at all, 1 and 4 rows agree exactly), and the
LM head is not the cause (an fp32 head leaves 0.23 nats). Eager attention on CPU is
padding-invariant, so :func:`attention_implementation` picks it for low-precision CPU
models; :func:`load_causal_lm` is the one loader scoring and training use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iterdpo.lm_head import fused_token_logps, token_logps

LOW_PRECISION = ("bfloat16", "float16")


def attention_implementation(dtype: str, device_type: str) -> str | None:
    """The attention kernel for log-probs that must not depend on a row's padding.

    ``"eager"`` for a bfloat16/float16 model on CPU (SDPA's CPU kernels round differently
    with and without padding, see the module docstring); None (transformers' default, SDPA)
    otherwise: in float32 the padding effect is ~1e-6 nats, and on CUDA eager attention would
    store a [B, heads, T, T] tensor per layer (``benchmarks/gpu/check.sh`` measures the SDPA
    gap there).
    """
    return "eager" if dtype in LOW_PRECISION and device_type == "cpu" else None


def load_causal_lm(path: str, dtype: str = "float32", device=None, *, move: bool = True):
    """``AutoModelForCausalLM.from_pretrained`` with the dtype named by ``dtype`` and the
    padding-invariant attention of :func:`attention_implementation` for ``device`` (None: CPU).
    ``move=False`` leaves the model where from_pretrained put it (a launcher places it)."""
    from transformers import AutoModelForCausalLM

    device_type = torch.device(device).type if device is not None else "cpu"
    attn = attention_implementation(dtype, device_type)
    kw = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kw)
    return model.to(device) if device is not None and move else model


def check_tolerance(base: float, dtype: str, num_tokens: torch.Tensor) -> torch.Tensor:
    """Per-row tolerance [B] of training's first-step check: ``base + num_tokens * eps(dtype) / 128``.

    ``base`` (``train.check_tolerance``) bounds what is independent of length; the second term
    lets the float rounding of a padding-invariant but not bit-identical computation grow with
    the number of summed tokens: 6.1e-5 nats per token in bfloat16 (eps 2^-7), 7.6e-6 in
    float16, 9e-10 in float32. Measured in bf16 on CPU with :func:`load_causal_lm` (rows alone vs
    in padded batches): at most 6e-5 nats on 5-60-word SmolLM2 rows and on the tiny toy model,
    about 1.7e-6 per token, 35x under the per-token term; a one-space chat-template change
    (toy) or a one-word system-prompt change (SmolLM2) moves rows by 0.41-0.42 nats, 150x over
    the bound (tests/training/test_bf16.py).
    """
    eps = torch.finfo(getattr(torch, dtype)).eps
    return base + num_tokens.float() * (eps / 128)


@dataclass
class Encoded:
    input_ids: list[int]  # prompt ids + response ids
    prompt_len: int  # response tokens are input_ids[prompt_len:]


def render_prompt(tokenizer, prompt: str, max_prompt_length: int) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if not isinstance(ids, list):  # transformers returns a BatchEncoding for some tokenizers
        ids = ids["input_ids"]
    return list(ids[-max_prompt_length:])


def encode(
    tokenizer,
    prompt: str,
    completion: str,
    *,
    stopped: bool,
    max_prompt_length: int,
    max_length: int,
    prompt_ids: list[int] | None = None,
) -> Encoded:
    """Token ids of one (prompt, response); ``stopped`` appends EOS (the sampler emitted it)."""
    p = prompt_ids if prompt_ids is not None else render_prompt(tokenizer, prompt, max_prompt_length)
    r = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if stopped:
        r = r + [tokenizer.eos_token_id]
    r = r[: max(0, max_length - len(p))]
    return Encoded(input_ids=p + r, prompt_len=len(p))


def length_buckets(
    lengths: list[int], batch_tokens: int, max_batch: int | None = None, max_pad: float | None = None
) -> list[list[int]]:
    """Group indices into batches of similar length under a padded-token budget.

    Sorting by length first keeps padding small: a batch costs ``len(batch) * max_len``
    tokens, and neighbours in sorted order have nearly equal lengths. ``max_pad`` also
    closes a batch before its padded tokens exceed ``(1 + max_pad)`` times its real tokens
    (where arithmetic, not batch size, is the bottleneck, as on a CPU, padding is pure
    waste). Returns lists of indices into ``lengths``; every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur, cur_max, cur_sum = [], [], 0, 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        padded = new_max * (len(cur) + 1)
        if cur and (
            padded > batch_tokens
            or (max_batch and len(cur) >= max_batch)
            or (max_pad is not None and padded > (1 + max_pad) * (cur_sum + lengths[i]))
        ):
            batches.append(cur)
            cur, new_max, cur_sum = [], lengths[i], 0
        cur.append(i)
        cur_max = new_max
        cur_sum += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def collate(encoded: list[Encoded], pad_id: int, device: torch.device | str = "cpu") -> dict:
    """Right-pad a list of Encoded into tensors.

    Returns input_ids [B, T], attention_mask [B, T] and response_mask [B, T], where
    response_mask[b, t] = 1 iff token t of row b is a response token (the label
    positions; the first token is never one because every prompt is non-empty).
    """
    T = max(len(e.input_ids) for e in encoded)
    B = len(encoded)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    resp = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[b, :n] = 1
        resp[b, e.prompt_len : n] = True
    return {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "response_mask": resp.to(device),
    }


PACK_TOKENS = 512  # a packed row holds at most this many tokens (or one longer group)


def collate_packed(encoded: list[Encoded], pad_id: int, device: torch.device | str = "cpu",
                   capacity: int = PACK_TOKENS) -> dict:
    """Pack sequences end to end into rows instead of padding each to the longest, with one copy
    of each prompt that several sequences share.

    Sequences whose prompt ids are equal (a DPO pair's chosen and rejected) form a *group*
    laid out as ``[prompt | response_1 | response_2 | ...]``: each response sees the prompt
    and itself, never another response, and its position ids continue from the prompt's
    length, so its log-prob is the one it has alone (a DPO batch of 2 pairs with 11-token
    prompts and 4-60-word responses has 7 % fewer tokens, one with 42-token prompts and
    28-token responses 30 %). Groups are placed first-fit by decreasing size into rows of at
    most ``max(capacity, largest group)`` tokens, then the rows are right-padded to the longest.

    Returns, with R rows of S tokens and N response tokens (labels) in all:
    ``input_ids``, ``position_ids`` [R, S]; ``attend`` [R, S, S] bool (query token attends key
    token: causal inside a group's prompt and response chains; a padding token attends only
    itself); ``labels`` [N] (the response token ids), ``label_positions`` [N] (the flat index
    in R*S of the position whose logits predict each label: the previous token of its
    response, or the prompt's last token for a response's first), ``label_sequences`` [N]
    (which of the ``len(encoded)`` sequences each label belongs to) and ``num_sequences``.
    Padding costs every layer's FLOPs and activations: in 2-pair DPO batches of 4-60-word
    responses it was 30 % of the padded tokens (benchmarks/real_training.md).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(tuple(e.input_ids[: e.prompt_len]), []).append(i)
    units = [(prompt, members, len(prompt) + sum(len(encoded[i].input_ids) - len(prompt) for i in members))
             for prompt, members in groups.items()]
    cap = max(capacity, max(size for _, _, size in units))
    rows: list[list[int]] = []
    loads: list[int] = []
    for u in sorted(range(len(units)), key=lambda u: (-units[u][2], u)):
        size = units[u][2]
        r = next((k for k, load in enumerate(loads) if load + size <= cap), None)
        if r is None:
            rows.append([])
            loads.append(0)
            r = len(rows) - 1
        rows[r].append(u)
        loads[r] += size
    R, S = len(rows), max(loads)
    ids = torch.full((R, S), pad_id, dtype=torch.long)
    pos = torch.zeros((R, S), dtype=torch.long)
    attend = torch.zeros((R, S, S), dtype=torch.bool)
    labels: list[int] = []
    label_positions: list[int] = []
    label_sequences: list[int] = []
    for r, members in enumerate(rows):
        off = 0
        for u in members:
            prompt, seqs, _ = units[u]
            P = len(prompt)
            ids[r, off : off + P] = torch.tensor(prompt, dtype=torch.long)
            pos[r, off : off + P] = torch.arange(P)
            attend[r, off : off + P, off : off + P] = torch.ones(P, P, dtype=torch.bool).tril()
            q = off + P
            for i in seqs:
                response = encoded[i].input_ids[P:]
                n = len(response)
                ids[r, q : q + n] = torch.tensor(response, dtype=torch.long)
                pos[r, q : q + n] = torch.arange(P, P + n)
                attend[r, q : q + n, off : off + P] = True
                attend[r, q : q + n, q : q + n] = torch.ones(n, n, dtype=torch.bool).tril()
                labels += response
                label_positions += ([r * S + off + P - 1] if n else []) + [r * S + q + k for k in range(n - 1)]
                label_sequences += [i] * n
                q += n
            off = q
        tail = torch.arange(off, S)
        attend[r, tail, tail] = True
        pos[r, off:] = torch.arange(S - off)
    return {
        "input_ids": ids.to(device),
        "position_ids": pos.to(device),
        "attend": attend.to(device),
        "labels": torch.tensor(labels, dtype=torch.long).to(device),
        "label_positions": torch.tensor(label_positions, dtype=torch.long).to(device),
        "label_sequences": torch.tensor(label_sequences, dtype=torch.long).to(device),
        "num_sequences": len(encoded),
    }


@dataclass
class LogpOutput:
    logps: torch.Tensor  # [B] float32, sum of response-token log-probs
    num_tokens: torch.Tensor  # [B] long, response tokens counted
    entropy: torch.Tensor | None = None  # [B] float32, mean per-token entropy of pi over the response
    embedding: torch.Tensor | None = None  # [B, H] float32, mean of last hidden states over response tokens


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive attention mask [B, 1, Q, K] in ``dtype`` from a bool ``allowed`` [B, Q, K]
    (query attends key): 0 where allowed, the dtype's most negative value elsewhere. Passed to
    transformers as a 4D ``attention_mask``, it reaches eager attention and SDPA as it is."""
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return blocked.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _attention_mask(key_mask: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``attention_mask`` of a forward whose ``queries`` tokens are the last of the
    ``K = key_mask.shape[1]`` keys (a whole right-padded batch: Q = K; after a KV cache: Q < K).

    ``key_mask`` [B, K] (1 = a real token) is returned as it is in float32. In bfloat16/float16
    it becomes the explicit causal mask [B, 1, Q, K] (query i attends key k iff key k is real
    and k <= K - Q + i), even for a batch without padding: transformers drops an all-ones mask
    and SDPA then runs its unmasked causal kernel (flash attention on CUDA), while a batch with
    padding runs a masked kernel, and the two can round differently in low precision (a row
    alone vs in a padded batch differed by up to 0.295 nats on an H200, random 1.24 B Llama,
    ``benchmarks/gpu/check.sh``; the kernel switch is the likely cause, not isolated there).
    Scoring's batches of equal-length rows and training's padded ones would then disagree at
    training's start check. With the mask always explicit, every low-precision forward of
    scoring and training runs the masked kernel (the check's padding step measures whether that
    kernel is padding-invariant on CUDA). On CPU the loader picks eager attention in low
    precision, to which this is the mask transformers builds itself. A 4D mask replaces the
    model's own, so a sliding-window model is exact here (and in packed batches) only for
    sequences within its window.
    """
    if str(dtype).removeprefix("torch.") not in LOW_PRECISION:
        return key_mask
    K = key_mask.shape[1]
    key_index = torch.arange(K, device=key_mask.device)
    query_index = torch.arange(K - queries, K, device=key_mask.device)
    causal = key_index[None, :] <= query_index[:, None]  # [Q, K]
    return _additive_mask(causal[None] & key_mask.bool()[:, None, :], dtype)


def _plain_head_weight(model) -> torch.Tensor | None:
    """The LM head's weight [V, H] when :func:`sequence_logps` may apply the head itself: a
    plain bias-free ``nn.Linear`` (not a PEFT-wrapped one), fully present on this rank (a
    ZeRO-3 partition is not: its parameters carry ``ds_id``), and no logit scaling or
    soft-capping in the config. None: let the model apply its own head."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):  # DDP / DeepSpeed engine
        inner = inner.module
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    weight = head.weight
    if hasattr(weight, "ds_id") or weight.dim() != 2 or weight.numel() == 0:
        return None
    config = getattr(inner, "config", None)
    if any(getattr(config, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    return weight


def sequence_logps(
    model,
    batch: dict,
    *,
    with_entropy: bool = False,
    with_embedding: bool = False,
    fused_head: bool = True,
) -> LogpOutput:
    """Summed response log-probs of a collated batch (gradients flow if enabled).

    logits[:, t] predicts token t+1, so the log-prob of token t comes from position t-1;
    response_mask is shifted the same way (a packed batch from :func:`collate_packed` names
    each label's source position itself: a shared prompt's last token predicts the first
    token of every response). Two routes to the same numbers:

    - fused (a plain LM head, no entropy wanted): the model runs with ``logits_to_keep=1``
      and its final hidden states [B, T, H] are gathered at the N response-label positions
      only, then :func:`fused_token_logps` applies the head chunk by chunk: no padding or
      prompt position costs LM-head FLOPs, and no [B, T, V] logits exist in forward or
      backward (at SmolLM2's vocabulary, 49,152, each logit row is 192 KiB in float32).
    - otherwise (or ``fused_head=False``) the model's own head runs from the batch's first
      response position on (``logits_to_keep``) and :func:`token_logps` takes the log-probs
      of its logits.
    """
    ids, resp = batch["input_ids"], batch.get("response_mask")  # a packed batch has no response mask
    T = ids.shape[1]
    packed = "position_ids" in batch
    if packed and (with_entropy or with_embedding):
        raise ValueError("sequence_logps: entropy and embeddings need a padded batch (collate), not a packed one")
    weight = _plain_head_weight(model) if fused_head and not with_entropy else None
    # the hidden states' dtype (the embedding's, every causal LM's first parameter; a LoRA adapter's may be wider)
    dtype = weight.dtype if weight is not None else next(model.parameters()).dtype
    if weight is not None or packed:
        if packed:  # labels, where their logits come from, their sequences (collate_packed)
            inputs = {"position_ids": batch["position_ids"], "attention_mask": _additive_mask(batch["attend"], dtype)}
            labels, sources = batch["labels"], batch["label_positions"]
            rows, n_rows = batch["label_sequences"], batch["num_sequences"]
        else:
            inputs = {"attention_mask": _attention_mask(batch["attention_mask"], T, dtype)}
            label_mask = resp[:, 1:]  # [B, T-1]: position t-1 predicts response token t
            where = label_mask.nonzero()  # [N, 2]: (batch row, position predicting the label)
            sources, rows, n_rows = where[:, 0] * T + where[:, 1], where[:, 0], ids.shape[0]  # flat sources [N]
            labels = ids[:, 1:][label_mask]  # [N]
        if weight is not None:
            out = model(input_ids=ids, **inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
            hidden = out.hidden_states[-1]  # [R, T, H], after the final norm: the head's input
            del out
            token_logp, _ = fused_token_logps(hidden.flatten(0, 1)[sources], weight, labels)
        else:  # packed, with a head only the model can apply (PEFT-wrapped, ZeRO-3 partitioned)
            logits = model(input_ids=ids, **inputs, use_cache=False).logits.flatten(0, 1)[sources]  # [N, V]
            token_logp, _ = token_logps(logits[None], labels[None])
            token_logp = token_logp[0]
        logps = torch.zeros(n_rows, dtype=torch.float32, device=ids.device).index_add(0, rows, token_logp)
        res = LogpOutput(logps=logps, num_tokens=torch.bincount(rows, minlength=n_rows))
        if with_embedding:
            m = resp.unsqueeze(-1).float()
            res.embedding = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
        return res
    has = resp.any(-1)
    # first label position of the batch (>= 1: prompts are non-empty); T-1 if no row has a response
    first = int(resp[has].float().argmax(-1).min()) if bool(has.any()) else T - 1
    first = max(first, 1)
    out = model(
        input_ids=ids,
        attention_mask=_attention_mask(batch["attention_mask"], T, dtype),
        output_hidden_states=with_embedding,
        use_cache=False,
        logits_to_keep=T - first + 1,  # logits of positions first-1 .. T-1
    )
    logits = out.logits  # [B, T-first+1, V]: positions first-1 .. T-1 (the last is not scored)
    labels = ids[:, first:]  # [B, T-first]
    mask = resp[:, first:]
    hidden = out.hidden_states[-1] if with_embedding else None
    del out  # the logits stay alive only as long as the autograd graph needs them
    # the backward may overwrite the logits with their gradient unless the entropy reads them too
    token_logp, lse = token_logps(logits, labels, inplace_grad=not with_entropy)
    logits = logits[:, :-1]
    token_logp = token_logp.masked_fill(~mask, 0.0)
    n = mask.sum(-1)
    res = LogpOutput(logps=token_logp.sum(-1), num_tokens=n)
    if with_entropy:
        # H = lse - sum_v p_v * logit_v, row by row (no [B, T, V] log_softmax)
        ent = torch.cat([
            lse[b : b + 1] - (torch.softmax(c.float(), -1) * c.float()).sum(-1)
            for b, c in enumerate(logits.split(1, dim=0))
        ]).masked_fill(~mask, 0.0)  # [B, T-first]
        res.entropy = ent.sum(-1) / n.clamp(min=1)
    if with_embedding:
        h = hidden.float()  # [B, T, H]; position t's state predicts t+1
        m = resp.unsqueeze(-1).float()
        res.embedding = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return res


@torch.no_grad()
def shared_prompt_logps(
    model,
    prompt_ids: list[int],
    responses: list[list[int]],
    pad_id: int,
    *,
    batch_tokens: int = 1 << 30,
    max_batch: int | None = None,
    max_pad: float | None = None,
) -> tuple[list[float], list[int]]:
    """Summed log-probs of several responses to one prompt, running the prompt once.

    The prompt (length P) goes through the model once with ``use_cache``; its KV cache is
    repeated for the responses, which then run as one right-padded batch [n, R] attending to
    it (the responses are length-bucketed with ``batch_tokens`` counting response tokens,
    ``max_batch`` and ``max_pad`` as in :func:`length_buckets`; each bucket gets its own copy
    of the cache). Cost: P + n*R token-forwards instead of n*(P + R). ``log pi(r_0 | x)`` comes from
    the prompt's last logit, ``log pi(r_t | x, r_<t)`` from the response logits at t-1.
    Equals :func:`sequence_logps` on the concatenated sequences up to float rounding.
    """
    import copy

    device = next(model.parameters()).device
    logps, ntok = [0.0] * len(responses), [0] * len(responses)
    live = [i for i, r in enumerate(responses) if r]  # a response cut to nothing scores 0 over 0 tokens
    if not live:
        return logps, ntok
    P = len(prompt_ids)
    dtype = next(model.parameters()).dtype
    prompt_mask = _attention_mask(torch.ones(1, P, dtype=torch.long, device=device), P, dtype)
    pre = model(input_ids=torch.tensor([prompt_ids], device=device), attention_mask=prompt_mask, use_cache=True, logits_to_keep=1)
    first = pre.logits[:, -1:]  # [1, 1, V]: predicts each response's first token
    buckets = [[live[j] for j in b] for b in length_buckets([len(responses[i]) for i in live], batch_tokens, max_batch, max_pad)]
    for k, idx in enumerate(buckets):
        b, R = len(idx), max(len(responses[i]) for i in idx)
        cache = copy.deepcopy(pre.past_key_values) if k + 1 < len(buckets) else pre.past_key_values
        cache.batch_repeat_interleave(b)  # [1, ...] -> [b, ...] per layer
        ids = torch.full((b, R), pad_id, dtype=torch.long)
        attn = torch.zeros((b, P + R), dtype=torch.long)
        attn[:, :P] = 1
        for j, i in enumerate(idx):
            L = len(responses[i])
            ids[j, :L] = torch.tensor(responses[i], dtype=torch.long)
            attn[j, P : P + L] = 1
        ids, attn = ids.to(device), attn.to(device)
        out = model(input_ids=ids, attention_mask=_attention_mask(attn, R, dtype), past_key_values=cache, use_cache=True)
        logits = torch.cat([first.expand(b, 1, -1), out.logits[:, :-1]], dim=1)  # [b, R, V]
        del out, cache
        tl, _ = token_logps(logits, ids)
        mask = attn[:, P:].bool()
        tl = tl.masked_fill(~mask, 0.0).sum(-1)
        n = mask.sum(-1)
        for j, i in enumerate(idx):
            logps[i], ntok[i] = float(tl[j]), int(n[j])
    return logps, ntok


@torch.no_grad()
def score_logps(
    model,
    tokenizer,
    rows: list[dict],
    *,
    max_prompt_length: int,
    max_length: int,
    batch_tokens: int,
    progress: str | None = None,
    max_batch: int | None = None,
    share_prompts: int = 0,
    max_pad: float | None = None,
) -> tuple[list[float], list[int]]:
    """Log-probs of many (prompt, completion, finish_reason) rows, length-bucketed.

    With ``share_prompts = k >= 2``, the completions of a prompt that has at least k rows
    are scored by :func:`shared_prompt_logps` (the prompt runs once, its KV cache serves
    all of them); the other rows go through length buckets. ``batch_tokens``, ``max_batch``
    and ``max_pad`` bound every batch as in :func:`length_buckets`. Returns (logps,
    num_tokens) in row order.
    """
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    prompt_cache: dict[str, list[int]] = {}
    encoded = []
    for r in rows:
        p = prompt_cache.get(r["prompt"])
        if p is None:
            p = prompt_cache[r["prompt"]] = render_prompt(tokenizer, r["prompt"], max_prompt_length)
        encoded.append(
            encode(
                tokenizer, r["prompt"], r["completion"], stopped=r["finish_reason"] == "stop",
                max_prompt_length=max_prompt_length, max_length=max_length, prompt_ids=p,
            )
        )
    logps = [0.0] * len(rows)
    ntok = [0] * len(rows)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["prompt"], []).append(i)
    shared = [g for g in groups.values() if share_prompts >= 2 and len(g) >= share_prompts]
    rest = sorted(i for g in groups.values() if not (share_prompts >= 2 and len(g) >= share_prompts) for i in g)
    batches = [[rest[j] for j in b] for b in length_buckets([len(encoded[i].input_ids) for i in rest], batch_tokens, max_batch, max_pad)]
    bar = tqdm(total=len(rows), desc=progress, disable=progress is None, leave=False)
    for g in shared:
        p = encoded[g[0]].prompt_len
        resp = [encoded[i].input_ids[p:] for i in g]
        lp, nt = shared_prompt_logps(model, encoded[g[0]].input_ids[:p], resp, tokenizer.pad_token_id,
                                     batch_tokens=batch_tokens, max_batch=max_batch, max_pad=max_pad)
        for j, i in enumerate(g):
            logps[i], ntok[i] = lp[j], nt[j]
        bar.update(len(g))
    for idx in batches:
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id, device)
        out = sequence_logps(model, batch)
        for j, i in enumerate(idx):
            logps[i] = float(out.logps[j])
            ntok[i] = int(out.num_tokens[j])
        bar.update(len(idx))
    bar.close()
    return logps, ntok
