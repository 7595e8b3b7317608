"""Create the small deterministic test images in tests/fixtures/images/.

Needs only Pillow (works in the project venv or the reference venv):

    python tests/parity/make_test_images.py

The PNGs are committed; re-running rewrites them byte-for-byte the same for a
given Pillow version (the parity references are computed from the committed
files, so never regenerate them without regenerating the references too).

Images:
  object_rgba.png  300x220 RGBA, transparent background, off-centre hard-edged
                   object (ellipse + rectangle, two colours).  Exercises the
                   alpha-bbox crop, recentre and the non-square canvas.
  plain_rgb.png    256x192 RGB, no alpha (the whole image is foreground),
                   gradient background with shapes.  Exercises the no-alpha path.
  soft_rgba.png    200x260 RGBA, a soft-edged (anti-aliased, partial alpha)
                   polygon plus a half-transparent disc.  Exercises the
                   white-compositing with fractional alpha.
"""

from __future__ import annotations

import os
import sys

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "fixtures", "images"))


def object_rgba() -> Image.Image:
    img = Image.new("RGBA", (300, 220), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    # off-centre: the object sits in the right/top part of the canvas
    d.ellipse((150, 30, 270, 130), fill=(200, 60, 40, 255))
    d.rectangle((120, 100, 230, 170), fill=(40, 90, 200, 255))
    d.line((130, 110, 220, 160), fill=(250, 230, 30, 255), width=6)
    return img


def plain_rgb() -> Image.Image:
    w, h = 256, 192
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = ((x * 255) // (w - 1), (y * 255) // (h - 1), 128)
    d = ImageDraw.Draw(img)
    d.ellipse((40, 30, 150, 140), fill=(20, 20, 20))
    d.polygon([(160, 160), (240, 40), (250, 180)], fill=(240, 240, 240))
    return img


def soft_rgba() -> Image.Image:
    # draw at 4x then downsample with a box filter -> anti-aliased partial alpha
    s = 4
    w, h = 200, 260
    big = Image.new("RGBA", (w * s, h * s), (0, 0, 0, 0))
    d = ImageDraw.Draw(big)
    pts = [(30, 200), (60, 60), (120, 30), (170, 90), (150, 230), (90, 245)]
    d.polygon([(x * s, y * s) for x, y in pts], fill=(30, 160, 90, 255))
    d.ellipse((70 * s, 90 * s, 130 * s, 150 * s), fill=(230, 120, 20, 255))
    img = big.resize((w, h), Image.Resampling.BOX)
    # a half-transparent disc overlapping the edge of the object
    disc = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(disc).ellipse((120, 170, 190, 240), fill=(60, 60, 220, 128))
    img = Image.alpha_composite(img, disc)
    return img


IMAGES = {
    "object_rgba.png": object_rgba,
    "plain_rgb.png": plain_rgb,
    "soft_rgba.png": soft_rgba,
}


def main() -> int:
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, fn in IMAGES.items():
        path = os.path.join(OUT_DIR, name)
        fn().save(path, format="PNG", optimize=True)
        print(f"{path}: {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
