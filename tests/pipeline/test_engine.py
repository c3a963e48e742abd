"""The engine on a two-stage pipeline of plain tables (no models): derived keys, declared
inputs only, schema checks on read and write, skip-if-done, config.yaml after the key checks."""

from __future__ import annotations

import pyarrow as pa
import pytest

from iterdpo import records
from iterdpo.config import load_config
from iterdpo.pipeline import artifacts
from iterdpo.pipeline.driver import open_run, run_stage, start_run
from iterdpo.pipeline.engine import Ref, Stage, Value, existing_key
from iterdpo.rundir import StageMismatch


def completions(n: int) -> pa.Table:
    return records.from_rows([{"prompt_id": "p", "completion_id": f"p-{i}", "prompt": "x", "completion": "y" * i,
                               "num_tokens": i, "finish_reason": "stop"} for i in range(n)], records.COMPLETIONS)


def _make(call):
    call.write("completions", completions(call.cfg.sample.n))
    return {"rows": call.cfg.sample.n}


def _count(call):
    table = call.read("made")
    if call.cfg.select.margin == "length":  # reads what it did not declare: must fail
        call.read("undeclared")
    out = records.from_rows([{"prompt_id": "p", "a_id": "p-0", "b_id": f"p-{i}", "margin": float(i), "selector": "t"}
                             for i in range(1, table.num_rows)], records.CANDIDATES)
    call.write("candidates", out)
    return {"pairs": out.num_rows}


MAKE = Stage("make", _make, writes=("completions",), fields=("sample.n",), reads=lambda run, k: {"extra": Value(run.cfg.run.seed)})
COUNT = Stage("count", _count, writes=("candidates",), fields=("select.corpus_fraction",),
              reads=lambda run, k: {"made": Ref("make", k, "completions")})
PIPELINE = {"make": MAKE, "count": COUNT}


def cfg(tmp_path, *over):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=t", "run.iterations=1", *over])


def test_keys_derive_from_fields_and_producers(tmp_path):
    run = open_run(cfg(tmp_path), PIPELINE)
    m = run_stage(run, "count", 1)  # runs 'make' first: it reads its artifact
    assert m["stats"] == {"pairs": 3} and (tmp_path / "t" / "iter_1" / "make" / "completions.parquet").exists()
    same = open_run(cfg(tmp_path), PIPELINE)
    assert existing_key(same, PIPELINE, "count", 1) == m["key"]
    # a field of the producer changes the consumer's key, though 'count' never lists sample.n
    other = open_run(cfg(tmp_path, "sample.n=5"), PIPELINE)
    assert existing_key(other, PIPELINE, "make", 1) != run.rd.manifest(run.rd.stage(1, "make"))["key"]
    # a field of its own, and a Value input
    assert existing_key(open_run(cfg(tmp_path, "select.corpus_fraction=0.25"), PIPELINE), PIPELINE, "count", 1) != m["key"]
    assert existing_key(open_run(cfg(tmp_path, "run.seed=9"), PIPELINE), PIPELINE, "make", 1) != run.rd.manifest(run.rd.stage(1, "make"))["key"]
    # an unrelated field does not
    assert existing_key(open_run(cfg(tmp_path, "train.beta=0.3"), PIPELINE), PIPELINE, "count", 1) == m["key"]


def test_undeclared_input_and_undeclared_output_fail(tmp_path):
    run = open_run(cfg(tmp_path, "select.margin=length"), PIPELINE)
    with pytest.raises(KeyError, match="reads 'undeclared' but does not declare it"):
        run_stage(run, "count", 1)
    assert not (tmp_path / "t" / "iter_1" / "count").exists()
    lazy = Stage("make", lambda call: {}, writes=("completions",))
    with pytest.raises(records.RecordError, match="completions.parquet: missing"):
        run_stage(open_run(cfg(tmp_path / "b"), {"make": lazy}), "make", 1)


def test_reading_an_artifact_checks_its_schema(tmp_path):
    run = open_run(cfg(tmp_path), PIPELINE)
    run_stage(run, "make", 1)
    path = tmp_path / "t" / "iter_1" / "make" / "completions.parquet"
    records.write_table(completions(3).drop_columns(["finish_reason"]), path)  # damaged by hand
    with pytest.raises(records.RecordError, match=f"{path} .*missing column 'finish_reason'"):
        run_stage(open_run(cfg(tmp_path), PIPELINE), "count", 1)
    with pytest.raises(records.RecordError, match="column 'num_tokens' is string, expected int32"):
        artifacts.write(tmp_path, "completions", completions(2).set_column(4, "num_tokens", pa.array(["1", "2"])))


def test_rejected_config_change_leaves_config_yaml_as_it_was(tmp_path):
    run, _ = start_run(cfg(tmp_path), PIPELINE, track=False)
    run_stage(run, "count", 1)
    run.lock.release()
    before = (tmp_path / "t" / "config.yaml").read_text()
    assert "n: 4" in before
    with pytest.raises(StageMismatch, match="different config"):
        start_run(cfg(tmp_path, "sample.n=5"), PIPELINE, track=False)
    assert (tmp_path / "t" / "config.yaml").read_text() == before


def test_a_finished_stage_is_never_replaced(tmp_path):
    run = open_run(cfg(tmp_path), PIPELINE)
    m = run_stage(run, "make", 1)
    with pytest.raises(StageMismatch, match="never replaced"):
        run.rd.commit(run.rd.stage(1, "make"), m["key"], lambda tmp: None)
