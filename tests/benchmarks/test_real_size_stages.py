"""The real-size benchmark runs end to end (on the tiny architectures, so it takes seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "models" / "tiny-Hunyuan3D-2"


def test_real_size_stages_prints_a_row_per_variant_and_cell_relative_to_the_first():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "real_size_stages.py"),
            "--variants",
            str(TINY / "hunyuan3d-dit-v2-0"),
            str(TINY / "hunyuan3d-dit-v2-0-fast"),
            "--steps",
            "1",
            "--resolutions",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    table = result.stdout.split("\n\n")[-1].strip().splitlines()
    assert table[0].startswith("| variant | params (DiT / VAE / cond) |")
    rows = table[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [
        str(TINY / "hunyuan3d-dit-v2-0"),
        str(TINY / "hunyuan3d-dit-v2-0-fast"),
    ]
    assert rows[0].endswith("| 1.00x |")
    assert "M / " in rows[0]  # tiny models count in millions
