from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from deployments.background import ClassicalRemover
from tests.background import STUDIO, STUDIO_PHOTOS, iou, load_photo, studio_script, true_mask

MUGS = ["mug_gradient", "jpeg_photo", "light_on_dark"]


def enclosed_background(truth: np.ndarray) -> np.ndarray:
    """Background pixels the object surrounds (a mug handle's hole), from the true mask."""
    _, labels = cv2.connectedComponents((~truth).astype(np.uint8), connectivity=4)
    outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return ~truth & ~np.isin(labels, outside)


def test_studio_photos_cover_every_backdrop():
    expected = {"plain_white", "noisy_grey", "vertical_gradient", "offwhite_shadow", "mug_gradient", "jpeg_photo"}
    expected |= {"non_square", "dark_on_light", "light_on_dark"}
    assert expected <= set(STUDIO_PHOTOS)


@pytest.mark.parametrize("name", STUDIO_PHOTOS)
def test_classical_matches_true_mask_on_studio_photo(name):
    photo = load_photo(name)
    (mask,) = ClassicalRemover().masks([photo])
    score = iou(mask, true_mask(name))
    print(f"{name}: classical IoU {score:.4f}")
    assert mask.shape == (photo.height, photo.width) and mask.dtype == np.float32
    assert score >= 0.9, f"{name}: IoU {score:.4f}"


@pytest.mark.parametrize("name", MUGS)
def test_classical_keeps_mug_handle_hole_open(name):
    hole = enclosed_background(true_mask(name))
    assert hole.sum() > 300  # the fixture really has a hole
    (mask,) = ClassicalRemover().masks([load_photo(name)])
    assert (mask[hole] >= 0.5).mean() < 0.05


def test_classical_counts_contact_shadow_as_background():
    name = "offwhite_shadow"
    scene = next(s for s in studio_script().SCENES if s.name == name)
    truth = true_mask(name)
    darkening = scene.shadow(*scene.size)
    shadow = (darkening > 0.05) & ~cv2.dilate(truth.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert shadow.sum() > 1000 and darkening.max() > 0.4  # a real, dark contact shadow
    (mask,) = ClassicalRemover().masks([load_photo(name)])
    assert (mask[shadow] >= 0.5).mean() < 0.01


def test_classical_keeps_dark_object_that_is_not_a_shadow():
    # a neutral dark object is darker than any soft shadow: it must not be taken for one
    (mask,) = ClassicalRemover().masks([load_photo("dark_on_light")])
    assert iou(mask, true_mask("dark_on_light")) >= 0.95


@pytest.mark.parametrize(
    "backdrop",
    [
        np.full((240, 320, 3), 255, np.uint8),
        np.clip(np.random.default_rng(0).normal(200, 10, (240, 320, 3)), 0, 255).astype(np.uint8),
        np.repeat(np.linspace(240, 150, 240)[:, None, None], 320, 1).repeat(3, 2).astype(np.uint8),
    ],
    ids=["white", "noisy", "gradient"],
)
def test_classical_blank_backdrop_gives_empty_mask(backdrop):
    (mask,) = ClassicalRemover().masks([Image.fromarray(backdrop)])
    assert (mask >= 0.5).mean() < 0.002


def test_classical_large_photo_is_segmented_at_work_size_and_returned_at_full_size():
    name = "non_square"
    photo = load_photo(name)
    big = photo.resize((photo.width * 3, photo.height * 3), Image.Resampling.BICUBIC)  # 1440 px > work size
    truth = np.asarray(Image.open(STUDIO / f"{name}.mask.png").resize(big.size, Image.Resampling.NEAREST)) > 127
    (mask,) = ClassicalRemover().masks([big])
    assert mask.shape == (big.height, big.width)
    assert iou(mask, truth) >= 0.9


def test_classical_object_touching_the_border():
    # crop the vase's foot off: the object now touches the bottom edge, where the backdrop model is fitted
    name = "vertical_gradient"
    photo = load_photo(name).crop((0, 0, 320, 270))
    (mask,) = ClassicalRemover().masks([photo])
    assert iou(mask, true_mask(name)[:270]) >= 0.9


def test_classical_masks_a_batch_in_order_and_tiny_images():
    photos = [load_photo("plain_white"), Image.new("RGB", (5, 3), "white"), load_photo("non_square")]
    masks = ClassicalRemover().masks(photos)
    assert [m.shape for m in masks] == [(320, 320), (3, 5), (288, 480)]
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in masks)
    assert iou(masks[2], true_mask("non_square")) >= 0.9
