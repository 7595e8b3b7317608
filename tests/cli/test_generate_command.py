from __future__ import annotations

import io
import subprocess
import sys

import trimesh

from deployments.hunyuan3d import STAGES
from serve_app.cli import main
from tests.hunyuan3d.conftest import IMAGES, REPO, TINY_MODELS

MODEL = str(TINY_MODELS / "hunyuan3d-dit-v2-0")
QUICK = ["--steps", "2", "--octree-resolution", "32"]


def test_generate_writes_one_mesh_per_image_and_timings(tmp_path, capsys):
    images = [str(IMAGES / "object_rgba.png"), str(IMAGES / "plain_rgb.png")]
    code = main(["generate", *images, "--model", MODEL, "--out", str(tmp_path), "--format", "obj", "--batch", *QUICK])
    assert code == 0
    out = capsys.readouterr().out
    assert "timings (2 image(s), one batch" in out and "volume_decoding" in out
    for stem in ("object_rgba", "plain_rgb"):
        mesh = trimesh.load(tmp_path / f"{stem}.obj", force="mesh")
        assert len(mesh.faces) > 100


def test_generate_missing_file_exits_nonzero_with_one_line_reason(tmp_path, capsys):
    code = main(["generate", str(tmp_path / "nope.png"), "--model", MODEL, "--out", str(tmp_path), *QUICK])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"orfeas generate: error: {tmp_path / 'nope.png'}: no such file"


def test_generate_not_an_image_exits_nonzero(tmp_path, capsys):
    bogus = tmp_path / "notes.png"
    bogus.write_text("hello")
    assert main(["generate", str(bogus), "--model", MODEL, "--out", str(tmp_path), *QUICK]) == 1
    assert "not a readable image" in capsys.readouterr().err


def test_generate_bad_parameter_exits_nonzero(tmp_path, capsys):
    image = str(IMAGES / "object_rgba.png")
    assert main(["generate", image, "--model", MODEL, "--out", str(tmp_path), "--steps", "0"]) == 1
    assert "bad parameter: num_inference_steps must be between 1 and 200" in capsys.readouterr().err


def test_generate_bad_model_folder_exits_nonzero(tmp_path, capsys):
    image = str(IMAGES / "object_rgba.png")
    assert main(["generate", image, "--model", str(tmp_path), "--out", str(tmp_path), *QUICK]) == 1
    assert "cannot load model" in capsys.readouterr().err


def test_orfeas_console_help_needs_no_torch():
    # the CLI module must import without torch so `orfeas --help` and the key commands stay light
    code = "import sys, serve_app.cli; serve_app.cli.build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_generate_on_a_terminal_shows_each_stage_on_stderr(tmp_path, capsys, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    image = str(IMAGES / "object_rgba.png")
    assert main(["generate", image, "--model", MODEL, "--out", str(tmp_path), *QUICK]) == 0
    shown = terminal.getvalue()
    for number, stage in enumerate(STAGES):
        assert f"\r\x1b[K[1/1] object_rgba.png: {stage} {100 * number // len(STAGES)}%" in shown
    assert shown.endswith("\r\x1b[K")  # erased before the results went to stdout
    assert "object_rgba" not in shown.replace("object_rgba.png", "")  # the written paths went to stdout
    assert "timings (1 image(s)" in capsys.readouterr().out


def test_generate_piped_writes_no_progress(tmp_path, capsys):
    image = str(IMAGES / "object_rgba.png")
    assert main(["generate", image, "--model", MODEL, "--out", str(tmp_path), *QUICK]) == 0
    assert capsys.readouterr().err == ""


def test_light_parser_modules_import_without_pillow_or_yaml():
    # what `orfeas --help` and the agent commands load in the base (agent) install
    code = (
        "import sys, serve_app.cli, serve_app.client; serve_app.cli.build_parser(); "
        "heavy = {'torch', 'PIL', 'yaml', 'sqlalchemy', 'starlette', 'ray', 'numpy'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
