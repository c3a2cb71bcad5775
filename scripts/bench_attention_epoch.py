"""Times training epochs of a plain-PyTorch grid decoder, the same model as pipe's
`decoder: attention` (Show, Attend and Tell; pipe-torch/src/model/decoder/attention.rs) or
`decoder: transformer` (pipe-torch/src/model/decoder/transformer.rs), on the Flickr8k train
captions with random 7x7x1280 grids, for a side-by-side with pipe's train stage on the
same machine. Written the way a PyTorch user would: an nn.Module (torch.nn's own
TransformerDecoder for the transformer), Adam, cross-entropy on the real tokens only.

Usage: .venv/bin/python scripts/bench_attention_epoch.py [EPOCHS]
  MODEL (attention | transformer), FLICKR8K_DIR (default ../shared/flickr8k), BATCH (64),
  EMBED (256), HIDDEN (512), ATTENTION (256), MIN_COUNT (5); the transformer: WIDTH (256),
  LAYERS (3), HEADS (8), DROPOUT (0.3)
"""
import collections
import os
import random
import sys
import time

import torch
from torch import nn

ROOT = os.environ.get("FLICKR8K_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "flickr8k"))
BATCH = int(os.environ.get("BATCH", 64))
E, H, A = (int(os.environ.get(k, d)) for k, d in (("EMBED", 256), ("HIDDEN", 512), ("ATTENTION", 256)))
D, L = 1280, 49


def load_captions():
    """Train captions as token ids (startseq ... endseq), lower-cased words, min count 5."""
    train = set(open(os.path.join(ROOT, "Flickr_8k.trainImages.txt")).read().split())
    rows = []
    for line in open(os.path.join(ROOT, "Flickr8k.token.txt")):
        key, text = line.rstrip("\n").split("\t")
        image = key.split("#")[0]
        if image in train:
            words = [w for w in text.lower().split() if w.isalpha()]
            rows.append((image, words))
    counts = collections.Counter(w for _, ws in rows for w in ws)
    itos = ["<pad>", "<unk>", "startseq", "endseq"] + sorted(w for w, c in counts.items() if c >= int(os.environ.get("MIN_COUNT", 5)))
    stoi = {w: i for i, w in enumerate(itos)}
    images = sorted({im for im, _ in rows})
    row_of = {im: i for i, im in enumerate(images)}
    seqs = [[2] + [stoi.get(w, 1) for w in ws] + [3] for _, ws in rows]
    return [row_of[im] for im, _ in rows], seqs, len(itos), len(images)


class Attention(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, E, padding_idx=0)
        self.project = nn.Linear(D, H)
        self.init_h, self.init_c = nn.Linear(H, H), nn.Linear(H, H)
        self.keys, self.query, self.score = nn.Linear(H, A), nn.Linear(H, A, bias=False), nn.Linear(A, 1)
        self.gate = nn.Linear(H, H)
        self.lstm = nn.LSTMCell(E + H, H)
        self.out_hidden, self.out_context = nn.Linear(H, E, bias=False), nn.Linear(H, E, bias=False)
        self.out = nn.Linear(E, vocab)
        self.drop = nn.Dropout(0.5)

    def forward(self, grid, inputs, mask):
        cells = self.drop(torch.relu(self.project(grid)))
        keys = self.keys(cells)
        mean = cells.mean(1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        words = self.embed(inputs)
        pre, alphas = [], []
        for t in range(inputs.shape[1]):
            alpha = torch.softmax(self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(2), 1)
            z = torch.sigmoid(self.gate(h)) * torch.bmm(alpha.unsqueeze(1), cells).squeeze(1)
            h, c = self.lstm(torch.cat([words[:, t], z], 1), (h, c))
            pre.append(words[:, t] + self.out_hidden(h) + self.out_context(z))
            alphas.append(alpha)
        logits = self.out(self.drop(torch.stack(pre, 1)[mask]))
        total = (torch.stack(alphas, 1) * mask.unsqueeze(2)).sum(1)
        return logits, ((1 - total) ** 2).mean()


class Transformer(nn.Module):
    """Pre-norm layers, cross-attention to the cells with learned row and column positions."""

    def __init__(self, vocab):
        super().__init__()
        width = int(os.environ.get("WIDTH", 256))
        dropout = float(os.environ.get("DROPOUT", 0.3))
        self.embed = nn.Embedding(vocab, E, padding_idx=0)
        self.embed_project = nn.Linear(E, width) if E != width else nn.Identity()
        self.word_positions = nn.Parameter(torch.randn(64, width) * 0.02)
        self.project = nn.Linear(D, width)
        self.rows, self.columns = (nn.Parameter(torch.randn(7, width) * 0.02) for _ in range(2))
        self.memory_norm = nn.LayerNorm(width)
        layer = nn.TransformerDecoderLayer(
            width, int(os.environ.get("HEADS", 8)), 4 * width, dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, int(os.environ.get("LAYERS", 3)), norm=nn.LayerNorm(width))
        self.out = nn.Linear(width, vocab)
        self.drop = nn.Dropout(dropout)

    def forward(self, grid, inputs, mask):
        positions = (self.rows.unsqueeze(1) + self.columns.unsqueeze(0)).reshape(L, -1)
        memory = self.drop(self.memory_norm(self.project(grid) + positions))
        steps = inputs.shape[1]
        x = self.drop(self.embed_project(self.embed(inputs)) + self.word_positions[:steps])
        causal = nn.Transformer.generate_square_subsequent_mask(steps)
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.out(x[mask]), torch.zeros(())


def main():
    torch.manual_seed(0)
    random.seed(0)
    rows, seqs, vocab, images = load_captions()
    grids = torch.randn(images, L, D).half()  # pipe keeps grids as Float16 too
    model = Transformer(vocab) if os.environ.get("MODEL") == "transformer" else Attention(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    print(f"{type(model).__name__}: vocab {vocab}, captions {len(seqs)}, threads {torch.get_num_threads()}", flush=True)
    for epoch in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        order = list(range(len(seqs)))
        random.shuffle(order)
        started, total, count = time.perf_counter(), 0.0, 0
        for b in range(0, len(order), BATCH):
            ids = order[b : b + BATCH]
            width = max(len(seqs[i]) for i in ids)
            padded = torch.tensor([seqs[i] + [0] * (width - len(seqs[i])) for i in ids])
            inputs, targets = padded[:, :-1], padded[:, 1:]
            mask = targets != 0
            grid = grids[torch.tensor([rows[i] for i in ids])].float()
            logits, penalty = model(grid, inputs, mask)
            loss = nn.functional.cross_entropy(logits, targets[mask])
            opt.zero_grad()
            (loss + penalty).backward()
            opt.step()
            total += loss.item() * int(mask.sum())
            count += int(mask.sum())
        print(f"epoch {epoch + 1}: {time.perf_counter() - started:.1f} s, loss {total / count:.4f}", flush=True)


if __name__ == "__main__":
    main()
