"""Each webhook module imports on its own (the outbox and the job store import each other's packages)."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["outbox", "delivery", "routes", "endpoints", "models", "settings", "signing", "ssrf"]


@pytest.mark.parametrize("module", MODULES)
def test_imports_module_alone(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import serve_app.webhooks.{module}"], check=True, timeout=120)
