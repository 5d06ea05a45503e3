// deep_lora.cpp: Deep LoRA (METHODS §13): the compression at initialisation, the compressed
// module and the method (configuration, calibration gradient, PEFT LoRA export).
// Math of the module (t_0 = x V_c [N,k], t_l = t_{l-1} Wt_l^T, g_L = dy U_c, g_{l-1} = g_l Wt_l):
//   forward   y   = x W^T + b + t_L U_c^T
//   backward  dWt_l += g_l^T t_{l-1}      dU_c += dy^T t_L      dV_c += x^T g_0
//             dx    += dy W + g_0 V_c^T
// all skinny GEMMs: the [OC,IC] product is formed only for merge/export.
// Departures from the reference (cjyaras/deep-lora-transformers, JAX): G is the gradient at the
// frozen base (dW = 0), the reference's at dW(0) = eps^L P; the two differ by O(eps^L). The
// reference's gradient batch is one training batch; ours is deep_lora_samples rows.
// Not here: the calibration pass (train/calibrate.cpp), files (io/peft_format.cpp).
#include "adapters/deep_lora.h"

#include <cmath>
#include <cstring>
#include <string>

#include "adapters/lora.h"
#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

const char * const WHERE = "adapter config";

float * grow(std::vector<float> & v, int64_t n) {
    if ((int64_t) v.size() < n) v.resize((size_t) n);
    return v.data();
}

// out [c,r] = in [r,c]^T
std::vector<float> transposed(const float * in, int64_t r, int64_t c) {
    std::vector<float> out((size_t) (r * c));
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) out[(size_t) (j * r + i)] = in[i * c + j];
    return out;
}

// The m >= n case: Uc [m,k] = orth[P Z_h, Y_h], Vc [n,k] = P^T Uc.
status compress_tall(float * Uc, float * Vc, const float * G, const float * P, int64_t m, int64_t n, int64_t k) {
    const int64_t h = k / 2;
    std::vector<float> Y((size_t) (m * n)), S((size_t) n), Zt((size_t) (n * n));   // [m,n], [n], [n,n]
    PEFT_TRY(svd_thin(Y.data(), S.data(), Zt.data(), G, m, n));
    std::vector<double> Pd(P, P + m * n), Zh((size_t) (n * h)), PZ((size_t) (m * h));   // [m,n], [n,h], [m,h]
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < h; j++) Zh[(size_t) (i * h + j)] = Zt[(size_t) (j * n + i)];
    gemm_f64(false, false, m, h, n, 1.0, Pd.data(), n, Zh.data(), h, 0.0, PZ.data(), h);
    // C [m,k] = [P Z_h, Y_h]; its Q spans (S1 n S2)^perp of steps 3-5. Householder's Q stays
    // orthonormal even when the two halves overlap (then one direction is arbitrary).
    std::vector<float> C((size_t) (m * k)), Rm((size_t) (k * k));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < h; j++) {
            C[(size_t) (i * k + j)] = (float) PZ[(size_t) (i * h + j)];
            C[(size_t) (i * k + h + j)] = Y[(size_t) (i * n + j)];
        }
    }
    PEFT_TRY(qr_thin(Uc, Rm.data(), C.data(), m, k));
    // step 6: Vc = dW(0)^T Uc / eps^L = P^T Uc
    std::vector<double> Ud(Uc, Uc + m * k), Vd((size_t) (n * k));
    gemm_f64(true, false, n, k, m, 1.0, Pd.data(), n, Ud.data(), k, 0.0, Vd.data(), k);
    for (int64_t i = 0; i < n * k; i++) Vc[i] = (float) Vd[(size_t) i];
    return {};
}

} // namespace

status deep_lora_random_frame(float * P, int64_t m, int64_t n, rng & r) {
    if (m < 1 || n < 1) return make_error(PEFT_STATUS_SHAPE, "deep_lora_random_frame", "empty shape");
    const bool tall = m >= n;
    const int64_t a = tall ? m : n, b = tall ? n : m;   // the Gaussian is [a,b], a >= b
    std::vector<float> X((size_t) (a * b)), Q((size_t) (a * b)), Rm((size_t) (b * b));
    r.fill_normal(X.data(), a * b, 0.0f, 1.0f);
    PEFT_TRY(qr_thin(Q.data(), Rm.data(), X.data(), a, b));
    for (int64_t j = 0; j < b; j++) {
        if (Rm[(size_t) (j * b + j)] >= 0.0f) continue;
        for (int64_t i = 0; i < a; i++) Q[(size_t) (i * b + j)] = -Q[(size_t) (i * b + j)];
    }
    if (tall) std::memcpy(P, Q.data(), sizeof(float) * Q.size());
    else {
        const std::vector<float> Pt = transposed(Q.data(), a, b);   // [m,n] = Q^T
        std::memcpy(P, Pt.data(), sizeof(float) * Pt.size());
    }
    return {};
}

status deep_lora_compress(float * Uc, float * Vc, const float * G, const float * P, int64_t m, int64_t n, int64_t k) {
    const char * where = "deep_lora_compress";
    if (m < 1 || n < 1 || k < 2 || k % 2 != 0 || k > (m < n ? m : n)) {
        return make_error(PEFT_STATUS_SHAPE, where,
                          "rank " + std::to_string(k) + " must be even and in [2, min(" + std::to_string(m) + ", " +
                              std::to_string(n) + ")]");
    }
    if (!all_finite(G, m * n)) return make_error(PEFT_STATUS_NUMERIC, where, "calibration gradient has NaN or Inf");
    if (!all_finite(P, m * n)) return make_error(PEFT_STATUS_NUMERIC, where, "frame P has NaN or Inf");
    if (sum_squares(G, m * n) == 0.0) {
        status st = make_error(PEFT_STATUS_NUMERIC, where, "calibration gradient is zero: no direction to compress to");
        st.hint = "the calibration rows need scored tokens (labels) that reach this layer";
        return st;
    }
    if (m >= n) return compress_tall(Uc, Vc, G, P, m, n, k);
    // m < n: the same on the transposes (roles of U_c and V_c swap)
    const std::vector<float> Gt = transposed(G, m, n), Pt = transposed(P, m, n);   // [n,m]
    return compress_tall(Vc, Uc, Gt.data(), Pt.data(), n, m, k);
}

// ---- module --------------------------------------------------------------------------------

deep_lora_module::deep_lora_module(const target_info & ti, int64_t k_, int64_t depth, float eps, float g)
    : t(ti), k(k_), L(depth), gamma(g) {
    PEFT_ASSERT(k > 0 && L >= 1 && t.base && t.in_features == t.base->IC && t.out_features == t.base->OC);
    U.assign((size_t) (t.out_features * k), 0.0f);
    V.assign((size_t) (t.in_features * k), 0.0f);
    W.assign((size_t) (L * k * k), 0.0f);
    for (int64_t l = 0; l < L; l++)
        for (int64_t i = 0; i < k; i++) W[(size_t) (l * k * k + i * k + i)] = eps;   // Wt_l = eps I_k
    dW.assign(W.size(), 0.0f);
    if (gamma > 0.0f) {
        dU.assign(U.size(), 0.0f);
        dV.assign(V.size(), 0.0f);
    }
}

void deep_lora_module::forward(const float * x, int64_t N, float * y) {
    const int64_t IC = t.in_features, OC = t.out_features;
    linear_forward(y, x, *t.base, t.bias, N);
    float * a = grow(acts, (L + 1) * N * k);
    acts_rows = N;
    gemm(false, false, N, k, IC, 1.0f, x, IC, V.data(), k, 0.0f, a, k);   // t_0 = x V_c
    for (int64_t l = 0; l < L; l++) {   // t_{l+1} = t_l Wt_{l+1}^T
        gemm(false, true, N, k, k, 1.0f, a + l * N * k, k, W.data() + l * k * k, k, 0.0f, a + (l + 1) * N * k, k);
    }
    gemm(false, true, N, OC, k, 1.0f, a + L * N * k, k, U.data(), k, 1.0f, y, OC);   // y += t_L U_c^T
}

void deep_lora_module::backward(const float * x, const float * dy, int64_t N, float * dx) {
    PEFT_ASSERT(N == acts_rows);   // the contract: backward follows the forward of the same x
    const int64_t IC = t.in_features, OC = t.out_features;
    const float * a = acts.data();
    if (dx) linear_backward_input(dx, dy, *t.base, N, 1.0f);   // base path: dx += dy W
    float * g = grow(g0, N * k), * gn = grow(g1, N * k);
    gemm(false, false, N, k, OC, 1.0f, dy, OC, U.data(), k, 0.0f, g, k);   // g_L = dy U_c
    if (gamma > 0.0f) gemm(true, false, OC, k, N, 1.0f, dy, OC, a + L * N * k, k, 1.0f, dU.data(), k);
    for (int64_t l = L - 1; l >= 0; l--) {
        // t_{l+1} = t_l Wt^T  =>  dWt += g^T t_l,  g <- g Wt
        gemm(true, false, k, k, N, 1.0f, g, k, a + l * N * k, k, 1.0f, dW.data() + l * k * k, k);
        gemm(false, false, N, k, k, 1.0f, g, k, W.data() + l * k * k, k, 0.0f, gn, k);
        std::swap(g, gn);
    }
    // t_0 = x V_c  =>  dV_c += x^T g_0,  dx += g_0 V_c^T
    if (gamma > 0.0f) gemm(true, false, IC, k, N, 1.0f, x, IC, g, k, 1.0f, dV.data(), k);
    if (dx) gemm(false, true, N, IC, k, 1.0f, g, k, V.data(), k, 1.0f, dx, IC);
}

void deep_lora_module::inner_product(float * M) const {
    // M = Wt_L ... Wt_1, accumulated from the right in fp64
    std::vector<double> acc((size_t) (k * k), 0.0), w((size_t) (k * k)), nxt((size_t) (k * k));
    for (int64_t i = 0; i < k; i++) acc[(size_t) (i * k + i)] = 1.0;
    for (int64_t l = 0; l < L; l++) {
        for (int64_t i = 0; i < k * k; i++) w[(size_t) i] = W[(size_t) (l * k * k + i)];
        gemm_f64(false, false, k, k, k, 1.0, w.data(), k, acc.data(), k, 0.0, nxt.data(), k);
        std::swap(acc, nxt);
    }
    for (int64_t i = 0; i < k * k; i++) M[i] = (float) acc[(size_t) i];
}

void deep_lora_module::file_a(float * A) const {
    std::vector<float> M((size_t) (k * k));
    inner_product(M.data());
    gemm(false, true, k, t.in_features, k, 1.0f, M.data(), k, V.data(), k, 0.0f, A, t.in_features);   // M V_c^T
}

void deep_lora_module::delta_weight(float * d) const {
    std::vector<float> A((size_t) (k * t.in_features));
    file_a(A.data());
    gemm(false, false, t.out_features, t.in_features, k, 1.0f, U.data(), k, A.data(), t.in_features, 0.0f, d, t.in_features);
}

void deep_lora_module::merge(float * Wb, int64_t OC, int64_t IC) const {
    PEFT_ASSERT(OC == t.out_features && IC == t.in_features);
    std::vector<float> A((size_t) (k * IC));
    file_a(A.data());
    gemm(false, false, OC, IC, k, 1.0f, U.data(), k, A.data(), IC, 1.0f, Wb, IC);
}

void deep_lora_module::unmerge(float * Wb, int64_t OC, int64_t IC) const {
    PEFT_ASSERT(OC == t.out_features && IC == t.in_features);
    std::vector<float> A((size_t) (k * IC));
    file_a(A.data());
    gemm(false, false, OC, IC, k, -1.0f, U.data(), k, A.data(), IC, 1.0f, Wb, IC);
}

void deep_lora_module::params(std::vector<param_ref> & out) {
    const bool outer = gamma > 0.0f;
    param_ref u;
    u.name = "deep_lora_U";
    u.value = U.data();
    u.grad = outer ? dU.data() : nullptr;
    u.shape = {t.out_features, k};
    u.trainable = outer;
    u.saved = false;   // the file is the plain LoRA of exported()
    u.lr_scale = gamma;
    out.push_back(u);
    param_ref v = u;
    v.name = "deep_lora_V";
    v.value = V.data();
    v.grad = outer ? dV.data() : nullptr;
    v.shape = {t.in_features, k};
    out.push_back(v);
    for (int64_t l = 0; l < L; l++) {
        param_ref w;
        w.name = "deep_lora_W" + std::to_string(l + 1);
        w.value = W.data() + l * k * k;
        w.grad = dW.data() + l * k * k;
        w.shape = {k, k};
        w.saved = false;
        out.push_back(w);
    }
}

void deep_lora_module::exported(std::vector<param_ref> & out) {
    file_A.resize((size_t) (k * t.in_features));
    file_a(file_A.data());
    file_B = U;
    param_ref a;
    a.name = "lora_A.weight";
    a.value = file_A.data();
    a.shape = {k, t.in_features};
    out.push_back(a);
    param_ref b;
    b.name = "lora_B.weight";
    b.value = file_B.data();
    b.shape = {t.out_features, k};
    out.push_back(b);
}

// ---- method --------------------------------------------------------------------------------

namespace {

} // namespace

status deep_lora_method::configure(const json_value & cfg) {
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "configuration", "a JSON object", cfg.dump());
    // LoRA's other keys would be silently ignored (no alpha, dropout or LoRA init here): refuse them
    for (const option_def & d : lora_method_options()) {
        const json_value v = cfg.get(d.name);
        if (std::string(d.name) == "r" || !v.valid() || v.is_null()) continue;
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(d.name) + " is a LoRA key; deep_lora does not use it");
        st.hint = "deep_lora takes r, deep_lora_depth, deep_lora_init_scale, deep_lora_gamma, deep_lora_data, deep_lora_samples and the target keys";
        return st;
    }
    PEFT_TRY(config_read_int(cfg, "r", 2, "an even rank >= 2", r));
    if (r % 2 != 0) {
        status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "r", "an even rank (deep_lora compresses to k/2 + k/2 directions)",
                                  std::to_string(r));
        st.hint = "use r = " + std::to_string(r + 1);
        return st;
    }
    PEFT_TRY(config_read_int(cfg, "deep_lora_depth", 3, "a depth >= 3 (the reference compresses only L >= 3)", depth));
    PEFT_TRY(config_read_number(cfg, "deep_lora_init_scale", CONFIG_POSITIVE, HUGE_VAL, "a positive scale (eps)", init_scale));
    PEFT_TRY(config_read_number(cfg, "deep_lora_gamma", 0.0, HUGE_VAL, "a learning-rate multiplier >= 0", gamma));
    PEFT_TRY(config_read_int(cfg, "deep_lora_samples", 1, "a positive number of rows", samples));
    const json_value d = cfg.get("deep_lora_data");
    if (d.valid() && !d.is_null()) {
        if (!d.is_string()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "deep_lora_data", "a data file path", d.dump());
        data = d.as_string();
    }
    // The saved file is a plain LoRA with s = alpha / r = 1: its config comes from LoRA's own
    // writer, fed the target keys as given.
    std::string text = "{\"r\":" + std::to_string(r) + ",\"lora_alpha\":" + std::to_string(r);
    for (const char * key : {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "task_type"}) {
        const json_value v = cfg.get(key);
        if (v.valid()) text += std::string(",") + json_quote(key) + ":" + v.dump();
    }
    text += "}";
    json_document doc;
    PEFT_TRY(doc.parse(text.data(), text.size(), "deep_lora's LoRA config"));
    lora_method plain;
    PEFT_TRY(plain.configure(doc.root()));
    lora_config = plain.config_json();
    return {};
}

std::string deep_lora_method::config_json() const { return lora_config; }

status deep_lora_method::check(const target_info & t) const {
    const int64_t mn = std::min(t.in_features, t.out_features);
    if (r > mn) {
        status st = make_error(PEFT_STATUS_CONFIG, t.path,
                               "deep_lora rank " + std::to_string(r) + " exceeds min(in_features " + std::to_string(t.in_features) +
                                   ", out_features " + std::to_string(t.out_features) + ") = " + std::to_string(mn));
        st.hint = "lower r (even, at most " + std::to_string(mn - mn % 2) + ")";
        return st;
    }
    return {};
}

status deep_lora_method::begin(const target_info * ts, int64_t n) {
    targets.assign(ts, ts + n);
    grads.assign((size_t) n, {});
    calibrated.assign((size_t) n, false);
    return {};
}

calibration_observer * deep_lora_method::calibration(std::string & data_path, int64_t & n_samples) {
    data_path = data;   // empty: the training data
    n_samples = samples;
    return this;
}

status deep_lora_method::observe_gradient(int64_t index, const float * x, const float * dy, int64_t N) {
    const target_info & t = targets[(size_t) index];
    const int64_t OC = t.out_features, IC = t.in_features;
    // G [OC,IC] += dy^T x: allocated at the first batch (~4 bytes per adapted base weight)
    std::vector<float> & G = grads[(size_t) index];
    if (G.empty()) G.assign((size_t) (OC * IC), 0.0f);
    gemm(true, false, OC, IC, N, 1.0f, dy, OC, x, IC, 1.0f, G.data(), IC);
    calibrated[(size_t) index] = true;
    return {};
}

status deep_lora_method::create(const target_info & t, rng & rg, std::unique_ptr<adapter_module> & out) {
    PEFT_TRY(check(t));
    target_info own = t;
    own.writer = nullptr;   // the module keeps no writer: only create() / restore() replace its base
    auto mod = std::make_unique<deep_lora_module>(own, r, depth, (float) init_scale, (float) gamma);
    if (!t.writer) {   // resume: U_c, V_c and the inner factors come from the checkpoint
        out = std::move(mod);
        return {};
    }
    size_t i = 0;
    while (i < targets.size() && targets[i].path != t.path) i++;
    if (i == targets.size() || !calibrated[i]) {
        status st = make_error(PEFT_STATUS_CONFIG, t.path, "deep_lora: no calibration gradient for this module");
        st.hint = "attach through peft train (or give adapters_attach a calibration_source)";
        return st;
    }
    const int64_t m = t.out_features, n = t.in_features;
    std::vector<float> P((size_t) (m * n));
    PEFT_TRY(deep_lora_random_frame(P.data(), m, n, rg));
    status st = deep_lora_compress(mod->U.data(), mod->V.data(), grads[i].data(), P.data(), m, n, r);
    std::vector<float>().swap(grads[i]);   // each G is freed once its module is built
    if (!st.ok()) {
        st.message = t.path + ": " + st.message;
        return st;
    }
    out = std::move(mod);
    return {};
}

std::unique_ptr<adapter_method> deep_lora_method_make() { return std::make_unique<deep_lora_method>(); }

// Deep LoRA's keys; `r` is shared with LoRA (the registry keeps LoRA's row, whose help covers both).
const std::vector<option_def> & deep_lora_method_options() {
    static const std::vector<option_def> keys = {
        {"r", OPT_INT, "8", "rank: LoRA's r; deep_lora: the compressed rank k (even)", "lora_r"},
        {"deep_lora_depth", OPT_INT, "3", "deep_lora: factors L in dW = W_L ... W_1"},
        {"deep_lora_init_scale", OPT_FLOAT, "0.001", "deep_lora: eps, the orthogonal init scale (inner factors start at eps I)"},
        {"deep_lora_gamma", OPT_FLOAT, "0", "deep_lora: lr multiplier of the outer U_c, V_c (0 = frozen)"},
        {"deep_lora_data", OPT_STRING, "training data", "deep_lora: calibration data (JSONL/.txt) for the compression gradient"},
        {"deep_lora_samples", OPT_INT, "8", "deep_lora: rows of the calibration batch"},
    };
    return keys;
}

} // namespace peft
