"""Decode a pipe-trained model with the PyTorch peer's own greedy and beam search, and score
both its captions and pipe's with the peer's scorer (pycocoevalcap).

This separates decoding from training when pipe and the peer disagree: if the peer's beam
search on pipe's weights gives pipe's captions, the two beams are the same and any gap
is in the trained weights.

    FLICKR8K_DIR=../shared/flickr8k .venv/bin/python scripts/cross_decode_peer.py \
        --run data/out/flickr8k-merge --peer ../shared/peers/torch_merge

`--run` is a `pipe -f pipelines/flickr8k-merge.yaml run -S params.split=dev` output folder
(train/, tokenize/, features/ and caption/ inside). Needs java for the PTB tokenizer.
"""
import argparse
import json
import os
import struct
import sys
import tempfile

import numpy as np
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch

# pipe's weight names → the peer's MergeCaptioner attribute names.
RENAMED_MODULES = {"image": "img", "embed": "emb", "fc": "fc1"}


def load_safetensors(path):
    """Reads an f32 safetensors file without the safetensors package."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {meta['dtype']}, expected F32")
        start, end = meta["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=np.float32).copy()
        tensors[name] = torch.from_numpy(array).view(meta["shape"])
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="data/out/flickr8k-merge", help="pipe's output folder of the Flickr8k merge pipeline")
    ap.add_argument("--peer", default="../shared/peers/torch_merge", help="the peer's source folder")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--max-words", type=int, default=34, help="the peer's step limit")
    args = ap.parse_args()

    os.environ.setdefault("PEER_TMP", tempfile.mkdtemp(prefix="peer_cross_"))
    sys.path.insert(0, os.path.abspath(args.peer))
    import common  # noqa: E402  (the peer's modules)
    import decode_eval  # noqa: E402
    from model import MergeCaptioner  # noqa: E402

    config = json.load(open(f"{args.run}/train/model.json"))
    weights = load_safetensors(f"{args.run}/train/model.safetensors")
    state = {}
    for name, tensor in weights.items():
        module, rest = name.split(".", 1)
        state[f"{RENAMED_MODULES.get(module, module)}.{rest}"] = tensor
    vocab = json.load(open(f"{args.run}/tokenize/vocab.json"))
    itos = vocab["tokens"]
    stoi = {t: i for i, t in enumerate(itos)}
    model = MergeCaptioner(len(itos), feat_dim=config["feature_dim"], hid=config["hidden"],
                           mid=config["dense"], p=config["dropout"])
    model.load_state_dict(state)
    model.eval()
    ban = torch.zeros(len(itos))
    ban[[vocab["pad_id"], vocab["unk_id"], vocab["start_id"]]] = float("-inf")
    # The peer's loops look these up by name in stoi.
    common.PAD, common.UNK = itos[vocab["pad_id"]], itos[vocab["unk_id"]]
    common.START, common.END = itos[vocab["start_id"]], itos[vocab["end_id"]]

    table = ipc.open_file(f"{args.run}/features/features.arrow").read_all()
    names = table.column("image").to_pylist()
    flat = table.column("features").combine_chunks().values.to_numpy()
    features = torch.from_numpy(flat.reshape(len(names), -1).copy())
    row = {n: i for i, n in enumerate(names)}
    images = common.load_split(args.split)
    raw = common.load_raw_captions()
    references = {n: raw[n] for n in images}
    split_features = features[[row[n] for n in images]]

    decode_eval.MAX_WORDS = args.max_words
    beam_raw, beam_norm = {}, {}
    for i, n in enumerate(images):
        beam_raw[n], beam_norm[n] = decode_eval.beam_search(model, split_features[i], stoi, itos, ban)
    greedy = decode_eval.greedy(model, split_features, stoi, itos, ban)
    greedy = {n: greedy[i] for i, n in enumerate(images)}

    systems = {"peer beam-5 LN on pipe's model": beam_norm, "peer beam-5 raw on pipe's model": beam_raw,
               "peer greedy on pipe's model": greedy}
    # pipe's own captions of the same model, beside the peer's decoding they should equal.
    for stage, label, peer_twin in (("caption", "pipe's caption stage", beam_norm),
                                    ("caption_greedy", "pipe's caption_greedy stage", greedy)):
        path = f"{args.run}/{stage}/captions.parquet"
        if not os.path.exists(path):
            continue
        captions = pq.read_table(path).to_pydict()
        ours = {n: c.split() for n, c in zip(captions["image"], captions["caption"])}
        same = sum(ours.get(n) == peer_twin[n] for n in images)
        print(f"{label}: {same}/{len(images)} captions identical to the peer's decoding of the same model")
        systems[label] = ours
    for label, hypotheses in systems.items():
        scores = decode_eval.score_coco(references, hypotheses, images)
        print(f"{label}: " + json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)


if __name__ == "__main__":
    main()
