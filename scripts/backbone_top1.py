"""ImageNet top-1 of an exported backbone's classifier.pt on images, a sanity check that an
export carries real weights (random weights give a near-uniform p).

Usage: .venv/bin/python scripts/backbone_top1.py MODEL_DIR IMAGE [IMAGE ...]
Preprocesses as the sidecar (backbone.json) says: stretch resize to input_size, [0, 1], mean/std.
"""
import json
import sys

import numpy as np
import torch
from PIL import Image


def main(model_dir, images):
    spec = json.load(open(f"{model_dir}/backbone.json"))
    classifier = torch.jit.load(f"{model_dir}/classifier.pt")
    side = spec["input_size"]
    mean, std = torch.tensor(spec["mean"]), torch.tensor(spec["std"])
    for path in images:
        img = Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)
        x = (torch.from_numpy(np.asarray(img, np.float32) / 255.0) - mean) / std
        with torch.no_grad():
            p = classifier(x.permute(2, 0, 1)[None]).softmax(-1)[0]
        print(f"{path}: class {int(p.argmax())}, p {float(p.max()):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
