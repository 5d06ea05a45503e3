#!/usr/bin/python3
"""Generate the GaLore training trajectory fixture, tests/fixtures/galore/.

Usage:  /usr/bin/python3 tools/ref_galore.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (the from-scratch HF Llama model) and
reimplements GaLore's optimizer (METHODS §12; jiaweizzhao/GaLore
galore_torch/galore_projector.py GaLoreProjector, galore_torch/adamw.py AdamW)
in torch, per parameter, with t = the parameter's step count:

    if t % T == 0:  U, S, Vh = torch.linalg.svd(G, full_matrices=False)
                    std: m >= n -> P = Vh[:r] (right), else P = U[:, :r] (left)
                    each singular vector's sign: its largest element positive
    R = G P^T (right) or P^T G (left);  t += 1
    m = b1 m + (1-b1) R;  v = b2 v + (1-b2) R^2;  N = m / (sqrt(v) + eps)
    W -= lr sqrt(1-b2^t)/(1-b1^t) * scale * (N P (right) or P N (left))
    W -= lr wd W
The sign rule is peft.cpp's, not GaLore's (which leaves the signs to LAPACK):
within a window they cancel (R and N flip together), but at a refresh the
moments carry over, so without a rule the trajectory depends on the LAPACK
build (torch's and peft.cpp's differ here at the step-3 refresh).
Parameters that are not 2-D weights of attn/mlp modules get the same AdamW with
R = G and no scale.

Setup: full fine-tuning of the tests/fixtures/llama_gqa model on its batch,
rank 8, update_proj_gap 3 (projectors from the SVD at steps 0 and 3, the
moments carried over the refresh), scale 0.25, proj_type std, lr 1e-3, betas
(0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter, constant lr, no
clipping, 6 steps.

reference.safetensors:
  traj.loss            F32 [6]      loss at the start of each step
  final.<parameter>    F32          every parameter after 6 steps
"""

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402

CASE = "llama_gqa"
RANK = 8
GAP = 3
SCALE = 0.25
STEPS = 6
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01


def projected(name, t):
    return t.dim() == 2 and ("attn" in name or "mlp" in name)


def galore_step(p, state, name):
    """One update of GaLore's AdamW for parameter p (its .grad set)."""
    g = p.grad
    st = state.setdefault(name, {"step": 0})
    proj = projected(name, p)
    if proj:
        right = g.shape[0] >= g.shape[1]
        if "P" not in st or st["step"] % GAP == 0:
            U, _, Vh = torch.linalg.svd(g, full_matrices=False)
            P = Vh[:RANK, :].clone() if right else U[:, :RANK].t().clone()   # [r, len]
            idx = P.abs().argmax(dim=1, keepdim=True)
            P = P * torch.sign(P.gather(1, idx))
            st["P"] = P if right else P.t().contiguous()
        g = g @ st["P"].t() if right else st["P"].t() @ g
    if "m" not in st:
        st["m"] = torch.zeros_like(g)
        st["v"] = torch.zeros_like(g)
    st["step"] += 1
    b1, b2 = BETAS
    st["m"].mul_(b1).add_(g, alpha=1.0 - b1)
    st["v"].mul_(b2).addcmul_(g, g, value=1.0 - b2)
    denom = st["v"].sqrt().add_(EPS)
    step_size = LR * math.sqrt(1.0 - b2 ** st["step"]) / (1.0 - b1 ** st["step"])
    n = st["m"] / denom
    if proj:
        n = (n @ st["P"] if right else st["P"] @ n) * SCALE
    p.add_(n, alpha=-step_size)
    p.add_(p, alpha=-LR * WEIGHT_DECAY)


def train(params, cfg, batch, dtype):
    p = R.leaf_params(params, dtype)
    state = {}
    losses = []
    for _ in range(STEPS):
        for t in p.values():
            t.grad = None
        logits, _ = R.forward(p, cfg, batch)
        loss = R.causal_lm_loss(logits, batch["labels"])
        loss.backward()
        with torch.no_grad():
            for name, t in p.items():
                galore_step(t, state, name)
        losses.append(loss.item())
    return losses, {n: t.detach() for n, t in p.items()}


def main():
    args = R.generator_args(__doc__)
    cfg, params, batch = R.load_case(args.out, CASE)
    out = os.path.join(args.out, "galore")
    os.makedirs(out, exist_ok=True)
    losses, final = train(params, cfg, batch, torch.float32)
    refout = {"traj.loss": np.array(losses, dtype="<f4")}
    for name, t in final.items():
        refout["final." + name] = R.f32(t)
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)
    print(f"galore: traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    upd = max(float((final[n] - params[n]).abs().max()) for n in final)
    print(f"  max |W - W0| after {STEPS} steps: {upd:.3e}")
    if args.check:
        l64, f64 = train(params, cfg, batch, torch.float64)
        dl = max(abs(x - y) / abs(y) for x, y in zip(losses, l64))
        dw = max(float((final[n] - f64[n].float()).abs().max()) for n in final)
        print(f"  f32 vs f64: loss rel {dl:.3e}, weights max abs {dw:.3e}")


if __name__ == "__main__":
    main()
