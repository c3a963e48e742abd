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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def length_buckets(lengths: list[int], batch_tokens: int, max_batch: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length under a padded-token budget.

    Sorting by length first keeps padding small: a batch costs ``len(batch) * max_len``
    tokens, and neighbours in sorted order have nearly equal lengths. Returns lists of
    indices into ``lengths``; every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and (new_max * (len(cur) + 1) > batch_tokens or (max_batch and len(cur) >= max_batch)):
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(i)
        cur_max = new_max
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


@dataclass
class LogpOutput:
    logps: torch.Tensor  # [B] float32, sum of response-token log-probs
    num_tokens: torch.Tensor  # [B] long, response tokens counted
    entropy: torch.Tensor | None = None  # [B] float32, mean per-token entropy of pi over the response
    embedding: torch.Tensor | None = None  # [B, H] float32, mean of last hidden states over response tokens


def sequence_logps(
    model,
    batch: dict,
    *,
    with_entropy: bool = False,
    with_embedding: bool = False,
) -> LogpOutput:
    """Summed response log-probs of a collated batch (gradients flow if enabled).

    logits[:, t] predicts token t+1, so the log-prob of token t comes from logits[:, t-1];
    response_mask is shifted the same way.
    """
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=with_embedding,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # [B, T-1, V]
    labels = batch["input_ids"][:, 1:]  # [B, T-1]
    mask = batch["response_mask"][:, 1:]  # [B, T-1]
    logp_all = F.log_softmax(logits, dim=-1)
    token_logp = torch.gather(logp_all, 2, labels.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    token_logp = token_logp.masked_fill(~mask, 0.0)
    n = mask.sum(-1)
    res = LogpOutput(logps=token_logp.sum(-1), num_tokens=n)
    if with_entropy:
        ent = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~mask, 0.0)  # [B, T-1]
        res.entropy = ent.sum(-1) / n.clamp(min=1)
    if with_embedding:
        h = out.hidden_states[-1].float()  # [B, T, H]; position t's state predicts t+1
        m = batch["response_mask"].unsqueeze(-1).float()
        res.embedding = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return res


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
) -> tuple[list[float], list[int]]:
    """Log-probs of many (prompt, completion, finish_reason) rows, length-bucketed.

    Returns (logps, num_tokens) in the order of ``rows``.
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
    batches = length_buckets([len(e.input_ids) for e in encoded], batch_tokens, max_batch)
    for idx in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id, device)
        out = sequence_logps(model, batch)
        for j, i in enumerate(idx):
            logps[i] = float(out.logps[j])
            ntok[i] = int(out.num_tokens[j])
    return logps, ntok
