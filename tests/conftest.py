"""Shared test helpers.

``system_tool(name)`` finds a program from a system package. When it is missing the test skips with
the reason, except under CI (.ci/run sets NUPROV_REQUIRE_SYSTEM_PACKAGES=1), where it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def system_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package {package} (.ci/run does)"
        if os.environ.get("NUPROV_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def venv_tool(name: str) -> str:
    """A console script installed next to the running interpreter (the dev extra's tools)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        assert found is not None, f"{name} is not installed: run make test, which installs '.[dev]'"
        return found
    return str(path)
