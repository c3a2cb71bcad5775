#!/usr/bin/env bash
# The fuzzing campaign (issue 16): every parser of a user's file (caption formats,
# pipeline.yaml, -S overrides, the lock file, vocab.json, image headers, backbone.json)
# for SECONDS each, with proptest-generated inputs (mutated seeds and arbitrary bytes; not
# coverage-guided). A failure's shrunk input is kept under fuzz/<target>/, where the test
# suite replays it. Prints the cases run per target.
#   usage: scripts/fuzz_campaign.sh [SECONDS=600] [TARGET]
# JOBS=N (default 1) fuzzes N targets at a time, each in its own test process.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
jobs=${JOBS:-1}
export PIPE_FUZZ_SECONDS=$seconds PIPE_FUZZ_CASES=2000 PIPE_FUZZ_SAVE=1
# The targets as the two fuzz tests name them, so a target added there is fuzzed here too.
targets=$(grep -ohP 'caption_target\("\K[^"]+|name: "\K[^"]+|fuzz_target\("\K[^"]+' \
  tests/fuzz.rs pipe-torch/tests/fuzz_backbone.rs | tr '\n' ' ')
if [ -n "${2:-}" ]; then
  # A misspelt target would match nothing and "pass".
  case " $targets " in
    *" $2 "*) targets=$2 ;;
    *) echo "unknown fuzz target '$2'; the targets: $targets" >&2; exit 2 ;;
  esac
fi

# Build both test binaries first; then each target runs as its own process.
binary() { # PACKAGE_ARGS... -> the test executable's path
  cargo test --release "$@" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])' | tail -1
}
parsers=$(binary --test fuzz)
backbone=$(binary -p pipe-torch --test fuzz_backbone)
[ -x "$parsers" ] && [ -x "$backbone" ] || { echo "building the fuzz tests failed" >&2; exit 1; }

fuzz_one() { # TARGET
  local exe=$parsers
  [ "$1" = backbone-json ] && exe=$backbone
  PIPE_FUZZ_TARGET=$1 "$exe" --nocapture 2>&1 | grep -E '^fuzz |test result|Test failed|kept the failing|panicked' || true
}
export -f fuzz_one
export parsers backbone
log=$(mktemp)
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'fuzz_one {}' | tee "$log"
! grep -qE 'test result: FAILED|panicked' "$log"
