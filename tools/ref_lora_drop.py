#!/usr/bin/python3
"""Generate the LoRA-drop stage-1 fixture, tests/fixtures/lora_drop/.

Usage:  /usr/bin/python3 tools/ref_lora_drop.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (model, batch reader, safetensors) and
tools/ref_lora.py (the LoRA setup and its starting adapter) and adds LoRA-drop's
stage 1 (METHODS.md §10; Zhou et al., arXiv 2402.07721):

    g_i = sum over the sample's non-padding tokens t of ||s B_i A_i x_i,t||^2
    I_i = g_i / sum_j g_j
    kept(T) = the smallest prefix of the modules sorted by I descending (ties
              in module order) whose cumulative I reaches T

x_i,t is module i's input in the model adapted by every stage-1 LoRA (the
importance is measured after the probe training, with the probes in place).

Setup: the llama_gqa model, tests/fixtures/lora_parity/initial_adapter as the
stage-1 LoRA's start (r=4, alpha=8, s=2, all 7 projections of both layers, A and
B non-zero), and 5 data rows of T=10 laid out as peft.cpp's data_rows: segment
id 0 marks padding (token 0, label -100, position 0), packed samples carry ids
1, 2, ... with positions restarting and the label of each sample's first token
-100; row 0 has a 3-token prompt whose labels are -100 (its tokens still count:
the importance sums over every non-padding token).

  row 0: one sample of 10 tokens, prompt 3        (no padding)
  row 1: one sample of 6, then 4 padding
  row 2: samples of 4 and 3, then 3 padding
  rows 3, 4: full rows outside the sample

Stage 1 as peft.cpp's calibrate_train_rows: the sample is the first
ceil(fraction * rows) = ceil(0.45 * 5) = 3 rows; 3 steps on batches of 2 rows
cycling through the sample in order (rows 0 1 | 2 0 | 1 2), torch AdamW (lr
1e-2, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01, foreach=False), constant
lr, clip_grad_norm_ 1.0 over every A and B, HF mean cross-entropy per batch.
Then one measuring pass over rows 0..2.

reference.safetensors:
  rows.{input_ids,labels,position_ids,segment_ids}  I32 [5, 10]
  traj.loss        F32 [3]    stage-1 loss before each step's update
  g0, g            F64 [14]   importance of the starting / the trained LoRA
  importance       F64 [14]   I = g / sum g (module order: layer, q k v o gate up down)
  g_with_padding   F64 [14]   g also summing the padding tokens (what a wrong
                              count would give; the test shows it differs)
  kept.<T>         I32 [14]   1 = keeps its own LoRA, T in THRESHOLDS
--check repeats everything in float64 and prints the f32-vs-f64 discrepancies
and each threshold's margin (distance of the cumulative sums around the cut
from T), which must dwarf the C++ tolerance for the kept sets to be stable.
"""

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402
import ref_lora as L  # noqa: E402

FRACTION = 0.45
STEPS = 3
MICRO_BATCH = 2
LR = 1e-2
MAX_GRAD_NORM = 1.0
THRESHOLDS = (0.5, 0.9)
T = 10
DATA_SEED = 5151
# (sample lengths, prompt length of the first sample) per row; the rest of a row is padding
ROWS = [([10], 3), ([6], 0), ([4, 3], 0), ([10], 0), ([10], 0)]

_base_linear = R.linear


def data_rows(V):
    g = torch.Generator().manual_seed(DATA_SEED)
    n = len(ROWS)
    ids = torch.zeros(n, T, dtype=torch.int64)
    labels = torch.full((n, T), R.IGNORE_INDEX, dtype=torch.int64)
    pos = torch.zeros(n, T, dtype=torch.int64)
    seg = torch.zeros(n, T, dtype=torch.int64)
    for r, (lens, prompt) in enumerate(ROWS):
        start = 0
        for k, ln in enumerate(lens):
            ids[r, start:start + ln] = torch.randint(1, V, (ln,), generator=g)
            labels[r, start:start + ln] = ids[r, start:start + ln]
            labels[r, start] = R.IGNORE_INDEX
            pos[r, start:start + ln] = torch.arange(ln)
            seg[r, start:start + ln] = k + 1
            start += ln
        labels[r, :prompt] = R.IGNORE_INDEX
    return dict(input_ids=ids, labels=labels, position_ids=pos, segment_ids=seg)


def select_rows(rows, idx):
    return {k: v[idx] for k, v in rows.items()}


class adapted_model:
    """R.forward with every projection plus its LoRA; while measuring, each module's
    sum of ||s B A x||^2 over the tokens of `count` (a [B*T] bool mask)."""

    def __init__(self, lora, scaling):
        self.lora, self.scaling = lora, scaling
        self.count = None
        self.g = {}

    def linear(self, x, pp, name):
        y = _base_linear(x, pp, name)
        ab = self.lora.get(name)
        if ab is None:
            return y
        a, b = ab
        d = ((x @ a.t()) @ b.t()) * self.scaling
        if self.count is not None:
            dd = d.detach().reshape(-1, d.shape[-1]).double()
            self.g[name] = self.g.get(name, 0.0) + float((dd[self.count] ** 2).sum())
        return y + d

    def measure(self, p, cfg, batch, count):
        self.count, self.g = count, {}
        R.linear = self.linear
        try:
            with torch.no_grad():
                R.forward(p, cfg, batch)
        finally:
            R.linear = _base_linear
            self.count = None
        return self.g


def kept_set(I, threshold):
    order = sorted(range(len(I)), key=lambda i: -I[i])   # stable: ties in module order
    kept, cum = [0] * len(I), 0.0
    for i in order:
        kept[i] = 1
        cum += I[i]
        if cum >= threshold:
            break
    return kept


def margin(I, threshold):
    """How far the cut is from flipping: the cumulative sums just before and at the cut vs T."""
    c = np.cumsum(sorted(I, reverse=True))
    k = int(np.argmax(c >= threshold)) if (c >= threshold).any() else len(I) - 1
    before = c[k - 1] if k > 0 else 0.0
    return min(threshold - before, c[k] - threshold)


def stage1(params, cfg, rows, lora0, dtype):
    paths = L.module_paths(cfg)
    p = {n: t.to(dtype) for n, t in params.items()}
    lora = {k: (a.to(dtype).clone().requires_grad_(True), b.to(dtype).clone().requires_grad_(True))
            for k, (a, b) in lora0.items()}
    model = adapted_model(lora, L.ALPHA / L.RANK)
    n_rows = len(ROWS)
    n_sample = min(n_rows, max(1, math.ceil(FRACTION * n_rows)))
    sample = select_rows(rows, list(range(n_sample)))

    def importance():
        count = sample["segment_ids"].reshape(-1) != 0
        g = model.measure(p, cfg, sample, count)
        g_all = model.measure(p, cfg, sample, torch.ones_like(count))
        return [g[q] for q in paths], [g_all[q] for q in paths]

    g0, _ = importance()
    plist = [t for ab in lora.values() for t in ab]
    opt = torch.optim.AdamW(plist, lr=LR, betas=L.BETAS, eps=L.EPS, weight_decay=L.WEIGHT_DECAY, foreach=False)
    losses = []
    for step in range(STEPS):
        idx = [(step * MICRO_BATCH + i) % n_sample for i in range(MICRO_BATCH)]
        clip = lambda _: torch.nn.utils.clip_grad_norm_(plist, MAX_GRAD_NORM)  # noqa: E731
        losses += R.train_adapted(p, cfg, select_rows(sample, idx), model.linear, opt, 1, clip)
    g, g_all = importance()
    return dict(loss=losses, g0=g0, g=g, g_all=g_all)


def main():
    args = R.generator_args(__doc__)
    cfg, params, _ = R.load_case(args.out, L.CASE)
    back = R.read_safetensors(os.path.join(args.out, "lora_parity", "initial_adapter", "adapter_model.safetensors"))
    lora0 = {q: (torch.from_numpy(back[L.adapter_key(q, "A")].copy()), torch.from_numpy(back[L.adapter_key(q, "B")].copy()))
             for q in L.module_paths(cfg)}
    rows = data_rows(cfg["vocab_size"])

    r = stage1(params, cfg, rows, lora0, torch.float32)
    g = np.array(r["g"], dtype="<f8")
    I = g / g.sum()
    out = {"rows." + k: R.i32(v) for k, v in rows.items()}
    out["traj.loss"] = np.array(r["loss"], dtype="<f4")
    out["g0"] = np.array(r["g0"], dtype="<f8")
    out["g"] = g
    out["importance"] = I
    out["g_with_padding"] = np.array(r["g_all"], dtype="<f8")
    for t in THRESHOLDS:
        out[f"kept.{t}"] = np.array(kept_set(list(I), t), dtype="<i4")
    d = os.path.join(args.out, "lora_drop")
    os.makedirs(d, exist_ok=True)
    R.write_safetensors(os.path.join(d, "reference.safetensors"), out)

    print(f"lora_drop: stage-1 loss {r['loss'][0]:.6f} -> {r['loss'][-1]:.6f}")
    print("  I:", " ".join(f"{v:.4f}" for v in I))
    I0 = np.array(r["g0"]) / sum(r["g0"])
    print(f"  training moved I by max {np.abs(I - I0).max():.3e}; padding counted moves g by max rel "
          f"{np.max(np.abs(out['g_with_padding'] - g) / g):.3e}")
    for t in THRESHOLDS:
        print(f"  T {t}: keeps {int(out[f'kept.{t}'].sum())} of {len(I)}, margin {margin(list(I), t):.3e}")
    if args.check:
        r64 = stage1(params, cfg, rows, lora0, torch.float64)
        g64 = np.array(r64["g"])
        dl = max(abs(a - b) / abs(b) for a, b in zip(r["loss"], r64["loss"]))
        print(f"  f32 vs f64: loss rel {dl:.3e}, g max rel {np.max(np.abs(g - g64) / g64):.3e}, "
              f"g0 max rel {np.max(np.abs(np.array(r['g0']) - r64['g0']) / np.array(r64['g0'])):.3e}")
        for t in THRESHOLDS:
            assert kept_set(list(g64 / g64.sum()), t) == list(out[f"kept.{t}"]), f"T {t}: float64 keeps another set"


if __name__ == "__main__":
    main()
