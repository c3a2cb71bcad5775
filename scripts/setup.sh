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
  echo "setup: installing requirements.txt into .venv (torch and its CUDA libraries: about 5 GB)"
  # No pip cache: it would keep a second copy of the ~3 GB of wheels.
  if ! .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements.txt; then
    echo "setup: pip could not install requirements.txt; free space where it writes:" >&2
    df -h .venv "${TMPDIR:-/tmp}" >&2 || true
    echo "setup: .venv needs about 6 GB, and pip unpacks wheels under \$TMPDIR (point it at a larger disk if that one is full)" >&2
    exit 1
  fi
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
