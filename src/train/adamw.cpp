// adamw.cpp: torch.optim.AdamW (single-tensor path of torch 1.13), element for element, with
// t the parameter's own step count (optim.h):
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
// Also the optimizer interface's shared parts (reset, state size) and gradient clipping.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"
#include "train/optim.h"

namespace peft {

status adamw::init(const std::vector<optim_param> & ps, const adamw_config & c) {
    cfg = c;
    params = ps;
    step_count = 0;
    steps.assign(params.size(), 0);
    size_t bytes = 0;
    for (const optim_param & p : params) bytes += 2 * arena_align((size_t) p.n * 4);
    if (!state.reserve(bytes)) return make_error(PEFT_STATUS_MEMORY, "optimizer", "cannot allocate AdamW state");
    m.clear();
    v.clear();
    for (const optim_param & p : params) {
        m.push_back(state.alloc_f32((size_t) p.n));
        v.push_back(state.alloc_f32((size_t) p.n));
    }
    state.zero();
    return {};
}

void adamw::step(float lr_base) {
    step_count++;
    const float b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
    for (size_t i = 0; i < params.size(); i++) {
        const optim_param & p = params[i];
        const int64_t t = ++steps[i];
        const double bc1 = 1.0 - std::pow((double) b1, (double) t);
        const double bc2 = 1.0 - std::pow((double) b2, (double) t);
        const float bc2_sqrt = (float) std::sqrt(bc2);
        const float lr = lr_base * p.lr_scale;
        const float decay = p.decay ? 1.0f - lr * cfg.weight_decay : 1.0f;
        const float step_size = (float) (lr / bc1);
        float * __restrict w = p.value, * __restrict mi = m[i], * __restrict vi = v[i];
        const float * __restrict g = p.grad;
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < p.n; j++) {
            w[j] *= decay;
            mi[j] = mi[j] * b1 + g[j] * (1.0f - b1);
            vi[j] = vi[j] * b2 + g[j] * g[j] * (1.0f - b2);
            float denom = std::sqrt(vi[j]) / bc2_sqrt + eps;
            w[j] -= step_size * mi[j] / denom;
        }
    }
}

float clip_grad_norm(const std::vector<optim_param> & params, float max_norm) {
    double total = 0.0;
    for (const optim_param & p : params) total += sum_squares(p.grad, p.n);
    const float norm = (float) std::sqrt(total);
    if (max_norm > 0.0f && std::isfinite(norm)) {
        const float coef = max_norm / (norm + 1e-6f);
        if (coef < 1.0f) {
            for (const optim_param & p : params) {
#pragma omp parallel for schedule(static)
                for (int64_t j = 0; j < p.n; j++) p.grad[j] *= coef;
            }
        }
    }
    return norm;
}

void adamw::state_tensors(std::vector<optim_state_ref> & out) {
    for (size_t i = 0; i < params.size(); i++) {
        out.push_back({"optimizer.m." + params[i].name, m[i], {params[i].n}});
        out.push_back({"optimizer.v." + params[i].name, v[i], {params[i].n}});
    }
}

// State names are "optimizer.<kind>.<parameter name>" with a kind of no dots.
static bool state_of(const std::string & state_name, const std::string & param) {
    const size_t kind_end = state_name.find('.', sizeof("optimizer.") - 1);
    return kind_end != std::string::npos && state_name.compare(kind_end + 1, std::string::npos, param) == 0;
}

void optimizer::reset_param(size_t i) {
    std::vector<optim_state_ref> ts;
    state_tensors(ts);
    for (const optim_state_ref & t : ts) {
        if (!state_of(t.name, params[i].name)) continue;
        std::fill(t.data, t.data + t.numel(), 0.0f);
    }
    steps[i] = 0;
}

bool optimizer::reset_state(const float * value) {
    for (size_t i = 0; i < params.size(); i++) {
        if (params[i].value != value) continue;
        reset_param(i);
        return true;
    }
    return false;
}

int64_t optimizer::state_bytes() {
    std::vector<optim_state_ref> ts;
    state_tensors(ts);
    int64_t bytes = 0;
    for (const optim_state_ref & t : ts) bytes += 4 * t.numel();
    return bytes;
}

} // namespace peft
