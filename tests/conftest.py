"""Shared pytest setup: markers that skip root-only tests for non-root developers."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKES = REPO / "tests" / "fakes"
sys.path.insert(0, str(REPO / "tests"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    real_fc = bool(os.environ.get("FCD_FIRECRACKER") and os.environ.get("FCD_JAILER"))
    skip_root = pytest.mark.skip(reason="needs root (run as root or in CI)")
    skip_real = pytest.mark.skip(reason="set FCD_FIRECRACKER and FCD_JAILER to real binaries")
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(skip_root)
        if "realfc" in item.keywords and not real_fc:
            item.add_marker(skip_real)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
