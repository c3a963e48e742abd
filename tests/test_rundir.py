import pytest

from iterdpo.rundir import RunDir, StageMismatch, fingerprint_files, key_of


def test_commit_is_atomic_and_skips_when_done(tmp_path):
    rd = RunDir(tmp_path)
    path = rd.stage(1, "sample")
    assert not rd.done(path, "k1")
    (rd.partial(path) / "shard-0.parquet").write_text("x")
    m = rd.commit(path, "k1", lambda tmp: (tmp / "data.txt").write_text("ok") and {"rows": 1})
    assert m["key"] == "k1" and (path / "data.txt").read_text() == "ok"
    assert rd.done(path, "k1")
    assert not (path.parent / ".sample.partial").exists()  # finished shards are folded in
    assert sorted(p.name for p in path.parent.iterdir()) == ["sample"]


def test_mismatching_key_is_an_error(tmp_path):
    rd = RunDir(tmp_path)
    path = rd.stage(2, "train")
    rd.commit(path, "k1", lambda tmp: None)
    with pytest.raises(StageMismatch, match="different config"):
        rd.done(path, "k2")


def test_failed_write_leaves_nothing_published(tmp_path):
    rd = RunDir(tmp_path)
    path = rd.stage(1, "score")

    def boom(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        rd.commit(path, "k", boom)
    assert not path.exists() and rd.manifest(path) is None
    rd.commit(path, "k", lambda tmp: None)  # a rerun clears the stale temp folder
    assert rd.done(path, "k")


def test_fingerprints(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "b").write_text("2")
    f1 = fingerprint_files(tmp_path)
    (tmp_path / "b").write_text("3")
    assert fingerprint_files(tmp_path) != f1
    assert fingerprint_files(tmp_path, ["a"]) == fingerprint_files(tmp_path, ["a", "missing"])
    assert key_of(a=1, b=[1, 2]) == key_of(b=[1, 2], a=1) != key_of(a=2, b=[1, 2])
