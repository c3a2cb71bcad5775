#!/usr/bin/env bash
# One training epoch of a grid decoder (attention, or transformer), pipe against the same
# model written in plain PyTorch (scripts/bench_attention_epoch.py), side by side on this
# machine (issue 12's "pipe's epoch ≤ 0.8× PyTorch's"). Both train on Flickr8k's 30,000
# train captions with 7x7x1280 grids, batch 64, at the sizes of the decoder's Flickr8k
# pipeline (attention: pipelines/flickr8k-scst2.yaml, whose train stage is the attention model
# over the frozen grid; transformer: flickr8k-transformer.yaml).
# Prints both epochs' seconds. Asserts nothing.
#   usage: scripts/bench_attention_epoch.sh WORKSPACE [attention|transformer]
# WORKSPACE holds data/flickr8k and that pipeline file and has run the pipeline's features
# stage (so only train runs here).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(cd "$1" && pwd)
pipe=${PIPE:-$here/target/release/pipe}
decoder=${2:-attention}
pipeline=pipelines/flickr8k-scst2.yaml
[ "$decoder" = attention ] || pipeline=pipelines/flickr8k-$decoder.yaml
(cd "$work" && "$pipe" -f "$pipeline" run train --force -S params.split=dev \
  -S train.epochs=1 2>&1 | grep -E "epoch 1:")
MODEL=$decoder FLICKR8K_DIR="$work/data/flickr8k" "$here/.venv/bin/python" "$here/scripts/bench_attention_epoch.py" 1
