from __future__ import annotations

import numpy as np
from PIL import Image

from serve_app.cli import main
from tests.background import IMAGES, TINY_MODEL, iou, photo_path, true_mask


def written(path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A")).astype(np.float32) / 255


def test_remove_background_writes_rgba_png_at_the_input_size(tmp_path, capsys):
    names = ["mug_gradient", "jpeg_photo", "non_square"]
    code = main(["remove-background", *(str(photo_path(n)) for n in names), "--out", str(tmp_path / "cut")])
    assert code == 0
    out = capsys.readouterr().out
    for name in names:
        image = written(tmp_path / "cut" / f"{name}.png")
        assert image.mode == "RGBA" and image.size == Image.open(photo_path(name)).size
        assert iou(alpha(image), true_mask(name)) >= 0.9
        assert f"{name}.png: {image.width}x{image.height}, object " in out


def test_remove_background_keeps_a_cutout_as_it_is(tmp_path):
    assert main(["remove-background", str(IMAGES / "object_rgba.png"), "--out", str(tmp_path)]) == 0
    original = Image.open(IMAGES / "object_rgba.png").convert("RGBA")
    assert np.array_equal(np.asarray(written(tmp_path / "object_rgba.png")), np.asarray(original))


def test_remove_background_with_the_onnx_remover(tmp_path):
    args = ["--remover", "onnx", "--model", str(TINY_MODEL), "--out", str(tmp_path)]
    assert main(["remove-background", str(photo_path("plain_white")), *args]) == 0
    assert iou(alpha(written(tmp_path / "plain_white.png")), true_mask("plain_white")) >= 0.9


def test_remove_background_missing_file_exits_nonzero_with_one_line_reason(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["remove-background", str(missing), "--out", str(tmp_path / "cut")]) == 1
    err = capsys.readouterr().err
    assert err == f"orfeas remove-background: error: {missing}: no such file\n"
    assert not (tmp_path / "cut").exists()


def test_remove_background_not_an_image_exits_nonzero_with_one_line_reason(tmp_path, capsys):
    bogus = tmp_path / "notes.png"
    bogus.write_text("hello")
    assert main(["remove-background", str(bogus), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"orfeas remove-background: error: {bogus}: not a readable image")
    assert err.count("\n") == 1


def test_remove_background_onnx_without_model_exits_nonzero(tmp_path, capsys):
    assert main(["remove-background", str(photo_path("plain_white")), "--remover", "onnx", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bad option" in err and "onnx_model is required" in err and err.count("\n") == 1


def test_remove_background_missing_model_names_its_path(tmp_path, capsys):
    model = tmp_path / "u2net.onnx"
    args = ["--remover", "onnx", "--model", str(model), "--out", str(tmp_path)]
    assert main(["remove-background", str(photo_path("plain_white")), *args]) == 1
    err = capsys.readouterr().err
    assert f"background model not found: {model}" in err and err.count("\n") == 1


def test_remove_background_file_that_is_not_a_model_exits_nonzero(tmp_path, capsys):
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not a model\n\nat all")
    args = ["--remover", "onnx", "--model", str(model), "--out", str(tmp_path)]
    assert main(["remove-background", str(photo_path("plain_white")), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("orfeas remove-background: error: cannot load background model") and err.count("\n") == 1


def test_remove_background_blank_image_fails_but_the_others_are_written(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 150), (250, 250, 250)).save(blank)
    code = main(["remove-background", str(blank), str(photo_path("plain_white")), "--out", str(tmp_path / "cut")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("orfeas remove-background: error: blank.png: no_foreground: background removal left")
    assert err.count("\n") == 1
    assert (tmp_path / "cut" / "plain_white.png").exists() and not (tmp_path / "cut" / "blank.png").exists()


def test_remove_background_mode_never_writes_the_photo_opaque(tmp_path):
    assert main(["remove-background", str(photo_path("plain_white")), "--mode", "never", "--out", str(tmp_path)]) == 0
    assert alpha(written(tmp_path / "plain_white.png")).min() == 1.0


def test_remove_background_passes_normalisation_options_to_the_model(tmp_path, capsys):
    # ISNet-style normalisation on the tiny model: it runs (and the options reach the config)
    args = ["--remover", "onnx", "--model", str(TINY_MODEL), "--mean", "0.5", "0.5", "0.5", "--std", "1", "1", "1"]
    assert main(["remove-background", str(photo_path("plain_white")), *args, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    bad = [*args[:4], "--std", "0", "1", "1", "--out", str(tmp_path)]
    assert main(["remove-background", str(photo_path("plain_white")), *bad]) == 1
    err = capsys.readouterr().err
    assert "bad option: config: std must be positive in every channel" in err and err.count("\n") == 1
