// deep_lora.h: Deep LoRA (METHODS §13), the deep overparameterised factorisation
// dW = W_L ... W_1 with small orthogonal init, compressed at initialisation to the rank-k
// subspace its gradient dynamics stay in, and trained in compressed form:
//   y = x W^T + b + ((x V_c) Wt_1^T ... Wt_L^T) U_c^T,   U_c [OC,k], V_c [IC,k], Wt_l [k,k]
// U_c, V_c frozen (or trained at gamma * lr), Wt_l = eps I_k at the start. No alpha. Saved as a
// plain LoRA: lora_A = (Wt_L ... Wt_1) V_c^T [k,IC], lora_B = U_c [OC,k], r = lora_alpha = k.
//
// The pure math of the compression is exposed for the tests; the module and the method live in
// deep_lora.cpp. Not here: the calibration pass (train/calibrate.h) that yields G.
//
// Orientation (PyTorch): m = OC, n = IC, G [m,n] = d loss / d W at the frozen base, row-major.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "adapters/adapter.h"
#include "core/option.h"
#include "core/status.h"

namespace peft {

// P [m,n]: the end-to-end direction O_L ... O_1 of the uncompressed init (W_l = eps O_l, each
// O_l (semi-)orthogonal and Haar distributed, so their product is too): orthonormal columns
// when m >= n, orthonormal rows when m < n. Drawn as the Q of a Gaussian matrix with the sign
// of diag(R) folded in (the Haar-uniform QR, as flax's orthogonal initializer); fp32 QR, fp64
// sign fix. Uses m*n normal draws of r.
status deep_lora_random_frame(float * P, int64_t m, int64_t n, rng & r);

// Compression (METHODS §13 steps 1-6, checked against cjyaras/deep-lora-transformers
// dlt/train.py get_left_right_factors): with h = k/2, G = Y diag(s) Z^T (top-h singular pairs
// Y_h [m,h], Z_h [n,h]):
//   m >= n:  U_c = orth[P Z_h, Y_h] [m,k],   V_c = P^T U_c [n,k]
//   m <  n:  V_c = orth[P^T Y_h, Z_h] [n,k], U_c = P V_c [m,k]    (the transposed procedure)
// because the output (input) factor's gradient at the init is eps^(L-1) G (O_{L-1}..O_1)^T
// (its transpose for the input factor): its singular vectors are Y_h and O_{L-1}..O_1 Z_h, so
// steps 3-5 give span(P Z_h) + span(Y_h), and step 6 V_c = dW(0)^T U_c / eps^L = P^T U_c. Only
// P and G are needed, never the factors. k even, 2 <= k <= min(m, n). SVD and QR in fp32,
// products in fp64. Errors: bad sizes (SHAPE), NaN/Inf or an all-zero G (NUMERIC).
status deep_lora_compress(float * Uc, float * Vc, const float * G, const float * P, int64_t m, int64_t n, int64_t k);

struct deep_lora_module : adapter_module {
    // Tensors zeroed but the inner factors (eps I_k); create() fills U_c, V_c (or a checkpoint
    // does). gamma > 0: U_c, V_c trainable at lr_scale gamma.
    deep_lora_module(const target_info & t, int64_t k, int64_t depth, float eps, float gamma);

    void forward(const float * x, int64_t N, float * y) override;
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    // only dV_c reads x (the inner factors' gradients need the cached k-wide activations)
    bool backward_reads_input() const override { return gamma > 0.0f; }
    void delta_weight(float * dW) const override;
    void merge(float * W, int64_t OC, int64_t IC) const override;     // W += U_c (M V_c^T), one GEMM
    void unmerge(float * W, int64_t OC, int64_t IC) const override;   // W -= U_c (M V_c^T)
    void params(std::vector<param_ref> & out) override;
    void exported(std::vector<param_ref> & out) override;             // plain LoRA, r = k

    // M [k,k] = Wt_L ... Wt_1 (the inner product), in fp32.
    void inner_product(float * M) const;
    // lora_A [k,IC] = M V_c^T, the file form's A.
    void file_a(float * A) const;

    target_info        t;
    int64_t            k = 0, L = 0;
    float              gamma = 0.0f;
    std::vector<float> U, V;        // [OC,k], [IC,k]
    std::vector<float> W;           // [L,k,k]: W[l] = Wt_{l+1}, row-major (out x in)
    std::vector<float> dU, dV, dW;  // dU, dV empty when gamma == 0
    std::vector<float> acts;        // [(L+1),N,k]: t_0 = x V_c, t_l = t_{l-1} Wt_l^T (kept for backward)
    int64_t            acts_rows = 0;
    std::vector<float> g0, g1;      // [N,k] backward scratch
    std::vector<float> file_A, file_B;   // exported(): [k,IC], [OC,k]
};

// The calibration gradient of every target (G = sum over batches of dy^T x), filled by the
// calibration pass and freed target by target as create() builds the modules.
struct deep_lora_method : adapter_method, calibration_observer {
    const char * name() const override { return "deep_lora"; }
    status configure(const json_value & cfg) override;
    std::string config_json() const override;
    status check(const target_info & t) const override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    status begin(const target_info * targets, int64_t n) override;
    calibration_observer * calibration(std::string & data_path, int64_t & n_samples) override;
    bool wants_gradients() const override { return true; }
    status observe_gradient(int64_t index, const float * x, const float * dy, int64_t N) override;

    int64_t     r = 8;              // compressed rank k (even)
    int64_t     depth = 3;          // L
    double      init_scale = 1e-3;  // eps
    double      gamma = 0.0;        // lr multiplier of U_c, V_c; 0 = frozen
    std::string data;               // calibration data; empty = the training data
    int64_t     samples = 8;        // rows of the calibration batch
    std::string lora_config;        // config_json(): the plain LoRA the file is (built in configure)

    std::vector<target_info>        targets;
    std::vector<std::vector<float>> grads;   // per target [OC,IC]; empty before calibration / after create
    std::vector<bool>               calibrated;
};

std::unique_ptr<adapter_method> deep_lora_method_make();
const std::vector<option_def> & deep_lora_method_options();

} // namespace peft
