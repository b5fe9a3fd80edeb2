"""The real tools the tests drive; a missing one fails the test, it never skips it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    """A command from the dev extra: the venv running pytest first, else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def debian_tool(name: str) -> str:
    """``promtool`` or ``prometheus``, from Debian's prometheus package."""
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: apt-get install prometheus (scripts/test.sh does)")
    return found


def promtool() -> str:
    return debian_tool("promtool")


def helm() -> str:
    path = Path(os.environ.get("HELM", REPO / ".tools" / "helm" / "helm"))
    if not path.exists():
        pytest.fail(f"helm not found at {path}: run `bash scripts/install-deploy-tools.sh`")
    return str(path)
