// trainer.cpp: one optimizer step, batch assembly and evaluation (see trainer.h).
#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "adapters/adapter.h"
#include "adapters/adapter_set.h"
#include "dist/dist.h"
#include "kernels/kernels.h"
#include "train/data.h"

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
        p.shape = t.shape;
        ps.push_back(p);
    }
    return ps;
}

std::vector<optim_param> adapter_optim_params(adapter_set & s) {
    std::vector<optim_param> ps;
    for (const param_ref & p : adapter_set_params(s)) {
        if (!p.trainable || !p.grad) continue;
        optim_param q;
        q.name = p.name;
        q.value = p.value;
        q.grad = p.grad;
        q.shape = p.shape;
        q.n = 1;
        for (int64_t d : p.shape) q.n *= d;
        q.lr_scale = p.lr_scale;
        ps.push_back(q);
    }
    return ps;
}

std::string first_nonfinite(const std::vector<optim_param> & ps, bool values, bool grads) {
    for (const optim_param & p : ps) {
        if (values && p.value && !all_finite(p.value, p.n)) return "'" + p.name + "' (value)";
        if (grads && p.grad && !all_finite(p.grad, p.n)) return "'" + p.name + "' (gradient)";
    }
    return "";
}

static status numeric_error(int64_t step, const std::string & what) {
    status st = make_error(PEFT_STATUS_NUMERIC, "training step " + std::to_string(step + 1), what);
    st.hint = "lower the learning rate, enable clipping (max_grad_norm), or check the data";
    return st;
}

// Every gradient of ps summed over the ranks of c, through fused buffers of up to 64 MiB (one
// for any adapter): a few large messages instead of one per tensor.
static void sum_gradients(const dist_comm & c, const std::vector<optim_param> & ps) {
    const int64_t cap = (int64_t) 16 << 20;
    int64_t total = 0;
    for (const optim_param & p : ps) total += p.n;
    std::vector<float> buf((size_t) std::min(total, cap));
    for (size_t first = 0; first < ps.size();) {
        size_t last = first;
        int64_t n = 0;
        while (last < ps.size() && (last == first || n + ps[last].n <= cap)) n += ps[last++].n;
        if (n > (int64_t) buf.size()) buf.resize((size_t) n);   // one tensor larger than the cap
        for (size_t i = first, off = 0; i < last; off += (size_t) ps[i++].n) std::memcpy(buf.data() + off, ps[i].grad, (size_t) ps[i].n * 4);
        dist_sum(c, buf.data(), n);
        for (size_t i = first, off = 0; i < last; off += (size_t) ps[i++].n) std::memcpy(ps[i].grad, buf.data() + off, (size_t) ps[i].n * 4);
        first = last;
    }
}

// Zeroes g [n] and hands its whole pages back to the system (they read as zero when touched
// again), so a gradient already applied stops counting in the resident memory.
static void release_gradient(float * g, int64_t n) {
    uint8_t * begin = (uint8_t *) g, * end = begin + n * 4;
    const page_range r = release_whole_pages(g, (size_t) n * 4);
    if (!r.from) {
        std::memset(g, 0, (size_t) n * 4);
        return;
    }
    std::memset(begin, 0, (size_t) (r.from - begin));
    std::memset(r.to, 0, (size_t) (end - r.to));
}

void release_gradients(const std::vector<optim_param> & ps) {
    for (const optim_param & p : ps) release_gradient(p.grad, p.n);
}

// cfg.per_layer_update: the subscriber to llama_state::grad_ready. It checks the finished
// gradient, applies the optimizer to that one parameter and releases the gradient.
struct per_layer_update {
    optimizer *         opt = nullptr;
    float               lr = 0.0f;
    std::vector<double> sum_sq;    // [params] squared gradient norms (the step's grad_norm)
    int64_t             n_updated = 0;
    std::string         failure;   // the first bad gradient; later tensors are left alone
};

static void per_layer_grad_ready(void * user, llama_tensor & t) {
    per_layer_update & u = *(per_layer_update *) user;
    if (!u.failure.empty()) return;
    size_t i = 0;
    while (i < u.opt->params.size() && u.opt->params[i].grad != t.grad) i++;
    if (i == u.opt->params.size()) return;   // not among the optimizer's parameters
    const optim_param & p = u.opt->params[i];
    u.sum_sq[i] = sum_squares(p.grad, p.n);
    if (!std::isfinite(u.sum_sq[i])) {
        u.failure = "gradient of '" + p.name + "' is not finite (per-layer update: the tensors after it in backward order are not updated)";
        return;
    }
    if (!u.opt->update_param(i, u.lr)) {
        u.failure = std::string("optimizer ") + u.opt->name() + " has no per-parameter update";
        return;
    }
    release_gradient(p.grad, p.n);
    u.n_updated++;
}

status train_step(llama_model & m, llama_state & s, optimizer & opt, const train_config & cfg, const llama_batch * micro,
                  int64_t n_micro, int64_t step, step_result & out, adapter_set * adapters) {
    std::vector<adapter_module *> mods;
    if (adapters) {
        for (auto & mod : adapters->modules) mods.push_back(mod.get());
    }
    adapter_module * const * modules = mods.data();
    const int64_t n_modules = (int64_t) mods.size();
    PEFT_ASSERT(n_micro > 0);
    const bool dp = cfg.comm && cfg.comm->active();
    per_layer_update plu;
    if (cfg.per_layer_update) {
        const char * why = n_micro != 1 ? "gradient_accumulation_steps = 1" : cfg.max_grad_norm > 0.0f ? "max_grad_norm = 0 (no clipping by the global norm)"
                         : dp ? "a single process (no data parallel)" : adapters || !m.trainable ? "adapter: full" : nullptr;
        if (why) return make_error(PEFT_STATUS_CONFIG, "training step " + std::to_string(step + 1), std::string("the per-layer update needs ") + why);
        plu.opt = &opt;
        plu.lr = cfg.opt.lr * lr_schedule_factor(cfg.schedule, step, cfg.warmup_steps, cfg.total_steps);
        plu.sum_sq.assign(opt.params.size(), 0.0);
        s.grad_ready = per_layer_grad_ready;
        s.grad_ready_user = &plu;
    }
    struct unsubscribe {   // plu lives on this frame: no call may reach it after a return
        llama_state & s;
        ~unsubscribe() { s.grad_ready = nullptr; s.grad_ready_user = nullptr; }
    } unsubscribe_at_return{s};
    // Zero exactly what the optimizer reads: the model's grads (full fine-tuning) or the
    // adapters' (frozen base, which has no grads). Per-layer: released, so untouched until
    // backward writes them.
    for (const optim_param & p : opt.params) {
        if (cfg.per_layer_update) release_gradient(p.grad, p.n);
        else std::memset(p.grad, 0, (size_t) p.n * sizeof(float));
    }
    double loss = 0.0;
    out.n_targets = 0;
    // Data parallel: micro-batch i's loss is the mean over the targets of every rank's i-th
    // rows, so this rank's part is its sum of token losses over that global count.
    std::vector<double> share((size_t) n_micro, 1.0);
    if (dp) {
        std::vector<double> here((size_t) n_micro), all((size_t) n_micro);
        for (int64_t i = 0; i < n_micro; i++) {
            int64_t n = 0;
            for (int64_t j = 0; j < micro[i].B * micro[i].T; j++) n += micro[i].targets[j] != -100;
            here[(size_t) i] = all[(size_t) i] = (double) n;
        }
        dist_sum(*cfg.comm, all.data(), n_micro);
        for (int64_t i = 0; i < n_micro; i++) share[(size_t) i] = all[(size_t) i] > 0 ? here[(size_t) i] / all[(size_t) i] : 0.0;
    }
    std::string failure;   // data parallel: a non-finite loss here, reported after the other ranks hear of it
    for (int64_t i = 0; i < n_micro; i++) {
        if (share[(size_t) i] == 0.0) continue;   // no targets in this rank's part of micro-batch i
        const float scale = dp ? (float) (share[(size_t) i] / (double) n_micro) : 1.0f / (float) n_micro;
        const float l = llama_forward(m, s, micro[i], scale);
        if (!std::isfinite(l)) {
            const std::string bad = first_nonfinite(opt.params, true, false);
            failure = "loss is " + std::to_string(l) + " on micro-batch " + std::to_string(i) +
                      (bad.empty() ? " (every trained parameter is finite)" : "; first non-finite tensor: " + bad);
            if (!dp) return numeric_error(step, failure);
            break;
        }
        llama_backward(m, s, micro[i]);
        loss += (double) l * scale;
        out.n_targets += s.n_valid;
    }
    if (cfg.per_layer_update) {
        if (!plu.failure.empty()) return numeric_error(step, plu.failure);
        PEFT_ASSERT(plu.n_updated == (int64_t) opt.params.size());
        double total = 0.0;
        for (double v : plu.sum_sq) total += v;
        out.loss = (float) loss;
        out.lr = plu.lr;
        out.grad_norm = (float) std::sqrt(total);
        opt.step_count++;
        return {};
    }
    if (dp) {
        double stats[3] = {loss, (double) out.n_targets, failure.empty() ? 0.0 : 1.0};
        dist_sum(*cfg.comm, stats, 3);
        if (stats[2] > 0) {
            return numeric_error(step, failure.empty() ? "another rank's loss is not finite (its own message names the tensor)" : failure);
        }
        loss = stats[0];
        out.n_targets = (int64_t) stats[1];
        sum_gradients(*cfg.comm, opt.params);
    }
    if (out.n_targets == 0) {   // the data loader drops such rows; an update from nothing is a bug
        return make_error(PEFT_STATUS_FORMAT, "training step " + std::to_string(step + 1), "its rows hold no scored token (every label is masked)");
    }
    // Regularisers (AdaLoRA's orthogonality) once per optimizer step with weight 1 = the loss
    // scale; the method applies its own coefficient.
    double reg = 0.0;
    for (int64_t i = 0; i < n_modules; i++) reg += modules[i]->regularize(1.0f);
    out.reg_loss = (float) reg;
    out.loss = (float) (loss + reg);
    out.lr = cfg.opt.lr * lr_schedule_factor(cfg.schedule, step, cfg.warmup_steps, cfg.total_steps);
    out.grad_norm = clip_grad_norm(opt.params, cfg.max_grad_norm);
    if (!std::isfinite(out.grad_norm)) {
        const std::string bad = first_nonfinite(opt.params, false, true);
        return numeric_error(step, bad.empty() ? "gradient norm is not finite" : "gradient of " + bad.substr(0, bad.find(" (")) + " is not finite");
    }
    step_info si;
    si.step = step;
    si.total_steps = cfg.total_steps;
    si.lr = out.lr;
    if (adapters) adapters->method->before_update(si, modules, n_modules);
    opt.step(out.lr);
    si.step = step + 1;
    if (adapters) {
        adapters->method->after_update(si, modules, n_modules);
        adapters->method->on_step_end(si, modules, n_modules, opt);
    }
    return {};
}

void batch_buffers::init(int64_t B_, int64_t T_) {
    B = B_;
    T = T_;
    tokens.assign((size_t) (B * T), 0);
    targets.assign((size_t) (B * T), -100);
    pos.assign((size_t) (B * T), 0);
    seg.assign((size_t) (B * T), 0);
    prompt.assign((size_t) (B * T), 0);
}

void batch_buffers::fill(const data_rows & d, const int64_t * rows, int64_t n) {
    PEFT_ASSERT(d.T == T && n <= B);
    for (int64_t b = 0; b < B; b++) {
        const size_t o = (size_t) (b * T);
        if (b < n) {
            const size_t r = (size_t) (rows[b] * T);
            for (int64_t t = 0; t < T; t++) {
                tokens[o + (size_t) t] = d.input_ids[r + (size_t) t];
                pos[o + (size_t) t] = d.position_ids[r + (size_t) t];
                seg[o + (size_t) t] = d.segment_ids[r + (size_t) t];
                prompt[o + (size_t) t] = d.prompt_mask.empty() ? 0 : d.prompt_mask[r + (size_t) t];
            }
            llama_shift_labels(targets.data() + o, d.labels.data() + r, 1, T);
        } else {
            for (int64_t t = 0; t < T; t++) {
                tokens[o + (size_t) t] = 0;
                targets[o + (size_t) t] = -100;
                pos[o + (size_t) t] = 0;
                seg[o + (size_t) t] = 0;
                prompt[o + (size_t) t] = 0;
            }
        }
    }
}

llama_batch batch_buffers::batch() const {
    return llama_batch{tokens.data(), targets.data(), pos.data(), seg.data(), B, T, prompt.data()};
}

int64_t batch_buffers::n_tokens() const {
    int64_t n = 0;
    for (int32_t s : seg) n += s != 0;
    return n;
}

double eval_result::perplexity() const { return std::exp(loss()); }

status evaluate_rows(llama_model & m, llama_state & s, const data_rows & d, eval_result & out) {
    out = eval_result{};
    PEFT_ASSERT(d.T == s.T);
    batch_buffers bb;
    bb.init(s.B, s.T);
    std::vector<int64_t> idx((size_t) s.B);
    for (int64_t r0 = 0; r0 < d.n_rows; r0 += s.B) {
        const int64_t n = std::min(s.B, d.n_rows - r0);
        for (int64_t i = 0; i < n; i++) idx[(size_t) i] = r0 + i;
        bb.fill(d, idx.data(), n);
        const llama_batch b = bb.batch();
        const float l = llama_forward(m, s, b, 0.0f);
        if (!std::isfinite(l) || !std::isfinite(s.loss_sum)) {
            return make_error(PEFT_STATUS_NUMERIC, "evaluation", "loss is not finite on rows " + std::to_string(r0) + ".." +
                                                                     std::to_string(r0 + n - 1));
        }
        out.loss_sum += s.loss_sum;
        out.n_tokens += s.n_valid;
    }
    return {};
}

status check_token_ids(const data_rows & d, int64_t n_vocab, const std::string & where) {
    for (size_t i = 0; i < d.input_ids.size(); i++) {
        const int32_t id = d.input_ids[i];
        if (id < 0 || id >= n_vocab) {
            status st = make_mismatch(PEFT_STATUS_FORMAT, where, "token id in row " + std::to_string(i / (size_t) d.T),
                                      "an id below the model's vocab_size " + std::to_string(n_vocab), std::to_string(id));
            st.hint = "the tokenizer (or the input_ids) does not belong to this model";
            return st;
        }
    }
    return {};
}

} // namespace peft
