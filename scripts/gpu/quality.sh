#!/usr/bin/env bash
# Issue 12's quality runs on one GPU: scripts/gpu/flickr8k-quality.yaml (three seeds of the
# attention model with two-phase scst, the transformer with scst, and their ensemble, also
# captioned with consensus re-ranking, the attention model with the backbone's last
# block fine-tuned, nine seeds of pipelines/flickr8k.yaml's model with three ensembles
# of three of them, and six seeds of pipelines/flickr8k-finetune.yaml's two-phase model
# with three ensembles of two of them), all trained at once with `pipe run -j JOBS`, then a table of every
# score and its mean over seeds. Extra args go to `pipe run`: name score stages (e.g.
# score_ft_ensemble_0 score_ft_ensemble_1 score_ft_ensemble_2) to run only those.
# Run from the repo root:
#   scripts/gpu/quality.sh FLICKR8K_DIR WORKSPACE [PIPE RUN ARGS…]
# FLICKR8K_DIR holds Flickr8k.token.txt, the split files and images/. WORKSPACE is made if
# missing and reused if not, so a second call resumes where a stopped one left off (stages
# are the unit: a stage cut short reruns). PIPE names the `pipe` binary (its worker
# `pipe-torch` beside it); data/models must hold the exported Lite0 grid backbone and trunk.
# JOBS (default 9): stages at once. LIMIT (default none): seconds before the run is stopped
# with SIGINT, so that the summary still prints inside a time budget.
set -u
if python3 -c 'import torch' 2>/dev/null; then
  export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
fi
root=$(pwd); P=$(realpath "${PIPE:-$root/target/release/pipe}")
f8k=$(realpath "$1"); w=$2; mkdir -p "$w"; w=$(realpath "$w")
if [ ! -e "$w/pipeline.yaml" ]; then
  mkdir -p "$w/data/models" "$w/data/flickr8k"
  cp -r "$root/data/models/efficientnet_lite0_grid" "$root/data/models/efficientnet_lite0_trunk" "$w/data/models/"
  cp "$f8k"/Flickr8k.token.txt "$f8k"/Flickr_8k.*Images.txt "$w/data/flickr8k/"
  ln -s "$f8k/images" "$w/data/flickr8k/images"
fi
cp "$root/scripts/gpu/flickr8k-quality.yaml" "$w/pipeline.yaml"
cd "$w"
start=$(date +%s.%N)
${LIMIT:+timeout -s INT -k 20 $LIMIT} "$P" run -j "${JOBS:-9}" "${@:3}" 2>&1 |
  grep -vE "epoch [0-9]+/[0-9]+ *[0-9]+%|^\s+[0-9]+%|\r" | tail -60
echo "pipe run: $(python3 -c "import time;print(round(time.time()-$start,1))") s wall"
"$P" show --json > run-records.json
python3 - <<'PY'
import json, pathlib, re, statistics
records = json.load(open("run-records.json"))
for name, r in records.items():
    run = r.get("run") or {}
    epochs = [round(e["seconds"], 1) for e in run.get("epochs", [])]
    extra = f"{len(epochs)} epochs {epochs}" if epochs else ""
    if "images_per_s" in run:
        extra = f"{run['images_per_s']:.0f} img/s"
    print(f"{name:26s} {r.get('seconds') or 0:8.1f} s  {extra}")
rows = {}
for name in records:
    if not name.startswith("score_"):
        continue
    path = pathlib.Path("data/out") / name / "metrics.json"
    if path.exists():
        m = json.load(open(path))
        rows[name] = (m["bleu_1"], m["bleu_4"], m["cider_d"])
print("\nFlickr8k dev, beam 5, coco convention: BLEU-1 / BLEU-4 / CIDEr-D")
for name, (b1, b4, c) in sorted(rows.items()):
    print(f"{name:22s} {b1:.4f} {b4:.4f} {c:.4f}")
for model in ("attention", "transformer", "ensemble", "attention_consensus", "ensemble_consensus", "attention_head", "attention_head_pair", "ft", "ft_ensemble"):
    got = [v for k, v in rows.items() if re.fullmatch(f"score_{model}_[0-9]+", k)]
    if len(got) > 1:
        b4 = [g[1] for g in got]; c = [g[2] for g in got]
        print(f"{model:12s} mean of {len(got)} seeds: BLEU-4 {statistics.mean(b4):.4f} ± {statistics.stdev(b4):.4f}, "
              f"CIDEr-D {statistics.mean(c):.4f} ± {statistics.stdev(c):.4f}")
PY
if [ -n "${OUT:-}" ]; then
  cp run-records.json "$OUT/"
  tar czhf "$OUT/out.tgz" --exclude='*.arrow' --exclude='*.pt' --exclude='report' data/out 2>/dev/null
fi
exit 0
