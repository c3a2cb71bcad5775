#!/usr/bin/env bash
# Slurm executor overhead on a single-node cluster (as root): the reduced default pipeline
# run locally and with --executor slurm (features in SHARDS array tasks), side by side in
# fresh workspaces, then the per-job submit-to-start and start-to-end times from squeue.
#   scripts/bench_slurm.sh [IMAGES] [SHARDS]
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-800}
shards=${2:-4}
pipe=${CARGO_TARGET_DIR:-target}/release/pipe
work=$(mktemp -d)
chmod 711 "$work"  # munged, as the munge user, must reach its socket below
trap 'scripts/slurm_local.sh stop "$work/cluster"; rm -rf "$work"' EXIT
scripts/slurm_local.sh start "$work/cluster" 27017 >/dev/null
export SLURM_CONF=$work/cluster/slurm.conf
size=(-S synth.images="$images" -S synth.size=64 -S train.epochs=3 -S caption.beam_width=3)
for mode in local slurm; do
  mkdir -p "$work/$mode/data/models"
  cp pipeline.yaml "$work/$mode/"
  ln -s "$PWD/data/models/efficientnet_lite0" "$work/$mode/data/models/"
done
start=$(date +%s.%N)
"$pipe" -C "$work/local" run "${size[@]}" >/dev/null 2>&1
local_s=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
"$pipe" -C "$work/slurm" run --executor slurm --shards "$shards" "${size[@]}" >/dev/null 2>&1
slurm_s=$(echo "$(date +%s.%N) - $start" | bc)
echo "pipeline, $images images: local ${local_s}s, slurm (features in $shards shards) ${slurm_s}s"
same=$(diff <(grep -v seconds: "$work/local/pipe.lock") <(grep -v seconds: "$work/slurm/pipe.lock") >/dev/null && echo yes || echo NO)
echo "lock files (fingerprints and output hashes) identical: $same"
echo "per job: submit -> start, start -> end (seconds)"
squeue --noheader --states=all --format='%i %j %V %S %e' | while read -r id name submit begin end; do
  s=$(date -d "$submit" +%s); b=$(date -d "$begin" +%s); e=$(date -d "$end" +%s)
  echo "  $id $name $((b - s)) $((e - b))"
done
for i in $(seq 0 $((shards - 1))); do
  grep -h "shard $i/" "$work"/slurm/data/.pipe/slurm/*/features.shard-"$i".log | grep computed || true
done
grep -h "images:" "$work"/slurm/data/.pipe/slurm/*/features.log | tail -1
