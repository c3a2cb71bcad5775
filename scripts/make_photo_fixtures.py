#!/usr/bin/env python3
"""Writes the real-photo test fixtures under tests/fixtures/photos/ (committed; rerun only to regenerate).

The photos come from scikit-image's bundled sample data (public domain / CC0, see skimage.data):
chelsea (a cat), coffee (a cup of espresso), rocket (a rocket on its launch pad). They are
downscaled to 320 px on the long side to keep the repository small; the backbone sees 224 px anyway.
Needs: pip install scikit-image pillow
"""
import os

import skimage.data
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "photos")


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in ("chelsea", "coffee", "rocket"):
        im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        im.thumbnail((320, 320), Image.LANCZOS)
        im.save(os.path.join(OUT, f"{name}.png"), optimize=True)
        if name == "chelsea":  # one JPEG, so the tests cover both decoders
            im.save(os.path.join(OUT, "chelsea.jpg"), quality=90)
    print(f"wrote fixtures to {OUT}")


if __name__ == "__main__":
    main()
