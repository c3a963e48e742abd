"""People as annotators: export, import, and every refusal naming file, line and field."""

from __future__ import annotations

import csv
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iterdpo.annotation import annotate
from iterdpo.annotation.human import (
    HumanAnnotator,
    export_pairs,
    import_labels,
    labels_path,
    read_labels,
)
from iterdpo.records import RecordError


def _fill(path, choose):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["label"] = choose(i, r)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_round_trip_jsonl_orients_as_labelled(scored, candidates, tmp_path):
    f = tmp_path / "pairs.jsonl"
    assert export_pairs(candidates, scored, f, seed=1) == candidates.num_rows
    rows = _fill(f, lambda i, r: ["A", "b", "tie", "skip"][i % 4])
    counts = import_labels(f, candidates, tmp_path / "run", 1)
    assert counts == {"rows": len(rows), "ties": len(rows[2::4]), "skipped": len(rows[3::4]), "labelled": len(rows[0::4]) + len(rows[1::4])}
    ann = HumanAnnotator(labels_path(tmp_path / "run", 1))
    table, stats = annotate(candidates, scored, ann, ties="drop", iteration=1, seed=0)
    assert stats["ties"] == counts["ties"] and stats["unlabelled"] == counts["skipped"]
    want = {r["pair_id"]: (r["a_id"] if r["label"] == "A" else r["b_id"]) for r in rows if r["label"] in ("A", "b")}
    got = {f"{min(r['chosen_id'], r['rejected_id'])}~{max(r['chosen_id'], r['rejected_id'])}": r["chosen_id"] for r in table.to_pylist()}
    assert got == want
    shown_first = [r["a_id"] == r["pair_id"].split("~")[0] for r in rows]
    assert 0 < sum(shown_first) < len(rows)  # the order shown is randomised


def test_round_trip_csv(scored, candidates, tmp_path):
    f = tmp_path / "pairs.csv"
    export_pairs(candidates, scored, f)
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = "B"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    labels = read_labels(f, candidates)
    assert labels == {r["pair_id"]: r["b_id"] for r in rows}


def _exported(scored, candidates, tmp_path):
    f = tmp_path / "p.jsonl"
    export_pairs(candidates, scored, f)
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    for r in rows:
        r["label"] = "A"
    return f, rows


def _write(f, rows):
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_unknown_id_is_refused_with_file_line_field(scored, candidates, tmp_path):
    f, rows = _exported(scored, candidates, tmp_path)
    rows[4]["pair_id"] = "nope~nope"
    _write(f, rows)
    with pytest.raises(RecordError, match=r"p.jsonl: line 5, field 'pair_id': unknown pair 'nope~nope'"):
        read_labels(f, candidates)


def test_duplicate_is_refused(scored, candidates, tmp_path):
    f, rows = _exported(scored, candidates, tmp_path)
    _write(f, rows + [rows[2]])
    with pytest.raises(RecordError, match=rf"line {len(rows) + 1}, field 'pair_id': duplicate of line 3"):
        read_labels(f, candidates)


def test_missing_rows_are_refused(scored, candidates, tmp_path):
    f, rows = _exported(scored, candidates, tmp_path)
    _write(f, rows[:-2])
    with pytest.raises(RecordError, match=rf"p.jsonl: 2 of {len(rows)} candidate pairs have no row"):
        read_labels(f, candidates)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: r.update(label="C"), r"line 2, field 'label': expected A, B, tie or skip, got 'C'"),
        (lambda r: r.pop("label"), r"line 2, field 'label': missing"),
        (lambda r: r.pop("pair_id"), r"line 2, field 'pair_id': missing"),
        (lambda r: r.update(a_id="zzz"), r"line 2, field 'a_id': .* are not the two responses"),
    ],
)
def test_bad_fields_are_refused(scored, candidates, tmp_path, edit, match):
    f, rows = _exported(scored, candidates, tmp_path)
    edit(rows[1])
    _write(f, rows)
    with pytest.raises(RecordError, match=match):
        read_labels(f, candidates)


def test_bad_files_are_refused(scored, candidates, tmp_path):
    with pytest.raises(RecordError, match="use a .jsonl or .csv"):
        read_labels(tmp_path / "x.txt", candidates)
    with pytest.raises(RecordError, match="not found"):
        read_labels(tmp_path / "x.jsonl", candidates)
    (tmp_path / "y.jsonl").write_text('{"pair_id": 1\n')
    with pytest.raises(RecordError, match="y.jsonl: line 1: not valid JSON"):
        read_labels(tmp_path / "y.jsonl", candidates)
    with pytest.raises(RecordError, match="no human labels for this iteration yet"):
        HumanAnnotator(tmp_path / "none.jsonl").compare_rows([], [])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drop=st.sets(st.integers(0, 89)), dup=st.sets(st.integers(0, 89)))
def test_import_accepts_exactly_the_complete_unique_files(scored, candidates, tmp_path_factory, drop, dup):
    """Property: a file is accepted iff no row is missing and none is repeated."""
    d = tmp_path_factory.mktemp("h")
    f, rows = _exported(scored, candidates, d)
    n = len(rows)
    drop, dup = {i for i in drop if i < n}, {i for i in dup if i < n}
    idx = [i for i in range(n) if i not in drop] + sorted(dup)
    _write(f, [rows[i] for i in idx])
    if sorted(idx) == list(range(n)):
        assert len(read_labels(f, candidates)) == n
    else:
        with pytest.raises(RecordError, match="duplicate|have no row"):
            read_labels(f, candidates)


def test_cli_and_loop_flow(tmp_path):
    """The loop stops for people (writing the request), the CLI imports, the loop resumes."""
    import subprocess
    import sys

    from iterdpo import records
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT
    from tests.annotation.conftest import fake_run

    root = fake_run(tmp_path)
    over = [f"run.output_dir={tmp_path}", "annotate.annotator=human"]
    run = open_run(load_config(None, over), DEFAULT)
    with pytest.raises(RecordError, match="iteration 1 waits for human labels"):
        run_stage(run, "annotate", 1)
    request = root / "iter_1" / "human_request.jsonl"
    assert request.exists()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "iterdpo", *args, *over], capture_output=True, text=True, cwd=".")

    out = tmp_path / "mine.csv"
    r = cli("annotate-export", "-k", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["label"] = "maybe"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = cli("annotate-import", "-k", "1", "--labels", str(out))
    assert r.returncode == 2 and f"{out}: line 2, field 'label'" in r.stderr
    for row in rows:
        row["label"] = "A"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = cli("annotate-import", "-k", "1", "--labels", str(out))
    assert r.returncode == 0, r.stderr
    m = run_stage(run, "annotate", 1)
    assert m["stats"]["pairs"] == len(rows)
    pairs = records.read_table(root / "iter_1" / "annotate" / "pairs.parquet").to_pylist()
    assert {p["chosen_id"] for p in pairs} == {row["a_id"] for row in rows}
    assert {p["label_source"] for p in pairs} == {"human"}
    r = cli("annotate-export", "-k", "3", "--out", str(out))
    assert r.returncode == 2 and "no candidate pairs yet" in r.stderr


@pytest.mark.slow
def test_human_pipeline_end_to_end_then_report_and_wandb(toy_cache, tmp_path):
    """A run with annotator 'human' stops for labels, resumes once they are imported, and the
    finished run's artifacts are all read by the report and by W&B."""
    from iterdpo.annotation.human import import_labels
    from iterdpo.config import load_config
    from iterdpo.pipeline import artifacts
    from iterdpo.pipeline.driver import run_all
    from iterdpo.stages import DEFAULT
    from tests.reading import report_and_wandb_read_every_artifact

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=people", "run.iterations=1", "annotate.annotator=human",
                             "data.prompts_per_iteration=8", "sample.n=2", "evaluate.num_prompts=8", "train.epochs=1"])
    with pytest.raises(RecordError, match="iteration 1 waits for human labels"):
        run_all(cfg, DEFAULT)
    root = tmp_path / "people"
    request = root / "iter_1" / "human_request.jsonl"
    rows = [json.loads(line) for line in request.read_text().splitlines()]
    request.write_text("".join(json.dumps({**row, "label": "A"}) + "\n" for row in rows))
    import_labels(request, artifacts.read(root / "iter_1" / "select", "candidates"), root, 1)
    assert run_all(cfg, DEFAULT)["iterations"][0]["pairs_trained"] == len(rows)
    report_and_wandb_read_every_artifact(root)
