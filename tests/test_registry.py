"""The name tables: every config name resolves, and config validation takes its allowed names from them."""

from __future__ import annotations

import pytest

from iterdpo import registry
from iterdpo.config import ConfigError, load_config


def test_every_name_resolves():
    from iterdpo.training.losses import LOSSES

    assert set(registry.LOSSES) == set(LOSSES)
    for name in registry.LOSSES:
        assert registry.load(registry.LOSSES, name, "loss") is LOSSES[name]
    for name in ("hf", "server"):  # vllm's module imports vllm lazily too, but keep it out of this light test
        assert callable(registry.load(registry.SAMPLERS, name, "sampler"))
    for name in registry.ANNOTATORS:
        assert callable(registry.load(registry.ANNOTATORS, name, "annotator"))
    from iterdpo.stages import PIPELINES, pipeline_for

    for name in registry.SELECTORS:
        pipeline = registry.load(registry.SELECTORS, name, "selector")
        assert pipeline in PIPELINES.values() and "select" in pipeline
    cfg = load_config(None, ["select.selector=sera", "run.reference=previous", "sera.ensemble_lambda=0"])
    assert pipeline_for(cfg) is PIPELINES["sera"]


@pytest.mark.parametrize(("key", "table"), [("sample.backend", registry.SAMPLERS), ("select.selector", registry.SELECTORS),
                                            ("annotate.annotator", registry.ANNOTATORS), ("train.loss", registry.LOSSES),
                                            ("evaluate.judge", registry.JUDGES)])
def test_config_lists_the_tables_names(key, table, monkeypatch):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=nope"])
    assert f"{key}: " in str(e.value) and "'nope'" in str(e.value) and registry.allowed(table) in str(e.value)
    monkeypatch.setitem(table, "nope", "somewhere:else")  # a new name in the table is a valid config value
    overrides = [f"{key}=nope"] + (["annotate.gold=toy"] if key == "annotate.annotator" else [])
    assert load_config(None, overrides)


def test_unknown_names_outside_the_config_fail_with_the_allowed_ones():
    from iterdpo.annotation import get_annotator
    from iterdpo.sampling import get_sampler

    with pytest.raises(ValueError, match="unknown sampler 'x'; allowed: hf, vllm, server"):
        get_sampler("x")
    with pytest.raises(ValueError, match="unknown annotator 'x'; allowed: gold, "):
        get_annotator("x")
