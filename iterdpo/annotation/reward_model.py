"""A scalar reward model as annotator: any ``AutoModelForSequenceClassification`` with
``num_labels = 1`` (Skywork-Reward, ArmoRM's scalar head, a Bradley-Terry RM of your own).

``compare(x, a, b) = r(x, a) - r(x, b)``, so pairs are oriented by score and
``annotate.tie_threshold`` decides what counts as a tie.

Rendering: the RM's own tokenizer and chat template, never the policy's. With a template
the conversation ``[user: x, assistant: y]`` is rendered by ``apply_chat_template``;
without one, the text is ``x + "\\n" + y`` tokenised with the tokenizer's special tokens.
A conversation longer than ``max_length`` tokens keeps its *right* end (the response is
what is scored; the classifier reads the last token).

Each distinct (prompt, response) is scored once (a response takes part in several
candidate pairs), in length-bucketed batches of at most ``batch_tokens`` padded tokens.
With ``sharded=True`` and ``torch.distributed`` initialised, rank r scores every
world_size-th conversation and the scores are all-gathered, so every rank returns the full
list: only for callers that run on every rank. The loop's annotate and evaluate stages run on
rank 0 alone, so the default scores everything in this process (sharding there waited forever
in the all-gather for ranks that sit at the stage's barrier).
"""

from __future__ import annotations

import torch


class RewardModelAnnotator:
    name = "reward_model"

    def __init__(self, path: str, *, batch_tokens: int = 8192, max_length: int = 1024, dtype: str = "float32",
                 device: str | None = None, progress: bool = True, sharded: bool = False):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.path = path
        labels = AutoConfig.from_pretrained(path).num_labels
        if labels != 1:  # checked before loading: a wrong head would be silently re-initialised
            raise ValueError(f"{path}: config.num_labels is {labels}; a reward model needs a scalar head (num_labels=1)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
        # the classifier reads the last non-pad token: it must know which id is padding
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_tokens = batch_tokens
        self.max_length = max_length
        self.progress = progress
        self.sharded = sharded

    def tokenize(self, prompt: str, response: str) -> list[int]:
        """Token ids of one conversation, rendered with the RM's own chat template if it has one."""
        tok = self.tokenizer
        if tok.chat_template:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=True
            )
            if not isinstance(ids, list):  # a BatchEncoding for some tokenizers
                ids = ids["input_ids"]
        else:
            ids = tok(prompt + "\n" + response)["input_ids"]
        return list(ids[-self.max_length:])

    def pad(self, encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask``, both [B, T] (T the longest), on CPU."""
        T = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), T), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(encoded), T), dtype=torch.long)
        for j, e in enumerate(encoded):
            ids[j, : len(e)] = torch.tensor(e)
            attn[j, : len(e)] = 1
        return ids, attn

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """r(x, y) of each (prompt, response), in input order; duplicates scored once."""
        from tqdm.auto import tqdm

        from iterdpo.logprobs import length_buckets

        uniq = list(dict.fromkeys(zip(prompts, responses, strict=True)))
        rank, world = 0, 1
        if self.sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        mine = uniq[rank::world]
        self.last_scored = len(mine)  # conversations this process ran through the model
        encoded = [self.tokenize(x, y) for x, y in mine]
        scores = [0.0] * len(mine)
        batches = length_buckets([len(e) for e in encoded], self.batch_tokens)
        for idx in tqdm(batches, desc="reward model", disable=not self.progress or not batches, leave=False):
            ids, attn = self.pad([encoded[i] for i in idx])
            logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits  # [B, 1]
            for j, i in enumerate(idx):
                scores[i] = float(logits[j, 0].float())
        table = dict(zip(mine, scores, strict=True))
        if world > 1:
            parts: list[dict | None] = [None] * world
            torch.distributed.all_gather_object(parts, table)
            for p in parts:
                table.update(p)
        return [table[(x, y)] for x, y in zip(prompts, responses, strict=True)]

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        """r(x, a) - r(x, b) per pair (positive prefers a)."""
        n = len(prompts)
        s = self.score(prompts + prompts, a + b)
        return [s[i] - s[n + i] for i in range(n)]
