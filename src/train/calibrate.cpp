// calibrate.cpp: the calibration runner (calibrate.h). Each target's projection is wrapped by a
// probe module for the pass: the base linear as usual, plus a call to the observer with the
// input and the batch geometry (forward) and, for observers that want gradients, with the input
// and the output gradient (backward, which passes dx on as the base linear's).
#include "train/calibrate.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model/llama.h"
#include "train/data.h"
#include "train/trainer.h"

namespace peft {

namespace {

// The batch of the current forward, shared by every probe.
struct batch_view {
    const int32_t * seg = nullptr;
    int64_t         rows = 0, T = 0;
    status          failed;   // the first observer error (forward cannot return one)
};

struct probe_module : adapter_module {
    target_info            t;
    int64_t                index;
    calibration_observer & obs;
    batch_view &           view;
    adapter_module *       inner;   // runs instead of the bare base, or null
    probe_module(const target_info & ti, int64_t i, calibration_observer & o, batch_view & v, adapter_module * in)
        : t(ti), index(i), obs(o), view(v), inner(in) {}

    void forward(const float * x, int64_t N, float * y) override {
        if (inner) inner->forward(x, N, y);
        else linear_forward(y, x, *t.base, t.bias, N);
        PEFT_ASSERT(N == view.rows * view.T);
        if (view.failed.ok()) view.failed = obs.observe(index, x, view.seg, view.rows, view.T);
    }
    void backward(const float * x, const float * dy, int64_t N, float * dx) override {
        PEFT_ASSERT(obs.wants_gradients());
        if (dx) linear_backward_input(dx, dy, *t.base, N, 1.0f);
        if (view.failed.ok()) view.failed = obs.observe_gradient(index, x, dy, N);
    }
    void delta_weight(float * dW) const override { std::fill(dW, dW + t.out_features * t.in_features, 0.0f); }
    void params(std::vector<param_ref> &) override {}
};

// The model slot (layer * LLAMA_PROJ_COUNT + projection) of a target.
int64_t target_slot(const llama_model & m, const target_info & t) {
    for (int q = 0; q < LLAMA_PROJ_COUNT; q++) {
        if (&m.proj_weight(t.layer, (llama_proj) q) == t.base) return t.layer * LLAMA_PROJ_COUNT + q;
    }
    PEFT_ASSERT(false);
    return -1;
}

} // namespace

status calibrate_rows(llama_model & m, const data_rows & rows, int64_t max_rows, int64_t batch, const target_info * targets,
                      int64_t n, calibration_observer & obs, adapter_module * const * inner) {
    PEFT_ASSERT(!inner || !obs.wants_gradients());
    const int64_t n_rows = std::min(max_rows, rows.n_rows);
    if (n_rows <= 0) return make_error(PEFT_STATUS_FORMAT, "calibration data", "no rows to calibrate on");
    batch = std::max<int64_t>(1, std::min(batch, n_rows));
    batch_view view;
    std::vector<std::unique_ptr<probe_module>> probes;
    std::vector<adapter_module *> saved = m.adapters;
    m.adapters.assign((size_t) (m.hp.n_layer * LLAMA_PROJ_COUNT), nullptr);
    for (int64_t i = 0; i < n; i++) {
        probes.push_back(std::make_unique<probe_module>(targets[i], i, obs, view, inner ? inner[i] : nullptr));
        m.adapters[(size_t) target_slot(m, targets[i])] = probes.back().get();
    }
    llama_state s;
    status st = llama_state_init(s, m, batch, rows.T, false);
    batch_buffers buf;
    buf.init(batch, rows.T);
    std::vector<int64_t> idx((size_t) batch);
    // gradient mode: the loss is the mean over batches of each batch's mean token loss
    const bool grads = obs.wants_gradients();
    const float grad_scale = grads ? 1.0f / (float) ((n_rows + batch - 1) / batch) : 0.0f;
    for (int64_t first = 0; st.ok() && first < n_rows; first += batch) {
        const int64_t k = std::min(batch, n_rows - first);
        for (int64_t i = 0; i < k; i++) idx[(size_t) i] = first + i;
        buf.fill(rows, idx.data(), k);
        const llama_batch b = buf.batch();
        // rows past k are empty padding (batch_buffers): observers see them as segment 0
        view.seg = b.seg;
        view.rows = batch;
        view.T = rows.T;
        const float loss = llama_forward(m, s, b, grad_scale);
        if (grads && view.failed.ok()) {
            if (!std::isfinite(loss)) {
                view.failed = make_error(PEFT_STATUS_NUMERIC, "calibration data",
                                         "the loss of rows " + std::to_string(first) + ".. is not finite");
            } else {
                llama_backward(m, s, b);
            }
        }
        st = view.failed;
    }
    m.adapters = saved;
    return st;
}

status calibrate_train_rows(llama_model & m, const data_rows & rows, double fraction, int64_t batch, int64_t steps,
                            const train_config & cfg, adapter_module * const * mods, const target_info * targets, int64_t n,
                            calibration_observer & obs) {
    if (rows.n_rows <= 0) return make_error(PEFT_STATUS_FORMAT, "probe training data", "no rows to train on");
    const int64_t n_rows = std::min(rows.n_rows, std::max<int64_t>(1, (int64_t) std::ceil(fraction * (double) rows.n_rows)));
    batch = std::max<int64_t>(1, std::min(batch, n_rows));
    if (steps <= 0) steps = (n_rows + batch - 1) / batch;
    std::vector<adapter_module *> saved = m.adapters;
    m.adapters.assign((size_t) (m.hp.n_layer * LLAMA_PROJ_COUNT), nullptr);
    std::vector<optim_param> ps;
    for (int64_t i = 0; i < n; i++) {
        m.adapters[(size_t) target_slot(m, targets[i])] = mods[i];
        mods[i]->set_training(true);
        std::vector<param_ref> mine;
        mods[i]->params(mine);
        for (const param_ref & p : mine) {
            if (!p.trainable || !p.grad) continue;
            int64_t k = 1;
            for (int64_t d : p.shape) k *= d;
            ps.push_back({targets[i].path + "." + p.name, p.value, p.grad, k, p.shape, p.lr_scale});
        }
    }
    train_config c = cfg;
    c.schedule = PEFT_SCHEDULE_CONSTANT;
    c.warmup_steps = 0;
    c.total_steps = steps;
    c.comm = nullptr;
    adamw opt;
    status st = opt.init(ps, c.opt);
    llama_state s;
    if (st.ok()) st = llama_state_init(s, m, batch, rows.T, false);
    batch_buffers buf;
    buf.init(batch, rows.T);
    std::vector<int64_t> idx((size_t) batch);
    for (int64_t step = 0; st.ok() && step < steps; step++) {
        for (int64_t i = 0; i < batch; i++) idx[(size_t) i] = (step * batch + i) % n_rows;
        buf.fill(rows, idx.data(), batch);
        const llama_batch b = buf.batch();
        step_result r;
        st = train_step(m, s, opt, c, &b, 1, step, r);
        if (!st.ok()) st.message = "probe training: " + st.message;
    }
    m.adapters = saved;
    if (!st.ok()) return st;
    for (int64_t i = 0; i < n; i++) mods[i]->set_training(false);
    return calibrate_rows(m, rows, n_rows, batch, targets, n, obs, mods);
}

} // namespace peft
