"""People as annotators: export candidate pairs to a file, import their labels back.

Export (``iterdpo annotate-export -k K --out pairs.jsonl|pairs.csv``) writes one row per
candidate pair::

    pair_id, prompt_id, prompt, a_id, response_a, b_id, response_b, label

``pair_id`` is ``"<a_id>~<b_id>"`` of the candidate pair (a_id < b_id). The two responses
are shown in a seeded random order (``a_id``/``b_id`` of the row say which is which) so a
labeller's habit of preferring the first cannot line up with the sampler's order.
``label`` is left empty: fill it with ``A``, ``B``, ``tie`` or ``skip`` (case-insensitive).

Import (``iterdpo annotate-import -k K --labels FILE``) checks the file against the
iteration's candidate pairs and refuses, naming file, line and field: a row without
``pair_id``/``label``, an unknown ``pair_id``, a duplicate, ``a_id``/``b_id`` that are not
the pair's two responses, a label outside the four values, and pairs with no row at all.
Valid labels are stored as ``<run>/iter_<k>/human_labels.jsonl``
(``{pair_id, winner}``, winner = a completion id, ``"tie"`` or ``"skip"``), which the
``human`` annotator reads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path

import pyarrow as pa

from iterdpo import records
from iterdpo.records import RecordError

FIELDS = ["pair_id", "prompt_id", "prompt", "a_id", "response_a", "b_id", "response_b", "label"]
LABELS = ("a", "b", "tie", "skip")


def pair_id(a_id: str, b_id: str) -> str:
    return f"{a_id}~{b_id}"


def labels_path(run_dir: str | Path, iteration: int) -> Path:
    return Path(run_dir) / f"iter_{iteration}" / "human_labels.jsonl"


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise RecordError(f"{path}: use a .jsonl or .csv file (got {suffix or 'no extension'!r})")
    return suffix


def export_pairs(candidates: pa.Table, scored: pa.Table, path: str | Path, *, seed: int = 0) -> int:
    """Write the candidate pairs for labelling; returns the number of rows."""
    path = Path(path)
    fmt = _format(path)
    by_id = records.rows_by(scored, "completion_id")
    rng = random.Random(f"human-export:{seed}")
    rows = []
    for c in candidates.to_pylist():
        ra, rb = by_id[c["a_id"]], by_id[c["b_id"]]
        if rng.random() < 0.5:
            ra, rb = rb, ra
        rows.append({"pair_id": pair_id(c["a_id"], c["b_id"]), "prompt_id": c["prompt_id"], "prompt": ra["prompt"],
                     "a_id": ra["completion_id"], "response_a": ra["completion"],
                     "b_id": rb["completion_id"], "response_b": rb["completion"], "label": ""})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if fmt == ".csv":
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
        else:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(rows)


def _read_rows(path: Path):
    """Yield (where, row) from a .jsonl or .csv label file."""
    fmt = _format(path)
    if not path.exists():
        raise RecordError(f"{path}: label file not found")
    if fmt == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise RecordError(f"{path}: empty file (expected a header line with {FIELDS})")
            for row in reader:
                yield f"{path}: line {reader.line_num}", row
        return
    yield from records.iter_rows(path)


def read_labels(path: str | Path, candidates: pa.Table) -> dict[str, str]:
    """Validate a filled-in export against ``candidates``; returns pair_id -> winner."""
    path = Path(path)
    pairs = {pair_id(c["a_id"], c["b_id"]): (c["a_id"], c["b_id"]) for c in candidates.to_pylist()}
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for where, row in _read_rows(path):
        for field in ("pair_id", "label"):
            if row.get(field) is None:
                raise RecordError(f"{where}, field '{field}': missing (fields present: {sorted(row)})")
        pid = row["pair_id"]
        if pid not in pairs:
            raise RecordError(f"{where}, field 'pair_id': unknown pair {pid!r} (not a candidate pair of this iteration)")
        if pid in seen:
            raise RecordError(f"{where}, field 'pair_id': duplicate of {seen[pid]}")
        seen[pid] = where.split(": ", 1)[-1]
        label = str(row["label"]).strip().lower()
        if label not in LABELS:
            raise RecordError(f"{where}, field 'label': expected A, B, tie or skip, got {row['label']!r}")
        if label in ("a", "b"):
            shown = row.get("a_id"), row.get("b_id")
            if sorted(x for x in shown if x is not None) != sorted(pairs[pid]):
                bad = "a_id" if shown[0] not in pairs[pid] else "b_id"
                raise RecordError(
                    f"{where}, field '{bad}': the row's a_id/b_id {list(shown)} are not the two responses of pair {pid!r}"
                )
            out[pid] = shown[0] if label == "a" else shown[1]
        else:
            out[pid] = label
    missing = [p for p in pairs if p not in out]
    if missing:
        raise RecordError(
            f"{path}: {len(missing)} of {len(pairs)} candidate pairs have no row, e.g. {missing[:3]} "
            "(every exported pair needs a row; label it 'skip' to leave it out)"
        )
    return out


def import_labels(path: str | Path, candidates: pa.Table, run_dir: str | Path, iteration: int) -> dict:
    """Validate ``path`` and store it where the ``human`` annotator reads; returns counts."""
    labels = read_labels(path, candidates)
    dest = labels_path(run_dir, iteration)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for pid, winner in labels.items():
            f.write(json.dumps({"pair_id": pid, "winner": winner}) + "\n")
    os.replace(tmp, dest)
    counts = {"rows": len(labels), "ties": sum(w == "tie" for w in labels.values()),
              "skipped": sum(w == "skip" for w in labels.values())}
    counts["labelled"] = counts["rows"] - counts["ties"] - counts["skipped"]
    return counts


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


class HumanAnnotator:
    """Reads the imported labels: +1 if a won, -1 if b won, 0 for a tie, None for skip."""

    name = "human"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def compare_rows(self, a: list[dict], b: list[dict]) -> list[float | None]:
        if not self.path.exists():
            raise RecordError(
                f"{self.path}: no human labels for this iteration yet; run `iterdpo annotate-export -k K --out FILE`, "
                "fill in the label column, then `iterdpo annotate-import -k K --labels FILE`"
            )
        winners = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                winners[row["pair_id"]] = row["winner"]
        out: list[float | None] = []
        for ra, rb in zip(a, b, strict=True):
            pid = pair_id(ra["completion_id"], rb["completion_id"])
            if pid not in winners:
                raise RecordError(f"{self.path}: no label for pair {pid!r}; re-export and re-import this iteration's pairs")
            w = winners[pid]
            out.append(None if w == "skip" else 0.0 if w == "tie" else 1.0 if w == ra["completion_id"] else -1.0)
        return out

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        raise TypeError("the human annotator labels candidate pairs by id (compare_rows), not plain text")
