// gemm_micro.h: the register-blocked micro-kernels behind gemm_own (gemm.cpp), one set per ISA,
// and the packed-panel layouts they read. Internal to src/kernels/: callers use kernels.h.
//
// A micro-kernel computes one MR x NR tile T of op(A) op(B) over kc steps of K from packed panels
// and writes C[MR][NR] (row stride ldc) = fma(alpha, T, beta * C), C not read when beta is 0.
//   f32 panels:  Ap [kc][MR] floats, Bp [kc][NR] floats (zero-padded past the matrix edge)
//   bf16 panels: Ap [kc2][MR] and Bp [kc2][NR] uint32, kc2 = ceil(kc/2); each uint32 holds the
//                bf16 pair (k = 2q low half, k = 2q+1 high half), the layout vdpbf16ps consumes.
//   AMX panels:  Ap [MR][kc2p] (each row's pairs contiguous: an A tile is 16 rows x 16 pairs)
//                and Bp [kc2p][NR], kc2p = kc2 rounded up to 16 (a tile's K), zero past kc.
// Not here: blocking, packing, threads (gemm.cpp); dispatch picks a set by CPUID at first use.
#pragma once
#include <cstdint>

namespace peft {

typedef void (*gemm_micro_f32_fn)(int64_t kc, const float * Ap, const float * Bp, float * C, int64_t ldc, float alpha,
                                  float beta);
typedef void (*gemm_micro_bf16_fn)(int64_t kc2, const uint32_t * Ap, const uint32_t * Bp, float * C, int64_t ldc,
                                   float alpha, float beta);
// y[n] = sum_k x[k] * W[n*ldw + k] for n in [0, N): one decoded token through W [N, K]
typedef void (*gemv_f32_fn)(int64_t N, int64_t K, const float * x, const float * W, int64_t ldw, float * y);
typedef void (*gemv_bf16_fn)(int64_t N, int64_t K, const float * x, const uint16_t * W, int64_t ldw, float * y);
// T[i][0..16) = sum_k A(i, k) Bp[k][0..16) for `rows` <= 12 rows i, A(i, k) at A[i * ra + k * ka]
// (read in place, not packed), Bp [K][16] (zero past the matrix's columns), T [rows][16] aligned
typedef void (*gemm_skinny_fn)(int rows, int64_t K, const float * A, int64_t ra, int64_t ka, const float * Bp,
                               float * T);

// Packers: an operand element (i, p), i along M (A) or N (B), p along K, lives at X[i*ld + p]
// when `rowmajor` and at X[p*ld + i] otherwise; rows i0 .. i0+n, k p0 .. p0+kc go to panels of
// P rows, zero past n (and, for pairs, past kc). `round`: f32 values rounded to bf16 (bf16
// compute without vdpbf16ps). Every set's packers give the same bits.
typedef void (*pack_f32_fn)(float * dst, const float * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                            int64_t p0, int64_t kc, int P, bool round);
typedef void (*pack_f32h_fn)(float * dst, const uint16_t * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                             int64_t p0, int64_t kc, int P, bool round);
typedef void (*pack_pairs_fn)(uint32_t * dst, const float * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                              int64_t p0, int64_t kc, int P);
typedef void (*pack_pairsh_fn)(uint32_t * dst, const uint16_t * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                               int64_t p0, int64_t kc, int P);
// AMX A panels: dst [ceil(n/P)][P][kc2p] pairs, zero past n and past kc
typedef void (*pack_pair_rows_fn)(uint32_t * dst, const float * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                                  int64_t p0, int64_t kc, int P, int64_t kc2p);

struct gemm_packers {
    pack_f32_fn    f32;         // f32 storage -> f32 panels
    pack_f32h_fn   f32_from_h;  // bf16 storage -> f32 panels
    pack_pairs_fn  pairs;       // f32 storage -> bf16 pair panels
    pack_pairsh_fn pairs_from_h;
    pack_pair_rows_fn pair_rows;   // f32 storage -> AMX A panels
};

// Few-row products against a row-major weight W [N, K] read in place (gemm.cpp gemm_wrows):
// T[r][0..16*mw) = sum_k W[r*ldw + k] A(., k) for the 24/mw rows r of W from its first, A packed
// as Ap [K][16*mw] f32 (f32 or bf16 W, exact) or [ceil(K/2)][16*mw] bf16 pairs (dot: bf16 W
// as stored, vdpbf16ps); mw in 1..4, T [24/mw][16*mw] aligned.
struct gemm_wrows {
    void (*f32)(int mw, int64_t K, const float * W, int64_t ldw, const float * Ap, float * T);
    void (*bf16w)(int mw, int64_t K, const uint16_t * W, int64_t ldw, const float * Ap, float * T);
    void (*dot)(int mw, int64_t K, const uint16_t * W, int64_t ldw, const uint32_t * Ap, float * T);   // null: none
};

struct gemm_micro_set {
    const char *       name;      // "avx512-amx", "avx512-bf16", "avx512", "avx2", "scalar"
    int                mr, nr;    // tile of the f32 kernel
    int                bmr, bnr;  // tile of the bf16 kernel
    bool               amx;       // the bf16 kernel reads AMX panels (kc2 argument = kc2p)
    gemm_micro_f32_fn  f32;
    gemm_micro_bf16_fn bf16;      // null: bf16 compute packs bf16-rounded values for f32
    gemv_f32_fn        gemv_f32;
    gemv_bf16_fn       gemv_bf16;
    gemm_skinny_fn     skinny_f32;  // f32 products of <= 16 columns; null: the tiled path
    const gemm_wrows * wrows;       // few-row products over a weight read in place; null: tiled
    const gemm_packers * pack;
};

// Sets compiled with target attributes (gemm_avx512.cpp); usable only where CPUID says so.
extern const gemm_micro_set gemm_set_avx512_amx;   // usable only once amx_permitted()
extern const gemm_micro_set gemm_set_avx512_bf16;
extern const gemm_micro_set gemm_set_avx512;
extern const gemm_micro_set gemm_set_avx2;
extern const gemm_micro_set gemm_set_scalar;
extern const gemm_packers gemm_packers_avx512;    // gemm_avx512.cpp
extern const gemm_packers gemm_packers_generic;   // gemm.cpp: plain C++
// CPUID has AMX-BF16 and Linux granted this process the tile state (arch_prctl), asked once
bool amx_permitted();

} // namespace peft
