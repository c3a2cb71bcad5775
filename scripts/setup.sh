#!/usr/bin/env bash
# Idempotent set-up: a venv with libtorch (torch from PyPI) and the exported backbone.
# Each step is skipped when its output is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements.txt into .venv (torch is a large download)"
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
if [ ! -f data/models/efficientnet_lite0/model.pt ]; then
  echo "setup: exporting EfficientNet-Lite0 to data/models/efficientnet_lite0"
  .venv/bin/python scripts/export_backbone.py
fi
if [ ! -f data/models/efficientnet_lite0_grid/model.pt ]; then
  echo "setup: exporting EfficientNet-Lite0's 7x7 feature grid to data/models/efficientnet_lite0_grid"
  .venv/bin/python scripts/export_backbone.py --output grid
fi
if [ ! -f data/models/efficientnet_lite0_trunk/head.pt ]; then
  echo "setup: exporting EfficientNet-Lite0 split before its last block (trunk + head.pt, for fine-tuning)"
  .venv/bin/python scripts/export_backbone.py --output trunk
fi
