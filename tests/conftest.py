"""Fixtures shared across the test packages (tests/ml and tests/e2e both use these)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def shared_conversion_cache(tmp_path_factory):
    """MODELMILL_CACHE_DIR for the whole session (settings.cache_dir_from_env): the SmolLM2 tokenizer is
    read from its GGUF once (about 4 s of parsing) and then loaded from its saved tokenizer.json by every
    test, server and worker process that builds a model in a fresh home (dozens per session).
    Fresh per session, so a run never depends on what an earlier one left."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELMILL_CACHE_DIR", str(tmp_path_factory.mktemp("conversion-cache")))
        yield


@pytest.fixture(scope="session")
def family_model_sources(tmp_path_factory) -> dict[str, Path]:
    """Each chat family's tiny model (tools/family_models.py), built and taught its tool call once per
    session, about a minute on 2 cores: {family: its HF directory}. Read-only: a test registers them in
    its own home (family_models.register_family_models copies them), never writes here."""
    from tools.family_models import build_family_models

    return build_family_models(tmp_path_factory.mktemp("family-build"))
