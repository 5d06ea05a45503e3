#include "train/trainer.h"

#include <cmath>

#include "kernels/kernels.h"

namespace peft {

std::vector<optim_param> llama_optim_params(llama_model & m) {
    std::vector<optim_param> ps;
    for (llama_tensor & t : m.tensors) {
        if (!t.grad) continue;
        optim_param p;
        p.name = t.name;
        p.value = (float *) t.data;
        p.grad = t.grad;
        p.n = t.numel();
        ps.push_back(p);
    }
    return ps;
}

status train_step(llama_model & m, llama_state & s, adamw & opt, const train_config & cfg, const llama_batch * micro,
                  int64_t n_micro, int64_t step, step_result & out) {
    PEFT_ASSERT(n_micro > 0);
    m.zero_grad();
    double loss = 0.0;
    const float scale = 1.0f / (float) n_micro;
    for (int64_t i = 0; i < n_micro; i++) {
        float l = llama_forward(m, s, micro[i], scale);
        if (!std::isfinite(l)) {
            return make_error(PEFT_STATUS_NUMERIC, "training step " + std::to_string(step),
                              "loss is " + std::to_string(l) + " on micro-batch " + std::to_string(i));
        }
        llama_backward(m, s, micro[i]);
        loss += (double) l * scale;
    }
    out.loss = (float) loss;
    out.lr = cfg.opt.lr * lr_schedule_factor(cfg.schedule, step, cfg.warmup_steps, cfg.total_steps);
    out.grad_norm = clip_grad_norm(opt.params, cfg.max_grad_norm);
    if (!std::isfinite(out.grad_norm)) {
        for (const optim_param & p : opt.params) {
            if (!all_finite(p.grad, p.n)) {
                status st = make_error(PEFT_STATUS_NUMERIC, "training step " + std::to_string(step),
                                       "gradient of '" + p.name + "' is not finite");
                st.hint = "lower the learning rate, enable clipping (max_grad_norm), or check the data";
                return st;
            }
        }
        return make_error(PEFT_STATUS_NUMERIC, "training step " + std::to_string(step), "gradient norm is not finite");
    }
    opt.step(out.lr);
    return {};
}

} // namespace peft
