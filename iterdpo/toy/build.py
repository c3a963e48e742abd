"""Build (once, then cache) the toy task's tokenizer, SFT model and prompt files.

``ensure_toy()`` returns the cache folder::

    <cache>/toy-v1/
      sft/                     tokenizer + LlamaForCausalLM after the warm-up (save_pretrained)
      prompts_train.jsonl      832 prompts
      prompts_eval.jsonl       128 held-out prompts
      build.json               build stats

The cache is ``$ITERDPO_CACHE`` or ``~/.cache/iterdpo``. Builds are deterministic for a
given seed and serialised by a file lock, so concurrent processes (ranks of one
``accelerate launch``) build once.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from iterdpo.toy import task

VERSION = "toy-v1"
SPECIAL = ["<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("ITERDPO_CACHE", Path.home() / ".cache" / "iterdpo"))


def build_tokenizer(corpus: list[str], vocab_size: int = 384):
    """A byte-level BPE tokenizer with the chat template, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation; scoring pads by hand on the right
    return fast


def build_model(tokenizer, seed: int, hidden: int = 64, layers: int = 2):
    """A small Llama; head_dim = 32 because vLLM needs head_dim >= 32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(cfg)


def warm_up(model, tokenizer, examples: list[tuple[str, str]], *, seed: int, steps: int, lr: float) -> list[float]:
    """Supervised fine-tuning on (prompt, response) pairs with the shared tokenisation.

    Loss is the mean negative log-likelihood of response tokens (EOS included), the same
    masks as :func:`iterdpo.logprobs.sequence_logps` uses.
    """
    import torch

    from iterdpo.logprobs import collate, encode, sequence_logps

    rng = random.Random(seed)
    enc = [encode(tokenizer, p, r, stopped=True, max_prompt_length=64, max_length=128) for p, r in examples]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        batch = collate(rng.sample(enc, 64), tokenizer.pad_token_id)
        out = sequence_logps(model, batch)
        loss = -(out.logps.sum() / out.num_tokens.sum())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _build(dest: Path, seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    torch.manual_seed(seed)
    train, held_out = task.split_prompts()
    rng = random.Random(seed)
    examples = []
    for _ in range(6000):
        p = rng.choice(train)
        examples.append((p["prompt"], task.sft_response(rng, p["topics"])))
    corpus = [p["prompt"] for p in task.all_prompts()] + [r for _, r in examples[:2000]]
    tokenizer = build_tokenizer(corpus)
    model = build_model(tokenizer, seed)
    losses = warm_up(model, tokenizer, examples, seed=seed, steps=600, lr=3e-3)
    sft = dest / "sft"
    model.save_pretrained(sft)
    tokenizer.save_pretrained(sft)
    # Always reload from disk: a model never saved has an empty _name_or_path.
    AutoModelForCausalLM.from_pretrained(sft)
    AutoTokenizer.from_pretrained(sft)
    for name, rows in (("prompts_train.jsonl", train), ("prompts_eval.jsonl", held_out)):
        with open(dest / name, "w") as f:
            for r in rows:
                f.write(json.dumps({"prompt": r["prompt"], "source": "toy"}) + "\n")
    stats = {
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "sft_loss_first": losses[0],
        "sft_loss_last": sum(losses[-20:]) / 20,
        "build_seconds": round(time.time() - start, 1),
    }
    (dest / "build.json").write_text(json.dumps(stats, indent=2))
    return stats


def cached_build(dest: Path, lock_name: str, build: Callable[[Path], dict], what: str) -> Path:
    """Return ``dest``, first running ``build(tmp)`` into a temporary folder renamed to ``dest``.

    A file lock in ``dest``'s parent serialises builders (the ranks of one launch build
    once); ``build.json``, written last by ``build``, marks a finished build, so a killed
    build leaves only its temporary folder, which the next builder removes.
    """
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    if (dest / "build.json").exists():
        return dest
    with open(root / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "build.json").exists():
            return dest
        tmp = root / f".{dest.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        stats = build(tmp)
        os.replace(tmp, dest)
        print(f"[iterdpo] built {what} in {stats['build_seconds']} s -> {dest}")
    return dest


def ensure_toy(seed: int = 0) -> Path:
    """Return the toy cache folder, building it first if needed (at most once at a time)."""
    return cached_build(cache_root() / f"{VERSION}-seed{seed}", f"{VERSION}.lock", lambda tmp: _build(tmp, seed), "the toy task")
