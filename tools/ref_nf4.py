#!/usr/bin/python3
"""NF4 / double-quantization reference for tests/fixtures/nf4 (torch + numpy only).

A pure-PyTorch re-implementation of bitsandbytes' 4-bit math, read from
bitsandbytes-foundation/bitsandbytes (bitsandbytes/functional.py: get_4bit_type,
create_dynamic_map, quantize_4bit(compress_statistics=True), dequantize_4bit;
bitsandbytes/backends/default/ops.py: quantize_4bit, quantize_blockwise,
dequantize_blockwise, _dequantize_4bit_impl; csrc/cpu_ops.cpp:
dequantizeBlockwise4bitCpu for the bf16 output). No bitsandbytes code is imported or copied.

  quantize:   absmax_b = max|w| over 64 consecutive elements (f32);
              u = clamp(w * (1/absmax_b), -1, 1); code = argmin |u - NF4| (first on ties,
              NaN -> 0); two codes a byte, the even element in the high nibble.
  double q.:  offset = mean(absmax); quantize_blockwise(absmax - offset, dynamic map, 256)
              the same way (clamp, argmin over the 256-entry map), absmax2 per 256 blocks.
  dequant:    absmax_b = f32(dyn[q_b] * absmax2) + offset; w' = f32(NF4[code] * absmax_b);
              bf16 compute: w' rounded to bf16 after the f32 product (bnb's CPU/CUDA kernels).

Run from the repo root:  /usr/bin/python3 tools/ref_nf4.py --out tests/fixtures
Prints the dynamic map as hex (src/core/quant.cpp embeds it) with --print-map.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402  (write_safetensors)

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)


def create_dynamic_map(max_exponent_bits=7, total_bits=8):
    """bitsandbytes create_dynamic_map(signed=True): f32 linspace midpoints times 10^(i-6)."""
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def nearest_code(scaled, code):
    """argmin |scaled - code| per element, as bnb's default backend (NaN rows give 0)."""
    diff = torch.abs(scaled.view(-1, 1) - code.view(1, -1))
    idx = torch.argmin(diff, dim=-1)
    idx[torch.isnan(scaled.view(-1))] = 0   # torch's argmin of an all-NaN row (made explicit)
    return idx


def quantize_blockwise(A, code, blocksize):
    """bnb default quantize_blockwise (absmax per block, partial last block allowed)."""
    n = A.numel()
    flat = A.reshape(-1)
    blocks = (n + blocksize - 1) // blocksize
    absmax = torch.zeros(blocks, dtype=torch.float32)
    scaled = torch.empty(n, dtype=torch.float32)
    for b in range(blocks):
        seg = flat[b * blocksize:(b + 1) * blocksize]
        absmax[b] = seg.abs().max()
        scaled[b * blocksize:(b + 1) * blocksize] = torch.clamp(seg * (1 / absmax[b:b + 1]), -1, 1)
    return nearest_code(scaled, code), absmax


def dequantize_blockwise(q, absmax, code, blocksize):
    out = code[q].clone()
    for b in range(absmax.numel()):
        out[b * blocksize:(b + 1) * blocksize] = out[b * blocksize:(b + 1) * blocksize] * absmax[b]
    return out


def quantize_nf4(W, dmap):
    n = W.numel()
    assert n % 64 == 0
    blocks = W.reshape(-1, 64)
    absmax = torch.abs(blocks).max(dim=-1)[0].float()
    scaled = torch.clamp(blocks * (1 / absmax.view(-1, 1)), -1, 1).reshape(-1)
    codes = nearest_code(scaled, NF4)
    packed = (codes[::2] << 4) | codes[1::2]
    offset = absmax.mean()
    qabs, absmax2 = quantize_blockwise(absmax - offset, dmap, 256)
    absmax_dq = dequantize_blockwise(qabs, absmax2, dmap, 256) + offset
    return dict(codes=codes, packed=packed, absmax=absmax, offset=offset, qabs=qabs, absmax2=absmax2,
                absmax_dq=absmax_dq)


def dequantize_nf4(codes, absmax, shape):
    return (NF4[codes].view(-1, 64) * absmax.view(-1, 1)).reshape(shape)


def to_bf16_f32(x):
    """f32 -> bf16 (round to nearest even) -> f32, as bnb's float_to_bf16."""
    return x.to(torch.bfloat16).to(torch.float32)


def make_case(name, W, dmap, out):
    q = quantize_nf4(W, dmap)
    deq = dequantize_nf4(q["codes"], q["absmax"], W.shape)
    deq_dq = dequantize_nf4(q["codes"], q["absmax_dq"], W.shape)
    i32 = lambda t: t.to(torch.int32).numpy()  # noqa: E731
    out[f"{name}.w"] = W.numpy()
    out[f"{name}.packed"] = i32(q["packed"])
    out[f"{name}.absmax"] = q["absmax"].numpy()
    out[f"{name}.deq"] = deq.numpy()
    out[f"{name}.dq.code"] = i32(q["qabs"])
    out[f"{name}.dq.absmax2"] = q["absmax2"].numpy()
    out[f"{name}.dq.offset"] = q["offset"].reshape(1).numpy()
    out[f"{name}.dq.deq"] = deq_dq.numpy()
    out[f"{name}.dq.deq_bf16"] = to_bf16_f32(deq_dq).numpy()
    exact_mean = np.float32(np.mean(q["absmax"].numpy().astype(np.float64)))
    if exact_mean != q["offset"].item():
        print(f"{name}: torch's f32 mean differs from the exactly rounded mean", file=sys.stderr)
    err = (W - deq).abs().mean().item()
    print(f"{name}: {W.shape[0]}x{W.shape[1]}, {q['absmax'].numel()} blocks, mean |w - deq| = {err:.3e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--print-map", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dmap = create_dynamic_map()
    if args.print_map:
        bits = dmap.numpy().view(np.uint32)
        for i in range(0, 256, 8):
            print("    " + ", ".join(f"0x{b:08x}u" for b in bits[i:i + 8]) + ",")
        return
    g = torch.Generator().manual_seed(1234)
    out = {"dynamic_map": dmap.numpy()}
    # small: one all-zero block (NaN scaling -> code 0), values on exact NF4 midpoints
    a = torch.randn(6, 128, generator=g) * 0.02
    a[1, 64:128] = 0.0
    mids = (NF4[1:] + NF4[:-1]) / 2
    a[2, :15] = mids * 0.5
    a[2, 15] = 0.5          # absmax of that block: u = mids exactly (ties go to the lower code)
    a[3, :64] = -a[3, :64].abs()   # an all-negative block: its max |w| gets code 0
    make_case("small", a, dmap, out)
    # 280 blocks: two second-level blocks, the second partial (24 of 256)
    make_case("dq", torch.randn(40, 448, generator=g) * 0.05, dmap, out)
    d = os.path.join(args.out, "nf4")
    os.makedirs(d, exist_ok=True)
    R.write_safetensors(os.path.join(d, "reference.safetensors"), out)


if __name__ == "__main__":
    main()
