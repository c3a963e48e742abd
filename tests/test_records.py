import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iterdpo import records
from iterdpo.records import RecordError, load_prompts


def test_jsonl_json_parquet_and_chat(tmp_path):
    rows = [{"prompt": "hello"}, {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "p.json").write_text(json.dumps(rows))
    t = load_prompts(tmp_path / "p.jsonl")
    assert t.column("prompt").to_pylist() == ["hello", "hi"]
    assert t.column("prompt_id").to_pylist()[0] == records.prompt_id("hello")
    assert load_prompts(tmp_path / "p.json").equals(t)
    pq.write_table(pa.Table.from_pylist([{"prompt": "hello", "source": "x"}]), tmp_path / "p.parquet")
    assert load_prompts(tmp_path / "p.parquet").column("source").to_pylist() == ["x"]


def test_duplicates_kept_once(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_prompts(tmp_path / "p.jsonl").num_rows == 2


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"prompt": "ok"}\n{"text": "no prompt"}\n', r"line 2, field 'prompt': missing"),
        (b'{"prompt": "ok"}\n{"prompt": 42}\n', r"line 2, field 'prompt': expected a string .* got int"),
        (b'{"prompt": "ok"}\n\n{"prompt": "   "}\n', r"line 3, field 'prompt': empty prompt"),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', r"line 2: not valid UTF-8 \(byte 0xe9"),
        (b'{"prompt": "ok"}\n{"prompt": \n', r"line 2: not valid JSON"),
        (b'{"prompt": "ok", "source": 3}\n', r"line 1, field 'source': expected a string"),
        (b'["prompt"]\n', r"line 1: expected an object"),
        (b'{"prompt": [{"role": "assistant", "content": "x"}]}\n', r"line 1, field 'prompt': a chat must"),
        (b"", r"no prompts"),
    ],
)
def test_bad_prompt_files_name_file_row_field(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(RecordError, match=match) as e:
        load_prompts(p)
    assert str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")


def test_bad_json_list_row(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"prompt": "a"}, {"prompt": ""}]))
    with pytest.raises(RecordError, match=r"row 1, field 'prompt': empty"):
        load_prompts(p)


def test_write_table_is_atomic_and_read_folder(tmp_path):
    t = records.from_rows([{"prompt_id": "1", "prompt": "a", "source": "s"}], records.PROMPTS)
    records.write_table(t, tmp_path / "d" / "shard-00001.parquet")
    records.write_table(t, tmp_path / "d" / "shard-00000.parquet")
    assert not list((tmp_path / "d").glob(".*"))  # no temp files left
    assert records.read_table(tmp_path / "d").num_rows == 2
    with pytest.raises(RecordError, match="no .parquet"):
        records.read_table(tmp_path)


def test_load_preferences_texts_and_chats(tmp_path):
    rows = [
        {"prompt": "Describe a moon.", "chosen": "kind moon", "rejected": "sad moon"},
        {
            "prompt": [{"role": "user", "content": "Describe a sun."}],
            "chosen": [{"role": "user", "content": "Describe a sun."}, {"role": "assistant", "content": "warm sun"}],
            "rejected": [{"role": "user", "content": "Describe a sun."}, {"role": "assistant", "content": "cold sun"}],
        },
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    t = records.load_preferences(tmp_path / "d.jsonl")
    assert t.column("chosen").to_pylist() == ["kind moon", "warm sun"]
    assert t.column("prompt").to_pylist()[1] == "Describe a sun."
    assert t.column("rejected_id").to_pylist() == ["offline-0000000-rejected", "offline-0000001-rejected"]


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "p", "chosen": "a"}, r"line 1, field 'rejected': missing"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, r"line 1, fields 'chosen'/'rejected': identical"),
        ({"prompt": "p", "chosen": 3, "rejected": "a"}, r"line 1, field 'chosen': expected a string"),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "a"}, r"field 'chosen': a chat must end"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, r"line 1, field 'prompt': empty prompt"),
    ],
)
def test_load_preferences_errors(tmp_path, row, match):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(RecordError, match=match) as e:
        records.load_preferences(p)
    assert str(p) in str(e.value)


def test_one_prompt_id_for_two_texts_is_an_error_naming_both_lines(tmp_path):
    """Before: the second prompt was dropped without a word."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "first", "prompt_id": "p1"}\n{"prompt": "other"}\n{"prompt": "second", "prompt_id": "p1"}\n')
    with pytest.raises(records.RecordError, match=r"p.jsonl: line 3, field 'prompt_id': 'p1' is also the id of a different prompt at line 1"):
        records.load_prompts(f)


def test_identical_prompts_are_kept_once_and_counted(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "a"}\n{"prompt": "a", "source": "x"}\n')
    table = records.load_prompts(f)
    assert table.column("prompt").to_pylist() == ["a", "b"]
    assert records.prompt_stats(table) == {"duplicate_prompts": 2}
    assert records.prompt_stats(table.take([1])) == {"duplicate_prompts": 2}  # an iteration's slice keeps the file's count
