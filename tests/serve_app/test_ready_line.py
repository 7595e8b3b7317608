"""The one line the ingress logs when it is ready: where it listens, the dev key, the command to try."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import AppConfig
from serve_app.dev_setup import ready_line

REPO = Path(__file__).resolve().parents[2]


def test_ready_line_dev_mode_in_the_checkout_names_key_and_command():
    config = AppConfig(mode="dev", data_dir=REPO / ".orfeas")
    assert ready_line(config) == (
        "ORFEAS serve ready on http://127.0.0.1:8000 - dev agent key: .orfeas/dev-agent.json - "
        "try: orfeas agent submit tests/fixtures/images/object_rgba.png --wait --out out/"
    )


def test_ready_line_dev_mode_elsewhere_passes_the_key_file(tmp_path):
    config = AppConfig(mode="dev", data_dir=tmp_path / "data", public_url="http://127.0.0.1:8100")
    key = tmp_path.resolve() / "data" / "dev-agent.json"
    assert ready_line(config) == (
        f"ORFEAS serve ready on http://127.0.0.1:8100 - dev agent key: {key} - "
        f"try: orfeas agent submit tests/fixtures/images/object_rgba.png --wait --out out/ --key-file {key}"
    )


def test_ready_line_production_names_only_the_url(tmp_path):
    config = AppConfig(mode="production", data_dir=tmp_path, public_url="https://orfeas.example")
    assert ready_line(config) == "ORFEAS serve ready on https://orfeas.example"
