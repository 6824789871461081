"""Shared fixtures. The real TrackML files live in ../shared/trackml beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACKML = REPO_ROOT.parent / "shared" / "trackml"


@pytest.fixture
def shared_trackml() -> Path:
    """The folder of real TrackML files; tests that need it skip with the reason when it is absent."""
    if not (SHARED_TRACKML / "detectors.csv").is_file():
        pytest.skip(f"real TrackML files not found at {SHARED_TRACKML} (../shared/trackml beside the checkout)")
    return SHARED_TRACKML
