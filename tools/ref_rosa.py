#!/usr/bin/python3
"""Generate the ROSA training trajectory fixture, tests/fixtures/rosa/.

Usage:  /usr/bin/python3 tools/ref_rosa.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (the from-scratch HF Llama model) and
adds ROSA (METHODS §17; rosa-paper/rosa peftnet/peft_module/_peftlinear.py
PeftLinear.factorize / merge / forward, factorize_method svd_equal, no scale)
on every projection, in PyTorch orientation (W [out, in]; the reference's
a = our A^T, b = our B^T):

    y = x W_fixed^T + (x A^T) B^T
    factorize:  W = U diag(S) Vh (torch.linalg.svd, fp32, thin);
                A = diag(S[w]) Vh[w, :],  B = U[:, w],  W_fixed = W - B A
    merge:      W <- W_fixed + B A

Setup: the tests/fixtures/llama_gqa model and batch, r = 2, the window
sample_method "top" (w = [0, r): no random draw to reproduce), all seven
projections of both layers.  Training: 10 steps of torch.optim.AdamW(lr=1e-3,
betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False), constant lr,
no clipping; after the optimizer steps 4 and 8 every module merges, factorises
again and re-splits (K = 4; not after the last step).

Optimizer at a re-factorisation: the reference builds a NEW AdamW (its bias
correction restarts at step 1).  peft.cpp resets the state of A and B through
optimizer_view::reset_state, which zeroes their moments and their own step
counts (train/optim.h), so this fixture does what the reference does: a fresh
torch AdamW.  --check prints how far the other choice (moments zeroed, the
step count kept: peft.cpp before per-parameter counts) moves the losses, and
the f32-vs-f64 discrepancy.

reference.safetensors:
  traj.loss                        F32 [10]    loss at the start of step s
  final.<module>.merged            F32 [out,in] W_fixed + B A after 10 steps (sign-free)
  final.<module>.rosa_base         F32 [out,in] W_fixed after 10 steps
  final.<module>.lora_{A,B}.abs    F32          |A|, |B| after 10 steps
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402

CASE = "llama_gqa"
RANK = 2
K = 4
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
STEPS = 10
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01

_base_linear = R.linear


def module_paths(cfg):
    return [f"model.layers.{l}.{t}" for l in range(cfg["num_hidden_layers"]) for t in TARGETS]


def split(w):
    """svd_equal with the window [0, RANK): (A, B, W_fixed)."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    a = s[:RANK, None] * vh[:RANK, :]
    b = u[:, :RANK].contiguous()
    return a.contiguous(), b, w - b @ a


def train(params, cfg, batch, dtype, fresh_optimizer):
    p = {n: t.to(dtype) for n, t in params.items()}
    mods = {}
    for path in module_paths(cfg):
        a, b, wf = split(p[path + ".weight"])
        p[path + ".weight"] = wf
        mods[path] = (a.clone().requires_grad_(True), b.clone().requires_grad_(True))

    def rosa_linear(x, pp, name):
        y = _base_linear(x, pp, name)
        ab = mods.get(name)
        if ab is not None:
            a, b = ab
            y = y + (x @ a.t()) @ b.t()
        return y

    plist = [t for ab in mods.values() for t in ab]

    def make_opt():
        return torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, foreach=False)

    opt = make_opt()
    losses = []
    R.linear = rosa_linear
    try:
        for i in range(STEPS):
            opt.zero_grad(set_to_none=True)
            logits, _ = R.forward(p, cfg, batch)
            loss = R.causal_lm_loss(logits, batch["labels"])
            loss.backward()
            opt.step()
            losses.append(loss.item())
            done = i + 1
            if done % K == 0 and done < STEPS:
                with torch.no_grad():
                    for path, (a, b) in mods.items():
                        merged = p[path + ".weight"] + b @ a
                        na, nb, wf = split(merged)
                        p[path + ".weight"] = wf
                        a.copy_(na)
                        b.copy_(nb)
                if fresh_optimizer:
                    opt = make_opt()
                else:
                    for t in plist:
                        opt.state[t]["exp_avg"].zero_()
                        opt.state[t]["exp_avg_sq"].zero_()
    finally:
        R.linear = _base_linear
    final = {}
    for path, (a, b) in mods.items():
        a, b = a.detach(), b.detach()
        final[path] = (a, b, p[path + ".weight"])
    return losses, final


def main():
    args = R.generator_args(__doc__)
    cfg, params, batch = R.load_case(args.out, CASE)
    out = os.path.join(args.out, "rosa")
    os.makedirs(out, exist_ok=True)

    losses, final = train(params, cfg, batch, torch.float32, True)
    refout = {"traj.loss": np.array(losses, dtype="<f4")}
    for path, (a, b, wf) in final.items():
        refout[f"final.{path}.merged"] = R.f32(wf + b @ a)
        refout[f"final.{path}.rosa_base"] = R.f32(wf)
        refout[f"final.{path}.lora_A.abs"] = R.f32(a.abs())
        refout[f"final.{path}.lora_B.abs"] = R.f32(b.abs())
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)

    with torch.no_grad():
        base_logits, _ = R.forward(params, cfg, batch)
        base_loss = R.causal_lm_loss(base_logits, batch["labels"]).item()
    print(f"rosa: base loss {base_loss:.6f}, traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    upd = max(float((wf + b @ a - params[path + ".weight"]).abs().max()) for path, (a, b, wf) in final.items())
    print(f"  max |merged - W0| after {STEPS} steps: {upd:.3e}")
    if args.check:
        l64, f64 = train(params, cfg, batch, torch.float64, True)
        dl = max(abs(x - y) / abs(y) for x, y in zip(losses, l64))
        dm = max(float((wf + b @ a - (f64[p][2] + f64[p][1] @ f64[p][0]).float()).abs().max())
                 for p, (a, b, wf) in final.items())
        print(f"  f32 vs f64: loss rel {dl:.3e}, merged max abs {dm:.3e}")
        lf, _ = train(params, cfg, batch, torch.float32, False)
        print("  moments zeroed, step counts kept (not the reference): losses " +
              " ".join(f"{x:.6f}" for x in lf) + f" (max rel diff {max(abs(x - y) / abs(y) for x, y in zip(lf, losses)):.3e})")


if __name__ == "__main__":
    main()
