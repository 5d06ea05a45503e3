// kernels.h: the compute kernels of peft.cpp, as plain functions over raw pointers.
// Each op has a fast version and a naive `_ref` twin (double accumulation) that tests compare
// against. Kernel entry points stay plain so a CUDA twin can be added per op later.
//
// Size letters used project-wide:
//   B batch, T tokens per sequence, N = B*T rows, C = n_embd, NH = n_head, NKV = n_head_kv,
//   HS = head size, F = n_ff, V = n_vocab, R = adapter rank, OC/IC = out/in features.
// Matrices are row-major; linear weights are [OC, IC] as PyTorch's nn.Linear.weight.
// Argument order (llm.c): outputs, saved stats, inputs, weights, then sizes.
// Backward kernels ACCUMULATE (+=) into every gradient output; callers zero them. Two
// exceptions, both in place by design: xent_forward overwrites dlogits (it may alias logits)
// and rope_backward rotates its buffer in place. Variants named `_set` overwrite instead.
// Threading: kernels parallelise over rows with OpenMP; gemm (our own, gemm.cpp) threads only
// when called from serial code. Every reduction is combined in a fixed order, so results are
// bit-identical for a fixed thread count.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace peft {

struct status;

// ---- GEMM (gemm.cpp) ------------------------------------------------------------------
// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C; op(X) = X or X^T (row-major storage,
// lda/ldb/ldc are row strides of the stored matrices).
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc);
void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc);
// gemm_own: the kernel behind gemm, with B stored f32 or bf16 (a frozen weight) and, when
// bf16_compute, every operand rounded to bf16 and multiplied with f32 accumulation. Our kernels'
// results do not depend on the thread count; on a detected AVX2 set, serial callers' products go
// to OpenBLAS (plain f32 as is, the rest staged as f32: gemm.cpp), whose sums do, so results
// are bit-identical for a fixed thread count only. gemm_own_ref is its double-accumulating oracle.
void gemm_own(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float * A, int64_t lda,
              dtype b_type, const void * B, int64_t ldb, float beta, float * C, int64_t ldc, bool bf16_compute);
void gemm_own_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float * A,
                  int64_t lda, dtype b_type, const void * B, int64_t ldb, float beta, float * C, int64_t ldc,
                  bool bf16_compute);
// A B operand that is decoded while packing (a block-quantized weight): read(ctx, r, c0, n, dst)
// writes elements [c0, c0 + n) of row r of the stored matrix ([N,K] when trans_b, else [K,N]) as
// f32. Called from several threads at once.
struct gemm_b_reader {
    void (*read)(const void * ctx, int64_t r, int64_t c0, int64_t n, float * dst);
    const void * ctx;
};
// gemm_own with B from a reader: each KC x NC block of B is decoded into a per-thread stage and
// packed from there, so no more than one block of B exists in f32 at a time.
void gemm_own_read(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float * A, int64_t lda,
                   const gemm_b_reader & B, float beta, float * C, int64_t ldc, bool bf16_compute);
// OpenBLAS sgemm/sgemv, the measured baseline (peft bench --peak, bench_kernels).
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc);
// The micro-kernel set in use: "avx512-amx", "avx512-bf16", "avx512", "avx2" or "scalar" (CPUID
// at first use).
const char * gemm_isa();
// Forces a set at or below the detected one (tests; null restores CPUID). False if unavailable.
bool gemm_force_isa(const char * name);
// GFLOP/s of a register-only loop on every thread: AVX-512 FMA, vdpbf16ps, or AMX TDPBF16PS
// tiles: the hardware peaks (peak.cpp). 0 where the CPU (or, for AMX, Linux) lacks them.
enum raw_peak_kind { RAW_PEAK_F32, RAW_PEAK_BF16_DOT, RAW_PEAK_AMX_BF16 };
double raw_peak_gflops(raw_peak_kind kind);
// The same in double (fp64 Gram matrices and back-substitution in linalg.cpp).
void gemm_f64(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
              const double * A, int64_t lda, const double * B, int64_t ldb, double beta, double * C, int64_t ldc);

// ---- GEMV: a few rows through a frozen weight (gemv.cpp) -------------------------------------
// y[M,OC] = x[M,IC] W^T + beta * y for M <= GEMV_MAX_ROWS (decoding), W [OC,IC] f32 or bf16 as
// stored, operands read as gemm_own reads them (bf16_compute rounds x and W to bf16). Threads
// split the rows of W inside the call; results do not depend on the thread count.
// gemv_own_ref is the double-accumulating oracle (gemm_own_ref).
constexpr int64_t GEMV_MAX_ROWS = 4;
constexpr int GEMV_MAX_OUTS = 4;
struct gemv_out {
    float *      y;      // [M, OC]
    dtype        wt;
    const void * W;      // [OC, IC]
    int64_t      OC;
    float        beta;
};
void gemv_own(float * y, const float * x, int64_t M, dtype wt, const void * W, int64_t OC, int64_t IC, float beta, bool bf16_compute);
// Several products over the same x (q/k/v, gate/up) in one parallel region.
void gemv_own_multi(const gemv_out * outs, int n_out, const float * x, int64_t M, int64_t IC, bool bf16_compute);
void gemv_own_ref(float * y, const float * x, int64_t M, dtype wt, const void * W, int64_t OC, int64_t IC, float beta,
                  bool bf16_compute);
// The GEMV kernels in use ("avx512-bf16", "avx512", "avx2", "scalar"); forcing as gemm_force_isa.
const char * gemv_isa_name();
bool gemv_force_isa(const char * name);

// ---- embedding (embedding.cpp) ----------------------------------------------------------
// out[N,C] = wte[tokens[n], :]; wte is f32 [V,C]. Callers with bf16 tables convert rows.
void embedding_forward(float * out, const int32_t * tokens, const float * wte, int64_t N, int64_t C);
// dwte[V,C] += scatter of dout[N,C]; deterministic (rows accumulated in token order).
void embedding_backward(float * dwte, const float * dout, const int32_t * tokens, int64_t N, int64_t C, int64_t V);

// ---- RMSNorm (rmsnorm.cpp) ----------------------------------------------------------------
// out = inp * rstd * weight, rstd[n] = 1/sqrt(mean(inp[n]^2) + eps)
void rmsnorm_forward(float * out, float * rstd, const float * inp, const float * weight, int64_t N, int64_t C, float eps);
// dinp += ..., dweight += ... (dweight may be null for a frozen norm)
void rmsnorm_backward(float * dinp, float * dweight, const float * dout, const float * inp, const float * weight,
                      const float * rstd, int64_t N, int64_t C);
void rmsnorm_forward_ref(float * out, float * rstd, const float * inp, const float * weight, int64_t N, int64_t C, float eps);

// ---- rotary embedding (rope.cpp) ----------------------------------------------------------
// HF "rotate_half" convention: dims i and i + HS/2 form a pair rotated by pos * inv_freq[i].
struct rope_config {
    float   theta = 10000.0f;
    bool    llama3 = false;                   // rope_scaling.rope_type == "llama3"
    float   factor = 8.0f;
    float   low_freq_factor = 1.0f;
    float   high_freq_factor = 4.0f;
    int64_t original_max_position = 8192;
};
// inv_freq[HS/2]: theta^(-2i/HS), with Llama-3 frequency scaling when cfg.llama3.
void rope_inv_freq(float * inv_freq, const rope_config & cfg, int64_t HS);
// x[N, nh, HS] rotated in place; pos[N] are positions (restart per packed sample).
void rope_forward(float * x, const int32_t * pos, const float * inv_freq, int64_t N, int64_t nh, int64_t HS);
// dx[N, nh, HS] in place: applies the inverse rotation (the transpose of forward).
void rope_backward(float * dx, const int32_t * pos, const float * inv_freq, int64_t N, int64_t nh, int64_t HS);

// ---- causal attention with grouped-query heads (attention.cpp) ----------------------------
// q[N, NH, HS], k/v[N, NKV, HS], out[N, NH, HS], lse[B, NH, T] (log-sum-exp per query row,
// saved for backward). Row n = b*T + t. Query t sees key s iff s <= t and, when seg is not
// null, seg[b*T+s] == seg[b*T+t] (packed samples do not see each other). Scale 1/sqrt(HS).
// Never holds more than one head's scores per thread at a time.
void attention_forward(float * out, float * lse, const float * q, const float * k, const float * v,
                       const int32_t * seg, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS);
// dq += , dk += , dv += (all heads of a kv group are reduced by one thread: deterministic)
void attention_backward(float * dq, float * dk, float * dv, const float * dout, const float * out, const float * lse,
                        const float * q, const float * k, const float * v, const int32_t * seg,
                        int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS);
// One decoded query head qh[HS] against the first n_keys rows of KV group g of a cache [max_ctx,
// KVD] (k cache kc, v cache vc): o[HS] = softmax(qh K^T / sqrt(HS)) V; sc [n_keys] scratch.
void attend_head(float * o, const float * qh, const float * kc, const float * vc, float * sc, int64_t n_keys, int64_t g,
                 int64_t KVD, int64_t HS);
void attention_forward_ref(float * out, const float * q, const float * k, const float * v, const int32_t * seg,
                           int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS);

// ---- SwiGLU (swiglu.cpp) --------------------------------------------------------------------
// out[i] = silu(gate[i]) * up[i] over n = N*F elements
void swiglu_forward(float * out, const float * gate, const float * up, int64_t n);
void swiglu_backward(float * dgate, float * dup, const float * dout, const float * gate, const float * up, int64_t n);
// Same, but dgate = ..., dup = ... (overwrites; for callers that would zero them first)
void swiglu_backward_set(float * dgate, float * dup, const float * dout, const float * gate, const float * up, int64_t n);

// ---- fused softmax + cross-entropy (xent.cpp) -----------------------------------------------
// On a chunk of n rows of logits[n, V]: losses[i] = logsumexp(logits_i) - logits_i[target_i],
// 0 where targets[i] == -100 (ignored). If dlogits is not null it receives
// (softmax_i - onehot_i) * dscale (zero rows for ignored targets); dlogits may alias logits.
// The vocabulary is processed in chunks with an online max/sum, so no probability row is kept.
void xent_forward(float * losses, float * dlogits, const float * logits, const int32_t * targets,
                  int64_t n, int64_t V, float dscale);
void xent_forward_ref(float * losses, const float * logits, const int32_t * targets, int64_t n, int64_t V);

// ---- reductions (reduce.cpp) ----------------------------------------------------------------
// sum of squares in double, fixed-order across threads
double sum_squares(const float * x, int64_t n);
// true if every element is finite
bool all_finite(const float * x, int64_t n);

// ---- dense linear algebra (linalg.cpp) --------------------------------------------------------
// The one place LAPACK is called. Every function validates its sizes and inputs and returns a
// status instead of aborting: PEFT_STATUS_SHAPE for bad sizes (r < 1, r > k, ...),
// PEFT_STATUS_NUMERIC for non-finite input or a LAPACK failure (no convergence, not SPD).
// `status` is declared in core/status.h; callers include it (kept out of this header).
// W is a linear weight [OC,IC] (row-major, PyTorch orientation); k = min(OC, IC).
// SVDs are W = U diag(S) Vh with S descending; singular vectors carry LAPACK's signs.
// No `_ref` twins here: tests check these against matrices with known spectra instead.

// Thin SVD in fp32 (LAPACK sgesdd, as torch.linalg.svd(full_matrices=False) on CPU):
// U [OC,k], S [k], Vh [k,IC].
status svd_thin(float * U, float * S, float * Vh, const float * W, int64_t OC, int64_t IC);

// Randomized top-R SVD, torch.svd_lowrank(W, q=R, niter) with no oversampling (Halko et al.
// 2009, Alg. 4.4): Omega [IC,R] ~ N(0,1) from rng(seed), Q = orth(W Omega), niter rounds of
// Q = orth(W^T Q), Q = orth(W Q), then the SVD of Q^T W [R,IC]. U [OC,R], S [R], Vh [R,IC].
status svd_lowrank(float * U, float * S, float * Vh, const float * W, int64_t OC, int64_t IC, int64_t R,
                   int niter, uint64_t seed);

// The R smallest singular triplets, without a full SVD (MiLoRA): eigenvectors of the k x k
// Gram matrix in fp64, the other side recovered as W v / ||W v||. U [OC,R], S [R] (descending,
// so S equals the tail S_full[k-R..k-1]), Vh [R,IC]. Accuracy: see linalg.cpp.
status svd_smallest(float * U, float * S, float * Vh, const float * W, int64_t OC, int64_t IC, int64_t R);

// Thin QR in fp32 (geqrf + orgqr): Q [OC,k] orthonormal columns, Rm [k,IC] upper trapezoidal,
// W = Q Rm. Signs as LAPACK and torch.linalg.qr: diag(Rm) may be negative (not normalised).
status qr_thin(float * Q, float * Rm, const float * W, int64_t OC, int64_t IC);

// Eigenpairs lo..lo+count-1 (0-based, ascending order) of a symmetric X [n,n] in fp64 (dsyevr;
// only the upper triangle of X is read): evals [count], evecs [n,count] (columns; may be null).
status eigh_range(double * evals, double * evecs, const double * X, int64_t n, int64_t lo, int64_t count);

// Solves X Y = Bm for a symmetric positive definite X [n,n] in fp64 (dposv, Cholesky):
// Y [n,nrhs]. Not positive definite -> PEFT_STATUS_NUMERIC.
status spd_solve(double * Y, const double * X, const double * Bm, int64_t n, int64_t nrhs);

// Xi [n,n] = X^-1 for a symmetric positive definite X [n,n] in fp64 (dpotrf + dpotri, Cholesky;
// only the upper triangle of X is read). Xi is exactly symmetric (one triangle mirrored).
// Not positive definite -> PEFT_STATUS_NUMERIC. Xi may not alias X.
status spd_inverse(double * Xi, const double * X, int64_t n);

} // namespace peft
