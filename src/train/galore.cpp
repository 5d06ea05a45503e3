// galore.cpp: GaLore's AdamW (optim.h, METHODS §12): the projector from the gradient's SVD, the
// moments in the projected space, the update projected back. One parameter at a time, so the
// scratch is one weight's back-projection and one SVD, whatever the model's size.
// Not here: which trainer step calls it (trainer.h), the options (train/config.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "train/optim.h"

namespace peft {

static const char * const PROJ_NAMES[GALORE_PROJ_COUNT] = {"std", "reverse_std", "right", "left", "full"};

bool galore_proj_from_name(const std::string & name, galore_proj_type * out) {
    for (int i = 0; i < GALORE_PROJ_COUNT; i++) {
        if (name == PROJ_NAMES[i]) {
            *out = (galore_proj_type) i;
            return true;
        }
    }
    return false;
}

static const char * const SVD_NAMES[GALORE_SVD_COUNT] = {"exact", "randomized"};

bool galore_svd_from_name(const std::string & name, galore_svd_kind * out) {
    for (int i = 0; i < GALORE_SVD_COUNT; i++) {
        if (name == SVD_NAMES[i]) {
            *out = (galore_svd_kind) i;
            return true;
        }
    }
    return false;
}

bool galore_targets(const optim_param & p, const std::vector<std::string> & targets) {
    if (p.shape.size() != 2) return false;
    for (const std::string & t : targets) {
        if (p.name.find(t) != std::string::npos) return true;
    }
    return false;
}

std::vector<std::string> galore_split_targets(const std::string & text) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= text.size()) {
        size_t end = text.find(',', start);
        if (end == std::string::npos) end = text.size();
        std::string part = text.substr(start, end - start);
        part.erase(0, part.find_first_not_of(' '));
        part.erase(part.find_last_not_of(' ') + 1);
        if (!part.empty()) out.push_back(part);
        start = end + 1;
    }
    return out;
}

// 0 right, 1 left, 2 full, for a weight [m, n].
static int galore_side(galore_proj_type t, int64_t m, int64_t n) {
    switch (t) {
    case GALORE_PROJ_STD: return m >= n ? 0 : 1;
    case GALORE_PROJ_REVERSE_STD: return m >= n ? 1 : 0;
    case GALORE_PROJ_RIGHT: return 0;
    case GALORE_PROJ_LEFT: return 1;
    default: return 2;
    }
}

status galore_adamw::init(const std::vector<optim_param> & ps, const adamw_config & c, const galore_config & g) {
    cfg = c;
    gcfg = g;
    params = ps;
    step_count = 0;
    steps.assign(params.size(), 0);
    slots.assign(params.size(), slot{});
    size_t bytes = 0, big = 0, low_n = 0, mid_n = 0, svd_u = 0, svd_v = 0, svd_k = 0;
    for (size_t i = 0; i < params.size(); i++) {
        const optim_param & p = params[i];
        slot & s = slots[i];
        s.rows = 1;
        s.cols = p.n;
        if (galore_targets(p, g.targets)) {
            s.projected = true;
            s.m = p.shape[0];
            s.n = p.shape[1];
            s.r = g.rank;
            if (g.rank > std::min(s.m, s.n)) {
                status st = make_error(PEFT_STATUS_CONFIG, "config", "key 'galore_rank' = " + std::to_string(g.rank) + " exceeds the smaller dimension of '" +
                                                                         p.name + "' [" + std::to_string(s.m) + ", " + std::to_string(s.n) + "]");
                st.hint = "set galore_rank to at most " + std::to_string(std::min(s.m, s.n));
                return st;
            }
            s.side = galore_side(g.proj_type, s.m, s.n);
            s.rows = s.side == 0 ? s.m : s.r;
            s.cols = s.side == 1 ? s.n : s.r;
            const int64_t pn = s.side == 0 ? s.r * s.n : s.m * s.r;
            bytes += arena_align((size_t) pn * 4) + (s.side == 2 ? arena_align((size_t) (s.r * s.n) * 4) : 0);
            big = std::max(big, (size_t) p.n);
            low_n = std::max(low_n, (size_t) (s.rows * s.cols));
            mid_n = std::max(mid_n, s.side == 2 ? (size_t) (s.r * s.n) : 0);
            const int64_t k = std::min(s.m, s.n);
            svd_u = std::max(svd_u, (size_t) (s.m * k));
            svd_v = std::max(svd_v, (size_t) (k * s.n));
            svd_k = std::max(svd_k, (size_t) k);
        }
        bytes += 2 * arena_align((size_t) (s.rows * s.cols) * 4);
    }
    if (!state.reserve(bytes)) return make_error(PEFT_STATUS_MEMORY, "optimizer", "cannot allocate GaLore state");
    for (slot & s : slots) {
        s.mom = state.alloc_f32((size_t) (s.rows * s.cols));
        s.var = state.alloc_f32((size_t) (s.rows * s.cols));
        if (!s.projected) continue;
        s.P = state.alloc_f32((size_t) (s.side == 0 ? s.r * s.n : s.m * s.r));
        if (s.side == 2) s.Q = state.alloc_f32((size_t) (s.r * s.n));
    }
    state.zero();
    low.assign(low_n, 0.0f);
    mid.assign(mid_n, 0.0f);
    back.assign(big, 0.0f);
    U.assign(svd_u, 0.0f);
    S.assign(svd_k, 0.0f);
    Vh.assign(svd_v, 0.0f);
    return {};
}

// Singular vector a of the projector: flipped (with its partner, full) so that its largest
// element is positive. The reference leaves the signs to LAPACK; they cancel within a window
// (R and N flip together) but not across a refresh, where the moments carry over, so without a
// rule the run depends on the LAPACK build.
static void canonical_sign(float * v, int64_t len, int64_t stride, float * partner, int64_t plen, int64_t pstride) {
    int64_t best = 0;
    for (int64_t k = 1; k < len; k++) best = std::fabs(v[k * stride]) > std::fabs(v[best * stride]) ? k : best;
    if (v[best * stride] >= 0.0f) return;
    for (int64_t k = 0; k < len; k++) v[k * stride] = -v[k * stride];
    for (int64_t k = 0; partner && k < plen; k++) partner[k * pstride] = -partner[k * pstride];
}

// The projector(s) of parameter i from the SVD of its gradient G [m, n], signs made canonical.
// The randomized SVD draws its test matrix from a seed of (parameter, step), so a resumed run
// draws the same one. A rare LAPACK failure on a finite gradient keeps the previous projector
// (zero before the first: that parameter does not move this step).
void galore_adamw::refresh(size_t i, const float * G) {
    slot & s = slots[i];
    int64_t ku = std::min(s.m, s.n);   // columns of U
    if (gcfg.svd == GALORE_SVD_EXACT) {
        if (!svd_thin(U.data(), S.data(), Vh.data(), G, s.m, s.n).ok()) return;
    } else {
        ku = s.r;
        const uint64_t seed = ((uint64_t) i << 32) ^ (uint64_t) steps[i] ^ 0x9e3779b97f4a7c15ull;
        if (!svd_lowrank(U.data(), S.data(), Vh.data(), G, s.m, s.n, s.r, gcfg.svd_niter, seed).ok()) return;
    }
    float * right = s.side == 0 ? s.P : s.Q;      // Vh[:r] [r, n]
    float * left = s.side == 0 ? nullptr : s.P;   // U[:, :r] [m, r]
    if (right) std::memcpy(right, Vh.data(), (size_t) (s.r * s.n) * 4);
    if (left) {
        for (int64_t row = 0; row < s.m; row++) std::memcpy(left + row * s.r, U.data() + row * ku, (size_t) s.r * 4);
    }
    for (int64_t a = 0; a < s.r; a++) {
        if (right) canonical_sign(right + a * s.n, s.n, 1, left ? left + a : nullptr, s.m, s.r);
        else canonical_sign(left + a, s.m, s.r, nullptr, 0, 0);
    }
}

// R [rows, cols] = the projection of G [m, n] (mid [r, n] holds U_r^T G for full).
void galore_adamw::project(const slot & s, const float * G, float * R) {
    if (s.side == 0) {
        gemm(false, true, s.m, s.r, s.n, 1.0f, G, s.n, s.P, s.n, 0.0f, R, s.r);
    } else if (s.side == 1) {
        gemm(true, false, s.r, s.n, s.m, 1.0f, s.P, s.r, G, s.n, 0.0f, R, s.n);
    } else {
        gemm(true, false, s.r, s.n, s.m, 1.0f, s.P, s.r, G, s.n, 0.0f, mid.data(), s.n);
        gemm(false, true, s.r, s.r, s.n, 1.0f, mid.data(), s.n, s.Q, s.n, 0.0f, R, s.r);
    }
}

// D [m, n] = the back-projection of N [rows, cols] (unscaled).
void galore_adamw::project_back(const slot & s, const float * N, float * D) {
    if (s.side == 0) {
        gemm(false, false, s.m, s.n, s.r, 1.0f, N, s.r, s.P, s.n, 0.0f, D, s.n);
    } else if (s.side == 1) {
        gemm(false, false, s.m, s.n, s.r, 1.0f, s.P, s.r, N, s.n, 0.0f, D, s.n);
    } else {
        gemm(false, false, s.r, s.n, s.r, 1.0f, N, s.r, s.Q, s.n, 0.0f, mid.data(), s.n);   // N Vh_r [r, n]
        gemm(false, false, s.m, s.n, s.r, 1.0f, s.P, s.r, mid.data(), s.n, 0.0f, D, s.n);
    }
}

// The Adam moments of parameter i from its gradient (projected: into low), its direction N
// (projected: in low; else straight into the weight), and the decoupled decay after the update.
void galore_adamw::update(size_t i, float lr_base) {
    const optim_param & p = params[i];
    slot & s = slots[i];
    const float lr = lr_base * p.lr_scale;
    const float * __restrict g = p.grad;
    if (s.projected) {
        if (steps[i] % gcfg.update_proj_gap == 0) refresh(i, p.grad);
        project(s, p.grad, low.data());
        g = low.data();
    }
    const int64_t t = ++steps[i];
    const float b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
    const float step_size = (float) (lr * std::sqrt(1.0 - std::pow((double) b2, (double) t)) / (1.0 - std::pow((double) b1, (double) t)));
    const float decay = p.decay ? lr * cfg.weight_decay : 0.0f;
    float * __restrict w = p.value, * __restrict mo = s.mom, * __restrict va = s.var;
    if (!s.projected) {
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < p.n; j++) {
            mo[j] = mo[j] * b1 + g[j] * (1.0f - b1);
            va[j] = va[j] * b2 + g[j] * g[j] * (1.0f - b2);
            w[j] -= step_size * (mo[j] / (std::sqrt(va[j]) + eps));
            w[j] -= decay * w[j];
        }
        return;
    }
    float * N = low.data();   // in place of R
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < s.rows * s.cols; j++) {
        mo[j] = mo[j] * b1 + N[j] * (1.0f - b1);
        va[j] = va[j] * b2 + N[j] * N[j] * (1.0f - b2);
        N[j] = mo[j] / (std::sqrt(va[j]) + eps);
    }
    float * D = back.data();
    project_back(s, N, D);
    const float scale = gcfg.scale;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < p.n; j++) {
        w[j] -= step_size * (D[j] * scale);
        w[j] -= decay * w[j];
    }
}

void galore_adamw::step(float lr) {
    step_count++;
    for (size_t i = 0; i < params.size(); i++) update(i, lr);
}

bool galore_adamw::update_param(size_t i, float lr) {
    update(i, lr);
    return true;
}

void galore_adamw::state_tensors(std::vector<optim_state_ref> & out) {
    for (size_t i = 0; i < params.size(); i++) {
        const slot & s = slots[i];
        out.push_back({"optimizer.m." + params[i].name, s.mom, s.projected ? std::vector<int64_t>{s.rows, s.cols} : params[i].shape});
        out.push_back({"optimizer.v." + params[i].name, s.var, s.projected ? std::vector<int64_t>{s.rows, s.cols} : params[i].shape});
        if (!s.projected) continue;
        if (s.side == 0) out.push_back({"optimizer.proj." + params[i].name, s.P, {s.r, s.n}});
        else out.push_back({"optimizer.proj." + params[i].name, s.P, {s.m, s.r}});
        if (s.Q) out.push_back({"optimizer.projr." + params[i].name, s.Q, {s.r, s.n}});
    }
}

} // namespace peft
