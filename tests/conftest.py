"""Fixtures shared across the test packages (tests/ml and tests/e2e both use these)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def family_model_sources(tmp_path_factory) -> dict[str, Path]:
    """Each chat family's tiny model (tools/family_models.py), built and taught its tool call once per
    session, about a minute on 2 cores: {family: its HF directory}. Read-only: a test registers them in
    its own home (family_models.register_family_models copies them), never writes here."""
    from tools.family_models import build_family_models

    return build_family_models(tmp_path_factory.mktemp("family-build"))
