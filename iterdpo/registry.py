"""The name tables: every config value that picks an implementation, one table per kind.

Each table maps the config's literal value to ``"module:attribute"``, imported only when
used (:func:`load`), so reading a config never imports torch or vLLM. Config validation
takes the allowed names from these tables (:mod:`iterdpo.config`), so a new sampler,
selector, annotator, loss or judge is one line here plus its implementation.

==========  ===================  ==============================================================
table       config key           value
==========  ===================  ==============================================================
SAMPLERS    sample.backend       the sampler function (iterdpo.sampling.Sampler)
SELECTORS   select.selector      the pipeline whose select stage implements it (iterdpo.stages)
ANNOTATORS  annotate.annotator   a builder ``(annotate_cfg, *, run_dir, iteration, seed, for_eval)``
LOSSES      train.loss           the loss's LossSpec (iterdpo.training.losses.LOSSES entry)
JUDGES      evaluate.judge       the annotator that judges evaluation ('auto' resolves to one)
==========  ===================  ==============================================================
"""

from __future__ import annotations

import importlib

SAMPLERS = {
    "hf": "iterdpo.sampling.hf:sample_hf",
    "vllm": "iterdpo.sampling.vllm_engine:sample_vllm",
    "server": "iterdpo.sampling.server:sample_server",
}

SELECTORS = {
    "margin": "iterdpo.stages.default:DEFAULT",
    "certainty": "iterdpo.stages.apl:APL",
    "entropy": "iterdpo.stages.apl:APL",
    "hybrid": "iterdpo.stages.apl:APL",
    "random": "iterdpo.stages.apl:APL",
    "sera": "iterdpo.stages.sera:SERA",
    "arm": "iterdpo.stages.arm:ARM",
}

ANNOTATORS = {
    "gold": "iterdpo.annotation:gold_annotator",
    "reward_model": "iterdpo.annotation:reward_model_annotator",
    "judge": "iterdpo.annotation:judge_annotator",
    "implicit": "iterdpo.annotation:implicit_annotator",
    "human": "iterdpo.annotation:human_annotator",
}

LOSSES = {name: f"iterdpo.training.losses:LOSSES[{name}]" for name in ("dpo", "cdpo", "rdpo", "ipo", "slic", "simpo")}

JUDGES = {name: ANNOTATORS[name] for name in ("gold", "reward_model", "judge")}  # annotators that judge plain text


def allowed(table: dict, *extra: str) -> str:
    return ", ".join([*extra, *table])


def load(table: dict, name: str, kind: str):
    """The implementation ``table`` names ``name`` (imported now); ValueError listing the allowed names."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {allowed(table)}")
    module, attr = table[name].split(":")
    key = None
    if attr.endswith("]"):  # an entry of a dict: LOSSES[dpo]
        attr, key = attr[:-1].split("[")
    value = getattr(importlib.import_module(module), attr)
    return value if key is None else value[key]
