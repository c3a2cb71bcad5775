#!/usr/bin/env bash
# The fuzzing campaign (issue 16): every parser of a user's file (caption formats,
# pipeline.yaml, -S overrides, the lock file, vocab.json, image headers, backbone.json)
# for SECONDS each, with proptest-generated inputs (mutated seeds and arbitrary bytes; not
# coverage-guided). A failure's shrunk input is kept under fuzz/<target>/, where the test
# suite replays it. Prints the cases run per target.
#   usage: scripts/fuzz_campaign.sh [SECONDS=600] [TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
export PIPE_FUZZ_SECONDS=$seconds PIPE_FUZZ_CASES=2000 PIPE_FUZZ_SAVE=1
[ -n "${2:-}" ] && export PIPE_FUZZ_TARGET=$2
cargo test --release --test fuzz -- --nocapture 2>&1 | grep -E '^fuzz |test result|Test failed|kept the failing'
if [ -z "${2:-}" ] || [ "$2" = backbone-json ]; then
  cargo test --release -p pipe-torch --test fuzz_backbone -- --nocapture 2>&1 | grep -E '^fuzz |test result|Test failed|kept the failing'
fi
