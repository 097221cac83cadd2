"""Fixtures shared across test modules."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Hugging Face `datasets` caches what it loads under ~/.cache, keyed in part by folder name, so
# two test runs' `load_dataset(".../trl")` could share a stale entry. Give each session its own
# cache, set before any test module imports `datasets`; and never reach for the Hub.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="agentmill-hf-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def scripted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One realistic run folder made by the whole mill with scripted models (~5 s), read-only:
    the export, card and stats tests all read it, none writes into it."""
    from pipelines.run import run
    from tests.test_pipeline import scripted_config

    out = tmp_path_factory.mktemp("scripted") / "run"
    run(scripted_config(out, episodes=16, seed=0))
    return out
