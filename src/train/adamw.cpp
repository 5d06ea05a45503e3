// adamw.cpp: torch.optim.AdamW (single-tensor path of torch 1.13), element for element:
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"
#include "train/optim.h"

namespace peft {

status adamw::init(const std::vector<optim_param> & ps, const adamw_config & c) {
    cfg = c;
    params = ps;
    step_count = 0;
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
    const double bc1 = 1.0 - std::pow((double) b1, (double) step_count);
    const double bc2 = 1.0 - std::pow((double) b2, (double) step_count);
    const float bc2_sqrt = (float) std::sqrt(bc2);
    for (size_t i = 0; i < params.size(); i++) {
        const optim_param & p = params[i];
        const float lr = lr_base * p.lr_scale;
        const float decay = p.decay ? 1.0f - lr * cfg.weight_decay : 1.0f;
        const float step_size = (float) (lr / bc1);
        float * w = p.value, * g = p.grad, * mi = m[i], * vi = v[i];
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

bool adamw::reset_state(const float * value) {
    for (size_t i = 0; i < params.size(); i++) {
        if (params[i].value != value) continue;
        std::fill(m[i], m[i] + params[i].n, 0.0f);
        std::fill(v[i], v[i] + params[i].n, 0.0f);
        return true;
    }
    return false;
}

} // namespace peft
