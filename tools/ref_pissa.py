#!/usr/bin/python3
"""Generate the SVD-family init fixture, tests/fixtures/svd_init/.

Usage:  /usr/bin/python3 tools/ref_pissa.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It follows PEFT's math (peft src/peft/tuners/lora/layer.py
pissa_init and olora_init, peft_model.py's conversion of a PiSSA/OLoRA adapter
to plain LoRA) as METHODS.md §3 and §6 state it, in float32:

  pissa:  V, S, Uh = torch.linalg.svd(W, full_matrices=False)
          S_r = S[:r] / s;  A = diag(sqrt(S_r)) Uh[:r];  B = V[:, :r] diag(sqrt(S_r))
          W_res = W - s B A
  olora:  Q, R = torch.linalg.qr(W);  B = Q[:, :r];  A = R[:r];  W_res = W - s B A
  conversion of trained (A, B) with initial (A0, B0):
          A' = cat([A, A0], dim=0);  B' = cat([B, -B0], dim=1)
          alpha' = 2 alpha (alpha / r) or sqrt(2) alpha (rsLoRA)

Two cases, "tall" W [12, 8] and "wide" W [8, 12], W ~ N(0, 1) from
torch.Generator().manual_seed(1234 + case index), r = 3, lora_alpha = 6
(s = alpha / r = 2).  The "trained" adapter is the PiSSA init moved by
0.1 * N(0, 1) noise from the same generator (A first, then B).

reference.safetensors (all F32; <case> is tall or wide):
  <case>.W                        [OC, IC]
  <case>.r, <case>.alpha, <case>.s      [1]
  <case>.pissa.{A,B,W_res}        [r, IC], [OC, r], [OC, IC]
  <case>.olora.{A,B,W_res}        same shapes
  <case>.trained.{A,B}            [r, IC], [OC, r]
  <case>.convert.{A,B}            [2r, IC], [OC, 2r]  (trained + pissa init)
  <case>.convert.alpha, <case>.convert.alpha_rslora   [1]
--check reruns the decompositions in float64 and prints the float32 discrepancy
of the sign-invariant quantities (W_res, B A) to size the C++ tolerances.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402  (the safetensors writer)

CASES = {"tall": (12, 8), "wide": (8, 12)}
RANK = 3
ALPHA = 6.0


def pissa_init(W, r, s):
    V, S, Uh = torch.linalg.svd(W, full_matrices=False)   # PEFT's naming: V is the left factor
    Sr = S[:r] / s
    A = torch.diag(torch.sqrt(Sr)) @ Uh[:r]
    B = V[:, :r] @ torch.diag(torch.sqrt(Sr))
    return A, B, W - s * B @ A


def olora_init(W, r, s):
    Q, Rm = torch.linalg.qr(W)
    A, B = Rm[:r].contiguous(), Q[:, :r].contiguous()
    return A, B, W - s * B @ A


def main():
    args = R.generator_args(__doc__)

    out = {}
    s = ALPHA / RANK
    for idx, (case, (oc, ic)) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(1234 + idx)
        W = torch.randn(oc, ic, generator=g, dtype=torch.float32)
        A0, B0, Wres_p = pissa_init(W, RANK, s)
        Ao, Bo, Wres_o = olora_init(W, RANK, s)
        A = A0 + 0.1 * torch.randn(A0.shape, generator=g, dtype=torch.float32)
        B = B0 + 0.1 * torch.randn(B0.shape, generator=g, dtype=torch.float32)
        A2 = torch.cat([A, A0], dim=0)
        B2 = torch.cat([B, -B0], dim=1)
        # the conversion's promise, checked here too: W + s' B' A' == W_res + s B A
        s2 = (2 * ALPHA) / (2 * RANK)
        lhs, rhs = W + s2 * B2 @ A2, Wres_p + s * B @ A
        assert torch.allclose(lhs, rhs, rtol=1e-5, atol=1e-5), (lhs - rhs).abs().max()
        for name, t in (("W", W), ("pissa.A", A0), ("pissa.B", B0), ("pissa.W_res", Wres_p),
                        ("olora.A", Ao), ("olora.B", Bo), ("olora.W_res", Wres_o),
                        ("trained.A", A), ("trained.B", B), ("convert.A", A2), ("convert.B", B2)):
            out[f"{case}.{name}"] = t.numpy().astype(np.float32)
        out[f"{case}.r"] = np.array([RANK], np.float32)
        out[f"{case}.alpha"] = np.array([ALPHA], np.float32)
        out[f"{case}.s"] = np.array([s], np.float32)
        out[f"{case}.convert.alpha"] = np.array([2 * ALPHA], np.float32)
        out[f"{case}.convert.alpha_rslora"] = np.array([math.sqrt(2) * ALPHA], np.float32)

        if args.check:
            Wd = W.double()
            for label, fn, (a, b, wr) in (("pissa", pissa_init, (A0, B0, Wres_p)),
                                          ("olora", olora_init, (Ao, Bo, Wres_o))):
                ad, bd, wrd = fn(Wd, RANK, s)
                rel = lambda x, y: float((x.double() - y).norm() / y.norm())  # noqa: E731
                print(f"{case} {label}: W_res rel {rel(wr, wrd):.2e}, BA rel {rel(b @ a, bd @ ad):.2e}, "
                      f"preservation {rel(wr + s * b @ a, Wd):.2e}")

    d = os.path.join(args.out, "svd_init")
    os.makedirs(d, exist_ok=True)
    R.write_safetensors(os.path.join(d, "reference.safetensors"), out)


if __name__ == "__main__":
    main()
