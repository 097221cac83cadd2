"""Pool synthesis on the embedded model through vLLM's CPU build, on Beam's in-process runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.pool import PoolConfig, run_synth
from schemas.records import ToolSpec
from toolspecs.load import load_paths

pytestmark = pytest.mark.e2e


def test_pool_synthesis_on_the_embedded_model(tmp_path: Path) -> None:
    out = tmp_path / "pool"
    report = run_synth(PoolConfig(out=str(out), target=80, tools_per_domain=20))

    assert report["reconcile"]["ok"], report["reconcile"]
    assert report["tokens"]["synthesizer"]["completion"] > 0
    assert report["domains"]["grown"] >= 1
    assert report["pool"]["synthesized"] >= 40  # most slots give a valid tool
    assert report["near_duplicates"]["rate"] <= 0.05
    specs = list(load_paths([out / "specs"]))
    assert all(isinstance(s, ToolSpec) for s in specs) and len(specs) == report["pool"]["kept"]
