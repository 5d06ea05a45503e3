// dora.cpp: the DoRA module (METHODS §15): forward, backward (detached or exact norm), the norm
// cache, merge / unmerge, parameters. The LoRA factors, dropout and scratch come from lora_module.
// Math (s = scaling, xd = drop(x), xa = xd A^T [N,R], V = W + s B A, f = m / n):
//  axis out, n = rownorm(V) [OC] (PEFT DoraLinearVariant.forward; its base term keeps the undropped x)
//    forward  y  = x W^T + b + (f-1) * (xd W^T) + f * (s xa B^T)      = f * (x V^T) + b without dropout
//    backward gy = dy * f;  df_o = sum_n dy_no (xd V^T)_no;  dm = df / n
//             dB += s gy^T xa;  dA += s (gy B)^T xd
//             dx += dy W + keep/(1-p) * ((dy*(f-1)) W + s (gy B) A)   = gy W + s (gy B) A without dropout
//  axis in, n = colnorm(V) [IC], W' = V diag(f): the input is scaled instead of the output
//    forward  u = x + xd*(f-1), ud = xd*f (both x*f without dropout);  y = u W^T + b + s (ud A^T) B^T
//    backward G = dy W, H = s (dy B) A;  df_i = sum_n (G+H)_ni xd_ni;  dm = df / n
//             dB += s dy^T xa;  dA += s (dy B)^T ud;  dx += G + keep/(1-p) * (G*(f-1) + H*f)
//  exact mode (dora_detach_norm false) adds the path through n: dn = -m/n^2 df, then dV = c * V along
//  the axis with c = dn/n, dB += s dV A^T, dA += s B^T dV (norm_backward).
// The paper's §4.3 detach: n is a constant in backward, which is what PEFT (weight_norm.detach())
// and NVlabs' dora_simple do; it changes dA and dB but not dm (METHODS §15 (8)).
// The norms come from cached terms (refresh_norms), once per optimizer step / mode switch, never
// per forward: ||W||^2 is computed once per base, then n^2 = ||W||^2 + 2s<B, W A^T> + s^2 B A A^T B^T.
// Not here: the config keys and module creation (lora_method in lora.cpp).
#include "adapters/dora.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"

namespace peft {

namespace {

float * grow(std::vector<float> & v, int64_t n) {
    if ((int64_t) v.size() < n) v.resize((size_t) n);
    return v.data();
}

constexpr int64_t COLS = 64;   // columns per thread in the column reductions (contiguous rows)

// out[j] = sum_n a[n*K + j] * b[n*K + j] over N rows, j < K, and, when scaled is non-null,
// scaled[n*K + j] = a[n*K + j] * f[j] in the same pass (backward reads dy once for both). Threads
// own column blocks and walk the rows in order: the sums do not depend on the thread count.
void column_dots(double * out, const float * a, const float * b, int64_t N, int64_t K, const float * f = nullptr,
                 float * scaled = nullptr) {
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < K; j0 += COLS) {
        const int64_t j1 = std::min(K, j0 + COLS);
        double acc[COLS] = {};
        for (int64_t n = 0; n < N; n++) {
            const float * an = a + n * K, * bn = b + n * K;
            for (int64_t j = j0; j < j1; j++) acc[j - j0] += (double) an[j] * bn[j];
            if (scaled) {
                float * sn = scaled + n * K;
                for (int64_t j = j0; j < j1; j++) sn[j] = an[j] * f[j];
            }
        }
        for (int64_t j = j0; j < j1; j++) out[j] = acc[j - j0];
    }
}

} // namespace

dora_module::dora_module(const target_info & ti, int64_t rank, float s, float p, float b_lr, lora_init init, rng & r,
                         std::shared_ptr<lora_scratch> sc, bool ain, bool det)
    : lora_module(ti, rank, s, p, false, b_lr, init, r, std::move(sc)), axis_in(ain), detach(det) {
    const size_t K = (size_t) (axis_in ? t.in_features : t.out_features);
    magnitude.assign(K, 0.0f);
    dmagnitude.assign(K, 0.0f);
    scale.assign(K, 1.0f);
    init_magnitude();
}

void dora_module::init_magnitude() {
    // the same refresh the forward runs: at init f = m / n is exactly 1 and the output is the base's
    refresh_norms();
    magnitude = norm;
}

bool dora_module::factors_moved() const {
    return norm_A.size() != A.size() || std::memcmp(norm_A.data(), A.data(), A.size() * 4) != 0 ||
           std::memcmp(norm_B.data(), B.data(), B.size() * 4) != 0;
}

const std::vector<float> & dora_module::current_norms() {
    if (!norms_valid || (!detach && factors_moved())) refresh_norms();
    return norm;
}

void dora_module::refresh_norms() {
    const int64_t OC = t.out_features, IC = t.in_features, K = axis_in ? IC : OC;
    const double s = scaling;
    if (!base_valid) {   // ||W||^2 along the axis, once per base (in double, from the dequantized rows)
        w_sq.assign((size_t) K, 0.0);
        const int64_t TILE = 256;
        std::vector<float> tile((size_t) (std::min(OC, TILE) * IC));
        for (int64_t r0 = 0; r0 < OC; r0 += TILE) {
            const int64_t r1 = std::min(OC, r0 + TILE);
            linear_weight_rows_f32(tile.data(), *t.base, r0, r1);
            if (!axis_in) {
#pragma omp parallel for schedule(static)
                for (int64_t o = r0; o < r1; o++) {
                    const float * w = tile.data() + (o - r0) * IC;
                    double acc = 0.0;
                    for (int64_t i = 0; i < IC; i++) acc += (double) w[i] * w[i];
                    w_sq[(size_t) o] = acc;
                }
            } else {
#pragma omp parallel for schedule(static)
                for (int64_t i = 0; i < IC; i++) {
                    double acc = w_sq[(size_t) i];
                    for (int64_t o = 0; o < r1 - r0; o++) acc += (double) tile[(size_t) (o * IC + i)] * tile[(size_t) (o * IC + i)];
                    w_sq[(size_t) i] = acc;
                }
            }
        }
        base_valid = true;
    }
    gram.resize((size_t) (R * R));
    norm.resize((size_t) K);
    if (!axis_in) {
        // cross = A W^T [R,OC] (one pass over W, in the base's own dtype), gram = A A^T
        cross.resize((size_t) (R * OC));
        linear_forward(cross.data(), A.data(), *t.base, nullptr, R);
        gemm(false, true, R, R, IC, 1.0f, A.data(), IC, A.data(), IC, 0.0f, gram.data(), R);
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < OC; o++) {
            const float * b = B.data() + o * R;
            double c = 0.0, q = 0.0;
            for (int64_t r = 0; r < R; r++) {
                c += (double) b[r] * cross[(size_t) (r * OC + o)];
                double gb = 0.0;
                for (int64_t k = 0; k < R; k++) gb += (double) gram[(size_t) (r * R + k)] * b[k];
                q += (double) b[r] * gb;
            }
            const double n2 = w_sq[(size_t) o] + 2.0 * s * c + s * s * q;
            norm[(size_t) o] = (float) std::sqrt(std::max(n2, 0.0));
        }
    } else {
        // cross = B^T W [R,IC] (one pass over W), gram = B^T B
        std::vector<float> Bt((size_t) (R * OC));   // [R,OC]
        for (int64_t o = 0; o < OC; o++) {
            for (int64_t r = 0; r < R; r++) Bt[(size_t) (r * OC + o)] = B[(size_t) (o * R + r)];
        }
        cross.resize((size_t) (R * IC));
        linear_backward_input(cross.data(), Bt.data(), *t.base, R, 0.0f);
        gemm(true, false, R, R, OC, 1.0f, B.data(), R, B.data(), R, 0.0f, gram.data(), R);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < IC; i++) {
            double c = 0.0, q = 0.0;
            for (int64_t r = 0; r < R; r++) {
                const double a = A[(size_t) (r * IC + i)];
                c += a * cross[(size_t) (r * IC + i)];
                double ga = 0.0;
                for (int64_t k = 0; k < R; k++) ga += (double) gram[(size_t) (r * R + k)] * A[(size_t) (k * IC + i)];
                q += a * ga;
            }
            const double n2 = w_sq[(size_t) i] + 2.0 * s * c + s * s * q;
            norm[(size_t) i] = (float) std::sqrt(std::max(n2, 0.0));
        }
    }
    if (!detach) {
        norm_A = A;
        norm_B = B;
    }
    norms_valid = true;
}

void dora_module::set_training(bool on) {
    training = on;
    norms_valid = false;   // parameters may have been set while the mode was the other one
}

// ---- forward ---------------------------------------------------------------------------------

void dora_module::forward(const float * x, int64_t N, float * y) {
    const int64_t IC = t.in_features, OC = t.out_features, K = axis_in ? IC : OC;
    const std::vector<float> & n = current_norms();
    // f = m / n (m read every call: it is a parameter); a zero direction has no magnitude to scale
    for (int64_t k = 0; k < K; k++) scale[(size_t) k] = n[(size_t) k] > 0.0f ? magnitude[(size_t) k] / n[(size_t) k] : 0.0f;
    const float * f = scale.data();
    const bool drop = dropout_active();
    float * xa_ = grow(xa, N * R);
    xa_rows = N;
    float * xd = drop ? grow(scratch->xd, N * IC) : nullptr;
    if (drop) dropout_input(x, N, xd);
    if (!axis_in) {
        float * p = grow(pv, N * OC);   // kept for backward: df = sum_n dy * (xd V^T)
        const float * xin = drop ? xd : x;
        gemm(false, true, N, R, IC, 1.0f, xin, IC, A.data(), IC, 0.0f, xa_, R);
        if (!drop) {
            // p = x W^T + s xa B^T = x V^T (with B = 0 exactly x W^T), y = f p + b
            linear_forward(p, x, *t.base, nullptr, N);
            gemm(false, true, N, OC, R, scaling, xa_, R, B.data(), R, 1.0f, p, OC);
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < N; r++) {
                const float * pr = p + r * OC;
                float * yr = y + r * OC;
                if (t.bias) {
                    for (int64_t o = 0; o < OC; o++) yr[o] = f[o] * pr[o] + t.bias[o];
                } else {
                    for (int64_t o = 0; o < OC; o++) yr[o] = f[o] * pr[o];
                }
            }
        } else {
            // PEFT with active dropout: the base layer's x W^T + b, plus (f-1) xd W^T + f s xa B^T
            float * lo = grow(scratch->lo, N * OC);
            linear_forward(y, x, *t.base, t.bias, N);
            linear_forward(p, xd, *t.base, nullptr, N);
            gemm(false, true, N, OC, R, scaling, xa_, R, B.data(), R, 0.0f, lo, OC);
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < N; r++) {
                float * yr = y + r * OC, * pr = p + r * OC;
                const float * lr = lo + r * OC;
                for (int64_t o = 0; o < OC; o++) {
                    yr[o] += (f[o] - 1.0f) * pr[o] + f[o] * lr[o];
                    pr[o] += lr[o];
                }
            }
        }
        return;
    }
    // axis in: u = x + xd (f-1) into tmp2 (x f without dropout), ud = xd f (in place of xd)
    float * u = grow(scratch->tmp2, N * IC);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) {
        const float * xr = x + r * IC;
        float * ur = u + r * IC;
        if (!drop) {
            for (int64_t i = 0; i < IC; i++) ur[i] = xr[i] * f[i];
        } else {
            float * dr = xd + r * IC;
            for (int64_t i = 0; i < IC; i++) {
                ur[i] = xr[i] + dr[i] * (f[i] - 1.0f);
                dr[i] *= f[i];
            }
        }
    }
    const float * ud = drop ? xd : u;
    linear_forward(y, u, *t.base, t.bias, N);
    gemm(false, true, N, R, IC, 1.0f, ud, IC, A.data(), IC, 0.0f, xa_, R);
    gemm(false, true, N, OC, R, scaling, xa_, R, B.data(), R, 1.0f, y, OC);
}

// ---- backward --------------------------------------------------------------------------------

void dora_module::backward(const float * x, const float * dy, int64_t N, float * dx) {
    PEFT_ASSERT(N == xa_rows);   // the contract: backward follows the forward of the same x
    if (axis_in) backward_in(x, dy, N, dx);
    else backward_out(x, dy, N, dx);
    if (dropout_active()) dropout.next();   // the next forward draws a fresh mask
}

void dora_module::backward_out(const float * x, const float * dy, int64_t N, float * dx) {
    const int64_t IC = t.in_features, OC = t.out_features;
    const float * f = scale.data();
    const bool drop = dropout_active();
    // y = f * p + ...  =>  df_o = sum_n dy_no p_no;  gy = dy * f
    std::vector<double> df((size_t) OC);
    float * gy = grow(scratch->gy, N * OC);
    column_dots(df.data(), dy, pv.data(), N, OC, f, gy);
    // f = m / n  =>  dm = df / n;  exact: dn = -m / n^2 df
    std::vector<float> dn((size_t) OC, 0.0f);
    for (int64_t o = 0; o < OC; o++) {
        const double n = norm[(size_t) o];
        if (n <= 0.0) continue;
        dmagnitude[(size_t) o] += (float) (df[(size_t) o] / n);
        dn[(size_t) o] = (float) (-(double) magnitude[(size_t) o] / (n * n) * df[(size_t) o]);
    }
    if (!detach) norm_backward(dn.data());
    // f * s xa B^T  =>  g = gy B;  dB += s gy^T xa;  dA += s g^T xd
    float * g = grow(scratch->g, N * R);
    gemm(false, false, N, R, OC, 1.0f, gy, OC, B.data(), R, 0.0f, g, R);
    gemm(true, false, OC, R, N, scaling, gy, OC, xa.data(), R, 1.0f, dB.data(), R);
    const float * xin = x;
    if (drop) {
        float * xd = grow(scratch->xd, N * IC);
        dropout_input(x, N, xd);
        xin = xd;
    }
    gemm(true, false, R, IC, N, scaling, g, R, xin, IC, 1.0f, dA.data(), IC);
    if (!dx) return;
    if (!drop) {
        linear_backward_input(dx, gy, *t.base, N, 1.0f);                              // f * x W^T
        gemm(false, false, N, IC, R, scaling, g, R, A.data(), IC, 1.0f, dx, IC);     // f * s x A^T B^T
        return;
    }
    // x W^T (undropped) + keep/(1-p) * [(f-1) xd W^T + f s xd A^T B^T]
    linear_backward_input(dx, dy, *t.base, N, 1.0f);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) {
        for (int64_t o = 0; o < OC; o++) gy[r * OC + o] = dy[r * OC + o] * (f[o] - 1.0f);
    }
    float * tmp = grow(scratch->tmp, N * IC);
    linear_backward_input(tmp, gy, *t.base, N, 0.0f);
    gemm(false, false, N, IC, R, scaling, g, R, A.data(), IC, 1.0f, tmp, IC);
    dropout_input(tmp, N, tmp);   // the mask and 1/(1-p) of the forward's xd
    const int64_t n = N * IC;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dx[i] += tmp[i];
}

void dora_module::backward_in(const float * x, const float * dy, int64_t N, float * dx) {
    const int64_t IC = t.in_features, OC = t.out_features;
    const float * f = scale.data();
    const bool drop = dropout_active();
    // y = u W^T + s (ud A^T) B^T: G = dy W (d/du), H = s (dy B) A (d/dud), dB += s dy^T xa
    float * g = grow(scratch->g, N * R);
    gemm(false, false, N, R, OC, 1.0f, dy, OC, B.data(), R, 0.0f, g, R);
    gemm(true, false, OC, R, N, scaling, dy, OC, xa.data(), R, 1.0f, dB.data(), R);
    float * G = grow(scratch->tmp, N * IC), * H = grow(scratch->tmp2, N * IC);
    linear_backward_input(G, dy, *t.base, N, 0.0f);
    gemm(false, false, N, IC, R, scaling, g, R, A.data(), IC, 0.0f, H, IC);
    // u = x + xd (f-1), ud = xd f  =>  df_i = sum_n (G + H)_ni xd_ni; dm = df / n
    float * xd = grow(scratch->xd, N * IC);
    if (drop) dropout_input(x, N, xd);
    else std::memcpy(xd, x, (size_t) (N * IC) * 4);
    float * GH = grow(scratch->gy, N * IC);
    const int64_t n_el = N * IC;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_el; i++) GH[i] = G[i] + H[i];
    std::vector<double> df((size_t) IC);
    column_dots(df.data(), GH, xd, N, IC);
    std::vector<float> dn((size_t) IC, 0.0f);
    for (int64_t i = 0; i < IC; i++) {
        const double n = norm[(size_t) i];
        if (n <= 0.0) continue;
        dmagnitude[(size_t) i] += (float) (df[(size_t) i] / n);
        dn[(size_t) i] = (float) (-(double) magnitude[(size_t) i] / (n * n) * df[(size_t) i]);
    }
    if (!detach) norm_backward(dn.data());
    // dA += s g^T ud, ud = xd f (in place)
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) {
        for (int64_t i = 0; i < IC; i++) xd[r * IC + i] *= f[i];
    }
    gemm(true, false, R, IC, N, scaling, g, R, xd, IC, 1.0f, dA.data(), IC);
    if (!dx) return;
    if (!drop) {   // dx += (G + H) f
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < N; r++) {
            for (int64_t i = 0; i < IC; i++) dx[r * IC + i] += GH[r * IC + i] * f[i];
        }
        return;
    }
    // dx += G + keep/(1-p) (G (f-1) + H f)
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) {
        for (int64_t i = 0; i < IC; i++) H[r * IC + i] = G[r * IC + i] * (f[i] - 1.0f) + H[r * IC + i] * f[i];
    }
    dropout_input(H, N, H);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_el; i++) dx[i] += G[i] + H[i];
}

// n = ||V|| along the axis, V = W + s B A  =>  dV = c V along it with c = dn / n; dB += s dV A^T,
// dA += s B^T dV, each written with the cached W products so W is read once more (one GEMM).
void dora_module::norm_backward(const float * dn) {
    const int64_t IC = t.in_features, OC = t.out_features, K = axis_in ? IC : OC;
    const float s = scaling;
    std::vector<float> c((size_t) K);
    for (int64_t k = 0; k < K; k++) c[(size_t) k] = norm[(size_t) k] > 0.0f ? dn[k] / norm[(size_t) k] : 0.0f;
    std::vector<float> M((size_t) (R * R));
    if (!axis_in) {
        // rows: dV_o = c_o V_o.  dB_o += s c_o (W A^T + s B A A^T)_o  (cross = A W^T, gram = A A^T)
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < OC; o++) {
            const float * b = B.data() + o * R;
            for (int64_t r = 0; r < R; r++) {
                double acc = cross[(size_t) (r * OC + o)];
                for (int64_t k = 0; k < R; k++) acc += (double) s * b[k] * gram[(size_t) (k * R + r)];
                dB[(size_t) (o * R + r)] += (float) ((double) s * c[(size_t) o] * acc);
            }
        }
        // dA += s (cB)^T W + s^2 (cB)^T B A, with sc = s (cB)^T [R,OC]
        std::vector<float> sc((size_t) (R * OC));
        for (int64_t o = 0; o < OC; o++) {
            for (int64_t r = 0; r < R; r++) sc[(size_t) (r * OC + o)] = s * c[(size_t) o] * B[(size_t) (o * R + r)];
        }
        linear_backward_input(dA.data(), sc.data(), *t.base, R, 1.0f);
        gemm(false, false, R, R, OC, 1.0f, sc.data(), OC, B.data(), R, 0.0f, M.data(), R);
        gemm(false, false, R, IC, R, s, M.data(), R, A.data(), IC, 1.0f, dA.data(), IC);
        return;
    }
    // columns: dV_:,i = c_i V_:,i.  dB += s (W diag(c) A^T + s B (A diag(c) A^T))
    std::vector<float> Ac((size_t) (R * IC)), P((size_t) (R * OC));
    for (int64_t r = 0; r < R; r++) {
        for (int64_t i = 0; i < IC; i++) Ac[(size_t) (r * IC + i)] = A[(size_t) (r * IC + i)] * c[(size_t) i];
    }
    linear_forward(P.data(), Ac.data(), *t.base, nullptr, R);   // P = (A diag c) W^T [R,OC]
    gemm(false, true, R, R, IC, 1.0f, Ac.data(), IC, A.data(), IC, 0.0f, M.data(), R);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; o++) {
        const float * b = B.data() + o * R;
        for (int64_t r = 0; r < R; r++) {
            double acc = P[(size_t) (r * OC + o)];
            for (int64_t k = 0; k < R; k++) acc += (double) s * b[k] * M[(size_t) (k * R + r)];
            dB[(size_t) (o * R + r)] += (float) ((double) s * acc);
        }
    }
    // dA += s (B^T W + s B^T B A) diag(c)  (cross = B^T W, gram = B^T B)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < IC; i++) {
        for (int64_t r = 0; r < R; r++) {
            double acc = cross[(size_t) (r * IC + i)];
            for (int64_t k = 0; k < R; k++) acc += (double) s * gram[(size_t) (r * R + k)] * A[(size_t) (k * IC + i)];
            dA[(size_t) (r * IC + i)] += (float) ((double) s * c[(size_t) i] * acc);
        }
    }
}

// ---- merge -----------------------------------------------------------------------------------

void dora_module::scale_merged(float * V, float * n0) const {
    const int64_t OC = t.out_features, IC = t.in_features;
    gemm(false, false, OC, IC, R, scaling, B.data(), R, A.data(), IC, 1.0f, V, IC);   // V = W + s B A
    if (!axis_in) {
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < OC; o++) {
            float * v = V + o * IC;
            double acc = 0.0;
            for (int64_t i = 0; i < IC; i++) acc += (double) v[i] * v[i];
            n0[o] = (float) std::sqrt(acc);
            const float f = n0[o] > 0.0f ? magnitude[(size_t) o] / n0[o] : 0.0f;
            for (int64_t i = 0; i < IC; i++) v[i] *= f;
        }
        return;
    }
    std::vector<float> f((size_t) IC);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < IC; i++) {
        double acc = 0.0;
        for (int64_t o = 0; o < OC; o++) acc += (double) V[o * IC + i] * V[o * IC + i];
        n0[i] = (float) std::sqrt(acc);
        f[(size_t) i] = n0[i] > 0.0f ? magnitude[(size_t) i] / n0[i] : 0.0f;
    }
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t i = 0; i < IC; i++) V[o * IC + i] *= f[(size_t) i];
    }
}

void dora_module::merge(float * W, int64_t OC, int64_t IC) const {
    PEFT_ASSERT(OC == t.out_features && IC == t.in_features);
    merge_norm.resize(magnitude.size());
    scale_merged(W, merge_norm.data());   // PEFT caches this n0: unmerge needs the pre-merge norm
    base_valid = norms_valid = false;
}

void dora_module::unmerge(float * W, int64_t OC, int64_t IC) const {
    PEFT_ASSERT(OC == t.out_features && IC == t.in_features);
    PEFT_ASSERT(merge_norm.size() == magnitude.size());   // adapters_unmerge runs only on a merged set
    // W / (m / n0) along the axis; a zero magnitude zeroed its row (column) for good
    std::vector<float> inv(magnitude.size());
    for (size_t k = 0; k < inv.size(); k++) {
        const float f = merge_norm[k] > 0.0f ? magnitude[k] / merge_norm[k] : 0.0f;
        inv[k] = f != 0.0f ? 1.0f / f : 0.0f;
    }
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t i = 0; i < IC; i++) W[o * IC + i] *= inv[(size_t) (axis_in ? i : o)];
    }
    gemm(false, false, OC, IC, R, -scaling, B.data(), R, A.data(), IC, 1.0f, W, IC);
    base_valid = norms_valid = false;
}

void dora_module::delta_weight(float * dW) const {
    const int64_t OC = t.out_features, IC = t.in_features;
    std::vector<float> W((size_t) (OC * IC)), n0(magnitude.size());
    linear_weight_rows_f32(W.data(), *t.base, 0, OC);
    std::memcpy(dW, W.data(), W.size() * 4);
    scale_merged(dW, n0.data());
    for (size_t i = 0; i < W.size(); i++) dW[i] -= W[i];
}

// ---- parameters ------------------------------------------------------------------------------

param_ref dora_module::magnitude_ref() {
    param_ref m;
    m.name = "lora_magnitude_vector";   // PEFT's key (no .weight suffix)
    m.value = magnitude.data();
    m.grad = dmagnitude.data();
    // axis out: PEFT's [out]. Axis in: [1, in], which PEFT refuses by shape instead of loading it
    // as a row magnitude
    m.shape = axis_in ? std::vector<int64_t>{1, t.in_features} : std::vector<int64_t>{t.out_features};
    m.lr_scale = b_lr_scale;   // LoRA+ (METHODS §2): trainable 1-D tensors learn with lora_B
    return m;
}

void dora_module::params(std::vector<param_ref> & out) {
    lora_module::params(out);
    out.push_back(magnitude_ref());
}

void dora_module::exported(std::vector<param_ref> & out) {
    lora_module::exported(out);   // the file factors; params() (with m) unless converted
    // the rank-2R file form has the same V = W + s B A - s B0 A0 = W_res + s B A, so m stays valid
    if (export_on_original) out.push_back(magnitude_ref());
}

} // namespace peft
