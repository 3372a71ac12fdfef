"""Shared test fixtures. Data-dependent tests find the real recordings through AVLIB_DATA_ROOT or
the read-only ../shared folder beside the checkout (as in CI); without them they skip with a reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "reference" / "fixtures"
MANIFESTS = SHARED / "reference" / "manifests"


def _data_dir() -> Path | None:
    env = os.environ.get("AVLIB_DATA_ROOT")
    for cand in (env, SHARED / "data"):
        if cand and (Path(cand) / "fsdd").is_dir() and (Path(cand) / "mnist").is_dir():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"official golden fixtures not found at {FIXTURES} (needs ../shared beside the checkout)")
    return FIXTURES


@pytest.fixture
def manifests_dir() -> Path:
    if not MANIFESTS.is_dir():
        pytest.skip(f"official state-dict manifests not found at {MANIFESTS}")
    return MANIFESTS


@pytest.fixture
def data_root() -> Path:
    d = _data_dir()
    if d is None:
        pytest.skip("real recordings (fsdd/, mnist/) not found: set AVLIB_DATA_ROOT or put ../shared/data beside the checkout")
    return d
