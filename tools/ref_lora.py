#!/usr/bin/python3
"""Generate the LoRA whole-path parity fixture, tests/fixtures/lora_parity/.

Usage:  /usr/bin/python3 tools/ref_lora.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It reuses tools/ref_llama.py (the from-scratch HF Llama model and
safetensors writer/reader, torch + numpy only) and adds PEFT's LoRA math on
top of every projection (peft src/peft/tuners/lora/layer.py, Linear.forward):

    result = x W^T (+ b)  +  lora_B(lora_A(dropout(x))) * scaling
    scaling = lora_alpha / r          (no rsLoRA here)

Setup: the tests/fixtures/llama_gqa model and its batch (input_ids, labels
from llama_gqa/reference.safetensors), LoRA r=4, alpha=8, dropout 0 on
q,k,v,o,gate,up,down of every layer.  A and B are BOTH non-zero (A uniform in
+-1/sqrt(in) like PEFT's default init, B ~ N(0, 0.02)) so that B's effect on
the forward and A's gradient are exercised from step 0.  They are written as a
PEFT adapter directory (initial_adapter/adapter_config.json +
adapter_model.safetensors, keys base_model.model.<module>.lora_{A,B}.weight).

Training: 10 steps of torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0.01, foreach=False) on the A/B tensors only, constant lr, no
clipping, loss = HF causal-LM mean cross-entropy; the base stays frozen.

reference.safetensors:
  traj.loss            F32 [10]   loss at the start of step s (before its update)
  final.<adapter key>  F32        A/B after the 10 steps
--check repeats everything in float64 and prints the f32-vs-f64 discrepancy of
the losses and of the final A/B (to size the C++ tolerances).
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
ALPHA = 8
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SEED = 4321
STEPS = 10
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
B_STD = 0.02

_base_linear = R.linear


def module_paths(cfg):
    return [f"model.layers.{l}.{t}" for l in range(cfg["num_hidden_layers"])
            for t in TARGETS]


def adapter_key(path, which):
    return f"base_model.model.{path}.lora_{which}.weight"


def peft_config_json(cfg):
    """adapter_config.json as PEFT 0.18 save_pretrained writes it."""
    d = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
        "auto_mapping": None, "base_model_name_or_path": "peft.cpp/tests/fixtures/llama_gqa",
        "bias": "none", "corda_config": None, "ensure_weight_tying": False,
        "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "layer_replication": None,
        "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
        "lora_alpha": ALPHA, "lora_bias": False, "lora_dropout": 0.0,
        "megatron_config": None, "megatron_core": "megatron.core",
        "modules_to_save": None, "peft_type": "LORA", "peft_version": "0.18.1",
        "qalora_group_size": 16, "r": RANK, "rank_pattern": {}, "revision": None,
        "target_modules": [t.split(".")[1] for t in TARGETS],
        "target_parameters": None, "task_type": "CAUSAL_LM",
        "trainable_token_indices": None, "use_dora": False, "use_qalora": False,
        "use_rslora": False,
    }
    return json.dumps(d, indent=2, sort_keys=True)


def initial_adapter(cfg, params):
    g = torch.Generator().manual_seed(SEED)
    lora = {}
    for path in module_paths(cfg):
        out_f, in_f = params[path + ".weight"].shape
        bound = 1.0 / math.sqrt(in_f)
        a = (torch.rand((RANK, in_f), generator=g, dtype=torch.float32) * 2 - 1) * bound
        b = torch.randn((out_f, RANK), generator=g, dtype=torch.float32) * B_STD
        lora[path] = (a, b)
    return lora


def train(params, cfg, batch, lora0, dtype):
    scaling = ALPHA / RANK
    p = {n: t.to(dtype) for n, t in params.items()}          # frozen base
    lora = {k: (a.to(dtype).clone().requires_grad_(True),
                b.to(dtype).clone().requires_grad_(True)) for k, (a, b) in lora0.items()}

    def lora_linear(x, pp, name):
        y = _base_linear(x, pp, name)
        ab = lora.get(name)
        if ab is not None:
            a, b = ab
            y = y + ((x @ a.t()) @ b.t()) * scaling          # dropout 0 = identity
        return y

    plist = [t for ab in lora.values() for t in ab]
    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WEIGHT_DECAY, foreach=False)
    losses = R.train_adapted(p, cfg, batch, lora_linear, opt, STEPS)
    final = {k: (a.detach(), b.detach()) for k, (a, b) in lora.items()}
    return losses, final


def main():
    args = R.generator_args(__doc__)

    cfg, params, batch = R.load_case(args.out, CASE)

    lora0 = initial_adapter(cfg, params)
    out = os.path.join(args.out, "lora_parity")
    ad = os.path.join(out, "initial_adapter")
    os.makedirs(ad, exist_ok=True)
    with open(os.path.join(ad, "adapter_config.json"), "w") as f:
        f.write(peft_config_json(cfg))                        # PEFT: no trailing newline
    tensors = {}
    for path, (a, b) in lora0.items():
        tensors[adapter_key(path, "A")] = R.f32(a)
        tensors[adapter_key(path, "B")] = R.f32(b)
    R.write_safetensors(os.path.join(ad, "adapter_model.safetensors"), tensors)
    back = R.read_safetensors(os.path.join(ad, "adapter_model.safetensors"))
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    # train from exactly the bytes C++ will load
    lora0 = {p: (torch.from_numpy(back[adapter_key(p, "A")].copy()),
                 torch.from_numpy(back[adapter_key(p, "B")].copy())) for p in lora0}

    losses, final = train(params, cfg, batch, lora0, torch.float32)
    refout = {"traj.loss": np.array(losses, dtype="<f4")}
    for path, (a, b) in final.items():
        refout["final." + adapter_key(path, "A")] = R.f32(a)
        refout["final." + adapter_key(path, "B")] = R.f32(b)
    R.write_safetensors(os.path.join(out, "reference.safetensors"), refout)

    # how much the adapter and training matter (the fixture must be sensitive)
    with torch.no_grad():
        base_logits, _ = R.forward(params, cfg, batch)
        base_loss = R.causal_lm_loss(base_logits, batch["labels"]).item()
    print(f"lora_parity: base loss {base_loss:.6f}, traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    upd = max(float((final[p][i] - lora0[p][i]).abs().max()) for p in final for i in (0, 1))
    print(f"  max |A/B update| after {STEPS} steps: {upd:.3e}")
    if args.check:
        l64, f64 = train(params, cfg, batch, lora0, torch.float64)
        dl = max(abs(a - b) / abs(b) for a, b in zip(losses, l64))
        da = max(float((final[p][i].double() - f64[p][i]).abs().max()) for p in final for i in (0, 1))
        print(f"  f32 vs f64: loss rel {dl:.3e}, final A/B max abs {da:.3e}")


if __name__ == "__main__":
    main()
