#!/usr/bin/env bash
# The disk-full and read-only campaigns (issue 16), as root: the reduced default pipeline
# runs in a workspace on a small tmpfs filled to leave between nothing and a whole run's
# worth of space free, ROUNDS times (seeded); each run must fail clearly or complete, the
# store must verify, and the next run with space must give the uninterrupted run's bytes.
# Then a read-only store and a read-only feature cache must give clear errors.
#   usage: sudo scripts/diskfull_campaign.sh [ROUNDS=40] [SEED=1]
set -euo pipefail
cd "$(dirname "$0")/.."
PIPE_DISKFULL_ROUNDS=${1:-40} PIPE_DISKFULL_SEED=${2:-1} \
  cargo test --release --test faults -- --nocapture --test-threads 1 2>&1 | grep -vE '^\s+(Compiling|Finished|Running)'
