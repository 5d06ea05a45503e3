#!/usr/bin/python3
"""Generate the DoRA whole-path parity fixture, tests/fixtures/dora_parity/.

Usage:  /usr/bin/python3 tools/ref_dora.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (model, batch, safetensors) and
tools/ref_lora.py (setup constants, the initial A/B draw, PEFT's config) and
puts PEFT's DoRA math on every projection (peft src/peft/tuners/lora/dora.py
DoraLinearLayer.forward with variants.py DoraLinearVariant.forward, dropout 0
so base_result is the base layer's output minus its bias):

    V        = W + scaling * (B @ A).detach()
    norm     = ||V||_2 per output row, .detach()        (DoRA paper §4.3)
    f        = m / norm
    result   = x W^T (+ b)  +  (f - 1) * (x W^T)  +  f * ((x A^T) B^T) * scaling
    m (init) = ||W + scaling * B @ A|| per output row (DoraLinearLayer.update_layer)

Setup: the tests/fixtures/llama_gqa model and batch, r=4, alpha=8 on the 7
projections of both layers, A and B both non-zero exactly as ref_lora.py draws
them (so m != ||W|| and the norm depends on A, B from step 0).  Written as a
PEFT adapter directory (initial_adapter/, use_dora true, keys
base_model.model.<module>.lora_{A,B}.weight and .lora_magnitude_vector [out]).

Training: 10 steps of torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0.01, foreach=False) on A, B and m, constant lr, no clipping.

reference.safetensors:
  traj.loss            F32 [10]   loss at the start of step s (before its update)
  final.<adapter key>  F32        A, B, m after the 10 steps
--check repeats the training in float64 and prints the f32-vs-f64 discrepancy,
and how far the DoRA trajectory is from plain LoRA's (the fixture's sensitivity).
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402
import ref_lora as L  # noqa: E402

_base_linear = R.linear


def magnitude_key(path):
    return f"base_model.model.{path}.lora_magnitude_vector"


def peft_config_json(cfg):
    d = json.loads(L.peft_config_json(cfg))
    d["use_dora"] = True
    return json.dumps(d, indent=2, sort_keys=True)


def row_norm(weight, lora_weight, scaling):
    # DoraLinearLayer.get_weight_norm (fan_in_fan_out False)
    return torch.linalg.norm(weight + scaling * lora_weight, dim=1).to(weight.dtype)


def initial_magnitudes(params, lora0):
    scaling = L.ALPHA / L.RANK
    return {path: row_norm(params[path + ".weight"], b @ a, scaling) for path, (a, b) in lora0.items()}


def train(params, cfg, batch, lora0, mag0, dtype, dora=True):
    scaling = L.ALPHA / L.RANK
    p = {n: t.to(dtype) for n, t in params.items()}          # frozen base
    lora = {k: (a.to(dtype).clone().requires_grad_(True),
                b.to(dtype).clone().requires_grad_(True)) for k, (a, b) in lora0.items()}
    mag = {k: m.to(dtype).clone().requires_grad_(True) for k, m in mag0.items()}

    def dora_linear(x, pp, name):
        result = _base_linear(x, pp, name)
        ab = lora.get(name)
        if ab is None:
            return result
        a, b = ab
        lora_result = (x @ a.t()) @ b.t()
        if not dora:
            return result + lora_result * scaling
        weight = pp[name + ".weight"]
        weight_norm = row_norm(weight, (b @ a).detach(), scaling).detach()
        mag_norm_scale = (mag[name] / weight_norm).view(1, -1)
        bias = pp.get(name + ".bias")
        base_result = result if bias is None else result - bias
        return result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling

    plist = [t for ab in lora.values() for t in ab] + (list(mag.values()) if dora else [])
    opt = torch.optim.AdamW(plist, lr=L.LR, betas=L.BETAS, eps=L.EPS,
                            weight_decay=L.WEIGHT_DECAY, foreach=False)
    losses = R.train_adapted(p, cfg, batch, dora_linear, opt, L.STEPS)
    final = {k: (a.detach(), b.detach(), mag[k].detach()) for k, (a, b) in lora.items()}
    return losses, final


def main():
    args = R.generator_args(__doc__)

    cfg, params, batch = R.load_case(args.out, L.CASE)

    lora0 = L.initial_adapter(cfg, params)
    mag0 = initial_magnitudes(params, lora0)
    out = os.path.join(args.out, "dora_parity")
    ad = os.path.join(out, "initial_adapter")
    os.makedirs(ad, exist_ok=True)
    with open(os.path.join(ad, "adapter_config.json"), "w") as f:
        f.write(peft_config_json(cfg))                        # PEFT: no trailing newline
    tensors = {}
    for path, (a, b) in lora0.items():
        tensors[L.adapter_key(path, "A")] = R.f32(a)
        tensors[L.adapter_key(path, "B")] = R.f32(b)
        tensors[magnitude_key(path)] = R.f32(mag0[path])
    R.write_safetensors(os.path.join(ad, "adapter_model.safetensors"), tensors)
    back = R.read_safetensors(os.path.join(ad, "adapter_model.safetensors"))
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    # train from exactly the bytes C++ will load
    lora0 = {p: (torch.from_numpy(back[L.adapter_key(p, "A")].copy()),
                 torch.from_numpy(back[L.adapter_key(p, "B")].copy())) for p in lora0}
    mag0 = {p: torch.from_numpy(back[magnitude_key(p)].copy()) for p in mag0}

    losses, final = train(params, cfg, batch, lora0, mag0, torch.float32)
    refout = {"traj.loss": np.array(losses, dtype="<f4")}
    for path, (a, b, m) in final.items():
        refout["final." + L.adapter_key(path, "A")] = R.f32(a)
        refout["final." + L.adapter_key(path, "B")] = R.f32(b)
        refout["final." + magnitude_key(path)] = R.f32(m)
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)

    print(f"dora_parity: traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    upd = max(float((final[p][2] - mag0[p]).abs().max()) for p in final)
    print(f"  max |m update| after {L.STEPS} steps: {upd:.3e}")
    if args.check:
        l64, f64 = train(params, cfg, batch, lora0, mag0, torch.float64)
        dl = max(abs(a - b) / abs(b) for a, b in zip(losses, l64))
        da = max(float((final[p][i].double() - f64[p][i]).abs().max()) for p in final for i in (0, 1, 2))
        print(f"  f32 vs f64: loss rel {dl:.3e}, final A/B/m max abs {da:.3e}")
        ll, fl = train(params, cfg, batch, lora0, mag0, torch.float32, dora=False)
        dd = max(float((final[p][i] - fl[p][i]).abs().max()) for p in final for i in (0, 1))
        print(f"  vs plain LoRA from the same A/B: last loss {ll[-1]:.6f}, final A/B max abs diff {dd:.3e}")


if __name__ == "__main__":
    main()
