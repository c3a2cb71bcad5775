#!/usr/bin/env bash
# `make bench`: every CPU benchmark that prints figures (docs/BENCHMARKS.md records them).
# None asserts a time. The data and features benchmarks read ../shared/flickr8k when it
# exists (give another Flickr8k-layout folder as FLICKR8K) and are skipped, saying so,
# without it.
#   usage: scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
flickr8k=${FLICKR8K:-../shared/flickr8k}

echo "### engine: hashing, no-op run, and dvc repro side by side"
scripts/bench_engine.sh

if [ -d "$flickr8k/images" ]; then
  echo "### data: caption parsing, ingest and tokenize ($flickr8k)"
  cargo bench --locked -q --bench data -- "$flickr8k"
  echo "### features: backbone images/s, end to end and forward-only ($flickr8k/images)"
  cargo bench --locked -q -p pipe-torch --bench features -- "$flickr8k/images"
else
  echo "### data and features benchmarks skipped: no $flickr8k/images (set FLICKR8K)"
fi
