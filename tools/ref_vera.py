#!/usr/bin/python3
"""Generate the VeRA whole-path parity fixture, tests/fixtures/vera_parity/.

Usage:  /usr/bin/python3 tools/ref_vera.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (the from-scratch HF Llama model and
safetensors writer/reader, torch + numpy only) and adds PEFT's VeRA math on top
of every projection (peft src/peft/tuners/vera/layer.py Linear.forward,
model.py _kaiming_init / _init_vera_A_vera_B / _find_dim, read at v0.18.1):

    result = x W^T (+ b) + lambda_b * F.linear(lambda_d * F.linear(dropout(x), A[:, :in]), B[:out, :])

Shared projections, exactly as PEFT draws them: one CPU torch.Generator seeded
with projection_prng_key; vera_A [r, in_max] first, then vera_B [out_max, r],
each tensor.uniform_(-bound, bound, generator=g) with
bound = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = the second dimension;
in_max / out_max = the largest in / out features of the targeted layers.

Setup: the tests/fixtures/llama_gqa model and its batch (input_ids, labels from
llama_gqa/reference.safetensors), VeRA r=4, projection_prng_key 0, dropout 0 on
q,k,v,o,gate,up,down of every layer (in_max = out_max = 48).  lambda_b and
lambda_d are BOTH non-default (lambda_b ~ N(0, 0.2), lambda_d = 0.1 (1 + 0.5 N(0,1)),
from torch.Generator seed 4321) so that the adapter's forward and lambda_d's
gradient matter from step 0.  Written as PEFT adapter directories:
  initial_adapter/                save_projection true: base_model.vera_A, base_model.vera_B
                                  and base_model.model.<module>.vera_lambda_{b,d}
  initial_adapter_no_projection/  save_projection false: the lambdas only (the
                                  loader regenerates the projections from the key)

Training: 10 steps of torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0.01, foreach=False) on the lambdas only, constant lr, no
clipping, loss = HF causal-LM mean cross-entropy; base and projections frozen.

reference.safetensors:
  traj.loss                    F32 [10]     loss at the start of step s (before its update)
  final.<adapter key>          F32          lambda_b / lambda_d after the 10 steps
  grad0.<adapter key>          F32          d loss / d lambda at step 0 (Adam's update hides
                                            gradient magnitudes; these do not)
  projection.vera_A / _B       F32          the torch-drawn projections of the fixture (key 0)
  projection_m3.vera_A / _B    F32 [8,40] / [24,8]: a second draw, key -3 (torch wraps it
                                            mod 2^64), r 8, in_max 40, out_max 24
--check repeats the training in float64 and prints the f32-vs-f64 discrepancy of
the losses and of the final lambdas (to size the C++ tolerances).

The uniform draw is what torch's vectorised (AVX2 / AVX-512) CPU kernels compute:
fma(u, to - from, from) in float; run with ATEN_CPU_CAPABILITY=default and torch
rounds twice instead (different last bits): generate on a machine with AVX2.
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402

CASE = "llama_gqa"
RANK = 4
PRNG_KEY = 0
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SEED = 4321
STEPS = 10
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
D_INITIAL = 0.1
B_STD = 0.2
# the second, stand-alone draw: (key, r, in_max, out_max)
SECOND_DRAW = (-3, 8, 40, 24)

_base_linear = R.linear


def module_paths(cfg):
    return [f"model.layers.{l}.{t}" for l in range(cfg["num_hidden_layers"])
            for t in TARGETS]


def lambda_key(path, which):
    return f"base_model.model.{path}.vera_lambda_{which}"


def kaiming_init(shape, generator):
    """PEFT tuners/vera/model.py _kaiming_init."""
    tensor = torch.empty(shape)
    fan = shape[1]                                  # _calculate_correct_fan(t, "fan_in") of a 2-D tensor
    gain = math.sqrt(2)
    std = gain / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def draw_projections(key, r, in_max, out_max):
    """PEFT _init_vera_A_vera_B: vera_A first, then vera_B, from one generator."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    vera_a = kaiming_init((r, in_max), generator)
    vera_b = kaiming_init((out_max, r), generator)
    return vera_a, vera_b


def peft_config_json(save_projection):
    """adapter_config.json as PEFT 0.18 VeraConfig.save_pretrained writes it."""
    d = {
        "auto_mapping": None, "base_model_name_or_path": "peft.cpp/tests/fixtures/llama_gqa",
        "bias": "none", "d_initial": D_INITIAL, "fan_in_fan_out": False,
        "inference_mode": True, "init_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "modules_to_save": None, "peft_type": "VERA",
        "peft_version": "0.18.1", "projection_prng_key": PRNG_KEY, "r": RANK,
        "revision": None, "save_projection": save_projection,
        "target_modules": [t.split(".")[1] for t in TARGETS],
        "task_type": "CAUSAL_LM", "vera_dropout": 0.0,
    }
    return json.dumps(d, indent=2, sort_keys=True)


def initial_lambdas(cfg, params):
    g = torch.Generator().manual_seed(SEED)
    lam = {}
    for path in module_paths(cfg):
        out_f = params[path + ".weight"].shape[0]
        b = torch.randn((out_f,), generator=g, dtype=torch.float32) * B_STD
        d = D_INITIAL * (1 + 0.5 * torch.randn((RANK,), generator=g, dtype=torch.float32))
        lam[path] = (b, d)
    return lam


def train(params, cfg, batch, proj, lam0, dtype):
    p = {n: t.to(dtype) for n, t in params.items()}          # frozen base
    vera_a, vera_b = (t.to(dtype) for t in proj)              # frozen projections
    lam = {k: (b.to(dtype).clone().requires_grad_(True),
               d.to(dtype).clone().requires_grad_(True)) for k, (b, d) in lam0.items()}

    def vera_linear(x, pp, name):
        y = _base_linear(x, pp, name)
        bd = lam.get(name)
        if bd is not None:
            lambda_b, lambda_d = bd
            out_f, in_f = pp[name + ".weight"].shape
            sliced_a = vera_a[:, :in_f]
            sliced_b = vera_b[:out_f, :]
            # dropout 0 = identity
            y = y + lambda_b * torch.nn.functional.linear(lambda_d * torch.nn.functional.linear(x, sliced_a), sliced_b)
        return y

    plist = [t for bd in lam.values() for t in bd]
    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WEIGHT_DECAY, foreach=False)
    grad0 = {}

    def after_backward(step):
        if step == 0:   # the gradients themselves: Adam's update hides their size
            grad0.update({k: (b.grad.clone(), d.grad.clone()) for k, (b, d) in lam.items()})

    losses = R.train_adapted(p, cfg, batch, vera_linear, opt, STEPS, after_backward)
    final = {k: (b.detach(), d.detach()) for k, (b, d) in lam.items()}
    return losses, final, grad0


def write_adapter(path, tensors, save_projection):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        f.write(peft_config_json(save_projection))           # PEFT: no trailing newline
    R.write_safetensors(os.path.join(path, "adapter_model.safetensors"), tensors)
    back = R.read_safetensors(os.path.join(path, "adapter_model.safetensors"))
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    return back


def main():
    args = R.generator_args(__doc__)

    cfg, params, batch = R.load_case(args.out, CASE)

    # PEFT _find_dim over the targeted layers
    shapes = [tuple(params[p + ".weight"].shape) for p in module_paths(cfg)]
    out_max, in_max = max(s[0] for s in shapes), max(s[1] for s in shapes)
    proj = draw_projections(PRNG_KEY, RANK, in_max, out_max)
    lam0 = initial_lambdas(cfg, params)

    out = os.path.join(args.out, "vera_parity")
    lambdas = {}
    for path, (b, d) in lam0.items():
        lambdas[lambda_key(path, "b")] = R.f32(b)
        lambdas[lambda_key(path, "d")] = R.f32(d)
    with_proj = dict(lambdas)
    with_proj["base_model.vera_A"] = R.f32(proj[0])
    with_proj["base_model.vera_B"] = R.f32(proj[1])
    back = write_adapter(os.path.join(out, "initial_adapter"), with_proj, True)
    write_adapter(os.path.join(out, "initial_adapter_no_projection"), lambdas, False)
    # train from exactly the bytes C++ will load
    lam0 = {p: (torch.from_numpy(back[lambda_key(p, "b")].copy()),
                torch.from_numpy(back[lambda_key(p, "d")].copy())) for p in lam0}

    losses, final, grad0 = train(params, cfg, batch, proj, lam0, torch.float32)
    refout = {"traj.loss": np.array(losses, dtype="<f4"),
              "projection.vera_A": R.f32(proj[0]), "projection.vera_B": R.f32(proj[1])}
    second = draw_projections(*SECOND_DRAW)
    refout["projection_m3.vera_A"] = R.f32(second[0])
    refout["projection_m3.vera_B"] = R.f32(second[1])
    for path, (b, d) in final.items():
        refout["final." + lambda_key(path, "b")] = R.f32(b)
        refout["final." + lambda_key(path, "d")] = R.f32(d)
        refout["grad0." + lambda_key(path, "b")] = R.f32(grad0[path][0])
        refout["grad0." + lambda_key(path, "d")] = R.f32(grad0[path][1])
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)

    # how much the adapter and training matter (the fixture must be sensitive)
    with torch.no_grad():
        base_logits, _ = R.forward(params, cfg, batch)
        base_loss = R.causal_lm_loss(base_logits, batch["labels"]).item()
    print(f"vera_parity: in_max {in_max}, out_max {out_max}; base loss {base_loss:.6f}, "
          f"traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    upd_b = max(float((final[p][0] - lam0[p][0]).abs().max()) for p in final)
    upd_d = max(float((final[p][1] - lam0[p][1]).abs().max()) for p in final)
    print(f"  max |update| after {STEPS} steps: lambda_b {upd_b:.3e}, lambda_d {upd_d:.3e}")
    if args.check:
        l64, f64, g64 = train(params, cfg, batch, proj, lam0, torch.float64)
        dl = max(abs(a - b) / abs(b) for a, b in zip(losses, l64))
        da = max(float((final[p][i].double() - f64[p][i]).abs().max()) for p in final for i in (0, 1))
        dg = max(float((grad0[p][i].double() - g64[p][i]).abs().max() / g64[p][i].abs().max())
                 for p in final for i in (0, 1))
        print(f"  f32 vs f64: loss rel {dl:.3e}, final lambdas max abs {da:.3e}, step-0 gradients normwise {dg:.3e}")


if __name__ == "__main__":
    main()
