"""Prompts from a Hugging Face dataset: ``data.prompts: hf:NAME[:SPLIT][?OPTIONS]``.

::

    hf:HuggingFaceH4/ultrafeedback_binarized:train_prefs
    hf:openbmb/UltraFeedback:train?field=instruction
    hf:stanfordnlp/imdb:train?field=text&words=8          prompt = the first 8 words of a review
    hf:/data/my_prompts:train                             a local folder of parquet/jsonl files

NAME is a hub id or a local dataset folder, read with ``datasets.load_dataset`` (imported
here only). OPTIONS (``&``-separated): ``field`` (column holding the prompt, default
``prompt``; text or chat messages), ``config`` (dataset config name), ``words`` (keep the
first N words: prompt prefixes such as IMDB's), ``limit`` (first N rows).

The rows are written once to ``<run dir>/prompts_<which>.jsonl`` and validated by
:func:`iterdpo.records.load_prompts`; later iterations, resumed runs and every rank read
that file, so the hub is needed only at the start of a run.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from urllib.parse import parse_qsl

from iterdpo.records import RecordError

OPTIONS = ("field", "config", "words", "limit")


def parse_spec(spec: str) -> dict:
    """``hf:NAME[:SPLIT][?k=v&...]`` -> {name, split, field, config, words, limit}."""
    if not spec.startswith("hf:"):
        raise RecordError(f"{spec!r}: a hub dataset spec starts with 'hf:'")
    body, _, query = spec[3:].partition("?")
    name, _, split = body.partition(":")
    if not name:
        raise RecordError(f"{spec!r}: no dataset name (expected hf:NAME[:SPLIT][?field=...])")
    out: dict = {"name": name, "split": split or "train", "field": "prompt", "config": None, "words": None, "limit": None}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in OPTIONS:
            raise RecordError(f"{spec!r}: unknown option {key!r}; allowed: {', '.join(OPTIONS)}")
        if key in ("words", "limit"):
            if not value.isdigit() or int(value) < 1:
                raise RecordError(f"{spec!r}: option {key!r} must be a positive integer, got {value!r}")
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _first_words(prompt, n: int):
    if isinstance(prompt, str):
        return " ".join(prompt.split()[:n])
    return prompt  # chats are kept whole


def load_rows(spec: str) -> list[dict]:
    """The dataset's rows as prompt-file rows ({prompt, source[, prompt_id]})."""
    s = parse_spec(spec)
    try:
        import datasets
    except ImportError:
        raise RecordError(f"{spec!r}: reading hub datasets needs the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(s["name"], s["config"], split=s["split"])
    except Exception as e:  # hub unreachable, unknown name or split: say which spec failed
        raise RecordError(f"{spec!r}: could not load dataset {s['name']!r} split {s['split']!r}: {type(e).__name__}: {e}") from None
    if s["field"] not in ds.column_names:
        raise RecordError(f"{spec!r}: no column {s['field']!r}; columns: {ds.column_names} (choose one with ?field=NAME)")
    if s["limit"]:
        ds = ds.select(range(min(s["limit"], len(ds))))
    keep_id = s["field"] == "prompt" and "prompt_id" in ds.column_names
    rows = []
    for r in ds:
        prompt = r[s["field"]]
        if s["words"]:
            prompt = _first_words(prompt, s["words"])
        row = {"prompt": prompt, "source": s["name"]}
        if keep_id and isinstance(r["prompt_id"], str):
            row["prompt_id"] = r["prompt_id"]
        rows.append(row)
    return rows


def materialize(spec: str, dest: Path) -> Path:
    """Write ``spec``'s prompts to ``dest`` (jsonl) unless it already holds them; return it.

    Concurrent callers (ranks of one launch) wait on a lock, so the hub is read once.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    marker = dest.with_name(dest.name + ".source")
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists() and marker.exists() and marker.read_text() == spec:
            return dest
        rows = load_rows(spec)
        tmp = dest.with_name(f".{dest.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, dest)
        marker.write_text(spec)
    return dest
