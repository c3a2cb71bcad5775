#!/usr/bin/env bash
# GPU benchmark (run on a CUDA machine from the repo root, with the release binaries and the
# exported backbone): features at three precisions, training epochs and decoding.
# PIPE names the `pipe` binary; its worker `pipe-torch` must sit beside it (carry both,
# stripped, e.g. in .device/).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
nvidia-smi -L; nproc
root=$(pwd); P="${PIPE:-$root/target/release/pipe}"
mkdir -p /tmp/w/data/models && cd /tmp/w
cp -r "$root/data/models/efficientnet_lite0" data/models/
cp "$root/scripts/gpu/pipeline.yaml" pipeline.yaml
$P run 2>&1 | grep -vE "^\s+(train|features):.*epoch [0-9]+/" | tail -25
$P show features train --json > run-records.json
python3 -c "
import json
r=json.load(open('run-records.json'))
print('features', r['features']['run'])
print('train epochs', [(e['epoch'], round(e['seconds'],2)) for e in r['train']['run']['epochs']])
"
for prec in fp16 bf16 fp32; do
  rm -rf data/cache
  echo "== features precision $prec batch 512"
  $P run features -S features.precision=$prec -S features.batch_size=512 2>&1 | grep -E "img/s|FAILED|error"
done
cp run-records.json data/out/features/features.json data/out/train/history.json $OUT/ 2>/dev/null
