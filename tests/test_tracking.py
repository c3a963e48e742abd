"""W&B tracking: offline run files hold the per-iteration metrics, table, histogram and
artifacts; ``report_to: none`` works without wandb."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iterdpo.config import load_config

pytest.importorskip("wandb")

TINY = [
    "run.iterations=1", "data.prompts_per_iteration=16", "sample.n=3", "evaluate.num_prompts=16", "train.epochs=1",
]


def read_wandb_records(path: Path) -> list:
    """Protobuf records of a ``run-*.wandb`` file (a LevelDB-style log: 7-byte file header
    ``:W&B`` + magic + version, then 32 KiB blocks of [crc32, uint16 length, type] chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(buf + chunk)
            out.append(rec)
            buf = b""
        else:  # FIRST, MIDDLE
            buf += chunk
    return out


def history(records) -> dict[str, object]:
    """Every logged history key (nested ones joined by '/') -> its last JSON value."""
    out = {}

    def put(key: str, value) -> None:  # a media value may come as one dict or as nested keys
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{key}/{k}", v)
        else:
            out[key] = value

    for r in records:
        if r.WhichOneof("record_type") == "history":
            for i in r.history.item:
                put(i.key or "/".join(i.nested_key), json.loads(i.value_json))
    return out


@pytest.fixture(scope="module")
def tracked(toy_cache, tmp_path_factory, monkeypatch_module):
    from iterdpo.pipeline.driver import run_all
    from iterdpo.stages import DEFAULT

    monkeypatch_module.setenv("WANDB_MODE", "offline")
    out = tmp_path_factory.mktemp("wb")
    cfg = load_config(None, [*TINY, f"run.output_dir={out}", "run.name=wb", "run.report_to=wandb"])
    run_all(cfg, DEFAULT)
    return cfg


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
def test_offline_files_hold_iteration_metrics(tracked):
    root = tracked.run_dir()
    files = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    records = read_wandb_records(files[0])
    keys = history(records)
    assert keys.get("completions/_type") == "table-file", sorted(keys)
    assert keys["select/selected_margins/_type"] == "histogram"
    assert keys["summary_table/_type"] == "table-file"
    for key in [
        "iteration", "summary/gold_win_rate_vs_sft", "summary/mean_gold_reward", "summary/train_loss",
        "summary/pairs_trained", "summary/mean_abs_margin", "sample/completions", "score/mean_reward",
        "select/pairs", "select/mean_abs_margin", "train/train_loss", "evaluate/win_rate",
        "train/wall_seconds",
    ]:
        assert key in keys, f"{key} not logged; got {sorted(keys)}"
    arts = {r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"}
    assert {"wb-data", "wb-model"} <= set(arts), arts.keys()
    assert json.loads(arts["wb-model"].metadata)["iteration"] == 1
    assert {"iter1", "latest"} <= set(arts["wb-data"].aliases)
    # every table artifact of score, select, annotate and train (the pairs with training's log-probs)
    assert {e.path for e in arts["wb-data"].manifest.contents} == {
        "score/scored.parquet", "select/candidates.parquet", "annotate/pairs.parquet", "train/pairs.parquet"}
    table = next(files[0].parent.glob("files/media/table/completions_*.table.json"))
    t = json.loads(table.read_text())
    assert {"prompt", "completion", "reward", "selected", "label"} <= set(t["columns"])
    assert len(t["data"]) == 16 * 3
    labels = [row[t["columns"].index("label")] for row in t["data"]]
    assert labels.count("chosen") == labels.count("rejected") >= 1


@pytest.mark.slow
def test_report_reads_every_artifact_of_the_default_pipeline(tracked):
    from iterdpo.report import write_report

    page = write_report(tracked.run_dir()).read_text()
    assert all(f'src="{png}"' in page for png in ("progress.png", "margins.png", "reward_length.png", "jaccard.png"))


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run_and_logs_once(tracked, monkeypatch_module):
    from iterdpo.pipeline.driver import run_all
    from iterdpo.stages import DEFAULT

    root = tracked.run_dir()
    before = json.loads((root / "wandb.json").read_text())
    run_all(tracked, DEFAULT)  # every stage is done: a resumed (requeued) run
    after = json.loads((root / "wandb.json").read_text())
    assert after == before == {"id": before["id"], "logged": [1]}
    files = sorted(root.glob(f"wandb/offline-run-*-{before['id']}/run-*.wandb"))
    assert len(files) == 2
    assert "summary/gold_win_rate_vs_sft" not in history(read_wandb_records(files[-1]))


@pytest.mark.slow
def test_report_to_none_needs_no_wandb(tracked, tmp_path):
    """With wandb unimportable, 'none' tracks nothing and 'wandb' fails with a clear message."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["wandb"] = None  # any 'import wandb' now raises ImportError
        from iterdpo.config import load_config
        from iterdpo.pipeline.context import Run
        from iterdpo.tracking import make_tracker
        base = ["run.output_dir={tracked.run.output_dir}", "run.name=wb"]
        run = Run(load_config(None, base))
        t = make_tracker(run)
        t.log_iteration(run, 1)
        t.finish({{}})
        try:
            make_tracker(Run(load_config(None, base + ["run.report_to=wandb"])))
        except RuntimeError as e:
            print("ERR", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ERR run.report_to is 'wandb' but wandb is not installed" in out


def test_wandb_section_validates():
    from iterdpo.config import ConfigError

    cfg = load_config(None, ["wandb.project=p", "wandb.mode=offline", "wandb.tags=[a, b]"])
    assert (cfg.wandb.project, cfg.wandb.mode, cfg.wandb.tags) == ("p", "offline", ["a", "b"])
    with pytest.raises(ConfigError, match="wandb.mode"):
        load_config(None, ["wandb.mode=sometimes"])
