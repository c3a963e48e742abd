import pytest

from iterdpo.config import ConfigError, dump_config, load_config


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_toy_task():
    cfg = load_config()
    assert cfg.model.name_or_path == "toy" and cfg.data.prompts == "toy"
    assert cfg.run.iterations == 3


def test_roundtrip_dump(tmp_path):
    cfg = load_config(None, ["train.beta=0.2", "select.instance=random"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = write(tmp_path, "select:\n  corpus_fractoin: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "select.corpus_fractoin" in msg and "corpus_fraction" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="trian: unknown key; allowed here: run, model"):
        load_config(write(tmp_path, "trian: {beta: 1}\n"))


def test_impossible_value_names_key_and_bound(tmp_path):
    p = write(tmp_path, "select:\n  corpus_fraction: 1.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "select.corpus_fraction" in str(e.value) and "less than or equal to 1" in str(e.value)


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"sample.n: .*integer.*'four'"):
        load_config(write(tmp_path, "sample: {n: four}\n"))


def test_choice_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"train.loss: .*unknown loss 'kto'; allowed: dpo, .*simpo"):
        load_config(write(tmp_path, "train: {loss: kto}\n"))


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="simpo"):
        load_config(None, ["train.loss=simpo"])
    ok = load_config(None, ["train.loss=simpo", "run.reference=none"])
    assert ok.train.loss == "simpo"
    with pytest.raises(ConfigError, match="3 iterations"):
        load_config(None, ["data.prompts_per_iteration=[10, 20]"])
    with pytest.raises(ConfigError, match="reset"):
        load_config(None, ["run.init=reset", "run.reference=previous"])


def test_budget_schedule_list():
    cfg = load_config(None, ["data.prompts_per_iteration=[30, 20, 10]"])
    assert [cfg.prompts_for(k) for k in (1, 2, 3)] == [30, 20, 10]


def test_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["train.beta"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed\n"))


def test_hybrid_selector_keeps_no_more_than_entropy_kept():
    assert load_config(None, ["select.selector=hybrid", "select.corpus_fraction=0.25", "select.hybrid_fraction=0.5"]).select.selector == "hybrid"
    with pytest.raises(ConfigError, match="corpus_fraction must be <= hybrid_fraction"):
        load_config(None, ["select.selector=hybrid", "select.corpus_fraction=0.75", "select.hybrid_fraction=0.5"])
