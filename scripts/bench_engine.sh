#!/usr/bin/env bash
# Engine benchmark (issue 2): cold hashing throughput, a no-op `pipe run`, and the same
# no-op with `dvc repro`. Prints figures; asserts nothing.
#   usage: scripts/bench_engine.sh [WORKDIR]   (default /tmp/pipe-bench-engine)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pipe=${PIPE:-$here/target/release/pipe}
work=${1:-/tmp/pipe-bench-engine}
mkdir -p "$work" && cd "$work"

if [ ! -f corpus/.done ]; then
  echo "generating 10,000 files of 100 kB (1 GB) in $work/corpus"
  python3 - <<'PY'
import os
os.makedirs("corpus", exist_ok=True)
for i in range(10_000):
    d = f"corpus/{i % 100:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}.bin", "wb") as f:
        f.write(os.urandom(100_000))
open("corpus/.done", "w").close()
PY
fi

echo "== cold hashing (no stat cache; files in the page cache), 3 runs"
for _ in 1 2 3; do "$pipe" hash corpus; done

cat > pipeline.yaml <<'YAML'
stages:
  count:
    kind: cmd
    cmd: find corpus -type f | wc -l > "$PIPE_OUT/count.txt"
    deps: [corpus]
    outs: [count.txt]
YAML
rm -rf data pipe.lock
"$pipe" run >/dev/null 2>&1
ms() { python3 -c 'import sys,time,subprocess as s
n=int(sys.argv[1]); cmd=sys.argv[2:]; ts=[]
for _ in range(n):
    t=time.perf_counter(); s.run(cmd,check=True,stdout=s.DEVNULL,stderr=s.DEVNULL); ts.append((time.perf_counter()-t)*1000)
ts.sort(); print(f"median {ts[len(ts)//2]:.1f} ms, min {ts[0]:.1f} ms over {n} runs")' "$@"; }
echo "== no-op pipe run (10,000-file dep, warm stat cache)"
pipe_ms=$(ms 20 "$pipe" run); echo "pipe run: $pipe_ms"

if [ ! -x "$work/dvcvenv/bin/dvc" ]; then
  python3 -m venv "$work/dvcvenv" && "$work/dvcvenv/bin/pip" install -q dvc
fi
mkdir -p dvcproj && cd dvcproj
[ -e corpus ] || cp -r ../corpus corpus
if [ ! -d .dvc ]; then
  "$work/dvcvenv/bin/dvc" init --no-scm -q
  cat > dvc.yaml <<'YAML'
stages:
  count:
    cmd: find corpus -type f | wc -l > count.txt
    deps: [corpus]
    outs: [count.txt]
YAML
fi
"$work/dvcvenv/bin/dvc" repro -q >/dev/null 2>&1
echo "== no-op dvc repro ($("$work/dvcvenv/bin/dvc" --version))"
dvc_ms=$(ms 5 "$work/dvcvenv/bin/dvc" repro); echo "dvc repro: $dvc_ms"
