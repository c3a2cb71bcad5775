#!/usr/bin/env bash
# On the GPU machine, after every part of scripts/gpu/pack.sh reached /tmp/q: joins and
# checks them, and unpacks the binaries to /tmp/p/bin, Flickr8k to /tmp/p/f8k and the
# backbones to data/models (where scripts/gpu/quality.sh looks for it).
set -euo pipefail
cat /tmp/q/part.* > /tmp/payload.tar
[ "$(sha256sum < /tmp/payload.tar | cut -d' ' -f1)" = "$(cat /tmp/q/payload.sha256)" ] ||
  { echo "unpack: the joined parts do not match payload.sha256" >&2; exit 1; }
rm -f /tmp/q/part.*; mkdir -p /tmp/p && tar xf /tmp/payload.tar -C /tmp/p && rm /tmp/payload.tar
python3 -c "
import lzma, shutil
for name in ('pipe', 'pipe-torch'):
    with lzma.open(f'/tmp/p/bin/{name}.xz') as src, open(f'/tmp/p/bin/{name}', 'wb') as dst:
        shutil.copyfileobj(src, dst)"
chmod +x /tmp/p/bin/pipe /tmp/p/bin/pipe-torch
mkdir -p data/models && cp -r /tmp/p/models/efficientnet_lite0_grid /tmp/p/models/efficientnet_lite0_trunk data/models/
echo "unpacked: $(ls /tmp/p/f8k/images | wc -l) images, $(nvidia-smi -L 2>/dev/null | head -1)"
