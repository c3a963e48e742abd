"""The artifact registry: what a stage writes, under which file name, with which Arrow schema.

A stage declares the artifacts it writes (by registry name) and reads its inputs through
:func:`read`, which checks the file against the schema and names the file and the missing
(or mistyped) column, so a stage never gets a table it does not understand::

    completions    completions.parquet     COMPLETIONS   (sample, eval_responses, baseline)
    scored         scored.parquet          SCORED        (score)
    candidates     candidates.parquet      CANDIDATES    (select: unlabelled pairs a_id, b_id)
    sera_pairs     sera_pairs.parquet      SERA_PAIRS    (SeRA's select: already oriented pairs)
    labelled       pairs.parquet           LABELLED      (annotate)
    offline_pairs  pairs.parquet           OFFLINE_PAIRS (SeRA's offline set)
    preferences    pairs.parquet           PREFERENCES   (train: the pairs with the log-probs it used)
    model          model/                  a model folder (train)
    metrics        metrics.json            evaluation metrics (evaluate)

Extra columns are allowed (a later version may add some); missing ones are an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from iterdpo import records
from iterdpo.selection.sera import SERA_PAIRS

ARM_LABELS = pa.schema([("a_id", pa.string()), ("b_id", pa.string()), ("a_wins", pa.float64()), ("round", pa.int64())])
EMBEDDED = pa.schema([*records.COMPLETIONS, pa.field("gold", pa.float64()), pa.field("embedding", pa.list_(pa.float32()))])


@dataclass(frozen=True)
class Artifact:
    """One kind of stage output: its file (or folder) name and, for tables, its schema."""

    name: str
    file: str
    schema: pa.Schema | None = None  # None: not a table (a model folder, a JSON file)


ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        Artifact("completions", "completions.parquet", records.COMPLETIONS),
        Artifact("scored", "scored.parquet", records.SCORED),
        Artifact("eval_scored", "eval_scored.parquet", records.SCORED),
        Artifact("baseline_scored", "baseline_scored.parquet", records.SCORED),
        Artifact("candidates", "candidates.parquet", records.CANDIDATES),
        Artifact("sera_pairs", "sera_pairs.parquet", SERA_PAIRS),
        Artifact("labelled", "pairs.parquet", records.LABELLED),
        Artifact("offline_pairs", "pairs.parquet", records.OFFLINE_PAIRS),
        Artifact("preferences", "pairs.parquet", records.PREFERENCES),
        Artifact("model", "model"),
        Artifact("metrics", "metrics.json"),
        Artifact("arm_pool", "pool.parquet", EMBEDDED),
        Artifact("arm_test", "test.parquet", EMBEDDED),
        Artifact("arm_labels", "labelled.parquet", ARM_LABELS),
        Artifact("arm_model", "model.pt"),
    )
}


def artifact(name: str) -> Artifact:
    if name not in ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}; registered: {sorted(ARTIFACTS)}")
    return ARTIFACTS[name]


def check_schema(have: pa.Schema, schema: pa.Schema, where: str) -> None:
    """Raise RecordError naming ``where`` and the first missing or mistyped column of ``have``."""
    for field in schema:
        if field.name not in have.names:
            raise records.RecordError(f"{where}: missing column '{field.name}' (have: {', '.join(have.names)})")
        got = have.field(field.name).type
        if got != field.type and not pa.types.is_null(got):
            raise records.RecordError(f"{where}: column '{field.name}' is {got}, expected {field.type}")


def check_file(stage_dir: Path, name: str) -> Path:
    """The file of a table artifact, its schema checked (metadata only: nothing is read)."""
    import pyarrow.parquet as pq

    a = artifact(name)
    path = Path(stage_dir) / a.file
    if not path.exists():
        raise records.RecordError(f"{path}: missing (artifact '{name}' of stage folder {stage_dir})")
    if a.schema is not None and path.is_file():
        check_schema(pq.read_schema(path), a.schema, f"{path} (artifact '{name}')")
    return path


def path_of(stage_dir: Path, name: str) -> Path:
    return Path(stage_dir) / artifact(name).file


def read(stage_dir: Path, name: str) -> pa.Table | dict | Path:
    """Artifact ``name`` of a finished stage folder: a checked table, a dict (JSON) or a path."""
    a = artifact(name)
    path = Path(stage_dir) / a.file
    if not path.exists():
        raise records.RecordError(f"{path}: missing (artifact '{name}' of stage folder {stage_dir})")
    if a.schema is not None:
        table = records.read_table(path)
        check_schema(table.schema, a.schema, f"{path} (artifact '{name}')")
        return table
    if a.file.endswith(".json"):
        return json.loads(path.read_text())
    return path


def write(stage_dir: Path, name: str, table: pa.Table) -> Path:
    """Write a table artifact into a stage's (temporary) folder, checking its schema first."""
    a = artifact(name)
    path = Path(stage_dir) / a.file
    check_schema(table.schema, a.schema, f"{path} (artifact '{name}')")
    records.write_table(table, path)
    return path


def selected_pairs(select_dir: Path) -> pa.Table | None:
    """The pairs a select stage kept, as columns prompt_id, a_id, b_id, margin, whatever its artifact.

    ``candidates`` are unlabelled pairs (a_id, b_id); SeRA's ``sera_pairs`` come oriented
    (chosen_id, rejected_id). None when the stage has not finished.
    """
    select_dir = Path(select_dir)
    if not (select_dir / "manifest.json").exists():
        return None
    if path_of(select_dir, "candidates").exists():
        return read(select_dir, "candidates").select(["prompt_id", "a_id", "b_id", "margin"])
    if path_of(select_dir, "sera_pairs").exists():
        t = read(select_dir, "sera_pairs")
        return pa.table({"prompt_id": t.column("prompt_id"), "a_id": t.column("chosen_id"),
                         "b_id": t.column("rejected_id"), "margin": t.column("margin")})
    raise records.RecordError(f"{select_dir}: a finished select stage without candidates.parquet or sera_pairs.parquet")
