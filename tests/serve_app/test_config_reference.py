"""docs/operations.md's configuration reference is generated from the config models and never drifts from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from deployments.generator_config import BatchingConfig, GeneratorConfig
from serve_app import config_reference
from serve_app.artifact_settings import S3ArtifactSettings
from serve_app.config import AppConfig

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
MODELS = [AppConfig, S3ArtifactSettings, GeneratorConfig, BatchingConfig]


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    # walked here on its own rather than through config_reference.leaf_fields, so a bug there cannot hide a field
    leaves = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            leaves += _leaves(field.annotation, f"{prefix}{name}.")
        else:
            leaves.append((f"{prefix}{name}", field.description))
    return leaves


def test_committed_doc_block_is_the_generated_reference():
    block = config_reference.doc_block(DOC.read_text(encoding="utf-8"))
    assert block == config_reference.render_reference(), (
        f"docs/operations.md's configuration reference is stale: run `{config_reference.WRITE_COMMAND}`"
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_leaf_field_is_documented_exactly_once(model):
    rendered = config_reference.render_reference()
    for path, description in _leaves(model):
        assert description and description.strip(), f"{model.__name__}.{path} has no description="
        assert rendered.count(f"| `{path}` |") == 1, f"{path} should have exactly one row in the reference"


def test_reference_has_one_row_per_leaf_and_nothing_else():
    rows = [line for line in config_reference.render_reference().splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(_leaves(model)) for model in MODELS)


def test_check_fails_on_a_stale_block_and_write_fixes_it(tmp_path, capsys):
    doc = tmp_path / "operations.md"
    doc.write_text(
        f"# Ops\n\n{config_reference.START_MARKER}\n| `old` | `1` | gone |\n{config_reference.END_MARKER}\n\nafter\n",
        encoding="utf-8",
    )
    assert config_reference.main(["--check", "--doc", str(doc)]) != 0
    message = capsys.readouterr().err.strip()
    assert "--write" in message and "\n" not in message

    assert config_reference.main(["--write", "--doc", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Ops\n\n") and text.endswith(f"{config_reference.END_MARKER}\n\nafter\n")
    assert config_reference.main(["--check", "--doc", str(doc)]) == 0


def test_check_fails_without_markers(tmp_path):
    doc = tmp_path / "operations.md"
    doc.write_text("# Ops\n", encoding="utf-8")
    assert config_reference.main(["--check", "--doc", str(doc)]) != 0


def test_generator_imports_neither_torch_nor_ray():
    # it runs in CI and on laptops without the model stack: keep it to pydantic and the config modules
    code = "import sys, serve_app.config_reference; sys.exit(bool({'torch', 'ray'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO).returncode == 0
