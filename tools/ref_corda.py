#!/usr/bin/python3
"""Generate the CorDA init fixture, tests/fixtures/corda/.

Usage:  /usr/bin/python3 tools/ref_corda.py --out tests/fixtures [--check]

Python is never needed at runtime: this script only (re)creates the committed
fixture.  It follows PEFT's math (peft src/peft/tuners/lora/corda.py
calib_cov_distribution, collect_eigens_for_layer, crop_corda_eigens and
layer.py corda_init) as METHODS.md §8 states it, in float32:

  per forward call (one sample, X [T, IC]):
          X = X / |max(X)|;  C += X^T X;  count += 1        then C /= count
  damp = 0.01; loop: C' = C + damp * mean(diag C) * I;  Ci = inv(C')
          stop when ||C' Ci - I||_F < 0.05, else damp *= 2
  U, S, Vh = torch.linalg.svd(W C', full_matrices=False);  V = (Vh Ci)^T
  ipm: U[:, :r], S[:r], V[:, :r]     kpm: U[:, -r:], S[-r:], V[:, -r:]
  S' = S / s;  A = diag(sqrt(S')) V^T;  B = U diag(sqrt(S'));  W_res = W - s B A

Two cases, "tall" W [12, 8] and "wide" W [8, 12], r = 3, lora_alpha = 6
(s = 2).  From torch.Generator().manual_seed(4321 + case index): W ~ N(0, 1),
then 4 calibration samples X_i [T_i, IC] with T = (5, 7, 4, 6), X ~ N(0.3, 1)
(so max(X) > 0); sample 1 has one entry set to -3 * max|X_1| (its
largest-magnitude element is negative: the |max(X)| quirk scales it by its
largest positive element, not by max|X|).

reference.safetensors (all F32; <case> is tall or wide):
  <case>.W                           [OC, IC]
  <case>.X                           [sum T, IC]   the samples, one after the other
  <case>.lengths                     [4]           T_i
  <case>.r, <case>.alpha, <case>.s   [1]
  <case>.C                           [IC, IC]      the finished covariance (mean over calls)
  <case>.damp                        [1]           where the loop stopped (0.01 here)
  <case>.{ipm,kpm}.{A,B,W_res}       [r, IC], [OC, r], [OC, IC]
  <case>.{ipm,kpm}.S                 [r]           the kept singular values of W C'
--check reruns everything in float64 and prints the float32 discrepancy of the
sign-invariant quantities (C, W_res, B A) to size the C++ tolerances.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama as R  # noqa: E402  (the safetensors writer)

CASES = {"tall": (12, 8), "wide": (8, 12)}
LENGTHS = (5, 7, 4, 6)
RANK = 3
ALPHA = 6.0


def covariance(samples, dtype):
    C, count = 0, 0
    for X in samples:
        X = X.to(dtype)
        X = X / torch.max(X).abs()
        assert not (torch.isnan(X).any() or torch.isinf(X).any())
        C = C + X.t() @ X
        count += 1
    return C / count


def eigens(W, C):
    damp = 0.01
    eye = torch.eye(C.size(0), dtype=C.dtype)
    while True:
        Cp = C + torch.diag(torch.ones(C.size(0), dtype=C.dtype) * torch.mean(torch.diag(C)) * damp)
        Ci = torch.linalg.inv(Cp)
        if torch.dist(Cp @ Ci, eye).item() < 0.05:
            break
        damp *= 2
    U, S, Vh = torch.linalg.svd(W @ Cp, full_matrices=False)
    return U, S, (Vh @ Ci).transpose(0, 1), damp


def corda_init(U, S, V, r, s, kpm):
    sel = slice(-r, None) if kpm else slice(None, r)
    U, S, V = U[:, sel], S[sel], V[:, sel]
    Sr = S / s
    A = torch.diag(torch.sqrt(Sr)) @ V.t()
    B = U @ torch.diag(torch.sqrt(Sr))
    return A, B, S


def main():
    args = R.generator_args(__doc__)

    out = {}
    s = ALPHA / RANK
    for idx, (case, (oc, ic)) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(4321 + idx)
        W = torch.randn(oc, ic, generator=g, dtype=torch.float32)
        samples = [torch.randn(t, ic, generator=g, dtype=torch.float32) + 0.3 for t in LENGTHS]
        samples[1][2, 3] = -3.0 * samples[1].abs().max()
        C = covariance(samples, torch.float32)
        U, S, V, damp = eigens(W, C)
        assert damp == 0.01, damp   # the C++ side inverts in fp64: parity needs no doubling here
        out[f"{case}.W"] = W.numpy()
        out[f"{case}.X"] = torch.cat(samples, dim=0).numpy()
        out[f"{case}.lengths"] = np.array(LENGTHS, np.float32)
        out[f"{case}.r"] = np.array([RANK], np.float32)
        out[f"{case}.alpha"] = np.array([ALPHA], np.float32)
        out[f"{case}.s"] = np.array([s], np.float32)
        out[f"{case}.C"] = C.numpy()
        out[f"{case}.damp"] = np.array([damp], np.float32)
        for mode in ("ipm", "kpm"):
            A, B, Ssel = corda_init(U, S, V, RANK, s, mode == "kpm")
            Wres = W - s * B @ A
            for name, t in (("A", A), ("B", B), ("W_res", Wres), ("S", Ssel)):
                out[f"{case}.{mode}.{name}"] = t.contiguous().numpy().astype(np.float32)

            if args.check:
                Cd = covariance(samples, torch.float64)
                Ud, Sd, Vd, damp_d = eigens(W.double(), Cd)
                Ad, Bd, _ = corda_init(Ud, Sd, Vd, RANK, s, mode == "kpm")
                rel = lambda x, y: float((x.double() - y).norm() / y.norm())  # noqa: E731
                print(f"{case} {mode}: C rel {rel(C, Cd):.2e}, damp64 {damp_d}, "
                      f"W_res rel {rel(Wres, W.double() - s * Bd @ Ad):.2e}, BA rel {rel(B @ A, Bd @ Ad):.2e}, "
                      f"preservation {rel(Wres + s * B @ A, W.double()):.2e}, "
                      f"full reconstruction {rel(U @ torch.diag(S) @ V.t(), W.double()):.2e}")

    d = os.path.join(args.out, "corda")
    os.makedirs(d, exist_ok=True)
    R.write_safetensors(os.path.join(d, "reference.safetensors"), out)


if __name__ == "__main__":
    main()
