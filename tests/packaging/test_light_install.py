"""The base distribution is the agent side: a fresh venv with `pip install <repo>` (no extras) has no torch, Ray,
transformers, diffusers or SQLAlchemy, and its `orfeas agent submit --wait` still gets a mesh from the real app.

Slow (pip builds and installs the wheel and the client's dependencies; pip's cache makes reruns faster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.conftest import serve_api
from tests.serve_app.conftest import png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
# heavy server dependencies the agent install must not pull in (starlette comes with the MCP SDK)
ABSENT = ("torch", "ray", "transformers", "diffusers", "sqlalchemy", "PIL", "trimesh", "onnxruntime")
HINT = "needs the server extra: pip install 'orfeas-serve[server]'"


def _clean_env() -> dict[str, str]:
    """The environment without anything pointing at this checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(REPO) not in p)
    return env


def _copy_sources(dest: Path) -> None:
    """The tracked (and new, not ignored) files of the package, so no build artefact of the checkout leaks in."""
    paths = ["pyproject.toml", "README.md", "serve_app", "deployments"]
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv made with the system python3 holding only the base distribution; yields its bin directory."""
    python3 = shutil.which("python3", path=_clean_env()["PATH"])
    if python3 is None or subprocess.run([python3, "-m", "venv", "--help"], capture_output=True).returncode != 0:
        pytest.skip("needs the system python3 with its venv module (python3 -m venv)")
    root = tmp_path_factory.mktemp("light")
    source = root / "src"
    _copy_sources(source)
    venv = root / "venv"
    subprocess.run([python3, "-m", "venv", str(venv)], check=True, env=_clean_env(), timeout=300)
    bin_dir = venv / "bin"
    installed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(source)],
        env=_clean_env(),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=720,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    yield bin_dir


def _run(bin_dir: Path, *argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )


def test_light_install_has_no_server_dependencies(light_venv, tmp_path):
    code = (
        "import importlib.util, json, sys; "
        f"print(json.dumps({{name: importlib.util.find_spec(name) is not None for name in {list(ABSENT)!r}}}))"
    )
    probe = _run(light_venv, "python", "-c", code, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "{" + ", ".join(f'"{name}": false' for name in ABSENT) + "}"
    # the SDK and the CLI parser import with the base dependencies alone
    sdk = _run(
        light_venv,
        "python",
        "-c",
        "import serve_app.client, serve_app.agent_cli, serve_app.mcp_server, serve_app.mcp_tools",
        cwd=tmp_path,
    )
    assert sdk.returncode == 0, sdk.stderr
    helped = _run(light_venv, "orfeas", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "agent" in helped.stdout, helped.stderr
    mcp = _run(light_venv, "orfeas", "mcp", "--help", cwd=tmp_path)
    assert mcp.returncode == 0 and "streamable-http" in mcp.stdout, mcp.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("generate", "in.png", "--model", "model", "--out", "out"),
        ("remove-background", "in.png", "--out", "out"),
        ("keys", "list"),
        ("db", "current"),
    ],
)
def test_light_install_server_command_prints_one_line_hint(light_venv, tmp_path, argv):
    (tmp_path / "in.png").write_bytes(png_bytes())
    result = _run(light_venv, "orfeas", *argv, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"orfeas {argv[0]}: {HINT}\n"


def test_light_install_agent_submit_waits_for_a_mesh(light_venv, tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    out = tmp_path / "meshes"
    (tmp_path / "service").mkdir()
    with serve_api(tmp_path / "service") as api:
        result = _run(
            light_venv,
            "orfeas",
            "agent",
            "submit",
            str(image),
            "--wait",
            "--out",
            str(out),
            "--format",
            "stl",
            "--key-file",
            str(api.key_file),
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # piped: JSON only, no progress lines
    meshes = list(out.glob("cat-*.stl"))
    assert len(meshes) == 1 and meshes[0].stat().st_size > 84  # an STL header plus at least one triangle
    assert str(meshes[0]) in result.stdout
