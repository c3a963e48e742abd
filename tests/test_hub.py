"""Prompts from datasets (``hf:`` specs), tested on local dataset folders (no hub here)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iterdpo.config import load_config
from iterdpo.hub import materialize, parse_spec
from iterdpo.pipeline.context import Run
from iterdpo.records import RecordError


@pytest.fixture
def ultrafeedback_like(tmp_path):
    """A folder shaped like HuggingFaceH4/ultrafeedback_binarized: parquet splits with
    prompt, prompt_id and chosen (chat) columns."""
    d = tmp_path / "uf"
    (d / "data").mkdir(parents=True)
    for split, n in (("train_prefs", 12), ("test_prefs", 5)):
        rows = [
            {
                "prompt": f"{split} question number {i}?",
                "prompt_id": f"{split}-{i:03d}",
                "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                "score_chosen": 8.0,
            }
            for i in range(n)
        ]
        # the hub's layout: data/<split>-<shard>-of-<shards>.parquet names any split
        pq.write_table(pa.Table.from_pylist(rows), d / "data" / f"{split}-00000-of-00001.parquet")
    return d


@pytest.fixture
def imdb_like(tmp_path):
    d = tmp_path / "imdb"
    d.mkdir()
    with open(d / "train.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"text": f"This movie number {i} was truly something else entirely.", "label": i % 2}) + "\n")
    return d


def test_parse_spec():
    assert parse_spec("hf:HuggingFaceH4/ultrafeedback_binarized:train_prefs") == {
        "name": "HuggingFaceH4/ultrafeedback_binarized", "split": "train_prefs", "field": "prompt",
        "config": None, "words": None, "limit": None,
    }
    s = parse_spec("hf:stanfordnlp/imdb?field=text&words=8&limit=100")
    assert (s["split"], s["field"], s["words"], s["limit"]) == ("train", "text", 8, 100)
    with pytest.raises(RecordError, match="unknown option 'colum'"):
        parse_spec("hf:x:train?colum=text")
    with pytest.raises(RecordError, match="'words' must be a positive integer"):
        parse_spec("hf:x:train?words=zero")


def test_run_reads_a_local_dataset_folder_once(ultrafeedback_like, tmp_path):
    spec = f"hf:{ultrafeedback_like}"
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'runs'}", f"data.prompts={spec}:train_prefs", f"data.eval_prompts={spec}:test_prefs",
        "data.prompts_per_iteration=5", "evaluate.num_prompts=3",
    ])
    run = Run(cfg)
    first = run.prompts_for(1)
    assert first.num_rows == 5 and all(p.startswith("train_prefs question") for p in first.column("prompt").to_pylist())
    assert set(first.column("prompt_id").to_pylist()) <= {f"train_prefs-{i:03d}" for i in range(12)}
    assert run.eval_prompts().column("prompt_id").to_pylist() == ["test_prefs-000", "test_prefs-001", "test_prefs-002"]
    copy = cfg.run_dir() / "prompts_train.jsonl"
    assert len(copy.read_text().splitlines()) == 12
    # the copy is reused: the dataset folder is no longer needed
    for f in (ultrafeedback_like / "data").iterdir():
        f.unlink()
    assert Run(cfg).prompts_for(2).num_rows == 5


def test_field_words_and_limit(imdb_like, tmp_path):
    path = materialize(f"hf:{imdb_like}:train?field=text&words=3&limit=4", tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["This movie number"] * 4
    assert rows[0]["source"] == str(imdb_like)


def test_errors_name_the_spec_and_the_columns(imdb_like, tmp_path):
    with pytest.raises(RecordError, match=r"no column 'prompt'; columns: \['text', 'label'\]"):
        materialize(f"hf:{imdb_like}:train", tmp_path / "a.jsonl")
    with pytest.raises(RecordError, match="could not load dataset 'no-such-org/no-such-set'"):
        materialize("hf:no-such-org/no-such-set:train", tmp_path / "b.jsonl")
