"""The data contract between pipeline stages.

Every stage reads and writes Arrow tables (stored as Parquet) whose columns are fixed
here. Column names follow TRL where TRL has one (``prompt``, ``chosen``, ``rejected``,
``ref_chosen_logps``, ``ref_rejected_logps``), so a stage's output also loads in TRL.

::

    prompts      prompt_id, prompt, source
    completions  prompt_id, completion_id, prompt, completion, num_tokens, finish_reason
    scored       completions + policy_logp, ref_logp, reward, reward_norm, reward_simpo,
                 prev_policy_logp, prev_ref_logp, prev_reward
    candidates   prompt_id, a_id, b_id, margin, selector
    labelled     preferences without the four *_logps columns (annotate's output)
    preferences  prompt_id, prompt, chosen, rejected, chosen_id, rejected_id,
                 ref_chosen_logps, ref_rejected_logps, policy_chosen_logps,
                 policy_rejected_logps, chosen_stopped, rejected_stopped, label_source,
                 iteration

``prompt`` is always the plain user text; the chat template is applied by the one
tokenisation routine (:mod:`iterdpo.logprobs`), never stored pre-rendered, so sampling,
scoring and training cannot disagree about it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from iterdpo import failpoints
from iterdpo.errors import UserError

PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),  # sha1 of the prompt text, first 16 hex digits
        ("prompt", pa.string()),
        ("source", pa.string()),
    ]
)

COMPLETIONS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("completion_id", pa.string()),  # f"{prompt_id}-{k:04d}" for the k-th sample
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("num_tokens", pa.int32()),  # response tokens, EOS included when emitted
        ("finish_reason", pa.string()),  # "stop" (EOS / stop string) | "length"
    ]
)

SCORED = COMPLETIONS.append(pa.field("policy_logp", pa.float64()))  # log pi(y|x), summed
SCORED = SCORED.append(pa.field("ref_logp", pa.float64()))  # log ref(y|x) of the policy's reference
SCORED = SCORED.append(pa.field("reward", pa.float64()))  # beta * (policy_logp - ref_logp)
SCORED = SCORED.append(pa.field("reward_norm", pa.float64()))  # reward / num_tokens
SCORED = SCORED.append(pa.field("reward_simpo", pa.float64()))  # beta * policy_logp / num_tokens
# SeRA's ensemble (score.prev_policy): pi_{t-2}'s log-probs, its reference's, its implicit reward; NaN if not scored
SCORED = SCORED.append(pa.field("prev_policy_logp", pa.float64()))
SCORED = SCORED.append(pa.field("prev_ref_logp", pa.float64()))
SCORED = SCORED.append(pa.field("prev_reward", pa.float64()))

CANDIDATES = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("a_id", pa.string()),  # completion_id of one response
        ("b_id", pa.string()),  # completion_id of the other; a_id < b_id
        ("margin", pa.float64()),  # |r(a) - r(b)|: unlabelled pairs have no orientation
        ("selector", pa.string()),
    ]
)

PREFERENCES = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_id", pa.string()),
        ("rejected_id", pa.string()),
        ("ref_chosen_logps", pa.float64()),  # log ref_train(y_w|x), summed over response tokens
        ("ref_rejected_logps", pa.float64()),
        ("policy_chosen_logps", pa.float64()),  # log pi_start(y_w|x): training's first-step check
        ("policy_rejected_logps", pa.float64()),
        ("chosen_stopped", pa.bool_()),  # the sampler emitted EOS: it is part of the response
        ("rejected_stopped", pa.bool_()),
        ("label_source", pa.string()),  # offline | gold | reward_model | judge | implicit | human
        ("iteration", pa.int32()),
    ]
)


# annotate's output: oriented pairs without log-probs; training attaches its reference's
# and start model's log-probs (PREFERENCES), decided by the run (iterdpo.pipeline.context)
LOGP_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "policy_chosen_logps", "policy_rejected_logps")
LABELLED = pa.schema([f for f in PREFERENCES if f.name not in LOGP_COLUMNS])


class RecordError(ValueError, UserError):
    """Bad input data; the message names the file, the row and the field."""


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the first 16 hex digits of sha1(utf-8 text)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def write_table(table: pa.Table, path: Path) -> None:
    """Write Parquet atomically: a killed writer leaves no truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if failpoints.mid_write(path):  # ITERDPO_FAILPOINT=<stage>:mid_write (testing aid)
        failpoints.write_half_then_die(table, tmp)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_table(path: Path) -> pa.Table:
    """Read one Parquet file, or every ``*.parquet`` of a folder in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise RecordError(f"{path}: no .parquet files in this folder")
        return pa.concat_tables([pq.read_table(f) for f in files])
    return pq.read_table(path)


def from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


# --- prompt files --------------------------------------------------------------------


def _prompt_text(value: object, where: str) -> str:
    """A prompt is a non-empty string or a chat whose last user message is the text."""
    if isinstance(value, list):
        users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not all(isinstance(m, dict) and "content" in m for m in value):
            raise RecordError(
                f"{where}, field 'prompt': a chat must be a list of {{role, content}} "
                "messages with at least one user message"
            )
        value = users[-1]["content"]
    if not isinstance(value, str):
        raise RecordError(
            f"{where}, field 'prompt': expected a string or a list of chat messages, "
            f"got {type(value).__name__}"
        )
    if not value.strip():
        raise RecordError(f"{where}, field 'prompt': empty prompt")
    return value


def _object(where: str, row: object) -> tuple[str, dict]:
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    return where, row


def iter_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, row) from a .jsonl, .json or .parquet file of objects.

    The location names the file and the line (or row) for error messages; a row that is not
    an object, bytes that are not UTF-8 and lines that are not JSON are errors naming it.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield _object(f"{path}: row {i}", row)
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecordError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise RecordError(f"{path}: a .json prompt file must hold a list of objects")
        for i, row in enumerate(data):
            yield _object(f"{path}: row {i}", row)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: line {lineno}: not valid JSON: {e.msg}") from None
        yield _object(f"{path}: line {lineno}", row)


def load_prompts(path: str | Path, source: str | None = None) -> pa.Table:
    """Load and validate a prompt file into the PROMPTS schema.

    Accepts ``.jsonl`` (one object per line), ``.json`` (a list) or ``.parquet``; each row
    needs ``prompt`` (text, or chat messages whose last user message is used) and may
    have ``prompt_id`` and ``source``. A prompt repeated with its id is kept once (the
    repeats are counted in the schema metadata, see :func:`prompt_stats`); one ``prompt_id``
    given to two different texts is an error naming both lines.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: prompt file not found")
    rows, seen, duplicates = [], {}, 0
    for where, row in iter_rows(path):
        if "prompt" not in row:
            raise RecordError(f"{where}, field 'prompt': missing (fields present: {sorted(row)})")
        text = _prompt_text(row["prompt"], where)
        pid = row.get("prompt_id") or prompt_id(text)
        if not isinstance(pid, str):
            raise RecordError(f"{where}, field 'prompt_id': expected a string")
        src = row.get("source", source or path.stem)
        if not isinstance(src, str):
            raise RecordError(f"{where}, field 'source': expected a string")
        if pid in seen:
            first, first_text = seen[pid]
            if first_text != text:
                raise RecordError(
                    f"{where}, field 'prompt_id': {pid!r} is also the id of a different prompt at {first.removeprefix(f'{path}: ')}; "
                    "give each prompt its own id (or drop prompt_id: the text's hash is used)"
                )
            duplicates += 1
            continue
        seen[pid] = (where, text)
        rows.append({"prompt_id": pid, "prompt": text, "source": src})
    if not rows:
        raise RecordError(f"{path}: no prompts")
    return from_rows(rows, PROMPTS).replace_schema_metadata({DUPLICATES_KEY: str(duplicates)})


DUPLICATES_KEY = "iterdpo.duplicate_prompts"


def prompt_stats(prompts: pa.Table) -> dict:
    """``{"duplicate_prompts": n}``: repeats dropped when the prompt file was loaded (0 if unknown)."""
    meta = prompts.schema.metadata or {}
    return {"duplicate_prompts": int(meta.get(DUPLICATES_KEY.encode(), b"0"))}


OFFLINE_PAIRS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_id", pa.string()),  # f"offline-{row:07d}-chosen": the row of the file it came from
        ("rejected_id", pa.string()),
    ]
)


def _response_text(value: object, where: str, field: str) -> str:
    """A response is a string or a chat whose last assistant message is the response."""
    if isinstance(value, list):
        said = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        if not said or not isinstance(said[-1].get("content"), str):
            raise RecordError(f"{where}, field '{field}': a chat must end with an assistant message")
        value = said[-1]["content"]
    if not isinstance(value, str):
        raise RecordError(f"{where}, field '{field}': expected a string or chat messages, got {type(value).__name__}")
    return value


def load_preferences(path: str | Path) -> pa.Table:
    """Load and validate an offline preference file into the OFFLINE_PAIRS schema.

    Rows need ``prompt``, ``chosen`` and ``rejected``: texts, or chat messages as in
    UltraFeedback-binarized (the prompt is the last user message, a response the last
    assistant message). A pair whose two responses are identical carries no preference
    and is an error, as is an empty response file.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: preference file not found")
    rows = []
    for i, (where, row) in enumerate(iter_rows(path)):
        for field in ("prompt", "chosen", "rejected"):
            if field not in row:
                raise RecordError(f"{where}, field '{field}': missing (fields present: {sorted(row)})")
        text = _prompt_text(row["prompt"], where)
        chosen = _response_text(row["chosen"], where, "chosen")
        rejected = _response_text(row["rejected"], where, "rejected")
        if chosen == rejected:
            raise RecordError(f"{where}, fields 'chosen'/'rejected': identical responses carry no preference")
        rows.append(
            {"prompt_id": prompt_id(text), "prompt": text, "chosen": chosen, "rejected": rejected,
             "chosen_id": f"offline-{i:07d}-chosen", "rejected_id": f"offline-{i:07d}-rejected"}
        )
    if not rows:
        raise RecordError(f"{path}: no preference pairs")
    return from_rows(rows, OFFLINE_PAIRS)


def rows_by(table: pa.Table, key: str) -> dict[str, dict]:
    """Index a table's rows by one column (used for joins on small per-iteration tables)."""
    return {r[key]: r for r in table.to_pylist()}
