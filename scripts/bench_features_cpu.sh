#!/usr/bin/env bash
# CPU features benchmark (issue 15): pipe's `features` stage against the PyTorch peer's
# extract_feats.py on the same N Flickr8k images, side by side in one run, each at its
# defaults, ROUNDS times alternating. Prints wall, user and system seconds, images/s and
# peak RSS. Asserts nothing.
#   usage: scripts/bench_features_cpu.sh [N=600] [ROUNDS=3]
# BASELINE=/path/to/an/older/pipe adds that build (with its pipe-torch beside it) to each
# round, for before/after figures.
# Needs ../shared/flickr8k (or FLICKR8K=DIR) and the built release binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-600}
rounds=${2:-3}
src=${FLICKR8K:-$here/../shared/flickr8k}
pipe=${PIPE:-$here/target/release/pipe}
python=$here/.venv/bin/python
work=/tmp/pipe-bench-features-$n
mkdir -p "$work/data/flickr8k/images"
cd "$work"

# The first N images (sorted), copied, with their captions and split files.
"$python" - "$src" "$n" <<'PY'
import os, shutil, sys
src, n = sys.argv[1], int(sys.argv[2])
images = sorted(os.listdir(f"{src}/images"))[:n]
keep = set(images)
for name in images:
    dst = f"data/flickr8k/images/{name}"
    if not os.path.exists(dst):
        shutil.copy(f"{src}/images/{name}", dst)
with open("data/flickr8k/Flickr8k.token.txt", "w") as out:
    out.writelines(l for l in open(f"{src}/Flickr8k.token.txt") if l.split("#")[0] in keep)
for split in ["trainImages", "devImages"]:
    with open(f"data/flickr8k/Flickr_8k.{split}.txt", "w") as out:
        out.writelines(l for l in open(f"{src}/Flickr_8k.{split}.txt") if l.strip() in keep)
open("data/flickr8k/Flickr_8k.testImages.txt", "w").close()
PY
mkdir -p data/models
[ -e data/models/efficientnet_lite0 ] || ln -s "$here/data/models/efficientnet_lite0" data/models/
cat > pipeline.yaml <<'YAML'
stages:
  ingest:
    kind: ingest
    deps: {captions: data/flickr8k/Flickr8k.token.txt, images: data/flickr8k/images}
  features:
    kind: features
    deps: {images: data/flickr8k/images, manifest: ingest/images.parquet, backbone: data/models/efficientnet_lite0}
    params: {device: cpu}
YAML
"$pipe" run ingest >/dev/null 2>&1

# /usr/bin/time -f: wall, user, sys, peak RSS (kB).
measure() {
  local label=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" "$@" >/dev/null 2>"$work/err.txt" || {
    cat "$work/err.txt"; exit 1; }
  read -r wall user sys rss <"$work/time.txt"
  python3 -c "import sys; w,u,s,r=map(float,sys.argv[2:6]); n=int(sys.argv[6])
print(f'{sys.argv[1]:<6} {w:7.1f} s wall  {u:6.1f} user  {s:5.1f} sys ({100*s/(u+s):4.1f}% of CPU)  {n/w:6.1f} img/s  peak RSS {r/1e6:.2f} GB')" \
    "$label" "$wall" "$user" "$sys" "$rss" "$n"
}

echo "features of $n images, $rounds rounds ($(nproc) cores)"
for round in $(seq "$rounds"); do
  rm -rf data/cache/features
  measure pipe "$pipe" run features --force
  if [ -n "${BASELINE:-}" ]; then
    rm -rf data/cache/features
    measure before "$BASELINE" run features --force
  fi
  measure peer env FLICKR8K_DIR="$work/data/flickr8k" PEER_TMP="$work/peer" PEER_RESULTS="$work/peer" \
    "$python" "$here/../shared/peers/torch_merge/extract_feats.py"
done
