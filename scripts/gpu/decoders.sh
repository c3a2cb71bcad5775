#!/usr/bin/env bash
# GPU timing of every decoder on Flickr8k's shapes: features (pooled and grid), a few
# training epochs of merge, cnn, attention and transformer, one scst epoch, and beam-5
# captioning of the 6,000 train images with each model; then features at three precisions.
# Run on the CUDA machine from the repo root:
#   scripts/gpu/decoders.sh FLICKR8K_DIR [--stand-in-images|--real-images] [PIPE RUN ARGS…]
# FLICKR8K_DIR holds Flickr8k.token.txt and the split files, and images/ unless
# --stand-in-images is given (then scripts/gpu/stand_in_images.py writes fake pixels:
# the times hold, the scores mean nothing). PIPE names the `pipe` binary, with its worker
# `pipe-torch` beside it; data/models must hold the exported Lite0 pooled and grid backbones.
# STAGES (optional) names the stages of the first run, e.g. "features features_grid";
# FEATURES_BENCH (optional) names a built pipe-torch/benches/features.rs binary to compare.
# PRECISIONS (default "fp32 fp16 bf16"): the features reruns at batch 512; "" skips them.
# Arguments after the second go to every `pipe run` (e.g. -S params.epochs=5).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
nvidia-smi -L; nproc
root=$(pwd); P=$(realpath "${PIPE:-$root/target/release/pipe}")
bench=${FEATURES_BENCH:+$(realpath "$FEATURES_BENCH")}
f8k=$(realpath "$1"); w=$(mktemp -d)
mkdir -p "$w/data/models" "$w/data/flickr8k"
cp -r "$root/data/models/efficientnet_lite0" "$root/data/models/efficientnet_lite0_grid" "$w/data/models/"
cp "$f8k"/Flickr8k.token.txt "$f8k"/Flickr_8k.*Images.txt "$w/data/flickr8k/"
if [ "${2:-}" = --stand-in-images ]; then
  python3 "$root/scripts/gpu/stand_in_images.py" "$w/data/flickr8k/Flickr8k.token.txt" "$w/data/flickr8k/images"
else
  ln -s "$f8k/images" "$w/data/flickr8k/images"
fi
cd "$w" && cp "$root/scripts/gpu/flickr8k-decoders.yaml" pipeline.yaml
start=$(date +%s.%N)
$P run ${STAGES:-} "${@:3}" 2>&1 | grep -vE "epoch [0-9]+/[0-9]+ *[0-9]+%|^\s+[0-9]+%" | tail -40
echo "pipe run: $(python3 -c "import time;print(round(time.time()-$start,1))") s wall"
$P show --json > run-records.json
python3 - <<'PY'
import json
r = json.load(open("run-records.json"))
def run(stage): return (r.get(stage) or {}).get("run") or {}
for s in ("train_merge", "train_cnn", "train_attention", "train_transformer", "scst"):
    ep = run(s).get("epochs", [])
    secs = [round(e["seconds"], 2) for e in ep]
    rest = secs[1:] or secs
    print(f"{s:20s} epochs {secs} s; after the first: {sum(rest)/max(len(rest),1):.2f} s mean")
for s in ("caption_merge", "caption_cnn", "caption_attention", "caption_transformer"):
    c = run(s)
    print(f"{s:20s} beam 5: {c.get('images')} images in {c.get('seconds', 0):.2f} s, {c.get('captions_per_s', 0):.0f} captions/s")
PY
# Per-run figures of a features stage: end to end, and the forward passes after the two
# warm-up batches (TorchScript profiles the graph on the first and optimizes it on the second).
features_figures() {
  $P show "$1" --json | python3 -c "
import json,sys; r=json.load(sys.stdin)['$1']['run']; t=r['timings']
print(f\"{r['images_per_s']:.0f} img/s end to end, {r['steady_forward_images_per_s']:.0f} img/s forward after the warm-up batches ({t['warmup_batch_s']} s), forward {t['forward_s']:.2f} s of extract {t['extract_s']:.2f} s\")"
}
for stage in features features_grid; do echo "$stage: $(features_figures $stage)"; done
for prec in ${PRECISIONS-fp32 fp16 bf16}; do
  for stage in features features_grid; do
    rm -rf data/cache
    if $P run $stage -S $stage.precision=$prec -S $stage.batch_size=512 "${@:3}" >/dev/null 2>&1; then
      echo "== $stage precision $prec batch 512: $(features_figures $stage)"
    else
      echo "== $stage precision $prec batch 512: failed"
    fi
  done
done
# The backbone alone, warmed up, through the same extract loop (pipe-torch/benches/features.rs).
if [ -n "$bench" ]; then
  for model in efficientnet_lite0 efficientnet_lite0_grid; do
    echo "== bench $model fp32 batch 256"
    "$bench" data/flickr8k/images --device cuda --batch 256 --backbone data/models/$model | tail -3
  done
fi
[ -n "${OUT:-}" ] && cp run-records.json "$OUT/" 2>/dev/null
exit 0
