#!/usr/bin/python3
"""Generate the AdaLoRA trajectory fixture, tests/fixtures/adalora_parity/.

Usage:  /usr/bin/python3 tools/ref_adalora.py --out tests/fixtures [--check]

PEFT's AdaLoRA math reimplemented in torch (peft src/peft/tuners/adalora/layer.py SVDLinear and
RankAllocator, model.py forward / update_and_allocate; METHODS.md section 11) on every
projection of the tests/fixtures/llama_gqa model and its batch:

    y = x W^T (+ b) + (x (A * E)^T B^T) * lora_alpha / (ranknum + 1e-5),   ranknum = init_r
    loss = causal-LM CE + orth_reg_weight * mean over the A and B of ||P P^T - I||_F
           (A: A A^T, B: B^T B; plain Frobenius norm)

init_r 4, target_r 2, lora_alpha 8, tinit 2, tfinal 3, deltaT 2, total_step 10, beta 0.85/0.85,
orth_reg_weight 0.5. A, B ~ N(0, 0.02) as PEFT; E ~ N(0, 0.1) instead of PEFT's zeros, so every
gradient path is exercised from step 0. Written as a PEFT adapter directory
(initial_adapter/: peft_type ADALORA, rank_pattern null, keys ...lora_A / lora_E / lora_B).

Training: 10 steps of torch.optim.AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay
0.01, foreach=False), constant lr, no clipping; after each optimizer.step() and before zero_grad
update_and_allocate(t) with t = 0..9 (PEFT's example loop): importance EMAs while t < 7, masks at
t = 4 and 6 (cubic budget 34 then 28 of 56), the forced final mask at t = 7 (budget 28, EMAs
reset), the fixed pattern re-applied at t = 8, 9.

reference.safetensors:
  traj.loss            F32 [10]   total loss (CE + penalty) at the start of step s
  traj.kept            F32 [10]   non-zero lora_E entries over all modules after step s
  grad0.<key>          F32        the step-0 gradients of A, E, B
  final.<key>          F32        A, E, B after the 10 steps (training form, init_r rows)
  keep.<module path>   F32 [4]    the final rank pattern (1 = kept)
final_adapter/: the trained adapter as PEFT's save_pretrained writes it: rank_pattern in the
config, A, E, B sliced to the kept ranks (resize_state_dict_by_rank_pattern).
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402

CASE = "llama_gqa"
INIT_R = 4
TARGET_R = 2
ALPHA = 8
TINIT, TFINAL, DELTA_T, TOTAL_STEP = 2, 3, 2, 10
BETA1 = BETA2 = 0.85
ORTH = 0.5
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SEED = 2468
STEPS = 10
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01

_base_linear = R.linear


def module_paths(cfg):
    return [f"model.layers.{l}.{t}" for l in range(cfg["num_hidden_layers"]) for t in TARGETS]


def key(path, which):
    return f"base_model.model.{path}.lora_{which}"


def peft_config_json(rank_pattern=None):
    """adapter_config.json as PEFT 0.18 AdaLoraConfig.save_pretrained writes it."""
    d = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
        "auto_mapping": None, "base_model_name_or_path": "peft.cpp/tests/fixtures/llama_gqa",
        "beta1": BETA1, "beta2": BETA2, "bias": "none", "corda_config": None, "deltaT": DELTA_T,
        "ensure_weight_tying": False, "eva_config": None, "exclude_modules": None,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "init_r": INIT_R, "layer_replication": None, "layers_pattern": None,
        "layers_to_transform": None, "loftq_config": {}, "lora_alpha": ALPHA, "lora_bias": False,
        "lora_dropout": 0.0, "megatron_config": None, "megatron_core": "megatron.core",
        "modules_to_save": None, "orth_reg_weight": ORTH, "peft_type": "ADALORA",
        "peft_version": "0.18.1", "qalora_group_size": 16, "r": 8, "rank_pattern": rank_pattern,
        "revision": None, "target_modules": [t.split(".")[1] for t in TARGETS],
        "target_parameters": None, "target_r": TARGET_R, "task_type": "CAUSAL_LM",
        "tfinal": TFINAL, "tinit": TINIT, "total_step": TOTAL_STEP,
        "trainable_token_indices": None, "use_dora": False, "use_qalora": False,
        "use_rslora": False,
    }
    return json.dumps(d, indent=2, sort_keys=True)


def write_adapter(adir, config_text, tensors):
    os.makedirs(adir, exist_ok=True)
    with open(os.path.join(adir, "adapter_config.json"), "w") as f:
        f.write(config_text)                                  # PEFT: no trailing newline
    R.write_safetensors(os.path.join(adir, "adapter_model.safetensors"), tensors)


def truncated_state(final, pattern):
    """PEFT get_peft_model_state_dict for ADALORA: resize_state_dict_by_rank_pattern, keys
    base_model.model.<module>.lora_{A,E,B}, rank_pattern keyed <module>.lora_E."""
    tensors, rp = {}, {}
    for path, m in final.items():
        keep = torch.tensor(pattern[path])
        rp[path + ".lora_E"] = pattern[path]
        tensors[key(path, "A")] = R.f32(m["A"][keep])
        tensors[key(path, "E")] = R.f32(m["E"][keep])
        tensors[key(path, "B")] = R.f32(m["B"][:, keep])
    return tensors, rp


def initial_adapter(cfg, params):
    g = torch.Generator().manual_seed(SEED)
    ad = {}
    for path in module_paths(cfg):
        out_f, in_f = params[path + ".weight"].shape
        a = torch.randn((INIT_R, in_f), generator=g) * 0.02
        e = torch.randn((INIT_R, 1), generator=g) * 0.1
        b = torch.randn((out_f, INIT_R), generator=g) * 0.02
        ad[path] = {"A": a, "E": e, "B": b}
    return ad


class RankAllocator:
    """PEFT RankAllocator (layer.py) over {path: {"A","E","B"}} leaves."""

    def __init__(self, ad):
        self.ad = ad
        self.init_bgt = sum(m["A"].shape[0] for m in ad.values())
        self.target_bgt = TARGET_R * len(ad)
        self.rank_pattern = None
        self.reset_ipt()

    def reset_ipt(self):
        self.ipt, self.exp_avg_ipt, self.exp_avg_unc = {}, {}, {}

    def budget_schedule(self, step):
        if step <= TINIT:
            return self.init_bgt, False
        if step > TOTAL_STEP - TFINAL:
            return self.target_bgt, True
        mul_coeff = 1 - (step - TINIT) / (TOTAL_STEP - TFINAL - TINIT)
        budget = int((self.init_bgt - self.target_bgt) * (mul_coeff ** 3) + self.target_bgt)
        return budget, step % DELTA_T == 0

    def update_ipt(self):
        for path, m in self.ad.items():
            for w, p in m.items():
                n = (path, w)
                if n not in self.ipt:
                    self.ipt[n] = torch.zeros_like(p)
                    self.exp_avg_ipt[n] = torch.zeros_like(p)
                    self.exp_avg_unc[n] = torch.zeros_like(p)
                with torch.no_grad():
                    self.ipt[n] = (p * p.grad).abs().detach()
                    self.exp_avg_ipt[n] = BETA1 * self.exp_avg_ipt[n] + (1 - BETA1) * self.ipt[n]
                    self.exp_avg_unc[n] = BETA2 * self.exp_avg_unc[n] + (1 - BETA2) * (self.ipt[n] - self.exp_avg_ipt[n]).abs()

    def score(self, path, w):
        return self.exp_avg_ipt[(path, w)] * self.exp_avg_unc[(path, w)]

    def mask_to_budget(self, budget):
        triplet = {}
        for path in self.ad:
            a = torch.mean(self.score(path, "A"), dim=1, keepdim=True)
            b = torch.mean(self.score(path, "B"), dim=0, keepdim=False).view(-1, 1)
            e = self.score(path, "E")
            triplet[path] = (e.view(-1) + torch.cat([a, b], dim=1).sum(dim=1).view(-1)).view(-1, 1)
        thr = torch.kthvalue(torch.cat([t.view(-1) for t in triplet.values()]), k=self.init_bgt - budget)[0].item()
        pattern = {}
        with torch.no_grad():
            for path, m in self.ad.items():
                m["E"].masked_fill_(triplet[path] <= thr, 0.0)
                pattern[path] = (~(triplet[path] <= thr)).view(-1).tolist()
        return pattern

    def update_and_allocate(self, step):
        final = TOTAL_STEP - TFINAL
        if step < final:
            self.update_ipt()
            budget, mask = self.budget_schedule(step)
            if mask:
                self.rank_pattern = self.mask_to_budget(budget)
        elif step == final:
            budget, _ = self.budget_schedule(step)
            self.rank_pattern = self.mask_to_budget(budget)
            self.reset_ipt()
        else:
            with torch.no_grad():
                for path, m in self.ad.items():
                    keep = torch.tensor(self.rank_pattern[path]).unsqueeze(-1)
                    m["E"].masked_fill_(~keep, 0.0)


def train(params, cfg, batch, ad0, dtype):
    p = {n: t.to(dtype) for n, t in params.items()}
    ad = {k: {w: t.to(dtype).clone().requires_grad_(True) for w, t in m.items()} for k, m in ad0.items()}
    ranknum = torch.tensor([float(INIT_R)], dtype=dtype)

    def adalora_linear(x, pp, name):
        y = _base_linear(x, pp, name)
        m = ad.get(name)
        if m is not None:
            y = y + (x @ (m["A"] * m["E"]).T @ m["B"].T) * ALPHA / (ranknum + 1e-5)
        return y

    def orth_penalty():
        reg, n = 0, 0
        for m in ad.values():
            for w in ("A", "B"):
                q = m[w]
                cov = q @ q.T if w == "A" else q.T @ q
                eye = torch.eye(*cov.size(), dtype=dtype)
                reg = reg + torch.norm(cov - eye, p="fro")
                n += 1
        return reg / n

    plist = [t for m in ad.values() for t in m.values()]
    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, foreach=False)
    alloc = RankAllocator(ad)
    losses, kept, grad0 = [], [], {}
    R.linear = adalora_linear
    try:
        for step in range(STEPS):
            opt.zero_grad(set_to_none=True)
            logits, _ = R.forward(p, cfg, batch)
            loss = R.causal_lm_loss(logits, batch["labels"]) + ORTH * orth_penalty()
            loss.backward()
            if step == 0:
                grad0 = {(k, w): t.grad.detach().clone() for k, m in ad.items() for w, t in m.items()}
            opt.step()
            alloc.update_and_allocate(step)
            losses.append(loss.item())
            kept.append(float(sum(int((m["E"] != 0).sum()) for m in ad.values())))
    finally:
        R.linear = _base_linear
    final = {k: {w: t.detach() for w, t in m.items()} for k, m in ad.items()}
    return losses, kept, grad0, final, alloc.rank_pattern


def main():
    args = R.generator_args(__doc__)
    cfg, params, batch = R.load_case(args.out, CASE)

    ad0 = initial_adapter(cfg, params)
    out = os.path.join(args.out, "adalora_parity")
    adir = os.path.join(out, "initial_adapter")
    tensors = {key(path, w): R.f32(t) for path, m in ad0.items() for w, t in m.items()}
    write_adapter(adir, peft_config_json(), tensors)
    back = R.read_safetensors(os.path.join(adir, "adapter_model.safetensors"))
    ad0 = {path: {w: torch.from_numpy(back[key(path, w)].copy()) for w in ("A", "E", "B")} for path in ad0}

    losses, kept, grad0, final, pattern = train(params, cfg, batch, ad0, torch.float32)
    ref = {"traj.loss": np.array(losses, dtype="<f4"), "traj.kept": np.array(kept, dtype="<f4")}
    for (path, w), g in grad0.items():
        ref["grad0." + key(path, w)] = R.f32(g)
    for path, m in final.items():
        for w, t in m.items():
            ref["final." + key(path, w)] = R.f32(t)
        ref["keep." + path] = np.array([1.0 if b else 0.0 for b in pattern[path]], dtype="<f4")
    R.write_safetensors(os.path.join(out, "reference.safetensors"), ref)
    ft, rp = truncated_state(final, pattern)
    write_adapter(os.path.join(out, "final_adapter"), peft_config_json(rp), ft)
    ranks = [sum(pattern[p]) for p in module_paths(cfg)]
    print(f"adalora_parity: traj.loss {losses[0]:.6f} -> {losses[-1]:.6f}; kept per step {kept}")
    print(f"  final ranks per module {ranks}")
    if args.check:
        l64, k64, _, f64, p64 = train(params, cfg, batch, ad0, torch.float64)
        dl = max(abs(a - b) / abs(b) for a, b in zip(losses, l64))
        df = max(float((final[p][w].double() - f64[p][w]).abs().max()) for p in final for w in ("A", "E", "B"))
        print(f"  f32 vs f64: loss rel {dl:.3e}, final max abs {df:.3e}, same masks {p64 == pattern}, kept {k64 == kept}")


if __name__ == "__main__":
    main()
