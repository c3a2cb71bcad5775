#!/usr/bin/env bash
# No-op `pipe run` of pipelines/flickr8k-merge.yaml against a no-op `dvc repro` of a six-stage
# dvc.yaml over the same image folder (issue 15), side by side in one run: median and
# minimum wall time over repeated runs, and the stat calls each makes (strace -c).
# Asserts nothing.
#   usage: scripts/bench_noop_flickr8k.sh WORKSPACE [RUNS=20]
# WORKSPACE holds data/flickr8k (the official layout) and has run
#   pipe -f pipelines/flickr8k-merge.yaml run $PIPE_ARGS
# once, so that the timed runs are no-ops. PIPE_ARGS (default `-S params.split=dev
# -S train.epochs=1`) must match that run. BASELINE=/path/to/an/older/pipe adds that
# build, in a hard-linked copy of the workspace (it reruns what its kinds' versions say
# once, untimed, then is timed as a no-op too). DVC comes from a venv at $DVC_VENV
# (default /tmp/dvcvenv; created with `pip install dvc` when missing).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(cd "$1" && pwd)
runs=${2:-20}
pipe=${PIPE:-$here/target/release/pipe}
read -r -a args <<<"${PIPE_ARGS:--S params.split=dev -S train.epochs=1}"
venv=${DVC_VENV:-/tmp/dvcvenv}

median() { python3 -c 'import sys,time,subprocess as s
n=int(sys.argv[1]); cwd=sys.argv[2]; cmd=sys.argv[3:]; ts=[]
for _ in range(n):
    t=time.perf_counter(); s.run(cmd,cwd=cwd,check=True,stdout=s.DEVNULL,stderr=s.DEVNULL); ts.append((time.perf_counter()-t)*1000)
ts.sort(); print(f"median {ts[len(ts)//2]:7.1f} ms, min {ts[0]:7.1f} ms over {n} runs")' "$@"; }
stats() { (cd "$1" && shift && strace -f -c -o /tmp/strace.txt -e trace=statx,newfstatat,stat,lstat,fstat "$@" >/dev/null 2>&1) || true
  awk '/total/ {print $4 " stat calls"}' /tmp/strace.txt; }

files=$(find "$work/data/flickr8k/images/" -type f | wc -l)
echo "no-op runs over $files images in $work/data/flickr8k/images ($(nproc) cores)"
"$pipe" -C "$work" -f pipelines/flickr8k-merge.yaml run "${args[@]}" >/dev/null 2>&1
echo "pipe:     $(median "$runs" "$work" "$pipe" -f pipelines/flickr8k-merge.yaml run "${args[@]}"); $(stats "$work" "$pipe" -f pipelines/flickr8k-merge.yaml run "${args[@]}")"

if [ -n "${BASELINE:-}" ]; then
  old=$work.baseline
  if [ ! -d "$old" ]; then
    mkdir -p "$old" && cp -al "$work/data" "$old/" && cp -r "$work/pipelines" "$old/"
    rm -rf "$old/data/.pipe" "$old/data/out"
  fi
  "$BASELINE" -C "$old" -f pipelines/flickr8k-merge.yaml run "${args[@]}" >/dev/null 2>&1
  echo "before:   $(median "$runs" "$old" "$BASELINE" -f pipelines/flickr8k-merge.yaml run "${args[@]}"); $(stats "$old" "$BASELINE" -f pipelines/flickr8k-merge.yaml run "${args[@]}")"
fi

[ -x "$venv/bin/dvc" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q dvc; }
proj=$work.dvc
if [ ! -d "$proj/.dvc" ]; then
  mkdir -p "$proj" && cd "$proj"
  ln -sfn "$work/data/flickr8k" flickr8k
  "$venv/bin/dvc" init --no-scm -q
  # The shape of pipelines/flickr8k-merge.yaml: three stages read the image folder.
  cat > dvc.yaml <<'YAML'
stages:
  ingest:
    cmd: echo ingest > ingest.txt
    deps: [flickr8k/images, flickr8k/Flickr8k.token.txt]
    outs: [ingest.txt]
  tokenize:
    cmd: echo tokenize > tokenize.txt
    deps: [ingest.txt]
    outs: [tokenize.txt]
  features:
    cmd: echo features > features.txt
    deps: [flickr8k/images, ingest.txt]
    outs: [features.txt]
  train:
    cmd: echo train > train.txt
    deps: [tokenize.txt, features.txt]
    outs: [train.txt]
  caption:
    cmd: echo caption > caption.txt
    deps: [train.txt, features.txt]
    outs: [caption.txt]
  report:
    cmd: echo report > report.txt
    deps: [caption.txt, flickr8k/images]
    outs: [report.txt]
YAML
  "$venv/bin/dvc" repro -q >/dev/null
fi
echo "dvc:      $(median 5 "$proj" "$venv/bin/dvc" repro); ($("$venv/bin/dvc" --version))"
