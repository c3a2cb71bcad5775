#!/usr/bin/env bash
# The crash campaign (issue 16): `pipe run` of the default pipeline at reduced size,
# killed with SIGKILL at KILLS seeded random moments (every third round kills the resumed
# run a second time), and stopped at each named failpoint (pipe_engine::failpoint) at its
# 1st to HITS-th hit. After each kill it checks that no pipe-torch worker survives, that
# `pipe verify` finds 0 damaged, and that the completing run's outputs, lock file and
# store equal an uninterrupted run's byte for byte with no temp file left. Prints one row
# per round and the failing rounds; failing workspaces are kept under KEEP.
#   usage: scripts/crash_campaign.sh [KILLS=200] [SEED=1] [HITS=30] [KEEP=/tmp/pipe-crash-kept]
# The test suite runs the same test with 10 kills and 2 hits (tests/crash.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-200} seed=${2:-1} hits=${3:-30} keep=${4:-/tmp/pipe-crash-kept}
mkdir -p "$keep"
PIPE_CRASH_KILLS=$kills PIPE_CRASH_SEED=$seed PIPE_CRASH_HITS=$hits PIPE_CRASH_KEEP=$keep \
  cargo test --release --test crash -- --nocapture 2>&1 | grep -vE '^\s+(Compiling|Finished|Running)'
