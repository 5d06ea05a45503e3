// gemm.cpp: the matrix multiply every linear layer goes through. gemm_own is ours: operands
// packed into panels (A per KC block once for the whole product, B per KC x NC block, B
// optionally stored bf16), one register-blocked micro-kernel per ISA chosen by CPUID
// (gemm_avx512.cpp), OpenMP threads over the MC x NC tiles of C. Two shapes skip the tiles where
// the set has kernels for them: f32 products of <= 16 columns or rows (the rank-r LoRA products,
// gemm_skinny) and products of <= 64 rows through a [N, K] weight (prefill, gemm_wrows), both
// reading the large operand in place. Each element of C is summed in the same k order whatever the thread
// count, so results are bit-identical across thread counts. With bf16 compute, operands are
// rounded to bf16 while packing and multiplied with f32 accumulation (AMX tiles, vdpbf16ps, or
// the f32 kernel on rounded values where neither exists). gemm_blas is OpenBLAS, kept for fp64,
// for f32 products on hosts without AVX-512 (its kernels measured faster there; gemm_run), for
// the side-by-side benchmark, and as the measured baseline. Only this file includes cblas.h.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "kernels/gemm_micro.h"
#include "kernels/kernels.h"

namespace peft {

// ---- dispatch ------------------------------------------------------------------------------

static const gemm_micro_set * detect_set() {
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
    if (avx512 && __builtin_cpu_supports("avx512bf16") && amx_permitted()) return &gemm_set_avx512_amx;
    if (avx512 && __builtin_cpu_supports("avx512bf16")) return &gemm_set_avx512_bf16;
    if (avx512) return &gemm_set_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &gemm_set_avx2;
    return &gemm_set_scalar;
}

static const gemm_micro_set * g_forced = nullptr;

static const gemm_micro_set & micro_set() {
    static const gemm_micro_set * detected = detect_set();
    return g_forced ? *g_forced : *detected;
}

const char * gemm_isa() { return micro_set().name; }

bool gemm_force_isa(const char * name) {
    static const gemm_micro_set * detected = detect_set();
    const gemm_micro_set * order[] = {&gemm_set_avx512_amx, &gemm_set_avx512_bf16, &gemm_set_avx512, &gemm_set_avx2, &gemm_set_scalar};
    if (!name) { g_forced = nullptr; return true; }
    bool reachable = false;   // only sets at or below what the CPU supports
    for (const gemm_micro_set * s : order) {
        if (s == detected) reachable = true;
        if (reachable && std::strcmp(s->name, name) == 0) { g_forced = s; return true; }
    }
    return false;
}

// ---- packing -------------------------------------------------------------------------------
// An operand element (i, p), i along M (A) or N (B), p along K, lives at X[i*ld + p] when
// `rowmajor` (A untransposed, B transposed: a weight [OC,IC] in x W^T) and at X[p*ld + i] otherwise.

static inline float elem_f32(const float * X, int64_t off, bool round) {
    return round ? bf16_to_f32(f32_to_bf16(X[off])) : X[off];
}
static inline float elem_f32(const uint16_t * X, int64_t off, bool) { return bf16_to_f32(X[off]); }
static inline uint32_t elem_bf16(const float * X, int64_t off) { return f32_to_bf16(X[off]); }
static inline uint32_t elem_bf16(const uint16_t * X, int64_t off) { return X[off]; }

// dst [ceil(n/P)][kc][P]: rows i0.., n of them, zero past n
template <typename T>
static void pack_f32(float * dst, const T * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n, int64_t p0,
                     int64_t kc, int P, bool round) {
    for (int64_t s = 0; s < n; s += P) {
        float * d = dst + (s / P) * kc * P;
        const int64_t w = std::min<int64_t>(P, n - s);
        if (rowmajor) {
            for (int64_t i = 0; i < w; i++) {
                const int64_t base = (i0 + s + i) * ld + p0;
                for (int64_t p = 0; p < kc; p++) d[p * P + i] = elem_f32(X, base + p, round);
            }
        } else {
            for (int64_t p = 0; p < kc; p++) {
                const int64_t base = (p0 + p) * ld + i0 + s;
                for (int64_t i = 0; i < w; i++) d[p * P + i] = elem_f32(X, base + i, round);
            }
        }
        for (int64_t p = 0; p < kc; p++) {
            for (int64_t i = w; i < P; i++) d[p * P + i] = 0.0f;
        }
    }
}

// dst [ceil(n/P)][kc2][P] uint32 bf16 pairs (k = 2q low, 2q+1 high), zero past n and past kc
template <typename T>
static void pack_bf16(uint32_t * dst, const T * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n, int64_t p0,
                      int64_t kc, int P) {
    const int64_t kc2 = (kc + 1) / 2;
    for (int64_t s = 0; s < n; s += P) {
        uint32_t * d = dst + (s / P) * kc2 * P;
        const int64_t w = std::min<int64_t>(P, n - s);
        for (int64_t i = 0; i < w; i++) {
            const int64_t ii = i0 + s + i;
            for (int64_t q = 0; q < kc2; q++) {
                const int64_t p = p0 + 2 * q;
                const uint32_t lo = elem_bf16(X, rowmajor ? ii * ld + p : p * ld + ii);
                const uint32_t hi = 2 * q + 1 < kc ? elem_bf16(X, rowmajor ? ii * ld + p + 1 : (p + 1) * ld + ii) : 0u;
                d[q * P + i] = lo | (hi << 16);
            }
        }
        for (int64_t q = 0; q < kc2; q++) {
            for (int64_t i = w; i < P; i++) d[q * P + i] = 0u;
        }
    }
}

// AMX A panels: dst [ceil(n/P)][P][kc2p] pairs (each row's k contiguous), zero past n and kc
static void pack_pair_rows(uint32_t * dst, const float * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n, int64_t p0,
                           int64_t kc, int P, int64_t kc2p) {
    const int64_t rows = (n + P - 1) / P * P;
    auto at = [&](int64_t i, int64_t p) -> uint32_t {
        if (i >= n || p >= kc) return 0u;
        return elem_bf16(X, rowmajor ? (i0 + i) * ld + p0 + p : (p0 + p) * ld + i0 + i);
    };
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t q = 0; q < kc2p; q++) dst[i * kc2p + q] = at(i, 2 * q) | (at(i, 2 * q + 1) << 16);
    }
}

static void pack_f32_generic(float * d, const float * X, int64_t ld, bool rm, int64_t i0, int64_t n, int64_t p0,
                             int64_t kc, int P, bool round) {
    pack_f32(d, X, ld, rm, i0, n, p0, kc, P, round);
}
static void pack_f32h_generic(float * d, const uint16_t * X, int64_t ld, bool rm, int64_t i0, int64_t n, int64_t p0,
                              int64_t kc, int P, bool round) {
    pack_f32(d, X, ld, rm, i0, n, p0, kc, P, round);
}
const gemm_packers gemm_packers_generic = {pack_f32_generic, pack_f32h_generic, pack_bf16<float>, pack_bf16<uint16_t>,
                                           pack_pair_rows};

// ---- blocked driver ------------------------------------------------------------------------

struct gemm_args {
    bool          ta, tb;
    int64_t       M, N, K;
    float         alpha;
    const float * A;
    int64_t       lda;
    dtype         btype;
    const void *  B;
    int64_t       ldb;
    float         beta;
    float *       C;
    int64_t       ldc;
    bool          bf16;
    const gemm_b_reader * rd;   // B produced while packing (a quantized weight), else null
};

static float * aligned_buffer(std::vector<float> & v, size_t n) {
    if (v.size() < n + 16) v.resize(n + 16);
    uintptr_t p = (uintptr_t) v.data();
    return (float *) ((p + 63) & ~(uintptr_t) 63);
}

static void pack_b_block(void * dst, const gemm_packers & pk, const gemm_args & g, int64_t j0, int64_t nc, int64_t p0,
                         int64_t kc, int nr, bool dot) {
    if (g.rd) {   // the block's stored rows decoded into a cache-sized f32 stage, packed from there
        static thread_local std::vector<float> stage;
        if (stage.size() < (size_t) (nc * kc)) stage.resize((size_t) (nc * kc));
        float * S = stage.data();
        if (g.tb) { for (int64_t i = 0; i < nc; i++) g.rd->read(g.rd->ctx, j0 + i, p0, kc, S + i * kc); }
        else      { for (int64_t p = 0; p < kc; p++) g.rd->read(g.rd->ctx, p0 + p, j0, nc, S + p * nc); }
        const int64_t ld = g.tb ? kc : nc;
        if (dot) pk.pairs((uint32_t *) dst, S, ld, g.tb, 0, nc, 0, kc, nr);
        else     pk.f32((float *) dst, S, ld, g.tb, 0, nc, 0, kc, nr, g.bf16);
    } else if (g.btype == PEFT_DTYPE_BF16) {
        const uint16_t * B = (const uint16_t *) g.B;
        if (dot) pk.pairs_from_h((uint32_t *) dst, B, g.ldb, g.tb, j0, nc, p0, kc, nr);
        else     pk.f32_from_h((float *) dst, B, g.ldb, g.tb, j0, nc, p0, kc, nr, false);
    } else {
        const float * B = (const float *) g.B;
        if (dot) pk.pairs((uint32_t *) dst, B, g.ldb, g.tb, j0, nc, p0, kc, nr);
        else     pk.f32((float *) dst, B, g.ldb, g.tb, j0, nc, p0, kc, nr, g.bf16);
    }
}

// C[i0.., j0..] (mr x nr window clipped to m x n) = alpha * tile + beta * C; beta 0 never reads C
static void store_tile(float * C, int64_t ldc, const float * tile, int nr, int64_t m, int64_t n, float alpha, float beta) {
    for (int64_t i = 0; i < m; i++) {
        float * c = C + i * ldc;
        const float * t = tile + i * nr;
        if (beta == 0.0f) {
            for (int64_t j = 0; j < n; j++) c[j] = alpha * t[j];
        } else {
            for (int64_t j = 0; j < n; j++) c[j] = std::fma(alpha, t[j], beta * c[j]);   // as the kernels
        }
    }
}

// k steps of a panel over kc values of k: kc (f32), its pairs (bf16 dot), the pairs rounded up
// to an AMX tile's 16 (zero past kc)
static int64_t panel_steps(int64_t kc, bool dot, bool amx) {
    const int64_t kc2 = (kc + 1) / 2;
    return amx ? (kc2 + 15) / 16 * 16 : dot ? kc2 : kc;
}

// One K block (p0, kc) of the tile C[i0.., j0..] (mc x nc): B's block packed here, A's panels
// given (Ap: ceil(mc/mr) panels of ksteps x mr), the micro-kernels summing into C.
static void gemm_tile_block(const gemm_args & g, const gemm_micro_set & s, const float * Ap, int64_t i0, int64_t mc,
                            int64_t j0, int64_t nc, int64_t p0, int64_t kc, int64_t KC) {
    static thread_local std::vector<float> bbuf;
    const bool dot = g.bf16 && s.bf16;   // bf16 pair panels (vdpbf16ps or AMX)
    const bool amx = dot && s.amx;
    const int mr = dot ? s.bmr : s.mr, nr = dot ? s.bnr : s.nr;
    const int64_t kc2 = (kc + 1) / 2, ksteps = panel_steps(kc, dot, amx);
    // kc2p <= max(16, KC / 2) <= KC: the buffers sized for KC floats hold AMX panels too
    float * Bp = aligned_buffer(bbuf, (size_t) ((nc + nr - 1) / nr * nr) * KC);
    alignas(64) float tile[32 * 32];
    if (amx) {   // B panel by panel, each zero-padded from kc2 to ksteps pair rows
        for (int64_t jr = 0; jr < nc; jr += nr) {
            uint32_t * b = (uint32_t *) Bp + (jr / nr) * ksteps * nr;
            pack_b_block(b, *s.pack, g, j0 + jr, std::min<int64_t>(nr, nc - jr), p0, kc, nr, true);
            std::memset(b + kc2 * nr, 0, (size_t) ((ksteps - kc2) * nr) * 4);
        }
    } else {
        pack_b_block(Bp, *s.pack, g, j0, nc, p0, kc, nr, dot);
    }
    const float beta = p0 == 0 ? g.beta : 1.0f;
    for (int64_t jr = 0; jr < nc; jr += nr) {
        for (int64_t ir = 0; ir < mc; ir += mr) {
            const float * a = Ap + (ir / mr) * ksteps * mr;
            const float * b = Bp + (jr / nr) * ksteps * nr;
            float * c = g.C + (i0 + ir) * g.ldc + j0 + jr;
            const int64_t m = std::min<int64_t>(mr, mc - ir), n = std::min<int64_t>(nr, nc - jr);
            const bool full = m == mr && n == nr;   // edges go through the tile buffer
            float * out = full ? c : tile;
            const int64_t ldo = full ? g.ldc : nr;
            const float al = full ? g.alpha : 1.0f, be = full ? beta : 0.0f;
            if (dot) s.bf16(ksteps, (const uint32_t *) a, (const uint32_t *) b, out, ldo, al, be);
            else     s.f32(ksteps, a, b, out, ldo, al, be);
            if (!full) store_tile(c, g.ldc, tile, nr, m, n, g.alpha, beta);
        }
    }
}

// A's rows i0 .. i0+mc of K block (p0, kc) into panels of mr rows (AMX: rows of kc2p pairs)
static void pack_a_block(float * Ap, const gemm_args & g, const gemm_micro_set & s, int64_t i0, int64_t mc, int64_t p0,
                         int64_t kc) {
    const bool dot = g.bf16 && s.bf16, amx = dot && s.amx;
    const int mr = dot ? s.bmr : s.mr;
    if (amx)      s.pack->pair_rows((uint32_t *) Ap, g.A, g.lda, !g.ta, i0, mc, p0, kc, mr, panel_steps(kc, true, true));
    else if (dot) s.pack->pairs((uint32_t *) Ap, g.A, g.lda, !g.ta, i0, mc, p0, kc, mr);
    else          s.pack->f32(Ap, g.A, g.lda, !g.ta, i0, mc, p0, kc, mr, g.bf16);
}

// One row times a [N,K] B (decoding a token through x W^T): dot products, threads over rows.
static void gemv_rows(const gemm_args & g, const gemm_micro_set & s) {
    std::vector<float> xr;
    const float * x = g.A;
    if (g.bf16 || g.ta) {   // a contiguous (and, with bf16 compute, rounded) copy of the row
        xr.resize((size_t) g.K);
        for (int64_t k = 0; k < g.K; k++) {
            const float v = g.A[g.ta ? k * g.lda : k];
            xr[(size_t) k] = g.bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
        }
        x = xr.data();
    }
    constexpr int64_t CHUNK = 64;
    const int64_t nchunks = (g.N + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t n0 = c * CHUNK, n = std::min(CHUNK, g.N - n0);
        float y[CHUNK];
        if (g.btype == PEFT_DTYPE_BF16) s.gemv_bf16(n, g.K, x, (const uint16_t *) g.B + n0 * g.ldb, g.ldb, y);
        else                            s.gemv_f32(n, g.K, x, (const float *) g.B + n0 * g.ldb, g.ldb, y);
        store_tile(g.C + n0, 0, y, 0, 1, n, g.alpha, g.beta);
    }
}

static void gemm_run(const gemm_args & g);

// f32 products with at most 16 columns (or, as C^T = op(B)^T op(A)^T, at most 16 rows): the
// rank-r LoRA products. The small operand is packed once into [K][16]; the large one is read in
// place, 12 rows per kernel call, threads over those row blocks. Each element of C is one sum
// over k in increasing order, whatever the thread count.
static void gemm_skinny(const gemm_args & g, const gemm_micro_set & s, bool transposed) {
    constexpr int RB = 12;
    const float * A = g.A;
    const float * B = (const float *) g.B;
    // the large operand L (rows x K), read in place, and the small one S (K x cols), packed
    const int64_t rows = transposed ? g.N : g.M, cols = transposed ? g.M : g.N, K = g.K;
    const float * L = transposed ? B : A;
    const int64_t lr = transposed ? (g.tb ? g.ldb : 1) : (g.ta ? 1 : g.lda);
    const int64_t lk = transposed ? (g.tb ? 1 : g.ldb) : (g.ta ? g.lda : 1);
    static thread_local std::vector<float> sbuf;
    float * Sp = aligned_buffer(sbuf, (size_t) (K * 16));
    for (int64_t k = 0; k < K; k++) {
        for (int64_t j = 0; j < 16; j++) {
            float v = 0.0f;
            if (j < cols) v = transposed ? A[g.ta ? k * g.lda + j : j * g.lda + k] : B[g.tb ? j * g.ldb + k : k * g.ldb + j];
            Sp[k * 16 + j] = v;
        }
    }
    const int64_t nblocks = (rows + RB - 1) / RB;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        alignas(64) float T[RB * 16];
        const int64_t r0 = b * RB;
        const int n = (int) std::min<int64_t>(RB, rows - r0);
        s.skinny_f32(n, K, L + r0 * lr, lr, lk, Sp, T);
        for (int i = 0; i < n; i++) {
            for (int64_t j = 0; j < cols; j++) {
                float & c = transposed ? g.C[j * g.ldc + r0 + i] : g.C[(r0 + i) * g.ldc + j];
                const float t = T[i * 16 + j];
                c = g.beta == 0.0f ? g.alpha * t : std::fma(g.alpha, t, g.beta * c);   // as store_tile
            }
        }
    }
}

// Without AVX-512 our kernel only widens bf16 to f32 while packing, so OpenBLAS's Zen / Haswell
// kernels win here too: the operands that are not plain f32 (a bf16 weight, bf16 rounding, a
// quantized weight's decode) are staged as f32 in blocks of at most STAGE floats each and
// multiplied by sgemm block by block (K blocks accumulate through beta 1). The staged values
// are exactly those gemm_own's packers make, so only the f32 summation order differs.
// training-sized products only: at a 64-token prefill the staging cost what it saved (measured)
constexpr int64_t STAGED_MIN_ROWS = 128;
static void gemm_blas_staged(const gemm_args & g) {
    constexpr int64_t STAGE = int64_t(1) << 21;   // 8 MiB of f32 per operand block
    const int64_t kb = std::min<int64_t>(g.K, 2048);
    const int64_t mb = std::min(g.M, std::max<int64_t>(64, STAGE / kb));
    const int64_t nb = std::min(g.N, std::max<int64_t>(64, STAGE / kb));
    static thread_local std::vector<float> astage, bstage;
    if (g.bf16 && astage.size() < (size_t) (mb * kb)) astage.resize((size_t) (mb * kb));
    if (bstage.size() < (size_t) (nb * kb)) bstage.resize((size_t) (nb * kb));
    for (int64_t p0 = 0; p0 < g.K; p0 += kb) {
        const int64_t kc = std::min(kb, g.K - p0);
        const float beta = p0 == 0 ? g.beta : 1.0f;
        for (int64_t i0 = 0; i0 < g.M; i0 += mb) {
            const int64_t mc = std::min(mb, g.M - i0);
            // A's block: as stored, or rounded to bf16 into [mc, kc] (row-major, untransposed)
            const float * A = g.ta ? g.A + p0 * g.lda + i0 : g.A + i0 * g.lda + p0;
            int64_t lda = g.lda;
            bool ta = g.ta;
            if (g.bf16) {
                float * S = astage.data();
#pragma omp parallel for schedule(static)
                for (int64_t i = 0; i < mc; i++) {
                    for (int64_t p = 0; p < kc; p++) S[i * kc + p] = elem_f32(A, ta ? p * lda + i : i * lda + p, true);
                }
                A = S, lda = kc, ta = false;
            }
            for (int64_t j0 = 0; j0 < g.N; j0 += nb) {
                const int64_t nc = std::min(nb, g.N - j0);
                // B's block in its stored layout: [nc, kc] when trans_b, else [kc, nc]
                const int64_t rows = g.tb ? nc : kc, cols = g.tb ? kc : nc;
                const int64_t r0 = g.tb ? j0 : p0, c0 = g.tb ? p0 : j0;
                float * S = bstage.data();
#pragma omp parallel for schedule(static)
                for (int64_t r = 0; r < rows; r++) {
                    float * d = S + r * cols;
                    if (g.rd) {
                        g.rd->read(g.rd->ctx, r0 + r, c0, cols, d);
                        if (g.bf16) for (int64_t c = 0; c < cols; c++) d[c] = elem_f32(d, c, true);
                    } else if (g.btype == PEFT_DTYPE_BF16) {
                        const uint16_t * B = (const uint16_t *) g.B + (r0 + r) * g.ldb + c0;
                        for (int64_t c = 0; c < cols; c++) d[c] = bf16_to_f32(B[c]);
                    } else {
                        const float * B = (const float *) g.B + (r0 + r) * g.ldb + c0;
                        for (int64_t c = 0; c < cols; c++) d[c] = elem_f32(B, c, g.bf16);
                    }
                }
                gemm_blas(ta, g.tb, mc, nc, kc, g.alpha, A, lda, S, cols, beta, g.C + i0 * g.ldc + j0, g.ldc);
            }
        }
    }
}

void gemm_own(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float * A, int64_t lda,
              dtype b_type, const void * B, int64_t ldb, float beta, float * C, int64_t ldc, bool bf16_compute) {
    PEFT_ASSERT(b_type == PEFT_DTYPE_F32 || b_type == PEFT_DTYPE_BF16);
    gemm_run({trans_a, trans_b, M, N, K, alpha, A, lda, b_type, B, ldb, beta, C, ldc, bf16_compute, nullptr});
}

void gemm_own_read(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float * A, int64_t lda,
                   const gemm_b_reader & B, float beta, float * C, int64_t ldc, bool bf16_compute) {
    gemm_run({trans_a, trans_b, M, N, K, alpha, A, lda, PEFT_DTYPE_F32, nullptr, 0, beta, C, ldc, bf16_compute, &B});
}

// A few rows (a prompt's prefill) through a weight stored [N, K] (trans_b): W is read in place
// by gemm_wrows, each of its rows once; the rows of A are packed once as columns (f32, or bf16
// pairs when the weight is bf16 and the set has vdpbf16ps). Threads over blocks of W's rows;
// each element of C is one sum over k in increasing order, whatever the thread count.
constexpr int64_t WROWS_MAX_M = 64;
static bool wrows_applies(const gemm_args & g, const gemm_micro_set & s) {
    if (!s.wrows || !g.tb || g.rd || g.M > WROWS_MAX_M) return false;
    if (g.btype == PEFT_DTYPE_F32) return !g.bf16;
    return !g.bf16 || s.wrows->dot;   // bf16 W: exact, or bf16 compute on vdpbf16ps
}

static void gemm_wrows(const gemm_args & g, const gemm_micro_set & s) {
    const int mw = (int) ((g.M + 15) / 16), MP = 16 * mw, R = 24 / mw;
    const bool dot = g.bf16;
    const int64_t K = g.K, steps = dot ? (K + 1) / 2 : K;
    static thread_local std::vector<float> abuf;
    float * Ap = aligned_buffer(abuf, (size_t) (steps * MP));
    auto a_at = [&](int64_t m, int64_t k) { return g.A[g.ta ? k * g.lda + m : m * g.lda + k]; };
    for (int64_t q = 0; q < steps; q++) {
        for (int64_t m = 0; m < MP; m++) {
            if (!dot) {
                Ap[q * MP + m] = m < g.M ? a_at(m, q) : 0.0f;
                continue;
            }
            uint32_t pair = 0;
            if (m < g.M) {
                pair = f32_to_bf16(a_at(m, 2 * q));
                if (2 * q + 1 < K) pair |= (uint32_t) f32_to_bf16(a_at(m, 2 * q + 1)) << 16;
            }
            std::memcpy(Ap + q * MP + m, &pair, 4);
        }
    }
    const int64_t blocks = (g.N + R - 1) / R;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        alignas(64) float T[24 * 16];
        // the last block starts R rows before the end (re-computing a few rows) so that the
        // kernel never reads past W; a weight of fewer than R rows goes through a copy
        const int64_t n0 = std::min(b * R, std::max<int64_t>(0, g.N - R));
        const int64_t rows = std::min<int64_t>(R, g.N - n0);
        std::vector<uint8_t> pad;
        const void * W = g.btype == PEFT_DTYPE_F32 ? (const void *) ((const float *) g.B + n0 * g.ldb)
                                                   : (const void *) ((const uint16_t *) g.B + n0 * g.ldb);
        int64_t ldw = g.ldb;
        if (rows < R) {   // N < R: zero rows after the real ones
            const size_t es = g.btype == PEFT_DTYPE_F32 ? 4 : 2;
            pad.assign((size_t) R * (size_t) K * es, 0);
            for (int64_t r = 0; r < rows; r++) std::memcpy(pad.data() + r * K * es, (const uint8_t *) W + r * g.ldb * es, K * es);
            W = pad.data();
            ldw = K;
        }
        if (g.btype == PEFT_DTYPE_F32) s.wrows->f32(mw, K, (const float *) W, ldw, Ap, T);
        else if (dot)                  s.wrows->dot(mw, K, (const uint16_t *) W, ldw, (const uint32_t *) Ap, T);
        else                           s.wrows->bf16w(mw, K, (const uint16_t *) W, ldw, Ap, T);
        const int64_t first = b * R - n0;   // rows of this block the previous block has not written
        for (int64_t m = 0; m < g.M; m++) {
            for (int64_t r = first; r < rows; r++) {
                float & c = g.C[m * g.ldc + n0 + r];
                const float t = T[r * MP + m];
                c = g.beta == 0.0f ? g.alpha * t : std::fma(g.alpha, t, g.beta * c);   // as store_tile
            }
        }
    }
}

static void gemm_run(const gemm_args & g) {
    const bool trans_b = g.tb, bf16_compute = g.bf16;
    const int64_t M = g.M, N = g.N, K = g.K;
    const float beta = g.beta;
    float * C = g.C;
    const int64_t ldc = g.ldc;
    const dtype b_type = g.btype;
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {   // C = beta C
        for (int64_t i = 0; i < M; i++) {
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        }
        return;
    }
    const gemm_micro_set & s = micro_set();
    // the GEMV reads B as stored: f32 weights under bf16 compute need the rounding packer
    // an f32 row through f32 weights: OpenBLAS's sgemv measured faster (memory-bound, ~1.3x)
    if (M == 1 && b_type == PEFT_DTYPE_F32 && !bf16_compute && !g.rd) {
        gemm_blas(g.ta, trans_b, M, N, K, g.alpha, g.A, g.lda, (const float *) g.B, g.ldb, beta, C, ldc);
        return;
    }
    if (M == 1 && trans_b && !(bf16_compute && b_type == PEFT_DTYPE_F32) && !g.rd) { gemv_rows(g, s); return; }
    // Without AVX-512, OpenBLAS's own AVX2 kernels (Zen / Haswell) beat ours on f32 x f32: 1.17x
    // on the small shape's GEMMs (geometric mean, bench_kernels BM_gemm vs BM_gemm_openblas, 2
    // threads, AMD EPYC Zen 3) and +8-11% on a LoRA training step. Only when detected: a forced
    // "avx2" set (tests, --gemm-isa) runs our kernels. OpenBLAS is single-threaded inside an
    // OpenMP region, so nested calls keep ours.
    if (!g_forced && &s == &gemm_set_avx2 && !omp_in_parallel()) {
        if (b_type == PEFT_DTYPE_F32 && !bf16_compute && !g.rd) {
            gemm_blas(g.ta, trans_b, M, N, K, g.alpha, g.A, g.lda, (const float *) g.B, g.ldb, beta, C, ldc);
            return;
        }
        if (M >= STAGED_MIN_ROWS) { gemm_blas_staged(g); return; }
    }
    // f32 with <= 16 rows goes to the skinny kernel; other few-row products over a weight to wrows
    const bool skinny = s.skinny_f32 && b_type == PEFT_DTYPE_F32 && !bf16_compute && !g.rd && (N <= 16 || M <= 16);
    if (wrows_applies(g, s) && !(skinny && M <= 16)) { gemm_wrows(g, s); return; }
    if (skinny) { gemm_skinny(g, s, N > 16); return; }
    // KC: more k per pass means fewer read-modify-write passes over C; 384 f32 (a 48 KB B
    // micro-panel) and MC ~ 516 rows measured best on the small shape's GEMMs (+12% over
    // 256 / 384, 1 and 2 threads). vdpbf16ps pairs: 1024 (one pass over K 768, a 1 MB A block
    // for the L2) measured 0-8% over 512 on Zen 4 (the lm_head forward most, its C being 32 MB);
    // AMX keeps 512, unmeasured since.
    const bool dot = bf16_compute && s.bf16;
    const int mr = dot ? s.bmr : s.mr, nr = dot ? s.bnr : s.nr;
    static const int64_t kc_env = getenv("PEFT_KC") ? atoi(getenv("PEFT_KC")) : 384;
    static const int64_t mc_env = getenv("PEFT_MC") ? atoi(getenv("PEFT_MC")) : 516;
    static const int64_t nc_env = getenv("PEFT_NC") ? atoi(getenv("PEFT_NC")) : 512;
    const int64_t KC = dot ? (s.amx ? 512 : 1024) : kc_env;
    // B is re-packed per MC rows and A per NC columns: large blocks keep packing a small share
    int64_t MC = (int64_t) (mc_env / mr) * mr, NC = nc_env;
    // enough tiles to balance the threads: narrower columns first, then shorter rows
    const int64_t want = 2 * (int64_t) omp_get_max_threads();
    auto split = [](int64_t n, int64_t parts, int64_t unit) {   // n in `parts` pieces, rounded up to unit
        const int64_t piece = (n + parts - 1) / parts;
        return std::max(unit, (piece + unit - 1) / unit * unit);
    };
    int64_t nmt = (M + MC - 1) / MC;
    if (nmt * ((N + NC - 1) / NC) < want) NC = std::min(NC, split(N, (want + nmt - 1) / nmt, nr));
    const int64_t nnt = (N + NC - 1) / NC;
    if (nmt * nnt < want) MC = std::min(MC, split(M, (want + nnt - 1) / nnt, mr));
    nmt = (M + MC - 1) / MC;
    // A's K block is packed once for all column blocks (each tile would re-pack it per NC
    // columns: 63 times over the lm_head's 32000), then the tiles run; C sums the K blocks in
    // increasing order whichever thread takes a tile.
    const bool amx = dot && s.amx;
    const int64_t panels = (M + mr - 1) / mr;
    static thread_local std::vector<float> abuf;
    float * Ap = aligned_buffer(abuf, (size_t) (panels * mr * panel_steps(KC, dot, amx)));
    constexpr int64_t PACK_PANELS = 4;   // panels per packing task
#pragma omp parallel
    for (int64_t p0 = 0; p0 < K; p0 += KC) {
        const int64_t kc = std::min(KC, K - p0), ksteps = panel_steps(kc, dot, amx);
#pragma omp for schedule(static)
        for (int64_t q = 0; q < panels; q += PACK_PANELS) {
            const int64_t r0 = q * mr;
            pack_a_block(Ap + q * ksteps * mr, g, s, r0, std::min(PACK_PANELS * mr, M - r0), p0, kc);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < nmt * nnt; t++) {
            const int64_t i0 = (t / nnt) * MC, j0 = (t % nnt) * NC;
            gemm_tile_block(g, s, Ap + (i0 / mr) * ksteps * mr, i0, std::min(MC, M - i0), j0, std::min(NC, N - j0), p0,
                            kc, KC);
        }
    }
}

// C[M,N] = alpha * op(A) * op(B) + beta * C. Row-major storage: A is [M,K] (lda >= K) or, when
// trans_a, [K,M] (lda >= M); B is [K,N] (ldb >= N) or, when trans_b, [N,K] (ldb >= K).
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc) {
    gemm_own(trans_a, trans_b, M, N, K, alpha, A, lda, PEFT_DTYPE_F32, B, ldb, beta, C, ldc, false);
}

// OpenBLAS sgemm (sgemv for one row). Must be called from serial code: OpenBLAS runs
// single-threaded inside an OpenMP region.
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    // blasint is 32-bit in Debian's OpenBLAS: larger sizes would silently wrap
    PEFT_ASSERT(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX);
    if (M == 1 && K > 0) {
        // one row (decoding a token): sgemv is several times faster than a 1-row sgemm.
        // C[1,N] = op(A)[1,K] op(B)  <=>  c = op(B)^T a, a read with stride lda when A is [K,1]
        const blasint inc_a = trans_a ? (blasint) lda : 1;
        if (trans_b) {   // B stored [N,K]: c = B a
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint) N, (blasint) K, alpha, B, (blasint) ldb, A, inc_a, beta, C, 1);
        } else {         // B stored [K,N]: c = B^T a
            cblas_sgemv(CblasRowMajor, CblasTrans, (blasint) K, (blasint) N, alpha, B, (blasint) ldb, A, inc_a, beta, C, 1);
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (blasint) M, (blasint) N, (blasint) K, alpha, A, (blasint) lda, B, (blasint) ldb, beta, C,
                (blasint) ldc);
}

// The same contract in double, for the fp64 linear algebra of linalg.cpp (Gram matrices,
// eigenvector back-substitution). No sgemv shortcut: these are never single-row hot paths.
void gemm_f64(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
              const double * A, int64_t lda, const double * B, int64_t ldb, double beta, double * C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    PEFT_ASSERT(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX);
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (blasint) M, (blasint) N, (blasint) K, alpha, A, (blasint) lda, B, (blasint) ldb, beta, C,
                (blasint) ldc);
}

// The oracle of gemm_own: operands read as gemm_own reads them (bf16 widened; with bf16 compute
// every operand rounded to bf16), products summed in double.
void gemm_own_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float * A,
                  int64_t lda, dtype b_type, const void * B, int64_t ldb, float beta, float * C, int64_t ldc,
                  bool bf16_compute) {
    auto rnd = [&](float v) { return bf16_compute ? bf16_to_f32(f32_to_bf16(v)) : v; };
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < K; p++) {
                const int64_t boff = trans_b ? j * ldb + p : p * ldb + j;
                const float b = b_type == PEFT_DTYPE_BF16 ? bf16_to_f32(((const uint16_t *) B)[boff])
                                                          : rnd(((const float *) B)[boff]);
                acc += (double) rnd(trans_a ? A[p * lda + i] : A[i * lda + p]) * b;
            }
            // BLAS semantics: with beta == 0, C is not read (it may hold garbage or NaN)
            double c = beta == 0.0f ? 0.0 : (double) beta * C[i * ldc + j];
            C[i * ldc + j] = (float) (alpha * acc + c);
        }
    }
}

void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc) {
    gemm_own_ref(trans_a, trans_b, M, N, K, alpha, A, lda, PEFT_DTYPE_F32, B, ldb, beta, C, ldc, false);
}

} // namespace peft
