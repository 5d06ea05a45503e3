#!/usr/bin/python3
"""Generate the LoRA-FA trajectory fixture, tests/fixtures/lora_fa_parity/.

Usage:  /usr/bin/python3 tools/ref_lora_fa.py --out tests/fixtures [--check]

Same model, batch and initial adapter as tools/ref_lora.py (tests/fixtures/lora_parity/
initial_adapter: LoRA r=4, alpha=8 on the 7 projections of llama_gqa, A and B non-zero), trained
as LoRA-FA (METHODS §16): A frozen, and after backward B's gradient is preconditioned as PEFT's
LoraFAOptimizer does (peft src/peft/optimizers/lorafa.py):

    g_B <- (1/s^2) * g_B @ pinv(A A^T + 1e-8 I),    s = lora_alpha / r

Then torch.optim.AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, foreach=False)
on B only, 10 steps, constant lr, no clipping. That AdamW is the trainer's own; PEFT's
LoraFAOptimizer runs transformers' older AdamW variant instead (eps added to sqrt(v) before the
bias correction, weight decay after the update, eps 1e-6) and the product under bf16 autocast:
this fixture pins the preconditioner, not those.

reference.safetensors:
  traj.loss            F32 [10]   loss at the start of step s (before its update)
  final.<adapter key>  F32        B after the 10 steps (A is unchanged by construction)
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402
import ref_lora as L  # noqa: E402


def train(params, cfg, batch, lora0, dtype):
    scaling = L.ALPHA / L.RANK
    p = {n: t.to(dtype) for n, t in params.items()}
    lora = {k: (a.to(dtype).clone(), b.to(dtype).clone().requires_grad_(True)) for k, (a, b) in lora0.items()}
    eye = torch.eye(L.RANK, dtype=dtype)
    precond = {k: torch.linalg.pinv(a @ a.t() + 1e-8 * eye) / scaling**2 for k, (a, _) in lora.items()}

    def lora_linear(x, pp, name):
        y = L._base_linear(x, pp, name)
        ab = lora.get(name)
        if ab is not None:
            a, b = ab
            y = y + ((x @ a.t()) @ b.t()) * scaling
        return y

    opt = torch.optim.AdamW([b for _, b in lora.values()], lr=L.LR, betas=L.BETAS, eps=L.EPS,
                            weight_decay=L.WEIGHT_DECAY, foreach=False)
    def after_backward(step):   # LoraFAOptimizer's preconditioner, before AdamW
        with torch.no_grad():
            for k, (_, b) in lora.items():
                b.grad.copy_(b.grad @ precond[k])

    losses = R.train_adapted(p, cfg, batch, lora_linear, opt, L.STEPS, after_backward)
    return losses, {k: b.detach() for k, (_, b) in lora.items()}


def main():
    args = R.generator_args(__doc__)

    cfg, params, batch = R.load_case(args.out, L.CASE)
    # the committed initial adapter of lora_parity: the bytes the C++ test loads
    init = R.read_safetensors(os.path.join(args.out, "lora_parity", "initial_adapter", "adapter_model.safetensors"))
    lora0 = {p: (torch.from_numpy(init[L.adapter_key(p, "A")].copy()), torch.from_numpy(init[L.adapter_key(p, "B")].copy()))
             for p in L.module_paths(cfg)}

    losses, final = train(params, cfg, batch, lora0, torch.float32)
    out = os.path.join(args.out, "lora_fa_parity")
    os.makedirs(out, exist_ok=True)
    refout = {"traj.loss": np.array(losses, dtype="<f4")}
    for path, b in final.items():
        refout["final." + L.adapter_key(path, "B")] = R.f32(b)
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)
    print(f"lora_fa_parity: traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    upd = max(float((final[p] - lora0[p][1]).abs().max()) for p in final)
    print(f"  max |B update| after {L.STEPS} steps: {upd:.3e}")
    if args.check:
        l64, f64 = train(params, cfg, batch, lora0, torch.float64)
        dl = max(abs(a - b) / abs(b) for a, b in zip(losses, l64))
        db = max(float((final[p].double() - f64[p]).abs().max()) for p in final)
        print(f"  f32 vs f64: loss rel {dl:.3e}, final B max abs {db:.3e}")


if __name__ == "__main__":
    main()
