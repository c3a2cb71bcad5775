#!/usr/bin/env bash
# Packs what scripts/gpu/quality.sh needs on a GPU machine into parts the device tool can
# carry (at most 64 MiB a call, working tree included): the stripped and xz'd `pipe` and
# `pipe-torch` built here, the Lite0 grid backbone and trunk (with its head), and Flickr8k's token and split files with
# the train and dev photos, as one tar split into .device/q0, .device/q1, …
# Usage (repo root, after `make build`): scripts/gpu/pack.sh FLICKR8K_DIR
# Then one device call per part, each within the machine's 30 s warm window of the last:
#   carry [".device/qK"], command: mkdir -p /tmp/q && cp .device/qK/* /tmp/q/
# and, with the last part, `scripts/gpu/unpack.sh` followed by the run, e.g.
#   PIPE=/tmp/p/bin/pipe LIMIT=535 JOBS=10 scripts/gpu/quality.sh /tmp/p/f8k /tmp/w
set -euo pipefail
f8k=$(realpath "$1"); root=$(pwd); stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/models" "$stage/f8k"
cp target/release/pipe target/release/pipe-torch "$stage/bin/"
strip "$stage/bin/"*; xz -T0 -6 "$stage/bin/pipe" "$stage/bin/pipe-torch"
mkdir -p "$stage/models/efficientnet_lite0_grid" "$stage/models/efficientnet_lite0_trunk"
cp data/models/efficientnet_lite0_grid/{model.pt,backbone.json} "$stage/models/efficientnet_lite0_grid/"
cp data/models/efficientnet_lite0_trunk/{model.pt,backbone.json,head.pt,head.json} "$stage/models/efficientnet_lite0_trunk/"
cp "$f8k"/Flickr8k.token.txt "$f8k"/Flickr_8k.*Images.txt "$stage/f8k/"
cp -r "$f8k/images" "$stage/f8k/images"
tar cf "$stage.tar" -C "$stage" bin models f8k && rm -rf "$stage"
rm -rf .device/q[0-9]*; mkdir -p .device/parts
(cd .device/parts && rm -f part.* && split -b 60000000 -d "$stage.tar" part.)
sha256sum < "$stage.tar" | cut -d' ' -f1 > .device/parts/payload.sha256; rm "$stage.tar"
k=0
for part in .device/parts/part.*; do
  mkdir -p ".device/q$k"; mv "$part" ".device/q$k/"; k=$((k + 1))
done
mv .device/parts/payload.sha256 ".device/q$((k - 1))/"; rmdir .device/parts
du -sh .device/q*
