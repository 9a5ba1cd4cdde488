"""Shared fixtures for ml tests: one modelmill-tiny directory per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """models.ensure_base(home, "modelmill-tiny") in a session tmp home (built once, ~4 s)."""
    from modelmill.ml import models

    return models.ensure_base(tmp_path_factory.mktemp("mm-home"), "modelmill-tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, family_model_sources) -> dict[str, Path]:
    """Tiny random models of every chat family (tools/family_models.py, built once per session by
    tests/conftest.py), registered with ModelMill in a session tmp home: {family: model dir}."""
    from tools.family_models import register_family_models

    return register_family_models(tmp_path_factory.mktemp("family-models") / "home", family_model_sources)
