#!/usr/bin/env bash
# Archive captioning memory (issue 15): peak RSS of `pipe run` captioning folders of
# 1,000, 5,000 and 20,000 synthetic images with the default pipeline's model, printed as
# a table. Memory should stay flat in the number of images (it is bounded by one chunk).
# Asserts nothing.
#   usage: scripts/bench_archive_memory.sh [WORKDIR] [SIZES="1000 5000 20000"] [BATCHES=32]
# BATCHES lists the `backbone_batch` values to run at each size, side by side.
# WORKDIR (default /tmp/pipe-bench-archive) gets the default pipeline; its stages up to
# `train` run once (a few minutes) and are cached afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pipe=${PIPE:-$here/target/release/pipe}
work=${1:-/tmp/pipe-bench-archive}
sizes=${2:-1000 5000 20000}
batches=${3:-32}
mkdir -p "$work/data/models" "$work/pipelines"
cd "$work"
[ -e data/models/efficientnet_lite0 ] || ln -s "$here/data/models/efficientnet_lite0" data/models/
# The default pipeline's stages up to train, then a second synth data set as the archive.
sed -n '/^stages:/,/^  caption:/p' "$here/pipeline.yaml" | sed '$d' > pipelines/archive_memory.yaml
sed -n '1,/^stages:/p' "$here/pipeline.yaml" | sed '$d' | cat - pipelines/archive_memory.yaml > pipelines/tmp.yaml
mv pipelines/tmp.yaml pipelines/archive_memory.yaml
cat >> pipelines/archive_memory.yaml <<'YAML'
  archive:
    kind: synth
    params: {images: "${archive_images}", size: 96, seed: 7}
  caption_archive:
    kind: caption
    deps: {model: train, vocab: tokenize/vocab.json, backbone: data/models/efficientnet_lite0, images: archive/images}
    params: {folder: data/out/archive_memory/archive/images, device: cpu}
YAML
sed -i 's/^params:$/params:\n  archive_images: 1000/' pipelines/archive_memory.yaml

"$pipe" -f pipelines/archive_memory.yaml run train >/dev/null 2>&1   # not measured
echo "| images | backbone batch | wall | captions/s | peak RSS |"
echo "|---|---|---|---|---|"
for n in $sizes; do
  "$pipe" -f pipelines/archive_memory.yaml run archive -S params.archive_images="$n" >/dev/null 2>&1
  for b in $batches; do
    /usr/bin/time -f "%e %M" -o time.txt "$pipe" -f pipelines/archive_memory.yaml run caption_archive \
      -S params.archive_images="$n" -S caption_archive.backbone_batch="$b" >run.log 2>&1 || { tail run.log; exit 1; }
    read -r wall rss <time.txt
    # Forget this artifact, so that the next run of the script measures again.
    fp=$(python3 -c "import re,sys; print(re.search(r'\n  caption_archive:\n    fingerprint: (\w+)', open(sys.argv[1]).read()).group(1))" \
      pipelines/archive_memory.lock)
    rm -rf "data/store/$fp"
    python3 -c "import sys; n,b,w,r=int(sys.argv[1]),sys.argv[2],float(sys.argv[3]),float(sys.argv[4])
print(f'| {n:,} | {b} | {w:.1f} s | {n/w:.1f} (whole run) | {r/2**20:.2f} GiB |')" "$n" "$b" "$wall" "$rss"
  done
done
