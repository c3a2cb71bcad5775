#!/usr/bin/env python3
"""Write a 224x224 stand-in JPEG for every image a Flickr8k token file names.

For timing runs on a machine that has the caption files but not the photos: the
captions, vocabulary and splits stay Flickr8k's, so the work per training epoch and per
decoded caption is the same; the pixels are smooth random colour fields (about the
size of a real 224 px JPEG), so no score from them means anything.
Usage: stand_in_images.py TOKEN_FILE OUT_DIR
"""
import multiprocessing
import os
import sys
import zlib

import numpy as np
from PIL import Image


def write(job):
    name, out_dir = job
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    coarse = rng.integers(0, 256, size=(14, 14, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((224, 224), Image.BILINEAR)
    noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(224, 224, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(
        os.path.join(out_dir, name), quality=90)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    token_file, out_dir = sys.argv[1], sys.argv[2]
    with open(token_file, encoding="utf-8") as f:
        names = sorted({line.split("#", 1)[0] for line in f if "#" in line})
    os.makedirs(out_dir, exist_ok=True)
    with multiprocessing.Pool() as pool:
        pool.map(write, [(n, out_dir) for n in names], chunksize=64)
    print(f"{len(names)} stand-in images in {out_dir}")


if __name__ == "__main__":
    main()
