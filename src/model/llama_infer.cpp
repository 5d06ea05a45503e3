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

#include "adapters/adapter.h"
#include "core/arena.h"
#include "kernels/kernels.h"
#include "model/linear.h"

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
    const int64_t items = nb * NH;
#pragma omp parallel for schedule(static) num_threads(n_threads) if (items > 1)
    for (int64_t it = 0; it < items; it++) {
        const int64_t i = it / NH, h = it % NH;
        float * sc = scores + (int64_t) omp_get_thread_num() * max_ctx;
        attend_head(out + i * QD + h * HS, q + i * QD + h * HS, kc, vc, sc, p0 + i + 1, h / group, KVD, HS);
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

// Projections of one input (q/k/v, gate/up) for a decode step in one parallel region
// (gemv_own_multi): on 2 threads a region per projection cost more than the split saved. Only
// for plain f32/bf16 base weights without adapters; false: the caller runs them one by one.
bool proj_fused(const llama_model & m, int64_t l, const llama_proj * pj, float * const * y, int n, const float * x, int64_t nb) {
    if (nb > GEMV_MAX_ROWS) return false;
    gemv_out outs[GEMV_MAX_OUTS];
    for (int i = 0; i < n; i++) {
        const linear_weight & w = m.proj_weight(l, pj[i]);
        if (m.adapter(l, pj[i]) || w.q || (w.type != PEFT_DTYPE_F32 && w.type != PEFT_DTYPE_BF16)) return false;
        outs[i] = {y[i], w.type, w.data, w.OC, 0.0f};
    }
    gemv_own_multi(outs, n, x, nb, m.proj_weight(l, pj[0]).IC, linear_bf16_compute());
    for (int i = 0; i < n; i++) {
        const float * b = m.proj_bias(l, pj[i]);
        const int64_t OC = outs[i].OC;
        for (int64_t r = 0; b && r < nb; r++)
            for (int64_t o = 0; o < OC; o++) y[i][r * OC + o] += b[o];
    }
    return true;
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
        static constexpr llama_proj QKV[3] = {LLAMA_PROJ_Q, LLAMA_PROJ_K, LLAMA_PROJ_V};
        float * const qkv[3] = {p.q, k_new, v_new};
        if (!proj_fused(m, l, QKV, qkv, 3, p.xn, nb)) {
            for (int i = 0; i < 3; i++) llama_proj_forward(m, l, QKV[i], qkv[i], p.xn, nb);
        }
        rope_forward(p.q, p.pos, m.inv_freq.data(), nb, hp.n_head, hp.head_dim);
        rope_forward(k_new, p.pos, m.inv_freq.data(), nb, hp.n_head_kv, hp.head_dim);
        attend_cache(p.att, p.q, kc, vc, p.scores, s.max_ctx, p0, nb, hp.n_head, hp.n_head_kv, hp.head_dim, p.n_threads);
        residual_proj(m, l, LLAMA_PROJ_O, p.x, p.att, nb, p.scratch);      // x += o(att)
        rmsnorm_forward(p.xn, p.rstd, p.x, w.ffn_norm, nb, C, hp.rms_eps);
        static constexpr llama_proj GATE_UP[2] = {LLAMA_PROJ_GATE, LLAMA_PROJ_UP};
        float * const gate_up[2] = {p.gate, p.up};
        if (!proj_fused(m, l, GATE_UP, gate_up, 2, p.xn, nb)) {
            for (int i = 0; i < 2; i++) llama_proj_forward(m, l, GATE_UP[i], gate_up[i], p.xn, nb);
        }
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

// ---- several sequences in one forward ----------------------------------------------------

struct llama_infer_batch::impl {
    arena a;
    float * x = nullptr;        // [nb, C] residual stream of the chunk
    float * x_in = nullptr;     // [nb, C] the layer's input, for the layer hooks of its projections
    float * xn = nullptr;       // [nb, C]
    float * rstd = nullptr;     // [nb]
    float * q = nullptr;        // [nb, QD]
    float * k = nullptr;        // [nb, KVD] new keys, copied into each row's cache
    float * v = nullptr;        // [nb, KVD]
    float * att = nullptr;      // [nb, QD]
    float * gate = nullptr;     // [nb, F]
    float * up = nullptr;       // [nb, F]
    float * h = nullptr;        // [nb, F]
    float * proj = nullptr;     // [nb, C] o / down outputs before the residual add
    float * xf = nullptr;       // [LOGIT_ROWS, C] final norm of the rows that want logits
    float * lg = nullptr;       // [LOGIT_ROWS, V]
    float * scores = nullptr;   // [n_threads, max_ctx]
    int32_t * tok = nullptr;    // [nb]
    int32_t * pos = nullptr;    // [nb]
    int n_threads = 1;
};

namespace {

constexpr int64_t LOGIT_ROWS = 16;   // lm_head rows per product (bounds the [rows, V] scratch)

struct batch_row {
    int64_t seq;    // index into the caller's seqs
    int64_t pos;    // absolute position in that sequence
    bool    last;   // the sequence's last new token
};

// A run of chunk rows [r0, r0+n) that share one adapter table, and with a layer hook one
// sequence (the hook's routing is per sequence).
struct row_group {
    int64_t                  r0, n;
    adapter_module * const * table;
    llama_layer_hook *       hook;
    llama_infer_state *      state;   // the sequence of a hooked group, else null
};

// out[nb,OC] = proj(in) per row group: the base product once over all rows, then each group's
// adapter delta on its rows (a module whose output does not split recomputes its rows whole).
// A hooked group's hook routes its rows first, from x_in (the layer's input), as the
// single-sequence forward does once per layer.
void proj_rows(const llama_model & m, int64_t l, llama_proj pj, float * out, const float * in, int64_t nb,
               const std::vector<row_group> & groups, const float * x_in) {
    const linear_weight & w = m.proj_weight(l, pj);
    linear_forward(out, in, w, m.proj_bias(l, pj), nb);
    for (const row_group & g : groups) {
        adapter_module * ad = g.table ? g.table[(size_t) (l * LLAMA_PROJ_COUNT + pj)] : nullptr;
        if (!ad) continue;
        if (g.hook) {
            llama_rows rows;
            rows.B = 1;
            rows.T = g.n;
            rows.seq = &g.state->adapter_state;
            g.hook->layer_forward(l, x_in + g.r0 * m.hp.n_embd, rows);
        }
        const float * xg = in + g.r0 * w.IC;
        float * yg = out + g.r0 * w.OC;
        if (!ad->forward_delta(xg, g.n, yg)) ad->forward(xg, g.n, yg);
    }
}

void add_rows(float * x, const float * y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

// The chunk rows[0..nb) through every layer: x holds their embeddings on entry and the last
// residual stream on exit; their K/V land in their own sequences' caches.
void forward_rows(const llama_model & m, llama_infer_batch::impl & p, const llama_infer_seq * seqs, const batch_row * rows,
                  int64_t nb, const std::vector<row_group> & groups, int64_t max_ctx) {
    const llama_hparams & hp = m.hp;
    const int64_t C = hp.n_embd, F = hp.n_ff, KVD = hp.kv_dim(), QD = hp.q_dim();
    const int64_t NH = hp.n_head, HS = hp.head_dim, group = hp.n_head / hp.n_head_kv;
    const bool hooked = std::any_of(groups.begin(), groups.end(), [](const row_group & g) { return g.hook; });
    for (int64_t l = 0; l < hp.n_layer; l++) {
        const llama_layer_weights & w = m.w.layers[(size_t) l];
        if (hooked) std::memcpy(p.x_in, p.x, (size_t) (nb * C) * 4);
        rmsnorm_forward(p.xn, p.rstd, p.x, w.attn_norm, nb, C, hp.rms_eps);
        proj_rows(m, l, LLAMA_PROJ_Q, p.q, p.xn, nb, groups, p.x_in);
        proj_rows(m, l, LLAMA_PROJ_K, p.k, p.xn, nb, groups, p.x_in);
        proj_rows(m, l, LLAMA_PROJ_V, p.v, p.xn, nb, groups, p.x_in);
        rope_forward(p.q, p.pos, m.inv_freq.data(), nb, hp.n_head, HS);
        rope_forward(p.k, p.pos, m.inv_freq.data(), nb, hp.n_head_kv, HS);
        for (int64_t i = 0; i < nb; i++) {
            llama_infer_state::impl & c = *seqs[rows[i].seq].state->p;
            std::memcpy(c.k_cache[(size_t) l] + rows[i].pos * KVD, p.k + i * KVD, (size_t) KVD * 4);
            std::memcpy(c.v_cache[(size_t) l] + rows[i].pos * KVD, p.v + i * KVD, (size_t) KVD * 4);
        }
        const int64_t items = nb * NH;
#pragma omp parallel for schedule(static) num_threads(p.n_threads) if (items > 1)
        for (int64_t it = 0; it < items; it++) {
            const int64_t i = it / NH, h = it % NH;
            const llama_infer_state::impl & c = *seqs[rows[i].seq].state->p;
            float * sc = p.scores + (int64_t) omp_get_thread_num() * max_ctx;
            attend_head(p.att + i * QD + h * HS, p.q + i * QD + h * HS, c.k_cache[(size_t) l], c.v_cache[(size_t) l], sc,
                        rows[i].pos + 1, h / group, KVD, HS);
        }
        proj_rows(m, l, LLAMA_PROJ_O, p.proj, p.att, nb, groups, p.x_in);
        add_rows(p.x, p.proj, nb * C);                                        // x += o(att)
        rmsnorm_forward(p.xn, p.rstd, p.x, w.ffn_norm, nb, C, hp.rms_eps);
        proj_rows(m, l, LLAMA_PROJ_GATE, p.gate, p.xn, nb, groups, p.x_in);
        proj_rows(m, l, LLAMA_PROJ_UP, p.up, p.xn, nb, groups, p.x_in);
        swiglu_forward(p.h, p.gate, p.up, nb * F);
        proj_rows(m, l, LLAMA_PROJ_DOWN, p.proj, p.h, nb, groups, p.x_in);
        add_rows(p.x, p.proj, nb * C);                                        // x += down(h)
    }
}

// Logits of the chunk rows that end their sequence (and want logits), LOGIT_ROWS at a time.
void rows_logits(const llama_model & m, llama_infer_batch::impl & p, const llama_infer_seq * seqs, const batch_row * rows,
                 int64_t nb) {
    const int64_t C = m.hp.n_embd, V = m.hp.n_vocab;
    std::vector<int64_t> want;
    for (int64_t i = 0; i < nb; i++) {
        if (rows[i].last && seqs[rows[i].seq].logits) want.push_back(i);
    }
    for (size_t i0 = 0; i0 < want.size(); i0 += LOGIT_ROWS) {
        const int64_t k = std::min<int64_t>(LOGIT_ROWS, (int64_t) (want.size() - i0));
        for (int64_t j = 0; j < k; j++) {
            rmsnorm_forward(p.xf + j * C, p.rstd, p.x + want[i0 + (size_t) j] * C, m.w.final_norm, 1, C, m.hp.rms_eps);
        }
        linear_forward(p.lg, p.xf, m.w.lm_head, nullptr, k);
        for (int64_t j = 0; j < k; j++) {
            std::memcpy(seqs[rows[want[i0 + (size_t) j]].seq].logits, p.lg + j * V, (size_t) V * 4);
        }
    }
}

// A sequence whose hook must see its prompt in one chunk (its first eval after a reset).
bool whole_prompt(const llama_infer_seq & q) { return q.hook && q.hook->whole_prompt() && !q.state->adapter_state; }

status check_seq(const llama_model & m, const llama_infer_batch & b, const llama_infer_seq & q, int64_t i) {
    const std::string where = "generation (sequence " + std::to_string(i) + ")";
    if (!q.state || !q.state->p || q.n <= 0 || !q.tokens) return make_error(PEFT_STATUS_ARGUMENT, where, "no tokens to evaluate");
    if (q.state->max_ctx > b.max_ctx) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, where, "cache size", "at most the batch's " + std::to_string(b.max_ctx),
                             std::to_string(q.state->max_ctx));
    }
    if (q.state->n_past + q.n > q.state->max_ctx) {
        status st = make_error(PEFT_STATUS_ARGUMENT, where, "context full: " + std::to_string(q.state->n_past) + " cached + " +
                               std::to_string(q.n) + " new tokens exceed the context of " +
                               std::to_string(q.state->max_ctx) + " positions");
        st.hint = "shorten the prompt or lower max_tokens";
        return st;
    }
    for (int64_t j = 0; j < q.n; j++) {
        if (q.tokens[j] < 0 || q.tokens[j] >= m.hp.n_vocab) {
            return make_mismatch(PEFT_STATUS_ARGUMENT, where, "token id at " + std::to_string(j),
                                 "0.." + std::to_string(m.hp.n_vocab - 1), std::to_string(q.tokens[j]));
        }
    }
    if (whole_prompt(q) && q.n > b.max_rows) {
        status st = make_error(PEFT_STATUS_ARGUMENT, where, "the adapter routes from the whole prompt, but " + std::to_string(q.n) +
                               " prompt tokens exceed the " + std::to_string(b.max_rows) + " rows of a batch chunk");
        st.hint = "plan the batch with as many rows as the context (llama_infer_batch_init)";
        return st;
    }
    return status::success();
}

} // namespace

status llama_infer_batch_init(llama_infer_batch & b, const llama_model & m, int64_t max_rows, int64_t max_ctx) {
    const llama_hparams & hp = m.hp;
    if (max_rows <= 0 || max_ctx <= 0) return make_error(PEFT_STATUS_ARGUMENT, "generation", "batch rows and context must be positive");
    const int n_threads = std::max(1, omp_get_max_threads());
    const int64_t C = hp.n_embd, QD = hp.q_dim(), KVD = hp.kv_dim(), F = hp.n_ff, V = hp.n_vocab, nb = max_rows;
    auto A = [](int64_t n) { return arena_align((size_t) n * 4); };
    const size_t bytes = A(nb * C) * 4 + A(nb) * 3 + A(nb * QD) * 2 + A(nb * KVD) * 2 + A(nb * F) * 3 + A(LOGIT_ROWS * C) +
                         A(LOGIT_ROWS * V) + A((int64_t) n_threads * max_ctx);
    auto p = std::make_shared<llama_infer_batch::impl>();
    if (!p->a.reserve(bytes)) {
        return make_error(PEFT_STATUS_MEMORY, "generation", "cannot allocate " + std::to_string(bytes >> 20) + " MiB of batch scratch");
    }
    p->n_threads = n_threads;
    p->x = p->a.alloc_f32((size_t) (nb * C));
    p->x_in = p->a.alloc_f32((size_t) (nb * C));
    p->xn = p->a.alloc_f32((size_t) (nb * C));
    p->proj = p->a.alloc_f32((size_t) (nb * C));
    p->rstd = p->a.alloc_f32((size_t) nb);
    p->q = p->a.alloc_f32((size_t) (nb * QD));
    p->att = p->a.alloc_f32((size_t) (nb * QD));
    p->k = p->a.alloc_f32((size_t) (nb * KVD));
    p->v = p->a.alloc_f32((size_t) (nb * KVD));
    p->gate = p->a.alloc_f32((size_t) (nb * F));
    p->up = p->a.alloc_f32((size_t) (nb * F));
    p->h = p->a.alloc_f32((size_t) (nb * F));
    p->xf = p->a.alloc_f32((size_t) (LOGIT_ROWS * C));
    p->lg = p->a.alloc_f32((size_t) (LOGIT_ROWS * V));
    p->scores = p->a.alloc_f32((size_t) n_threads * (size_t) max_ctx);
    p->tok = (int32_t *) p->a.alloc_bytes((size_t) nb * 4);
    p->pos = (int32_t *) p->a.alloc_bytes((size_t) nb * 4);
    b.max_rows = max_rows;
    b.max_ctx = max_ctx;
    b.p = std::move(p);
    return status::success();
}

status llama_infer_eval_multi(const llama_model & m, llama_infer_batch & b, llama_infer_seq * seqs, int64_t n_seq) {
    PEFT_ASSERT(b.p);
    for (int64_t i = 0; i < n_seq; i++) {
        PEFT_TRY(check_seq(m, b, seqs[i], i));
        for (int64_t j = 0; j < i; j++) PEFT_ASSERT(seqs[j].state != seqs[i].state);
    }
    // rows of one adapter table next to each other (sequences stay whole and in order), so each
    // adapter runs once per projection over its rows
    std::vector<int64_t> order((size_t) n_seq);
    for (int64_t i = 0; i < n_seq; i++) order[(size_t) i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) {
        return std::less<const void *>()(seqs[a].adapters, seqs[c].adapters);
    });
    // chunks of at most max_rows rows; a prompt that its hook must see whole starts a new chunk
    // rather than being split
    std::vector<batch_row> rows;
    std::vector<int64_t> chunk_end;
    for (int64_t i : order) {
        const int64_t r0 = (int64_t) rows.size(), start = chunk_end.empty() ? 0 : chunk_end.back();
        if (whole_prompt(seqs[i]) && r0 > start && r0 + seqs[i].n - start > b.max_rows) chunk_end.push_back(r0);
        for (int64_t j = 0; j < seqs[i].n; j++) {
            if ((int64_t) rows.size() - (chunk_end.empty() ? 0 : chunk_end.back()) == b.max_rows) chunk_end.push_back((int64_t) rows.size());
            rows.push_back({i, seqs[i].state->n_past + j, j + 1 == seqs[i].n});
        }
    }
    chunk_end.push_back((int64_t) rows.size());
    llama_infer_batch::impl & p = *b.p;
    std::vector<row_group> groups;
    for (size_t c = 0; c < chunk_end.size(); c++) {
        const int64_t r0 = c ? chunk_end[c - 1] : 0, nb = chunk_end[c] - r0;
        if (nb == 0) continue;   // no sequences
        const batch_row * cr = rows.data() + r0;
        groups.clear();
        for (int64_t i = 0; i < nb; i++) {
            const llama_infer_seq & q = seqs[cr[i].seq];
            p.tok[i] = q.tokens[cr[i].pos - q.state->n_past];
            p.pos[i] = (int32_t) cr[i].pos;
            llama_infer_state * own = q.hook ? q.state : nullptr;
            if (groups.empty() || groups.back().table != q.adapters || groups.back().state != own) {
                groups.push_back({i, 0, q.adapters, q.hook, own});
            }
            groups.back().n++;
        }
        llama_embed(p.x, m.w.embed, p.tok, nb);
        forward_rows(m, p, seqs, cr, nb, groups, b.max_ctx);
        rows_logits(m, p, seqs, cr, nb);
    }
    for (int64_t i = 0; i < n_seq; i++) seqs[i].state->n_past += seqs[i].n;
    return status::success();
}

} // namespace peft
