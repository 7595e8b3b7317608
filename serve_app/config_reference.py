"""The configuration reference in docs/operations.md, generated from the typed config models.

One table per top-level model, one row per leaf field (nested models flattened into dotted paths), so
every tunable is documented and the doc cannot drift from the code: the tests run ``--check``.

    python -m serve_app.config_reference --write   # regenerate the block in docs/operations.md
    python -m serve_app.config_reference --check   # exit 1 if the block is stale

Imports pydantic and the config modules only (no torch, no Ray), so it runs anywhere the tests do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from deployments.generator_config import BatchingConfig, GeneratorConfig
from serve_app.artifact_settings import S3ArtifactSettings
from serve_app.config import AppConfig

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"
DEFAULT_DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
WRITE_COMMAND = "python -m serve_app.config_reference --write"

SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("### `args.app` (`serve_app.config.AppConfig`)", AppConfig),
    ("### `args.app.artifacts` with `kind: s3` (`serve_app.artifact_settings.S3ArtifactSettings`)", S3ArtifactSettings),
    (
        "### `args.generators[]` / `args.generator` (`deployments.generator_config.GeneratorConfig`; a change "
        "restarts that model's replicas)",
        GeneratorConfig,
    ),
    ("### `deployments[ShapeGenerator-<model>].user_config` (`BatchingConfig`; applied live)", BatchingConfig),
)


@dataclass(frozen=True)
class Leaf:
    """One row of the reference: a field that is not itself a model."""

    path: str
    default: Any  # PydanticUndefined: the field is required
    description: str


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _field_default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True, validated_data={})


def leaf_fields(model: type[BaseModel], default: BaseModel | None = None, prefix: str = "") -> Iterator[Leaf]:
    """The leaf fields of ``model`` in declaration order, with dotted paths.

    A nested model's leaves take their defaults from the parent's default instance, not from the nested
    class, since a parent may default to a non-default instance of it.
    """
    for name, field in model.model_fields.items():
        value = getattr(default, name) if default is not None else _field_default(field)
        nested = _nested_model(field)
        if nested is not None:
            yield from leaf_fields(nested, value if isinstance(value, BaseModel) else None, f"{prefix}{name}.")
        else:
            yield Leaf(f"{prefix}{name}", value, field.description or "")


def render_default(leaf: Leaf) -> str:
    """The default as JSON (what YAML accepts too): ``1000``, ``null``, ``"dev"``, ``[]``."""
    if leaf.default is PydanticUndefined:
        return "required"
    return _code(json.dumps(to_jsonable_python(leaf.default), ensure_ascii=False))


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def _cell(text: str) -> str:
    # a pipe ends a table cell even inside a code span in GitHub markdown
    return " ".join(text.split()).replace("|", "\\|")


def render_table(model: type[BaseModel]) -> str:
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for leaf in leaf_fields(model):
        rows.append(f"| {_cell(_code(leaf.path))} | {_cell(render_default(leaf))} | {_cell(leaf.description)} |")
    return "\n".join(rows)


def render_reference() -> str:
    """The markdown that goes between the markers: one heading and table per top-level model."""
    return "\n\n".join(f"{heading}\n\n{render_table(model)}" for heading, model in SECTIONS) + "\n"


def _block_bounds(doc: str) -> tuple[int, int]:
    """Offsets of the text between the marker lines (after the start line, before the end line)."""
    start = doc.find(START_MARKER + "\n")
    end = doc.find("\n" + END_MARKER, start)
    if start < 0 or end < 0:
        raise ValueError(f"the doc lacks the lines {START_MARKER} and {END_MARKER}")
    return start + len(START_MARKER) + 1, end + 1


def doc_block(doc: str) -> str:
    start, end = _block_bounds(doc)
    return doc[start:end]


def replace_block(doc: str, block: str) -> str:
    start, end = _block_bounds(doc)
    return doc[:start] + block + doc[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.config_reference", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the reference block in the doc")
    action.add_argument("--check", action="store_true", help="exit 1 if the doc's reference block is stale")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the markdown file (default: %(default)s)")
    args = parser.parse_args(argv)

    doc = args.doc.read_text(encoding="utf-8")
    try:
        current = doc_block(doc)
    except ValueError as exc:
        print(f"{args.doc}: {exc}", file=sys.stderr)
        return 1
    expected = render_reference()
    if args.check:
        if current != expected:
            print(f"{args.doc}: the configuration reference is stale; run `{WRITE_COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if current != expected:
        args.doc.write_text(replace_block(doc, expected), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
