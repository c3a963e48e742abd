"""Build (once, then cache) the world task: a pretrained-then-SFT small Llama, prompts,
a biased offline preference set and a gold reward model (task: :mod:`iterdpo.toy.world_task`).

``ensure_world(seed)`` returns the cache folder::

    <cache>/world-v2-seed<seed>/          (world-v2-<size>-seed<seed> for other sizes)
      sft/                   tokenizer + LlamaForCausalLM: pretrained, then SFT warm-up (save_pretrained)
      gold_rm/               tokenizer + LlamaForSequenceClassification (num_labels=1), Bradley-Terry on gold labels
      prompts_train.jsonl    1744 prompts (fixed split, same for every seed)
      prompts_eval.jsonl     200 held-out prompts
      offline.jsonl          one pair per train prompt, biased annotator (length_bias 0.3, noise 0)
      offline_clean.jsonl    the same pairs labelled by gold alone (length_bias 0, noise 0)
      build.json             build stats: losses, SFT gold/length spread, RM accuracy, seconds

Stages (sizes of ``SIZES['full']``):

1. tokenizer: byte-level BPE (asks for 1024, the corpus fills 778: ~1.1 tokens per word) with
   the toy's chat template (:func:`iterdpo.toy.build.build_tokenizer`);
2. pretraining: next-token loss on a synthetic corpus (prompts, "the garden has rose and
   soil" association lines, warm-up-style responses), plain text without the template;
3. SFT warm-up (:func:`iterdpo.toy.build.warm_up`) on (prompt, response) pairs of widely
   varying gold reward and length (4-40 words, :func:`world_task.sft_response`);
4. gold reward model: the pretrained trunk + a scalar head, trained with the Bradley-Terry
   loss -log sigmoid(r(x, y_w) - r(x, y_l)) on pairs of train prompts labelled by gold;
   build.json records its held-out pairwise accuracy and Spearman rho against gold.

Builds are deterministic for a seed and serialised by a file lock (as ``ensure_toy``).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

from iterdpo.toy import world_task as task
from iterdpo.toy.build import build_tokenizer, cache_root, cached_build, warm_up

VERSION = "world-v2"
SIZES: dict[str, dict] = {
    "full": dict(hidden=128, layers=2, vocab=1024, pretrain_steps=300, pretrain_batch=32, sft_steps=500,
                 sft_examples=8000, rm_pairs=4000, rm_steps=200, rm_batch=32, rm_eval_pairs=500),
    "tiny": dict(hidden=32, layers=1, vocab=512, pretrain_steps=8, pretrain_batch=8, sft_steps=8,
                 sft_examples=300, rm_pairs=64, rm_steps=4, rm_batch=8, rm_eval_pairs=40),
}


def build_threads() -> int:
    """Torch threads of the build: $ITERDPO_BUILD_THREADS, else 1 on a busy machine (load >= cores:
    oversubscribed OpenMP threads spin and ran 3-8x slower here), else every core."""
    if os.environ.get("ITERDPO_BUILD_THREADS"):
        return int(os.environ["ITERDPO_BUILD_THREADS"])
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores else cores


def world_dir(seed: int = 0, size: str = "full") -> Path:
    return cache_root() / (f"{VERSION}-seed{seed}" if size == "full" else f"{VERSION}-{size}-seed{seed}")


def _model(tokenizer, seed: int, hidden: int, layers: int, cls: str = "causal", num_labels: int = 1):
    """A small Llama (head_dim 32: vLLM needs >= 32); ``cls='seq'`` gives a scalar-head classifier."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, num_labels=num_labels,
    )
    return LlamaForCausalLM(cfg) if cls == "causal" else LlamaForSequenceClassification(cfg)


def corpus_lines(rng: random.Random, prompts: list[dict], count: int) -> list[str]:
    """Synthetic pretraining text: prompts, topic-detail association lines and warm-up-style answers."""
    lines = []
    topics = list(task.TOPICS)
    for _ in range(count):
        u = rng.random()
        if u < 0.2:
            lines.append(rng.choice(prompts)["prompt"])
        elif u < 0.5:
            t = rng.choice(topics)
            ds = rng.sample(task.TOPICS[t], rng.randint(2, 4))
            tone = rng.sample(task.POSITIVE if rng.random() < 0.5 else task.NEGATIVE, rng.randint(0, 2))
            lines.append(f"the {t} has " + " and ".join(ds) + (" , " + " ".join(tone) if tone else "") + " .")
        else:
            p = rng.choice(prompts)
            lines.append(p["prompt"] + " " + task.sft_response(rng, p))
    return lines


def pretrain(model, tokenizer, lines: list[str], *, seed: int, steps: int, batch: int, lr: float) -> list[float]:
    """Next-token cross-entropy on plain text lines (+ EOS), right-padded batches."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    enc = [tokenizer(line)["input_ids"][:127] + [tokenizer.eos_token_id] for line in lines]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="world: pretrain", leave=False):
        rows = rng.sample(enc, batch)
        T = max(map(len, rows))
        ids = torch.full((batch, T), tokenizer.pad_token_id)
        labels = torch.full((batch, T), -100)
        attn = torch.zeros((batch, T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def gold_pairs(rng: random.Random, prompts: list[dict], count: int) -> list[tuple[str, str, str]]:
    """(prompt, better, worse) by gold: two warm-up-style answers with different gold rewards."""
    out = []
    while len(out) < count:
        p = rng.choice(prompts)
        a, b = task.sft_response(rng, p), task.sft_response(rng, p)
        ga, gb = task.gold_reward(p["prompt"], a), task.gold_reward(p["prompt"], b)
        if ga != gb:
            out.append((p["prompt"], a, b) if ga > gb else (p["prompt"], b, a))
    return out


def _rm_batch(tokenizer, texts: list[tuple[str, str]]):
    """Right-padded ids and mask of chat-rendered conversations (as RewardModelAnnotator renders them)."""
    import torch

    enc = []
    for x, y in texts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": x}, {"role": "assistant", "content": y}], tokenize=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        enc.append(list(ids)[-256:])
    T = max(map(len, enc))
    ids = torch.full((len(enc), T), tokenizer.pad_token_id)
    attn = torch.zeros((len(enc), T), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        attn[i, : len(e)] = 1
    return ids, attn


def train_reward_model(rm, tokenizer, pairs: list[tuple[str, str, str]], *, seed: int, steps: int, batch: int, lr: float) -> list[float]:
    """Bradley-Terry: minimise -log sigmoid(r(x, y_w) - r(x, y_l)) over batches of pairs."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rm.train()
    losses = []
    for _ in tqdm(range(steps), desc="world: reward model", leave=False):
        rows = rng.sample(pairs, batch)
        ids, attn = _rm_batch(tokenizer, [(x, w) for x, w, _ in rows] + [(x, lo) for x, _, lo in rows])
        r = rm(input_ids=ids, attention_mask=attn).logits[:, 0]  # [2B]
        loss = -F.logsigmoid(r[:batch] - r[batch:]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _rm_scores(rm, tokenizer, texts: list[tuple[str, str]], batch: int = 64) -> list[float]:
    import torch

    rm.eval()
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids, attn = _rm_batch(tokenizer, texts[i: i + batch])
            out += rm(input_ids=ids, attention_mask=attn).logits[:, 0].tolist()
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _build(dest: Path, seed: int, size: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from iterdpo.evaluation import pearson, spearman

    z = SIZES[size]
    start = time.time()
    load_start = list(os.getloadavg())
    torch.manual_seed(seed)
    train, held_out = task.split_prompts()
    rng = random.Random(seed)
    timings = {}

    # 1. data and tokenizer
    examples = [(p["prompt"], task.sft_response(rng, p)) for p in (rng.choice(train) for _ in range(z["sft_examples"]))]
    lines = corpus_lines(rng, train, max(z["pretrain_steps"] * z["pretrain_batch"] // 2, 200))
    vocab_text = [" ".join([*task.TOPICS, *(d for ds in task.TOPICS.values() for d in ds), *task.POSITIVE, *task.NEGATIVE, *task.FILLER])] * 20
    tokenizer = build_tokenizer([p["prompt"] for p in task.all_prompts()] + lines[:3000] + vocab_text, vocab_size=z["vocab"])
    torch.set_num_threads(build_threads())

    # 2. pretraining on plain text
    t0 = time.time()
    model = _model(tokenizer, seed, z["hidden"], z["layers"])
    pre_losses = pretrain(model, tokenizer, lines, seed=seed, steps=z["pretrain_steps"], batch=z["pretrain_batch"], lr=3e-3)
    timings["pretrain_seconds"] = round(time.time() - t0, 1)
    trunk = {k: v.clone() for k, v in model.model.state_dict().items()}

    # 3. SFT warm-up
    t0 = time.time()
    sft_losses = warm_up(model, tokenizer, examples, seed=seed, steps=z["sft_steps"], lr=3e-3)
    timings["sft_seconds"] = round(time.time() - t0, 1)
    sft = dest / "sft"
    model.save_pretrained(sft)
    tokenizer.save_pretrained(sft)
    AutoModelForCausalLM.from_pretrained(sft)  # reload: a model never saved has an empty _name_or_path
    AutoTokenizer.from_pretrained(sft)

    # 4. gold reward model on the pretrained trunk
    t0 = time.time()
    rm = _model(tokenizer, seed, z["hidden"], z["layers"], cls="seq")
    rm.model.load_state_dict(trunk)
    rm_rng = random.Random(seed + 1)
    rm_losses = train_reward_model(rm, tokenizer, gold_pairs(rm_rng, train, z["rm_pairs"]), seed=seed, steps=z["rm_steps"], batch=z["rm_batch"], lr=1e-3)
    test = gold_pairs(rm_rng, held_out, z["rm_eval_pairs"])
    scores = _rm_scores(rm, tokenizer, [(x, w) for x, w, _ in test] + [(x, lo) for x, _, lo in test])
    n = len(test)
    rm_acc = sum(scores[i] > scores[n + i] for i in range(n)) / n
    golds = [task.gold_reward(x, w) for x, w, _ in test] + [task.gold_reward(x, lo) for x, _, lo in test]
    timings["rm_seconds"] = round(time.time() - t0, 1)
    gold_rm = dest / "gold_rm"
    rm.save_pretrained(gold_rm)
    tokenizer.save_pretrained(gold_rm)
    AutoModelForSequenceClassification.from_pretrained(gold_rm)

    # 5. prompts and offline preference files
    for name, rows in (("prompts_train.jsonl", train), ("prompts_eval.jsonl", held_out)):
        _write_jsonl(dest / name, [{"prompt": r["prompt"], "source": f"world:{r['kind']}"} for r in rows])
    _write_jsonl(dest / "offline.jsonl", task.offline_pairs(seed, length_bias=0.3, noise=0.0))
    _write_jsonl(dest / "offline_clean.jsonl", task.offline_pairs(seed, length_bias=0.0, noise=0.0))

    sft_gold = [task.gold_reward(x, y) for x, y in examples]
    sft_len = [len(task.words_of(y)) for _, y in examples]
    mean_g = sum(sft_gold) / len(sft_gold)
    stats = {
        "seed": seed,
        "size": size,
        **{k: v for k, v in z.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "tokens_per_word": round(sum(len(tokenizer(y)["input_ids"]) for _, y in examples[:500]) / max(sum(sft_len[:500]), 1), 3),
        "pretrain_loss_first": pre_losses[0],
        "pretrain_loss_last": sum(pre_losses[-10:]) / len(pre_losses[-10:]),
        "sft_loss_first": sft_losses[0],
        "sft_loss_last": sum(sft_losses[-10:]) / len(sft_losses[-10:]),
        "sft_data_gold_mean": mean_g,
        "sft_data_gold_std": math.sqrt(sum((g - mean_g) ** 2 for g in sft_gold) / len(sft_gold)),
        "sft_data_mean_words": sum(sft_len) / len(sft_len),
        "sft_data_gold_length_pearson": pearson(sft_gold, sft_len),
        "rm_loss_first": rm_losses[0],
        "rm_loss_last": sum(rm_losses[-10:]) / len(rm_losses[-10:]),
        "rm_heldout_pairs": n,
        "rm_heldout_pairwise_accuracy": rm_acc,
        "rm_heldout_spearman": spearman(scores, golds),
        **timings,
        "build_seconds": round(time.time() - start, 1),
        "threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
    }
    (dest / "build.json").write_text(json.dumps(stats, indent=2))
    return stats


def ensure_world(seed: int = 0, size: str = "full") -> Path:
    """Return the world's cache folder, building it first if needed (at most once at a time)."""
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; available: {sorted(SIZES)}")
    return cached_build(world_dir(seed, size), f"{VERSION}.lock", lambda tmp: _build(tmp, seed, size), f"the world ({size})")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build (or find) the cached world task and print its folder.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    a = ap.parse_args()
    print(ensure_world(a.seed, a.size))
