// llama_infer.cpp: KV-cached forward of the Llama-family decoder for generation (llama_infer.h).
// The same math as llama_forward (llama.cpp) restricted to the new rows: each layer projects
// only the new tokens, writes their K/V straight into the cache rows of their positions, and
// attends over the cache. A model's layer hook (llama_layer_hook: MiLoRA's routers) runs before
// each layer with the sequence's adapter state (llama_infer_state::adapter_state).
// Not here: training (no activations are kept), sampling.
#include "model/llama_infer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <omp.h>

#include "core/arena.h"
#include "kernels/kernels.h"

namespace peft {

struct llama_infer_state::impl {
    arena a;
    std::vector<float *> k_cache, v_cache;   // [L] each [max_ctx, KVD]
    float * x = nullptr;        // [nb, C] residual stream of the chunk
    float * xn = nullptr;       // [nb, C] norm output
    float * rstd = nullptr;     // [nb]
    float * q = nullptr;        // [nb, QD]
    float * att = nullptr;      // [nb, QD]
    float * gate = nullptr;     // [nb, F]
    float * up = nullptr;       // [nb, F]
    float * h = nullptr;        // [nb, F]
    float * scratch = nullptr;  // [nb, C] adapted residual projections (o, down)
    float * xf = nullptr;       // [C] final norm of the last row
    float * scores = nullptr;   // [n_threads, max_ctx] attention probabilities per thread
    int32_t * pos = nullptr;    // [nb]
    int n_threads = 1;
};

namespace {

struct plan {
    size_t cache = 0, scratch = 0;
};

plan infer_plan(const llama_hparams & hp, int64_t max_ctx, int64_t nb, int n_threads) {
    auto A = [](int64_t n) { return arena_align((size_t) n * 4); };
    const int64_t C = hp.n_embd, QD = hp.q_dim(), KVD = hp.kv_dim(), F = hp.n_ff;
    plan p;
    p.cache = A(max_ctx * KVD) * 2 * (size_t) hp.n_layer;
    p.scratch = A(nb * C) * 3 + A(nb) + A(nb * QD) * 2 + A(nb * F) * 3 + A(C) + A((int64_t) n_threads * max_ctx) + A(nb);
    return p;
}

// Causal attention of nb new rows (absolute positions p0..p0+nb-1) over the cache rows
// 0..p0+nb-1. q/out [nb, NH, HS]; k/v cache [max_ctx, NKV, HS]. One (row, head) item per
// thread at a time; each thread keeps its probabilities in its own slice of `scores`.
void attend_cache(float * out, const float * q, const float * kc, const float * vc, float * scores, int64_t max_ctx,
                  int64_t p0, int64_t nb, int64_t NH, int64_t NKV, int64_t HS, int n_threads) {
    const int64_t group = NH / NKV, KVD = NKV * HS, QD = NH * HS;
    const float scale = 1.0f / std::sqrt((float) HS);
    const int64_t items = nb * NH;
#pragma omp parallel for schedule(static) num_threads(n_threads) if (items > 1)
    for (int64_t it = 0; it < items; it++) {
        const int64_t i = it / NH, h = it % NH, g = h / group;
        const int64_t n_keys = p0 + i + 1;
        float * sc = scores + (int64_t) omp_get_thread_num() * max_ctx;
        const float * qh = q + i * QD + h * HS;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; j++) {
            const float * kj = kc + j * KVD + g * HS;
            float d = 0.0f;
#pragma omp simd reduction(+ : d)
            for (int64_t e = 0; e < HS; e++) d += qh[e] * kj[e];
            d *= scale;
            sc[j] = d;
            mx = std::max(mx, d);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n_keys; j++) {
            sc[j] = std::exp(sc[j] - mx);
            sum += sc[j];
        }
        float * o = out + i * QD + h * HS;
        std::memset(o, 0, (size_t) HS * 4);
        for (int64_t j = 0; j < n_keys; j++) {
            const float pj = sc[j];
            const float * vj = vc + j * KVD + g * HS;
#pragma omp simd
            for (int64_t e = 0; e < HS; e++) o[e] += pj * vj[e];
        }
        const float inv = 1.0f / sum;
        for (int64_t e = 0; e < HS; e++) o[e] *= inv;
    }
}

// x[nb,OC] += proj(in). The base linear accumulates into x directly; an adapted projection
// writes into scratch and is added here, serially for the few rows of a decode step, where a
// parallel region would cost more than the add (and would be the only overhead the unmerged
// adapter adds besides its two skinny products).
void residual_proj(const llama_model & m, int64_t l, llama_proj pj, float * x, const float * in, int64_t nb, float * scratch) {
    if (!m.adapter(l, pj)) {
        llama_proj_forward(m, l, pj, x, in, nb, x, scratch);
        return;
    }
    llama_proj_forward(m, l, pj, scratch, in, nb);
    const int64_t n = nb * m.proj_weight(l, pj).OC;
#pragma omp parallel for simd schedule(static) if (nb > 4)
    for (int64_t i = 0; i < n; i++) x[i] += scratch[i];
}

// One chunk of nb rows at positions s.n_past.. through every layer; x holds the embeddings
// on entry and the last residual stream on exit.
void forward_chunk(const llama_model & m, llama_infer_state & s, int64_t nb) {
    const llama_hparams & hp = m.hp;
    llama_infer_state::impl & p = *s.p;
    const int64_t C = hp.n_embd, F = hp.n_ff, KVD = hp.kv_dim();
    const int64_t p0 = s.n_past;
    for (int64_t i = 0; i < nb; i++) p.pos[i] = (int32_t) (p0 + i);
    llama_layer_hook * hook = m.adapters.empty() ? nullptr : m.layer_hook;
    llama_rows rows;
    rows.B = 1;
    rows.T = nb;
    rows.seq = &s.adapter_state;
    for (int64_t l = 0; l < hp.n_layer; l++) {
        const llama_layer_weights & w = m.w.layers[(size_t) l];
        if (hook) hook->layer_forward(l, p.x, rows);
        float * kc = p.k_cache[(size_t) l], * vc = p.v_cache[(size_t) l];
        float * k_new = kc + p0 * KVD, * v_new = vc + p0 * KVD;
        rmsnorm_forward(p.xn, p.rstd, p.x, w.attn_norm, nb, C, hp.rms_eps);
        llama_proj_forward(m, l, LLAMA_PROJ_Q, p.q, p.xn, nb);
        llama_proj_forward(m, l, LLAMA_PROJ_K, k_new, p.xn, nb);
        llama_proj_forward(m, l, LLAMA_PROJ_V, v_new, p.xn, nb);
        rope_forward(p.q, p.pos, m.inv_freq.data(), nb, hp.n_head, hp.head_dim);
        rope_forward(k_new, p.pos, m.inv_freq.data(), nb, hp.n_head_kv, hp.head_dim);
        attend_cache(p.att, p.q, kc, vc, p.scores, s.max_ctx, p0, nb, hp.n_head, hp.n_head_kv, hp.head_dim, p.n_threads);
        residual_proj(m, l, LLAMA_PROJ_O, p.x, p.att, nb, p.scratch);      // x += o(att)
        rmsnorm_forward(p.xn, p.rstd, p.x, w.ffn_norm, nb, C, hp.rms_eps);
        llama_proj_forward(m, l, LLAMA_PROJ_GATE, p.gate, p.xn, nb);
        llama_proj_forward(m, l, LLAMA_PROJ_UP, p.up, p.xn, nb);
        swiglu_forward(p.h, p.gate, p.up, nb * F);
        residual_proj(m, l, LLAMA_PROJ_DOWN, p.x, p.h, nb, p.scratch);     // x += down(h)
    }
}

} // namespace

size_t llama_infer_bytes(const llama_model & m, int64_t max_ctx, int64_t max_batch) {
    plan pl = infer_plan(m.hp, max_ctx, max_batch, omp_get_max_threads());
    return pl.cache + pl.scratch;
}

status llama_infer_init(llama_infer_state & s, const llama_model & m, int64_t max_ctx, int64_t max_batch) {
    const llama_hparams & hp = m.hp;
    if (max_ctx <= 0 || max_batch <= 0) {
        return make_error(PEFT_STATUS_ARGUMENT, "generation", "context size and batch must be positive");
    }
    if (max_ctx > hp.max_position) {
        status st = make_mismatch(PEFT_STATUS_ARGUMENT, "generation", "context size", "at most " + std::to_string(hp.max_position) +
                                  " (max_position_embeddings)", std::to_string(max_ctx));
        st.hint = "shorten the prompt or lower --max-new-tokens";
        return st;
    }
    if (!m.adapters.empty() && m.layer_hook && m.layer_hook->whole_prompt()) max_batch = max_ctx;
    max_batch = std::min(max_batch, max_ctx);
    const int n_threads = std::max(1, omp_get_max_threads());
    plan pl = infer_plan(hp, max_ctx, max_batch, n_threads);
    auto p = std::make_shared<llama_infer_state::impl>();
    if (!p->a.reserve(pl.cache + pl.scratch)) {
        status st = make_error(PEFT_STATUS_MEMORY, "generation", "cannot allocate " + std::to_string((pl.cache + pl.scratch) >> 20) +
                               " MiB for a KV cache of " + std::to_string(max_ctx) + " positions");
        st.hint = "shorten the prompt or lower --max-new-tokens";
        return st;
    }
    const int64_t C = hp.n_embd, QD = hp.q_dim(), KVD = hp.kv_dim(), F = hp.n_ff, nb = max_batch;
    p->n_threads = n_threads;
    for (int64_t l = 0; l < hp.n_layer; l++) {
        p->k_cache.push_back(p->a.alloc_f32((size_t) (max_ctx * KVD)));
        p->v_cache.push_back(p->a.alloc_f32((size_t) (max_ctx * KVD)));
    }
    p->x = p->a.alloc_f32((size_t) (nb * C));
    p->xn = p->a.alloc_f32((size_t) (nb * C));
    p->scratch = p->a.alloc_f32((size_t) (nb * C));
    p->rstd = p->a.alloc_f32((size_t) nb);
    p->q = p->a.alloc_f32((size_t) (nb * QD));
    p->att = p->a.alloc_f32((size_t) (nb * QD));
    p->gate = p->a.alloc_f32((size_t) (nb * F));
    p->up = p->a.alloc_f32((size_t) (nb * F));
    p->h = p->a.alloc_f32((size_t) (nb * F));
    p->xf = p->a.alloc_f32((size_t) C);
    p->scores = p->a.alloc_f32((size_t) n_threads * (size_t) max_ctx);
    p->pos = (int32_t *) p->a.alloc_bytes((size_t) nb * 4);
    s.max_ctx = max_ctx;
    s.max_batch = max_batch;
    s.n_past = 0;
    s.adapter_state.reset();
    s.p = std::move(p);
    return status::success();
}

void llama_infer_reset(llama_infer_state & s) {
    s.n_past = 0;
    s.adapter_state.reset();
}

status llama_infer_eval(const llama_model & m, llama_infer_state & s, const int32_t * tokens, int64_t n, float * logits) {
    PEFT_ASSERT(s.p);
    const llama_hparams & hp = m.hp;
    if (n <= 0) return make_error(PEFT_STATUS_ARGUMENT, "generation", "no tokens to evaluate");
    if (s.n_past + n > s.max_ctx) {
        status st = make_error(PEFT_STATUS_ARGUMENT, "generation", "context full: " + std::to_string(s.n_past) + " cached + " +
                               std::to_string(n) + " new tokens exceed the context of " + std::to_string(s.max_ctx) + " positions");
        st.hint = "shorten the prompt or lower --max-new-tokens";
        return st;
    }
    for (int64_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            return make_mismatch(PEFT_STATUS_ARGUMENT, "generation", "token id at " + std::to_string(i),
                                 "0.." + std::to_string(hp.n_vocab - 1), std::to_string(tokens[i]));
        }
    }
    if (!m.adapters.empty() && m.layer_hook && m.layer_hook->whole_prompt() && !s.adapter_state && n > s.max_batch) {
        status st = make_error(PEFT_STATUS_ARGUMENT, "generation", "the adapter routes from the whole prompt, but " + std::to_string(n) +
                               " prompt tokens exceed the " + std::to_string(s.max_batch) + " rows a forward of this state holds");
        st.hint = "plan the inference state after attaching the adapter (llama_infer_init then sizes it for whole prompts)";
        return st;
    }
    llama_infer_state::impl & p = *s.p;
    const int64_t C = hp.n_embd;
    int64_t nb = 0;
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        nb = std::min(s.max_batch, n - i0);
        llama_embed(p.x, m.w.embed, tokens + i0, nb);
        forward_chunk(m, s, nb);
        s.n_past += nb;
    }
    if (logits) {
        rmsnorm_forward(p.xf, p.rstd, p.x + (nb - 1) * C, m.w.final_norm, 1, C, hp.rms_eps);
        linear_forward(logits, p.xf, m.w.lm_head, nullptr, 1);
    }
    return status::success();
}

} // namespace peft
