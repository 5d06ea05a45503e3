#!/usr/bin/python3
"""Generate the Deep LoRA training parity fixture, tests/fixtures/deep_lora/.

Usage:  /usr/bin/python3 tools/ref_deep_lora.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (the from-scratch HF Llama model and
safetensors writer/reader) and adds the compressed Deep LoRA of METHODS §13
(cjyaras/deep-lora-transformers CompressedMatrixFactorization, in PyTorch
orientation) on every projection:

    y = x W^T  +  ((x V_c) Wt_1^T Wt_2^T Wt_3^T) U_c^T          (no alpha)

Setup: the tests/fixtures/llama_gqa model and batch, k = 4, depth 3, all
seven projections of both layers.  U_c [OC,k] and V_c [IC,k] have orthonormal
columns (QR of a Gaussian); the inner factors are eps I_k (eps = 1e-3) plus
N(0, 0.6^2) noise, so the adapter matters from step 0 (the compression itself
is tested in C++ against explicit factors; here only the training path).

Training, two cases, 10 steps of torch.optim.AdamW(lr=1e-3, betas=(0.9,
0.999), eps=1e-8, weight_decay=0.01, foreach=False), constant lr, no clipping,
loss = HF causal-LM mean cross-entropy, base frozen:
  g0: the inner factors only (deep_lora_gamma = 0, U_c and V_c frozen)
  g1: the inner factors at lr, U_c and V_c at gamma * lr, gamma = 0.5 (the
      reference's outer optimizer: its own AdamW at gamma * lr, decay included)

initial.safetensors:  base_model.model.<module>.deep_lora_{U,V,W1,W2,W3}
reference.safetensors:
  <case>.traj.loss      F32 [10]  loss at the start of step s
  <case>.final.<name>   F32       every trained tensor after 10 steps
--check repeats both cases in float64 and prints the f32-vs-f64 discrepancy.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402

CASE = "llama_gqa"
K = 4
DEPTH = 3
INIT_EPS = 1e-3
NOISE = 0.6
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SEED = 2468
STEPS = 10
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
GAMMA = 0.5

_base_linear = R.linear


def key(path, name):
    return f"base_model.model.{path}.deep_lora_{name}"


def orthonormal(rows, cols, g):
    q, r = torch.linalg.qr(torch.randn((rows, cols), generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.float32)


def initial(cfg, params):
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for l in range(cfg["num_hidden_layers"]):
        for t in TARGETS:
            path = f"model.layers.{l}.{t}"
            oc, ic = params[path + ".weight"].shape
            out[key(path, "U")] = orthonormal(oc, K, g)
            out[key(path, "V")] = orthonormal(ic, K, g)
            for i in range(1, DEPTH + 1):
                out[key(path, f"W{i}")] = INIT_EPS * torch.eye(K) + NOISE * torch.randn((K, K), generator=g)
    return out


def train(params, cfg, batch, init, dtype, gamma):
    p = {n: t.to(dtype) for n, t in params.items()}
    ten = {n: t.to(dtype).clone().requires_grad_(True) for n, t in init.items()}

    def deep_linear(x, pp, name):
        y = _base_linear(x, pp, name)
        if key(name, "U") in ten:
            h = x @ ten[key(name, "V")]
            for i in range(1, DEPTH + 1):
                h = h @ ten[key(name, f"W{i}")].t()
            y = y + h @ ten[key(name, "U")].t()
        return y

    inner = [t for n, t in ten.items() if n.rsplit("_", 1)[1].startswith("W")]
    outer = [t for n, t in ten.items() if n.endswith("_U") or n.endswith("_V")]
    groups = [{"params": inner, "lr": LR}]
    if gamma > 0:
        groups.append({"params": outer, "lr": gamma * LR})
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, foreach=False)
    losses = R.train_adapted(p, cfg, batch, deep_linear, opt, STEPS)
    trained = {n: t.detach() for n, t in ten.items() if gamma > 0 or not (n.endswith("_U") or n.endswith("_V"))}
    return losses, trained


def main():
    args = R.generator_args(__doc__)

    cfg, params, batch = R.load_case(args.out, CASE)

    out = os.path.join(args.out, "deep_lora")
    os.makedirs(out, exist_ok=True)
    init = initial(cfg, params)
    R.write_safetensors(os.path.join(out, "initial.safetensors"), {n: R.f32(t) for n, t in init.items()})
    back = R.read_safetensors(os.path.join(out, "initial.safetensors"))
    init = {n: torch.from_numpy(back[n].copy()) for n in init}   # train from exactly the bytes C++ loads

    refout = {}
    with torch.no_grad():
        base_logits, _ = R.forward(params, cfg, batch)
        print(f"deep_lora: base loss {R.causal_lm_loss(base_logits, batch['labels']).item():.6f}")
    for case, gamma in (("g0", 0.0), ("g1", GAMMA)):
        losses, final = train(params, cfg, batch, init, torch.float32, gamma)
        refout[f"{case}.traj.loss"] = np.array(losses, dtype="<f4")
        for n, t in final.items():
            refout[f"{case}.final.{n}"] = R.f32(t)
        upd = max(float((t - init[n]).abs().max()) for n, t in final.items())
        print(f"  {case}: traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}, max |update| {upd:.3e}")
        if args.check:
            l64, f64 = train(params, cfg, batch, init, torch.float64, gamma)
            dl = max(abs(a - b) / abs(b) for a, b in zip(losses, l64))
            da = max(float((final[n].double() - f64[n]).abs().max()) for n in final)
            print(f"  {case} f32 vs f64: loss rel {dl:.3e}, final max abs {da:.3e}")
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)


if __name__ == "__main__":
    main()
