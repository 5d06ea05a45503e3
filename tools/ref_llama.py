#!/usr/bin/python3
"""Generate the PyTorch reference fixtures for peft.cpp's model tests.

Usage:  /usr/bin/python3 tools/ref_llama.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
directories under tests/fixtures/.  It depends on torch (Debian python3-torch
1.13) and numpy only; there is no transformers and no safetensors package, so
the model and the safetensors writer/reader below are written from scratch.

Model: Hugging Face LlamaForCausalLM / Qwen2ForCausalLM semantics, fp32, eager
attention, no dropout.
  h = embed_tokens[input_ids]                      ("inputs_embeds")
  for each layer:
    a = RMSNorm(h; input_layernorm)
    q = a Wq^T (+ bq), k = a Wk^T (+ bk), v = a Wv^T (+ bv)   (biases: qwen2
                                                   always; llama with
                                                   attention_bias, which also
                                                   gives o_proj a bias)
    q, k = RoPE(q, k; position_ids)                HF rotate_half convention
    k, v = repeat_kv(k, v)                         GQA: kv head j serves query
                                                   heads j*G .. j*G+G-1
    s = q k^T / sqrt(head_dim) + mask              mask: key index <= query
                                                   index AND same segment id
    h = h + (softmax(s) v) Wo^T
    m = RMSNorm(h; post_attention_layernorm)
    h = h + down(silu(gate(m)) * up(m))            (+ gate/up/down biases
                                                   with llama mlp_bias)
  logits = RMSNorm(h; norm) W_lm^T                 W_lm = embed_tokens when
                                                   tie_word_embeddings
  RMSNorm(x; w) = w * (x * rsqrt(mean(x^2, -1) + eps))
  RoPE: inv_freq[i] = 1 / theta^(2i/hd), i < hd/2, computed in float32 as HF
    does (int64 arange -> float32, then theta ** (...)); optional Llama-3
    rope_scaling exactly as HF `_compute_llama3_parameters`; angle = pos *
    inv_freq, emb = cat(angle, angle); x*cos(emb) + rotate_half(x)*sin(emb)
    with rotate_half(x) = cat(-x[hd/2:], x[:hd/2]).
  Loss (HF causal LM): labels are UNshifted (same length as input_ids);
    cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=-100), mean over
    the non-ignored targets of the whole batch.

Packed samples: segment_ids give each token its sample; a query attends only to
keys of its own segment (block-diagonal causal mask) and position_ids restart
at 0 for every sample.  The label of each sample's first token is -100 so the
loss never asks the last token of one sample to predict the next sample.

Per fixture directory (see tests/fixtures/README.md for the full key list):
  config.json, model.safetensors   a loadable HF checkpoint directory
  reference.safetensors            batch, logits, loss, all gradients,
                                   d loss/d inputs_embeds, a 10-step AdamW
                                   trajectory (warmup+cosine, clipping) and
                                   final weights, plus a constant-lr,
                                   unclipped trajectory's losses.

Determinism: float32, torch.set_num_threads(1), deterministic algorithms,
weights from torch.manual_seed(seed) drawn in HF named_parameters order,
tokens from a separate torch.Generator.  Regenerating gives identical bytes.
--check additionally repeats every computation in float64 and prints the
relative f32-vs-f64 discrepancies plus sensitivity numbers (how much the
logits move when RoPE / the segment mask / llama3 scaling is dropped), so
the C++ tolerances can be judged against both.
"""

import argparse
import copy
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# ---------------------------------------------------------------------------
# Fixture definitions
# ---------------------------------------------------------------------------

_BASE = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    rope_scaling=None,
    tie_word_embeddings=False,
    max_position_embeddings=128,
    attention_bias=False,      # llama only (transformers LlamaConfig)
    mlp_bias=False,
)


def _cfg(**over):
    c = dict(_BASE)
    c.update(over)
    return c


CASES = {
    "llama_gqa": dict(
        seed=1234,
        config=_cfg(model_type="llama"),
        batch="prompt_masked",
    ),
    "qwen2_tied": dict(
        seed=2345,
        config=_cfg(model_type="qwen2", num_key_value_heads=1,
                    rope_theta=1000000.0, tie_word_embeddings=True),
        batch="prompt_masked",
    ),
    "llama3_packed": dict(
        seed=3456,
        config=_cfg(model_type="llama", num_key_value_heads=4,
                    rope_theta=500000.0,
                    # original_max_position_embeddings is tiny on purpose: at
                    # head_dim 8 with the real 8192 every wavelength would be
                    # "high frequency" and the scaling would be a no-op.
                    rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                  "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16}),
        batch="packed",
    ),
    "llama_bias": dict(
        seed=4567,
        config=_cfg(model_type="llama", attention_bias=True, mlp_bias=True),
        batch="prompt_masked",
    ),
}

# Training trajectory settings (transformers Trainer-style full fine-tuning).
TRAIN_STEPS = 10
WARMUP_STEPS = 2
PEAK_LR = 1e-3
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0

INIT_STD = 0.02        # HF initializer_range for Linear / Embedding weights
NORM_JITTER = 0.1      # norm weights 1 + 0.1*N(0,1): non-trivial norm grads
BIAS_STD = 0.1         # every bias: large enough to matter


def hf_config_json(cfg):
    """The config.json HF would write (plus the fields peft.cpp reads)."""
    qwen = cfg["model_type"] == "qwen2"
    d = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": cfg["model_type"],
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "hidden_act": "silu",
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "rope_scaling": cfg["rope_scaling"],
        "tie_word_embeddings": cfg["tie_word_embeddings"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "initializer_range": INIT_STD,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if qwen:
        # Qwen2 always has q/k/v biases (no config flag); no sliding window.
        d["use_sliding_window"] = False
        d["sliding_window"] = None
        d["max_window_layers"] = cfg["num_hidden_layers"]
    else:
        d["attention_bias"] = cfg["attention_bias"]
        d["mlp_bias"] = cfg["mlp_bias"]
        d["pretraining_tp"] = 1
    return d


# ---------------------------------------------------------------------------
# safetensors (FORMATS.md §2c), written from scratch
# ---------------------------------------------------------------------------

_ST_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<i4"): "I32",
              np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}
_ST_NP = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors(path, tensors, metadata=None):
    """Write {name: np.ndarray} like safetensors' `prepare`/`serialize`.

    Tensors are sorted by dtype size descending, then by name (the reference
    writer's order), stored row-major little-endian back to back; the JSON
    header is compact and space-padded to a multiple of 8 so data starts
    8-aligned.  Output depends only on the inputs (byte-reproducible).
    """
    arrs = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in _ST_DTYPES:
            raise ValueError(f"{name}: unsupported dtype {a.dtype}")
        arrs[name] = a
    order = sorted(arrs, key=lambda n: (-arrs[n].dtype.itemsize, n))
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    off = 0
    for n in order:
        a = arrs[n]
        header[n] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for n in order:
            f.write(arrs[n].tobytes())


def read_safetensors(path):
    """Minimal strict reader, used to round-trip-check what we wrote."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    data = buf[8 + n:]
    out, end = {}, 0
    for name, info in sorted(header.items(),
                             key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = info["data_offsets"]
        assert b == end, f"{name}: gap/overlap"
        dt = _ST_NP[info["dtype"]]
        shape = tuple(info["shape"])
        assert e - b == int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        out[name] = np.frombuffer(data[b:e], dtype=dt).reshape(shape)
        end = e
    assert end == len(data), "trailing bytes"
    return out


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------

def param_specs(cfg):
    """(name, shape, kind) in HF named_parameters() order.

    The order matters twice: weights are drawn from one RNG stream in this
    order, and clip_grad_norm_ stacks per-tensor norms in this order.
    """
    V, C, I = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = C // H
    # transformers: Qwen2Attention hard-codes q/k/v biases (o_proj none, MLP
    # none); LlamaAttention gives all four projections a bias with
    # attention_bias, LlamaMLP all three with mlp_bias.
    qwen = cfg["model_type"] == "qwen2"
    qkv_bias = qwen or cfg["attention_bias"]
    o_bias = not qwen and cfg["attention_bias"]
    mlp_bias = not qwen and cfg["mlp_bias"]
    specs = [("model.embed_tokens.weight", (V, C), "w")]

    def proj(name, out, inp, bias):
        specs.append((name + ".weight", (out, inp), "w"))
        if bias:
            specs.append((name + ".bias", (out,), "b"))

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        proj(p + "self_attn.q_proj", H * hd, C, qkv_bias)
        proj(p + "self_attn.k_proj", KV * hd, C, qkv_bias)
        proj(p + "self_attn.v_proj", KV * hd, C, qkv_bias)
        proj(p + "self_attn.o_proj", C, H * hd, o_bias)
        proj(p + "mlp.gate_proj", I, C, mlp_bias)
        proj(p + "mlp.up_proj", I, C, mlp_bias)
        proj(p + "mlp.down_proj", C, I, mlp_bias)
        specs.append((p + "input_layernorm.weight", (C,), "n"))
        specs.append((p + "post_attention_layernorm.weight", (C,), "n"))
    specs.append(("model.norm.weight", (C,), "n"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (V, C), "w"))
    return specs


def init_params(cfg, seed):
    torch.manual_seed(seed)
    params = {}
    for name, shape, kind in param_specs(cfg):
        r = torch.randn(shape, dtype=torch.float32)
        if kind == "w":
            params[name] = r * INIT_STD
        elif kind == "b":
            params[name] = r * BIAS_STD
        else:
            params[name] = 1.0 + NORM_JITTER * r
    return params


def make_batch(cfg, kind, seed):
    """input_ids, labels (HF-style, unshifted), position_ids, segment_ids."""
    g = torch.Generator().manual_seed(seed + 1)
    V = cfg["vocab_size"]
    if kind == "prompt_masked":
        B, T = 2, 12
        ids = torch.randint(0, V, (B, T), generator=g)
        labels = ids.clone()
        labels[0, :3] = IGNORE_INDEX          # row 0: 3-token prompt masked
        pos = torch.arange(T).expand(B, T).clone()
        seg = torch.zeros(B, T, dtype=torch.int64)
    elif kind == "packed":
        lens = [7, 9]
        T = sum(lens)
        ids = torch.randint(0, V, (1, T), generator=g)
        labels = ids.clone()
        seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])[None]
        pos = torch.cat([torch.arange(n) for n in lens])[None]
        start = 0
        for n in lens:
            labels[0, start] = IGNORE_INDEX   # no cross-sample target
            start += n
    else:
        raise ValueError(kind)
    return dict(input_ids=ids, labels=labels, position_ids=pos,
                segment_ids=seg.to(torch.int64))


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def rope_inv_freq(cfg, dtype=torch.float32, scaling=True):
    """HF default inv_freq (+ llama3 scaling), in `dtype` (float32 as HF)."""
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg["rope_theta"]
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64)
                          .to(dtype) / hd))
    rs = cfg["rope_scaling"]
    if rs is None or not scaling:
        return inv
    assert rs["rope_type"] == "llama3"
    # HF `_compute_llama3_parameters`, operation for operation.
    factor = rs["factor"]
    low_ff, high_ff = rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_ctx / low_ff
    high_freq_wavelen = old_ctx / high_ff
    wavelen = 2 * math.pi / inv
    inv_l = torch.where(wavelen > low_freq_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_l)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rotate_pairs(x):
    """GPT-J / Meta-checkpoint interleaved convention; diagnostics only (a
    C++ port mixing up the two conventions must fail the fixture)."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def linear(x, p, name):
    y = x @ p[name + ".weight"].t()
    b = p.get(name + ".bias")
    return y if b is None else y + b


def forward(p, cfg, batch, *, rope=True, rope_scaling=True, segments=True,
            rot=rotate_half):
    """Returns (logits [B,T,V], inputs_embeds [B,T,C] with retained grad).

    The keyword switches exist only for the sensitivity diagnostics.
    """
    dtype = p["model.embed_tokens.weight"].dtype
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV, eps = cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hd, G = C // H, H // KV
    ids, pos, seg = batch["input_ids"], batch["position_ids"], batch["segment_ids"]
    B, T = ids.shape

    emb = F.embedding(ids, p["model.embed_tokens.weight"])
    if emb.requires_grad:
        emb.retain_grad()              # -> grad.inputs_embeds

    # cos/sin as HF: angles computed in the inv_freq dtype (float32 in the
    # real run), then cos/sin, then cast to the activation dtype.
    inv = rope_inv_freq(cfg, dtype, scaling=rope_scaling)
    ang = pos.to(inv.dtype)[:, :, None] * inv[None, None, :]
    full = torch.cat((ang, ang), dim=-1)
    cos, sin = full.cos().to(dtype)[:, None], full.sin().to(dtype)[:, None]

    qi = torch.arange(T)
    allowed = qi[None, :] <= qi[:, None]                         # [Tq, Tk]
    allowed = allowed[None] & ((seg[:, :, None] == seg[:, None, :])
                               if segments else True)            # [B,Tq,Tk]
    mask = torch.zeros(B, 1, T, T, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], float("-inf"))

    h = emb
    for l in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        a = rms_norm(h, p[pre + "input_layernorm.weight"], eps)
        q = linear(a, p, pre + "self_attn.q_proj").view(B, T, H, hd).transpose(1, 2)
        k = linear(a, p, pre + "self_attn.k_proj").view(B, T, KV, hd).transpose(1, 2)
        v = linear(a, p, pre + "self_attn.v_proj").view(B, T, KV, hd).transpose(1, 2)
        if rope:
            q = q * cos + rot(q) * sin
            k = k * cos + rot(k) * sin
        # repeat_kv: kv head j is shared by query heads j*G .. j*G+G-1
        k = k.repeat_interleave(G, dim=1)
        v = v.repeat_interleave(G, dim=1)
        s = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(hd)) + mask
        o = torch.softmax(s, dim=-1) @ v
        o = o.transpose(1, 2).reshape(B, T, H * hd)
        h = h + linear(o, p, pre + "self_attn.o_proj")
        m = rms_norm(h, p[pre + "post_attention_layernorm.weight"], eps)
        mlp = F.silu(linear(m, p, pre + "mlp.gate_proj")) * linear(m, p, pre + "mlp.up_proj")
        h = h + linear(mlp, p, pre + "mlp.down_proj")
    h = rms_norm(h, p["model.norm.weight"], eps)
    w_out = p.get("lm_head.weight", p["model.embed_tokens.weight"])
    return h @ w_out.t(), emb


def causal_lm_loss(logits, labels):
    """HF ForCausalLMLoss: shift inside, mean over non-ignored targets."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V),
                           labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="mean")


def leaf_params(params, dtype):
    return {n: t.detach().clone().to(dtype).requires_grad_(True)
            for n, t in params.items()}


def forward_backward(params, cfg, batch, dtype):
    p = leaf_params(params, dtype)
    logits, emb = forward(p, cfg, batch)
    loss = causal_lm_loss(logits, batch["labels"])
    loss.backward()
    grads = {n: t.grad.detach() for n, t in p.items()}
    return logits.detach(), loss.detach(), grads, emb.grad.detach()


def lr_mult(step):
    """transformers get_cosine_schedule_with_warmup (num_cycles 0.5)."""
    if step < WARMUP_STEPS:
        return float(step) / float(max(1, WARMUP_STEPS))
    progress = float(step - WARMUP_STEPS) / float(max(1, TRAIN_STEPS - WARMUP_STEPS))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def train(params, cfg, batch, dtype, *, schedule, clip):
    """Full fine-tuning on one fixed batch; returns per-step records + final."""
    p = leaf_params(params, dtype)
    plist = list(p.values())           # HF named_parameters order
    opt = torch.optim.AdamW(plist, lr=PEAK_LR, betas=BETAS, eps=ADAM_EPS,
                            weight_decay=WEIGHT_DECAY, foreach=False)
    losses, lrs, norms = [], [], []
    for step in range(TRAIN_STEPS):
        lr = PEAK_LR * (lr_mult(step) if schedule else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr               # what LambdaLR would have set
        opt.zero_grad(set_to_none=True)
        logits, _ = forward(p, cfg, batch)
        loss = causal_lm_loss(logits, batch["labels"])
        loss.backward()
        if clip:
            gn = torch.nn.utils.clip_grad_norm_(plist, MAX_GRAD_NORM)
        else:
            gn = torch.norm(torch.stack([torch.norm(t.grad) for t in plist]))
        opt.step()
        losses.append(loss.item())
        lrs.append(lr)
        norms.append(gn.item())
    final = {n: t.detach() for n, t in p.items()}
    return dict(loss=losses, lr=lrs, grad_norm=norms, final=final)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def f32(t):
    return np.asarray(t.detach().to(torch.float32).numpy(), dtype="<f4")


def f64(t):
    return np.asarray(t.detach().to(torch.float64).numpy(), dtype="<f8")


def i32(t):
    return np.asarray(t.numpy(), dtype="<i4")


def compute(cfg, params, batch, dtype):
    logits, loss, grads, gemb = forward_backward(params, cfg, batch, dtype)
    traj = train(params, cfg, batch, dtype, schedule=True, clip=True)
    const = train(params, cfg, batch, dtype, schedule=False, clip=False)
    return dict(logits=logits, loss=loss, grads=grads, gemb=gemb,
                traj=traj, const=const)


def reference_tensors(batch, r, fl=f32):
    """The reference.safetensors dict (fl=f64 keeps the float64 check exact)."""
    fdt = "<f4" if fl is f32 else "<f8"
    out = {k: i32(batch[k]) for k in
           ("input_ids", "labels", "position_ids", "segment_ids")}
    out["logits"] = fl(r["logits"])
    out["loss"] = fl(r["loss"].reshape(1))
    for n, g in r["grads"].items():
        out["grad." + n] = fl(g)
    out["grad.inputs_embeds"] = fl(r["gemb"])
    t = r["traj"]
    out["traj.loss"] = np.array(t["loss"], dtype=fdt)
    out["traj.lr"] = np.array(t["lr"], dtype=fdt)
    out["traj.grad_norm"] = np.array(t["grad_norm"], dtype=fdt)
    for n, w in t["final"].items():
        out["final." + n] = fl(w)
    out["traj_const.loss"] = np.array(r["const"]["loss"], dtype=fdt)
    return out


def rel(a, b):
    """(normwise max|a-b|/max|b|, elementwise max |a-b|/(|b|+1e-3*max|b|))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    d = np.abs(a - b)
    return d.max() / scale, (d / (np.abs(b) + 1e-3 * scale)).max()


def check_case(name, cfg, params, batch, ref32):
    """float64 repeat + sensitivity diagnostics (printed, not stored)."""
    r64 = reference_tensors(batch, compute(cfg, params, batch, torch.float64), f64)
    print(f"  [{name}] f32 vs f64 (normwise max rel, elementwise max rel):")
    groups = {"logits": ["logits"], "loss": ["loss"],
              "grad.*": [k for k in ref32 if k.startswith("grad.")],
              "grad.inputs_embeds": ["grad.inputs_embeds"],
              "traj.loss": ["traj.loss"], "traj.grad_norm": ["traj.grad_norm"],
              "final.*": [k for k in ref32 if k.startswith("final.")],
              "traj_const.loss": ["traj_const.loss"]}
    worst = {}
    for gname, keys in groups.items():
        nw = max(rel(ref32[k], r64[k])[0] for k in keys)
        ew = max(rel(ref32[k], r64[k])[1] for k in keys)
        worst[gname] = (nw, ew)
        print(f"    {gname:20s} {nw:.3e}  {ew:.3e}")
    # final.* drift is better judged as |w32-w64| / |w_final - w_init|: the
    # update, not the weight, is what C++ reproduces.
    upd = max(np.abs(ref32["final." + n].astype(np.float64) - r64["final." + n]).max()
              / max(np.abs(r64["final." + n] - params[n].numpy()).max(), 1e-30)
              for n in params)
    print(f"    final.* max |w32-w64| / max |update|: {upd:.3e}")
    # Sensitivity: how far the logits/grads move when a feature is removed;
    # must dwarf the C++ tolerance (1e-4) or the fixture cannot catch it.
    p = leaf_params(params, torch.float64)
    with torch.no_grad():
        base, _ = forward(p, cfg, batch)
        sens = {"no RoPE": forward(p, cfg, batch, rope=False)[0],
                "interleaved RoPE": forward(p, cfg, batch, rot=rotate_pairs)[0]}
        if cfg["rope_scaling"] is not None:
            sens["no llama3 scaling"] = forward(p, cfg, batch, rope_scaling=False)[0]
        if int(batch["segment_ids"].max()) > 0:
            sens["no segment mask"] = forward(p, cfg, batch, segments=False)[0]
        # a loader that reads q/k/v biases only (what peft.cpp once did)
        qkv_only = {n: t for n, t in p.items()
                    if not (n.endswith(".bias") and (".o_proj." in n or ".mlp." in n))}
        if len(qkv_only) < len(p):
            sens["no o/mlp biases"] = forward(qkv_only, cfg, batch)[0]
    for k, v in sens.items():
        print(f"    sensitivity {k:18s} logits normwise rel {rel(v, base)[0]:.3e}")
    return worst


def write_case(out_dir, name, case, check):
    cfg = case["config"]
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    params = init_params(cfg, case["seed"])
    batch = make_batch(cfg, case["batch"], case["seed"])

    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config_json(cfg), f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(d, "model.safetensors"),
                      {n: f32(t) for n, t in params.items()})
    # Reload what was written so the reference is computed from the exact
    # bytes C++ will load (and the writer is round-trip checked).
    loaded = {n: torch.from_numpy(a.copy())
              for n, a in read_safetensors(os.path.join(d, "model.safetensors")).items()}
    assert set(loaded) == set(params)
    assert all(torch.equal(loaded[n], params[n]) for n in params)
    params = {n: loaded[n] for n, _, _ in param_specs(cfg)}

    ref = reference_tensors(batch, compute(cfg, params, batch, torch.float32))
    write_safetensors(os.path.join(d, "reference.safetensors"), ref)
    back = read_safetensors(os.path.join(d, "reference.safetensors"))
    assert all(np.array_equal(back[k], ref[k]) for k in ref)

    print(f"{name}: loss {ref['loss'][0]:.6f}  traj.loss "
          f"{ref['traj.loss'][0]:.5f} -> {ref['traj.loss'][-1]:.5f}  "
          f"traj_const.loss {ref['traj_const.loss'][0]:.5f} -> "
          f"{ref['traj_const.loss'][-1]:.5f}")
    if cfg["rope_scaling"] is not None:
        a = rope_inv_freq(cfg, scaling=False)
        b = rope_inv_freq(cfg)
        print(f"  inv_freq unscaled {a.tolist()}\n  inv_freq llama3   {b.tolist()}")
        assert not torch.equal(a, b), "llama3 scaling must change inv_freq"
    if check:
        check_case(name, cfg, params, batch, ref)



def train_adapted(params, cfg, batch, adapted_linear, opt, steps, after_backward=None):
    """`steps` optimizer steps of opt with every projection computed by adapted_linear(x, p, name)
    (forward looks `linear` up at call time); after_backward(step) runs between backward and
    opt.step (a gradient transform, a snapshot). Returns each step's loss, before its update."""
    global linear
    base = linear
    linear = adapted_linear
    losses = []
    try:
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            logits, _ = forward(params, cfg, batch)
            loss = causal_lm_loss(logits, batch["labels"])
            loss.backward()
            if after_backward is not None:
                after_backward(step)
            opt.step()
            losses.append(loss.item())
    finally:
        linear = base
    return losses


def generator_args(doc):
    """The command line of every fixture generator (--out DIR, --check) and torch's
    deterministic setup: one thread, deterministic algorithms, float32."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    return args


def load_case(out, case):
    """A committed model fixture of CASES: (its config, its weights as torch tensors, the
    batch of its reference.safetensors)."""
    src = os.path.join(out, case)
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    cfg = dict(CASES[case]["config"])
    assert hf["hidden_size"] == cfg["hidden_size"] and hf["num_hidden_layers"] == cfg["num_hidden_layers"]
    params = {n: torch.from_numpy(a.copy()) for n, a in read_safetensors(os.path.join(src, "model.safetensors")).items()}
    ref = read_safetensors(os.path.join(src, "reference.safetensors"))
    batch = {k: torch.from_numpy(ref[k].astype(np.int64)) for k in ("input_ids", "labels", "position_ids", "segment_ids")}
    return cfg, params, batch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--check", action="store_true",
                    help="also run float64 and print discrepancies")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        write_case(args.out, name, copy.deepcopy(case), args.check)


if __name__ == "__main__":
    main()
