"""Times epochs of the PyTorch peer's own training loop (shared/peers/torch_merge) on this
machine, with random features, for a side-by-side with `pipe`'s train stage.
Usage: .venv/bin/python scripts/bench_peer_epoch.py [EPOCHS]   (FLICKR8K_DIR, PEER_DIR env vars)"""
import os, sys, time, random
os.environ.setdefault("PEER_TMP", "/tmp/peerbench/tmp")
PEER = os.environ.get("PEER_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peers", "torch_merge"))
sys.path.insert(0, PEER)
import numpy as np, torch
import common, train
torch.manual_seed(0); random.seed(0)
raw, splits, cleaned, itos, max_len, n_types = train.build_data()
names = splits["train"] + splits["dev"]
name2row = {n: i for i, n in enumerate(names)}
feats = torch.randn(len(names), 1280)
stoi = {w: i for i, w in enumerate(itos)}
tr_rows, tr_seqs = train.encode(cleaned["train"], splits["train"], stoi, name2row)
model = train.MergeCaptioner(len(itos)); opt = torch.optim.Adam(model.parameters(), lr=1e-3)
print("vocab", len(itos), "captions", len(tr_seqs), "threads", torch.get_num_threads(), flush=True)
for ep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
    order = list(range(len(tr_seqs))); random.shuffle(order)
    t0 = time.perf_counter(); tl = tn = 0
    for f, inp, tgt in train.batches(tr_rows, tr_seqs, feats, order):
        loss, n = train.loss_fn(model, f, inp, tgt)
        opt.zero_grad(); (loss / n).backward(); opt.step()
        tl += loss.item(); tn += n
    print(f"epoch {ep+1}: {time.perf_counter()-t0:.2f} s, loss {tl/tn:.4f}", flush=True)
