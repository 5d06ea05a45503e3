// llama.cpp: forward and backward of the Llama-family decoder over the kernels in kernels.h.
// Not here: loading files (llama_load.cpp), optimizers, adapters.
#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "adapters/adapter.h"
#include "core/rng.h"
#include "kernels/kernels.h"

namespace peft {

// ---- tensor table ------------------------------------------------------------------------

bool llama_proj_has_bias(const llama_hparams & hp, llama_proj p) {
    switch (p) {
        case LLAMA_PROJ_Q: case LLAMA_PROJ_K: case LLAMA_PROJ_V: return hp.qkv_bias;
        case LLAMA_PROJ_O: return hp.o_bias;
        default: return hp.mlp_bias;
    }
}

// [OC, IC] of projection p.
static std::vector<int64_t> proj_shape(const llama_hparams & hp, llama_proj p) {
    const int64_t C = hp.n_embd, QD = hp.q_dim(), KVD = hp.kv_dim(), F = hp.n_ff;
    switch (p) {
        case LLAMA_PROJ_Q: return {QD, C};
        case LLAMA_PROJ_K: case LLAMA_PROJ_V: return {KVD, C};
        case LLAMA_PROJ_O: return {C, QD};
        case LLAMA_PROJ_GATE: case LLAMA_PROJ_UP: return {F, C};
        default: return {C, F};
    }
}

// Per layer in HF named_parameters() order: input_layernorm, q/k/v/o (each weight, then its
// bias if any), post_attention_layernorm, gate/up/down. llama_bind_weights walks the same order.
std::vector<llama_tensor_spec> llama_tensor_specs(const llama_hparams & hp) {
    const int64_t C = hp.n_embd, V = hp.n_vocab;
    std::vector<llama_tensor_spec> t;
    t.push_back({"model.embed_tokens.weight", {V, C}, true});
    for (int64_t l = 0; l < hp.n_layer; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        auto proj = [&](llama_proj j) {
            const std::vector<int64_t> shape = proj_shape(hp, j);
            t.push_back({p + llama_proj_name(j) + ".weight", shape, true});
            if (llama_proj_has_bias(hp, j)) t.push_back({p + llama_proj_name(j) + ".bias", {shape[0]}, false});
        };
        t.push_back({p + "input_layernorm.weight", {C}, false});
        for (llama_proj j : {LLAMA_PROJ_Q, LLAMA_PROJ_K, LLAMA_PROJ_V, LLAMA_PROJ_O}) proj(j);
        t.push_back({p + "post_attention_layernorm.weight", {C}, false});
        for (llama_proj j : {LLAMA_PROJ_GATE, LLAMA_PROJ_UP, LLAMA_PROJ_DOWN}) proj(j);
    }
    t.push_back({"model.norm.weight", {C}, false});
    if (!hp.tie_embeddings) t.push_back({"lm_head.weight", {V, C}, true});
    return t;
}

llama_tensor * llama_model::find(const std::string & name) {
    for (llama_tensor & t : tensors) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

void llama_model::zero_grad() { grad_arena.zero(); }

static const char * PROJ_NAMES[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
static_assert(sizeof(PROJ_NAMES) / sizeof(PROJ_NAMES[0]) == LLAMA_PROJ_COUNT);

const char * llama_proj_name(llama_proj p) { return p < LLAMA_PROJ_COUNT ? PROJ_NAMES[p] : "?"; }

linear_weight & llama_model::proj_weight(int64_t layer, llama_proj p) {
    llama_layer_weights & L = w.layers[(size_t) layer];
    linear_weight * table[] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    return *table[p];
}

const float * llama_model::proj_bias(int64_t layer, llama_proj p) const { return w.layers[(size_t) layer].bias[p]; }

void llama_bind_weights(llama_model & m);

static std::string proj_tensor_name(int64_t layer, llama_proj p) {
    return "model.layers." + std::to_string(layer) + "." + llama_proj_name(p) + ".weight";
}

bool llama_is_proj_weight(const std::string & name) {
    const std::string suffix = "_proj.weight";
    return name.rfind("model.layers.", 0) == 0 && name.size() > suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Quantizes W (the f32 values of tensor t) into a new qtensor of m; t then holds no bytes.
status llama_quantize_tensor(llama_model & m, llama_tensor & t, const float * W, const quant_options & o) {
    auto q = std::make_unique<qtensor>();
    PEFT_TRY(qtensor_quantize(W, t.shape[0], t.shape[1], o, t.name, *q));
    t.q = q.get();
    t.data = nullptr;
    m.qweights.push_back(std::move(q));
    return {};
}

// Hands the whole pages of [p, p + bytes) back to the system when they belong to the random-init
// storage arena: a matrix quantized or converted to bf16 there is never read again (its tensor
// points elsewhere), and keeping it would hold the model twice.
static void release_storage(const arena & a, const void * p, size_t bytes) {
    const uint8_t * begin = (const uint8_t *) p;
    if (!a.base || begin < a.base || begin + bytes > a.base + a.used) return;   // a file mapping or a loaded buffer
    release_whole_pages(const_cast<uint8_t *>(begin), bytes);   // a refusal only keeps the pages
}

status llama_quantize_frozen(llama_model & m, const quant_options & o) {
    PEFT_ASSERT(!m.trainable);
    std::vector<float> W;
    for (llama_tensor & t : m.tensors) {
        if (!llama_is_proj_weight(t.name) || t.q) continue;
        W.resize((size_t) t.numel());
        convert_to_f32(t.type, t.data, W.data(), W.size());
        const void * old = t.data;
        const size_t bytes = (size_t) t.numel() * dtype_size(t.type);
        PEFT_TRY(llama_quantize_tensor(m, t, W.data(), o));
        release_storage(m.storage_arena, old, bytes);
    }
    llama_bind_weights(m);
    return {};
}

void llama_requantize_weight(llama_model & m, int64_t layer, llama_proj p, const float * W) {
    linear_weight & w = m.proj_weight(layer, p);
    PEFT_ASSERT(w.q);
    qtensor & q = const_cast<qtensor &>(*w.q);   // one of m.qweights
    quant_options o;
    o.type = q.type;
    o.double_quant = q.scales.nested;
    o.bf16_values = q.bf16_values;
    // cannot fail: the shape was quantized before
    PEFT_ASSERT(qtensor_quantize(W, q.OC, q.IC, o, proj_tensor_name(layer, p), q).ok());
}

void llama_replace_weight(llama_model & m, int64_t layer, llama_proj p, const float * W, dtype type) {
    PEFT_ASSERT(!m.trainable);
    linear_weight & w = m.proj_weight(layer, p);
    const size_t n = (size_t) (w.OC * w.IC);
    std::vector<uint8_t> * buf = nullptr;   // a weight replaced before (merge, unmerge, merge) reuses its buffer
    for (std::vector<uint8_t> & b : m.replaced_weights) {
        if (b.data() == w.data) buf = &b;
    }
    if (!buf) buf = &m.replaced_weights.emplace_back();
    buf->resize(n * dtype_size(type));
    void * data = buf->data();   // stays put when the outer vector grows (a moved vector keeps its buffer)
    convert_from_f32(type, W, data, n);
    w.type = type;
    w.data = data;
    w.q = nullptr;   // a merge onto a 4-bit base: the merged weight is plain (onto deq(W))
    llama_tensor * t = m.find(proj_tensor_name(layer, p));
    PEFT_ASSERT(t);
    t->type = type;
    t->data = data;
    t->q = nullptr;
}

void llama_frozen_to_bf16(llama_model & m) {
    if (m.trainable) return;
    std::vector<float> W;
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
            const linear_weight & w = m.proj_weight(l, (llama_proj) p);
            if (w.q || w.type != PEFT_DTYPE_F32) continue;   // 4-bit weights stay 4-bit
            W.resize((size_t) (w.OC * w.IC));
            linear_weight_rows_f32(W.data(), w, 0, w.OC);
            const void * old = w.data;
            llama_replace_weight(m, l, (llama_proj) p, W.data(), PEFT_DTYPE_BF16);
            release_storage(m.storage_arena, old, W.size() * 4);   // the f32 random init beside its bf16 copy
        }
    }
}

// Points the named weight structs at the tensors of m.tensors (which must follow
// llama_tensor_specs order) and computes the rope table.
void llama_bind_weights(llama_model & m) {
    const llama_hparams & hp = m.hp;
    size_t i = 0;
    auto lin = [&](linear_weight & w) {
        llama_tensor & t = m.tensors[i++];
        w.type = t.type;
        w.data = t.data;
        w.q = t.q;
        w.OC = t.shape[0];
        w.IC = t.shape[1];
    };
    auto vec = [&](float *& p) {
        llama_tensor & t = m.tensors[i++];
        PEFT_ASSERT(t.type == PEFT_DTYPE_F32);
        p = (float *) t.data;
    };
    m.w.layers.assign((size_t) hp.n_layer, {});
    lin(m.w.embed);
    for (int64_t l = 0; l < hp.n_layer; l++) {
        llama_layer_weights & L = m.w.layers[(size_t) l];
        auto proj = [&](llama_proj j) {
            lin(m.proj_weight(l, j));
            if (llama_proj_has_bias(hp, j)) vec(L.bias[j]);
        };
        vec(L.attn_norm);
        for (llama_proj j : {LLAMA_PROJ_Q, LLAMA_PROJ_K, LLAMA_PROJ_V, LLAMA_PROJ_O}) proj(j);
        vec(L.ffn_norm);
        for (llama_proj j : {LLAMA_PROJ_GATE, LLAMA_PROJ_UP, LLAMA_PROJ_DOWN}) proj(j);
    }
    vec(m.w.final_norm);
    if (hp.tie_embeddings) {
        m.w.lm_head = m.w.embed;
    } else {
        lin(m.w.lm_head);
    }
    PEFT_ASSERT(i == m.tensors.size());
    m.inv_freq.resize((size_t) hp.head_dim / 2);
    rope_inv_freq(m.inv_freq.data(), hp.rope, hp.head_dim);
}

// Plans arenas for the tensor table: f32 params for trainable models and small vectors;
// `storage` holds frozen matrices of dtype `frozen_type` when `own_frozen` (random init).
status llama_allocate(llama_model & m, bool trainable, bool own_frozen, dtype frozen_type) {
    m.trainable = trainable;
    m.tensors.clear();
    size_t param_bytes = 0, storage_bytes = 0, grad_bytes = 0;
    std::vector<llama_tensor_spec> specs = llama_tensor_specs(m.hp);
    for (const llama_tensor_spec & s : specs) {
        llama_tensor t;
        t.name = s.name;
        t.shape = s.shape;
        size_t n = (size_t) t.numel();
        if (trainable || !s.matrix) {
            param_bytes += arena_align(n * 4);
            if (trainable) grad_bytes += arena_align(n * 4);
        } else if (own_frozen) {
            storage_bytes += arena_align(n * dtype_size(frozen_type));
        }
        m.tensors.push_back(std::move(t));
    }
    if (!m.param_arena.reserve(param_bytes) || !m.storage_arena.reserve(storage_bytes) ||
        !m.grad_arena.reserve(grad_bytes)) {
        return make_error(PEFT_STATUS_MEMORY, "model", "cannot allocate " +
                          std::to_string((param_bytes + storage_bytes + grad_bytes) >> 20) + " MiB for weights");
    }
    for (size_t i = 0; i < specs.size(); i++) {
        llama_tensor & t = m.tensors[i];
        size_t n = (size_t) t.numel();
        if (trainable || !specs[i].matrix) {
            t.type = PEFT_DTYPE_F32;
            t.data = m.param_arena.alloc_f32(n);
            if (trainable) t.grad = m.grad_arena.alloc_f32(n);
        } else if (own_frozen) {
            t.type = frozen_type;
            t.data = m.storage_arena.alloc_bytes(n * dtype_size(frozen_type));
        }
    }
    m.grad_arena.zero();
    return {};
}

status llama_init_random(llama_model & m, const llama_hparams & hp, bool trainable, uint64_t seed, dtype storage) {
    PEFT_TRY(llama_hparams_validate(hp, "model shape"));
    m.hp = hp;
    PEFT_TRY(llama_allocate(m, trainable, true, storage));
    rng r(seed);
    std::vector<float> tmp;
    for (llama_tensor & t : m.tensors) {
        int64_t n = t.numel();
        bool is_norm = t.name.find("norm") != std::string::npos;
        bool is_bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
        if (t.type == PEFT_DTYPE_F32) {
            float * d = (float *) t.data;
            if (is_norm) std::fill(d, d + n, 1.0f);
            else if (is_bias) std::fill(d, d + n, 0.0f);
            else r.fill_normal(d, n, 0.0f, 0.02f);
        } else {
            tmp.resize((size_t) n);
            r.fill_normal(tmp.data(), n, 0.0f, 0.02f);
            convert_from_f32(t.type, tmp.data(), t.data, (size_t) n);
        }
    }
    llama_bind_weights(m);
    return {};
}

// ---- activations ---------------------------------------------------------------------------

namespace {

struct layer_acts {
    float * xn1;    // [N,C]  attention-norm output
    float * rstd1;  // [N]
    float * q;      // [N,QD] after rope
    float * k;      // [N,KVD] after rope
    float * v;      // [N,KVD]
    float * att;    // [N,QD] attention output (input of o_proj)
    float * lse;    // [B,NH,T]
    float * x_mid;  // [N,C]  residual after attention
    float * xn2;    // [N,C]
    float * rstd2;  // [N]
    float * gate;   // [N,F]
    float * up;     // [N,F]
    float * h;      // [N,F]  silu(gate) * up
};

} // namespace

// The projection inputs that only a backward consumer needs: the norm outputs feeding q/k/v and
// gate/up, and the SwiGLU output feeding down. (o_proj's input is the attention output, which
// attention's own backward reads.)
enum proj_input {
    PROJ_INPUT_ATTN = 0,   // xn1: q, k, v
    PROJ_INPUT_MLP,        // xn2: gate, up
    PROJ_INPUT_DOWN,       // h:   down
    PROJ_INPUT_COUNT,
};

// Whether layer l's backward reads the input group g: a weight gradient (full fine-tuning) or
// an adapter on one of its projections that reads x (adapter_module::backward_reads_input).
static bool proj_input_read(const llama_model & m, int64_t l, proj_input g) {
    static const llama_proj groups[PROJ_INPUT_COUNT][3] = {
        {LLAMA_PROJ_Q, LLAMA_PROJ_K, LLAMA_PROJ_V},
        {LLAMA_PROJ_GATE, LLAMA_PROJ_UP, LLAMA_PROJ_COUNT},
        {LLAMA_PROJ_DOWN, LLAMA_PROJ_COUNT, LLAMA_PROJ_COUNT},
    };
    if (m.trainable) return true;
    for (llama_proj p : groups[g]) {
        if (p == LLAMA_PROJ_COUNT) break;
        const adapter_module * ad = m.adapter(l, p);
        if (ad && ad->backward_reads_input()) return true;
    }
    return false;
}

struct llama_state::impl {
    std::vector<float *>    resid;   // [L+1] residual stream at each layer input, [N,C]
    // one slot per layer the backward visits; with recompute one slot for all, and the layers
    // below first_kept (a frozen base's, below its lowest adapter: no backward visits them)
    // share slot 0, which only their forward uses
    std::vector<layer_acts> layers;
    int64_t                 first_kept = 0;
    layer_acts & acts(int64_t l, bool recompute) {
        if (recompute || l < first_kept) return layers[0];
        return layers[(size_t) (l - first_kept + (first_kept > 0))];
    }
    // [L * PROJ_INPUT_COUNT]: the input group has its own buffer in layers[l] (else all such
    // layers share one scratch buffer, overwritten by the next layer's forward)
    std::vector<uint8_t>    input_kept;
    float * xf;        // [N,C] final norm output
    float * rstdf;     // [N]
    float * dxf;       // [N,C] gradient at the final norm output (filled by forward)
    float * losses;    // [N]
    float * logits;    // [RC,V] one row chunk of logits / dlogits
    // backward scratch
    float * dres;      // [N,C]
    float * dxn;       // [N,C]
    float * dq, * dk, * dv, * datt;   // [N,QD] [N,KVD] [N,KVD] [N,QD]
    float * dgate, * dup, * dh;       // [N,F]
    float * emb_row;   // [C] conversion scratch is per row inside embedding; unused otherwise
    int64_t rows_per_chunk;
    bool    have_grad = false;        // forward ran with grad_scale > 0
    float   grad_scale = 0.0f;        // of that forward (layer hooks scale their own losses by it)
};

// Rows per lm_head chunk: at most about 32 MB of logits, at least 16 rows, the rows cut evenly
// (OpenBLAS runs 4 chunks of 256 rows 5% faster than 262 + 262 + 262 + 238: a 6-row tail block).
static int64_t lm_chunk_rows(int64_t N, int64_t V) {
    const int64_t most = std::max<int64_t>(16, ((int64_t) 8 << 20) / std::max<int64_t>(V, 1));
    const int64_t chunks = (N + most - 1) / most;
    return (N + chunks - 1) / chunks;
}

status llama_state_init(llama_state & s, const llama_model & m, int64_t B, int64_t T, bool recompute) {
    const llama_hparams & hp = m.hp;
    if (B <= 0 || T <= 0) return make_error(PEFT_STATUS_ARGUMENT, "batch", "batch size and sequence length must be positive");
    const int64_t N = B * T, C = hp.n_embd, QD = hp.q_dim(), KVD = hp.kv_dim(), F = hp.n_ff, V = hp.n_vocab;
    const int64_t L = hp.n_layer, NH = hp.n_head;
    s.B = B;
    s.T = T;
    s.recompute = recompute;
    s.p = std::make_shared<llama_state::impl>();
    llama_state::impl & p = *s.p;
    p.rows_per_chunk = lm_chunk_rows(N, V);

    auto A = [](int64_t n) { return arena_align((size_t) n * 4); };
    p.first_kept = recompute ? 0 : llama_backward_first_layer(m);
    const int64_t n_slots = recompute ? 1 : L - p.first_kept + (p.first_kept > 0);
    auto slot_layer = [&](int64_t slot) { return p.first_kept == 0 ? slot : slot == 0 ? 0 : p.first_kept + slot - 1; };
    const size_t input_bytes[PROJ_INPUT_COUNT] = {A(N * C), A(N * C), A(N * F)};
    // with recompute the one slot is rebuilt before each layer's backward: its inputs stay valid
    p.input_kept.assign((size_t) (L * PROJ_INPUT_COUNT), 1);
    size_t inputs = 0;
    for (int64_t l = 0; l < L; l++) {
        for (int g = 0; g < PROJ_INPUT_COUNT; g++) {
            const bool kept = recompute || proj_input_read(m, l, (proj_input) g);
            p.input_kept[(size_t) (l * PROJ_INPUT_COUNT + g)] = kept;
        }
    }
    for (int64_t slot = 0; slot < n_slots; slot++) {
        for (int g = 0; g < PROJ_INPUT_COUNT; g++) {
            if (p.input_kept[(size_t) (slot_layer(slot) * PROJ_INPUT_COUNT + g)]) inputs += input_bytes[g];
        }
    }
    for (size_t b : input_bytes) inputs += b;   // the shared scratch of inputs nobody reads later
    size_t per_layer = A(N * C) + A(N) * 2 + A(N * QD) * 2 + A(N * KVD) * 2 + A(B * NH * T) + A(N * F) * 2;
    size_t total = A(N * C) * (size_t) (L + 1) + per_layer * (size_t) n_slots + inputs + A(N * C) * 2 + A(N) * 2 +
                   A(p.rows_per_chunk * V) + A(N * C) * 2 + A(N * QD) * 2 + A(N * KVD) * 2 + A(N * F) * 3;
    if (!s.act_arena.reserve(total)) {
        return make_error(PEFT_STATUS_MEMORY, "activations", "cannot allocate " + std::to_string(total >> 20) +
                          " MiB; lower the batch size or sequence length, or enable activation recomputation");
    }
    arena & a = s.act_arena;
    p.resid.resize((size_t) L + 1);
    for (auto & r : p.resid) r = a.alloc_f32((size_t) (N * C));
    p.layers.resize((size_t) n_slots);
    float * shared_xn1 = a.alloc_f32(N * C), * shared_xn2 = a.alloc_f32(N * C), * shared_h = a.alloc_f32(N * F);
    for (size_t slot = 0; slot < p.layers.size(); slot++) {
        layer_acts & la = p.layers[slot];
        const uint8_t * kept = &p.input_kept[(size_t) slot_layer((int64_t) slot) * PROJ_INPUT_COUNT];
        la.xn1 = kept[PROJ_INPUT_ATTN] ? a.alloc_f32(N * C) : shared_xn1;
        la.rstd1 = a.alloc_f32(N);
        la.q = a.alloc_f32(N * QD);
        la.k = a.alloc_f32(N * KVD);
        la.v = a.alloc_f32(N * KVD);
        la.att = a.alloc_f32(N * QD);
        la.lse = a.alloc_f32(B * NH * T);
        la.x_mid = a.alloc_f32(N * C);
        la.xn2 = kept[PROJ_INPUT_MLP] ? a.alloc_f32(N * C) : shared_xn2;
        la.rstd2 = a.alloc_f32(N);
        la.gate = a.alloc_f32(N * F);
        la.up = a.alloc_f32(N * F);
        la.h = kept[PROJ_INPUT_DOWN] ? a.alloc_f32(N * F) : shared_h;
    }
    p.xf = a.alloc_f32(N * C);
    p.dxf = a.alloc_f32(N * C);
    p.rstdf = a.alloc_f32(N);
    p.losses = a.alloc_f32(N);
    p.logits = a.alloc_f32(p.rows_per_chunk * V);
    p.dres = a.alloc_f32(N * C);
    p.dxn = a.alloc_f32(N * C);
    p.dq = a.alloc_f32(N * QD);
    p.datt = a.alloc_f32(N * QD);
    p.dk = a.alloc_f32(N * KVD);
    p.dv = a.alloc_f32(N * KVD);
    p.dgate = a.alloc_f32(N * F);
    p.dup = a.alloc_f32(N * F);
    p.dh = a.alloc_f32(N * F);
    return {};
}

// ---- forward -------------------------------------------------------------------------------

void llama_embed(float * out, const linear_weight & wte, const int32_t * tokens, int64_t N) {
    const int64_t C = wte.IC;
    if (wte.q) {   // a quantized GGUF table: each row decoded through the type table
#pragma omp parallel for schedule(static) if (N >= 64)
        for (int64_t n = 0; n < N; n++) qtensor_dequant_range(*wte.q, (int64_t) tokens[n] * C, ((int64_t) tokens[n] + 1) * C, out + n * C);
        return;
    }
    if (wte.type == PEFT_DTYPE_F32) {
        embedding_forward(out, tokens, (const float *) wte.data, N, C);
        return;
    }
    const size_t row_bytes = (size_t) C * dtype_size(wte.type);
    // a parallel region costs more than converting the few rows of a decode step
#pragma omp parallel for schedule(static) if (N >= 64)
    for (int64_t n = 0; n < N; n++) {
        convert_to_f32(wte.type, (const uint8_t *) wte.data + (size_t) tokens[n] * row_bytes, out + n * C, (size_t) C);
    }
}

// y[N,OC] = proj(x) through the layer's adapter if it has one; with `residual`, y = residual +
// proj(x) (scratch [N,OC] is used only for adapted residual projections).
void llama_proj_forward(const llama_model & m, int64_t l, llama_proj p, float * y, const float * x, int64_t N,
                        const float * residual, float * scratch) {
    const linear_weight & w = m.proj_weight(l, p);
    const float * bias = m.proj_bias(l, p);
    adapter_module * ad = m.adapter(l, p);
    if (!ad) {
        if (residual) {
            if (residual != y) std::memcpy(y, residual, (size_t) (N * w.OC) * 4);
            linear_forward(y, x, w, bias, N, 1.0f);
        } else {
            linear_forward(y, x, w, bias, N);
        }
        return;
    }
    if (!residual) {
        ad->forward(x, N, y);
        return;
    }
    ad->forward(x, N, scratch);
    const int64_t n = N * w.OC;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = residual[i] + scratch[i];
}

// dx[N,IC] = beta * dx + d proj / dx applied to dy; adapters also accumulate their own grads.
// A null dx: no input gradient is wanted, only the adapter's own grads.
void llama_proj_backward_input(const llama_model & m, int64_t l, llama_proj p, float * dx, const float * dy, const float * x,
                               int64_t N, float beta) {
    const linear_weight & w = m.proj_weight(l, p);
    adapter_module * ad = m.adapter(l, p);
    if (!ad) {
        if (dx) linear_backward_input(dx, dy, w, N, beta);
        return;
    }
    if (dx && beta == 0.0f) std::memset(dx, 0, (size_t) (N * w.IC) * 4);
    ad->backward(x, dy, N, dx);
}


namespace {

struct batch_view {
    const int32_t * pos;
    const int32_t * seg;
    std::vector<int32_t> default_pos;
};

const int32_t * positions(const llama_batch & b, std::vector<int32_t> & scratch) {
    if (b.pos) return b.pos;
    scratch.resize((size_t) (b.B * b.T));
    for (int64_t i = 0; i < b.B * b.T; i++) scratch[(size_t) i] = (int32_t) (i % b.T);
    return scratch.data();
}

llama_layer_hook * active_hook(const llama_model & m) { return m.adapters.empty() ? nullptr : m.layer_hook; }

llama_rows batch_rows(const llama_batch & b, float grad_scale) {
    llama_rows r;
    r.B = b.B;
    r.T = b.T;
    r.seg = b.seg;
    r.prompt = b.prompt;
    r.grad_scale = grad_scale;
    return r;
}

void layer_forward(const llama_model & m, int64_t l, layer_acts & a, float * scratch, const float * x_in, float * x_out,
                   const int32_t * pos, const llama_rows & rows) {
    const llama_hparams & hp = m.hp;
    const llama_layer_weights & w = m.w.layers[(size_t) l];
    const int64_t B = rows.B, T = rows.T, N = B * T, C = hp.n_embd, F = hp.n_ff;
    const int32_t * seg = rows.seg;
    if (llama_layer_hook * h = active_hook(m)) h->layer_forward(l, x_in, rows);
    rmsnorm_forward(a.xn1, a.rstd1, x_in, w.attn_norm, N, C, hp.rms_eps);
    llama_proj_forward(m, l, LLAMA_PROJ_Q, a.q, a.xn1, N, nullptr, scratch);
    llama_proj_forward(m, l, LLAMA_PROJ_K, a.k, a.xn1, N, nullptr, scratch);
    llama_proj_forward(m, l, LLAMA_PROJ_V, a.v, a.xn1, N, nullptr, scratch);
    rope_forward(a.q, pos, m.inv_freq.data(), N, hp.n_head, hp.head_dim);
    rope_forward(a.k, pos, m.inv_freq.data(), N, hp.n_head_kv, hp.head_dim);
    attention_forward(a.att, a.lse, a.q, a.k, a.v, seg, B, T, hp.n_head, hp.n_head_kv, hp.head_dim);
    llama_proj_forward(m, l, LLAMA_PROJ_O, a.x_mid, a.att, N, x_in, scratch);   // x_mid = x_in + o(att)
    rmsnorm_forward(a.xn2, a.rstd2, a.x_mid, w.ffn_norm, N, C, hp.rms_eps);
    llama_proj_forward(m, l, LLAMA_PROJ_GATE, a.gate, a.xn2, N, nullptr, scratch);
    llama_proj_forward(m, l, LLAMA_PROJ_UP, a.up, a.xn2, N, nullptr, scratch);
    swiglu_forward(a.h, a.gate, a.up, N * F);
    llama_proj_forward(m, l, LLAMA_PROJ_DOWN, x_out, a.h, N, a.x_mid, scratch);  // x_out = x_mid + down(h)
}


} // namespace

float llama_forward(llama_model & m, llama_state & s, const llama_batch & batch, float grad_scale, float * logits_out) {
    const llama_hparams & hp = m.hp;
    PEFT_ASSERT(batch.B == s.B && batch.T == s.T);
    llama_state::impl & p = *s.p;
    const int64_t B = s.B, T = s.T, N = B * T, C = hp.n_embd, V = hp.n_vocab, L = hp.n_layer;
    std::vector<int32_t> pos_scratch;
    const int32_t * pos = positions(batch, pos_scratch);
    if (grad_scale > 0.0f && !s.recompute) {
        // the state was planned for the adapters of its llama_state_init: one attached later that
        // reads its input in backward would read another layer's activations
        for (int64_t l = 0; l < L; l++) {
            for (int g = 0; g < PROJ_INPUT_COUNT; g++) {
                PEFT_ASSERT(p.input_kept[(size_t) (l * PROJ_INPUT_COUNT + g)] || !proj_input_read(m, l, (proj_input) g));
            }
        }
        PEFT_ASSERT(llama_backward_first_layer(m) >= p.first_kept);   // nor one on a layer below the kept ones
    }

    llama_embed(p.resid[0], m.w.embed, batch.tokens, N);
    const llama_rows rows = batch_rows(batch, grad_scale);
    for (int64_t l = 0; l < L; l++) {
        layer_acts & a = p.acts(l, s.recompute);
        layer_forward(m, l, a, p.dxn, p.resid[(size_t) l], p.resid[(size_t) l + 1], pos, rows);
    }
    rmsnorm_forward(p.xf, p.rstdf, p.resid[(size_t) L], m.w.final_norm, N, C, hp.rms_eps);

    int64_t n_valid = 0;
    for (int64_t i = 0; i < N; i++) n_valid += batch.targets[i] != -100;
    s.n_valid = n_valid;
    p.have_grad = grad_scale > 0.0f;
    p.grad_scale = grad_scale;
    const float dscale = n_valid > 0 ? grad_scale / (float) n_valid : 0.0f;
    llama_tensor * lm = nullptr;
    if (p.have_grad && m.trainable) lm = m.find(hp.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");

    // lm_head + cross-entropy over row chunks: logits of one chunk at a time
    for (int64_t r0 = 0; r0 < N; r0 += p.rows_per_chunk) {
        const int64_t rn = std::min(p.rows_per_chunk, N - r0);
        linear_forward(p.logits, p.xf + r0 * C, m.w.lm_head, nullptr, rn);
        if (logits_out) std::memcpy(logits_out + r0 * V, p.logits, (size_t) (rn * V) * 4);
        xent_forward(p.losses + r0, p.have_grad ? p.logits : nullptr, p.logits, batch.targets + r0, rn, V, dscale);
        if (p.have_grad) {
            linear_backward_input(p.dxf + r0 * C, p.logits, m.w.lm_head, rn, 0.0f);
            if (lm) linear_backward_weight(lm->grad, nullptr, p.logits, p.xf + r0 * C, rn, V, C);
        }
    }
    double sum = 0.0;
    for (int64_t i = 0; i < N; i++) sum += p.losses[i];
    s.loss_sum = sum;
    return n_valid > 0 ? (float) (sum / (double) n_valid) : 0.0f;
}

// ---- backward ------------------------------------------------------------------------------

namespace {

struct layer_grads {
    float * attn_norm = nullptr, * ffn_norm = nullptr;
    float * w[LLAMA_PROJ_COUNT] = {};   // d weight [OC, IC] per projection; null when frozen
    float * b[LLAMA_PROJ_COUNT] = {};   // d bias [OC]; null when frozen or without a bias
};

layer_grads find_layer_grads(llama_model & m, int64_t l) {
    layer_grads g;
    if (!m.trainable) return g;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto G = [&](const std::string & suffix) {
        llama_tensor * t = m.find(p + suffix);
        return t ? t->grad : nullptr;
    };
    g.attn_norm = G("input_layernorm.weight");
    g.ffn_norm = G("post_attention_layernorm.weight");
    for (int j = 0; j < LLAMA_PROJ_COUNT; j++) {
        g.w[j] = G(std::string(llama_proj_name((llama_proj) j)) + ".weight");
        g.b[j] = G(std::string(llama_proj_name((llama_proj) j)) + ".bias");
    }
    return g;
}

// Weight and bias gradients of projection j of layer l (when trainable): y = x W^T + b.
void proj_backward_weight(const llama_model & m, const layer_grads & g, int64_t l, llama_proj j, const float * dy,
                          const float * x, int64_t N) {
    const linear_weight & w = m.proj_weight(l, j);
    linear_backward_weight(g.w[j], g.b[j], dy, x, N, w.OC, w.IC);
}

// dres holds d(x_out) on entry and d(x_in) on exit. With want_dx_in false (the lowest layer a
// frozen base's backward visits, where nothing reads d(x_in)) it is not formed: q, k and v give
// only their adapters' grads (autograd skips an input that needs no gradient alike), and dres
// is left holding d(x_mid).
void layer_backward(const llama_model & m, int64_t l, const layer_grads & g, const layer_acts & a,
                    llama_state::impl & p, const float * x_in, const int32_t * pos, const int32_t * seg, int64_t B, int64_t T,
                    bool want_dx_in) {
    const llama_hparams & hp = m.hp;
    const llama_layer_weights & w = m.w.layers[(size_t) l];
    const int64_t N = B * T, C = hp.n_embd, F = hp.n_ff, QD = hp.q_dim(), KVD = hp.kv_dim();
    float * dres = p.dres;

    // MLP: x_out = x_mid + down(h), h = swiglu(gate(xn2), up(xn2)), xn2 = rmsnorm(x_mid), where
    // each projection is x W^T (+ b)
    llama_proj_backward_input(m, l, LLAMA_PROJ_DOWN, p.dh, dres, a.h, N, 0.0f);
    proj_backward_weight(m, g, l, LLAMA_PROJ_DOWN, dres, a.h, N);
    swiglu_backward_set(p.dgate, p.dup, p.dh, a.gate, a.up, N * F);
    llama_proj_backward_input(m, l, LLAMA_PROJ_GATE, p.dxn, p.dgate, a.xn2, N, 0.0f);
    llama_proj_backward_input(m, l, LLAMA_PROJ_UP, p.dxn, p.dup, a.xn2, N, 1.0f);
    proj_backward_weight(m, g, l, LLAMA_PROJ_GATE, p.dgate, a.xn2, N);
    proj_backward_weight(m, g, l, LLAMA_PROJ_UP, p.dup, a.xn2, N);
    rmsnorm_backward(dres, g.ffn_norm, p.dxn, a.x_mid, w.ffn_norm, a.rstd2, N, C);  // dres = d x_mid

    // attention: x_mid = x_in + o(att)
    llama_proj_backward_input(m, l, LLAMA_PROJ_O, p.datt, dres, a.att, N, 0.0f);
    proj_backward_weight(m, g, l, LLAMA_PROJ_O, dres, a.att, N);
    std::memset(p.dq, 0, (size_t) (N * QD) * 4);
    std::memset(p.dk, 0, (size_t) (N * KVD) * 4);
    std::memset(p.dv, 0, (size_t) (N * KVD) * 4);
    attention_backward(p.dq, p.dk, p.dv, p.datt, a.att, a.lse, a.q, a.k, a.v, seg, B, T, hp.n_head, hp.n_head_kv, hp.head_dim);
    rope_backward(p.dq, pos, m.inv_freq.data(), N, hp.n_head, hp.head_dim);
    rope_backward(p.dk, pos, m.inv_freq.data(), N, hp.n_head_kv, hp.head_dim);
    float * dxn = want_dx_in ? p.dxn : nullptr;
    llama_proj_backward_input(m, l, LLAMA_PROJ_Q, dxn, p.dq, a.xn1, N, 0.0f);
    llama_proj_backward_input(m, l, LLAMA_PROJ_K, dxn, p.dk, a.xn1, N, 1.0f);
    llama_proj_backward_input(m, l, LLAMA_PROJ_V, dxn, p.dv, a.xn1, N, 1.0f);
    proj_backward_weight(m, g, l, LLAMA_PROJ_Q, p.dq, a.xn1, N);
    proj_backward_weight(m, g, l, LLAMA_PROJ_K, p.dk, a.xn1, N);
    proj_backward_weight(m, g, l, LLAMA_PROJ_V, p.dv, a.xn1, N);
    if (want_dx_in) rmsnorm_backward(dres, g.attn_norm, p.dxn, x_in, w.attn_norm, a.rstd1, N, C);  // dres = d x_in
}

// s.grad_ready for every trainable tensor of layer l.
void notify_layer_grads(llama_model & m, llama_state & s, int64_t l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto notify = [&](const std::string & suffix) {
        llama_tensor * t = m.find(p + suffix);
        if (t && t->grad) s.grad_ready(s.grad_ready_user, *t);
    };
    notify("input_layernorm.weight");
    notify("post_attention_layernorm.weight");
    for (int j = 0; j < LLAMA_PROJ_COUNT; j++) {
        notify(std::string(llama_proj_name((llama_proj) j)) + ".weight");
        notify(std::string(llama_proj_name((llama_proj) j)) + ".bias");
    }
}

} // namespace

int64_t llama_backward_first_layer(const llama_model & m) {
    if (m.trainable || active_hook(m)) return 0;
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int j = 0; j < LLAMA_PROJ_COUNT; j++) {
            if (m.adapter(l, (llama_proj) j)) return l;
        }
    }
    return 0;
}

void llama_backward(llama_model & m, llama_state & s, const llama_batch & batch, float * d_inputs_embeds) {
    const llama_hparams & hp = m.hp;
    llama_state::impl & p = *s.p;
    PEFT_ASSERT(p.have_grad);
    const int64_t B = s.B, T = s.T, N = B * T, C = hp.n_embd, L = hp.n_layer;
    std::vector<int32_t> pos_scratch;
    const int32_t * pos = positions(batch, pos_scratch);

    float * dfinal = nullptr;
    if (m.trainable) dfinal = m.find("model.norm.weight")->grad;
    std::memset(p.dres, 0, (size_t) (N * C) * 4);
    rmsnorm_backward(p.dres, dfinal, p.dxf, p.resid[(size_t) L], m.w.final_norm, p.rstdf, N, C);
    const bool notify = m.trainable && s.grad_ready;
    if (notify) {   // lm_head's gradient came from forward; a tied one is the embedding's, final last
        s.grad_ready(s.grad_ready_user, *m.find("model.norm.weight"));
        if (!hp.tie_embeddings) s.grad_ready(s.grad_ready_user, *m.find("lm_head.weight"));
    }

    const llama_rows rows = batch_rows(batch, p.grad_scale);
    // d(x_in) of layer 0 reaches only the embedding's gradient, the caller and a layer hook
    const bool want_dx0 = m.trainable || d_inputs_embeds || active_hook(m);
    const int64_t lowest = d_inputs_embeds ? 0 : llama_backward_first_layer(m);   // 0 when trainable or hooked
    // the layers below first_kept kept no activations
    PEFT_ASSERT(!d_inputs_embeds || p.first_kept == 0);
    for (int64_t l = L - 1; l >= lowest; l--) {
        layer_acts & a = p.acts(l, s.recompute);
        if (s.recompute) {  // rebuild this layer's activations from its saved input
            layer_forward(m, l, a, p.dxn, p.resid[(size_t) l], p.resid[(size_t) l + 1], pos, rows);
        }
        layer_backward(m, l, find_layer_grads(m, l), a, p, p.resid[(size_t) l], pos, batch.seg, B, T, l > lowest || want_dx0);
        if (llama_layer_hook * h = active_hook(m)) h->layer_backward(l, p.resid[(size_t) l], rows, p.dres);
        if (notify) notify_layer_grads(m, s, l);
    }
    if (m.trainable) embedding_backward(m.tensors[0].grad, p.dres, batch.tokens, N, C, hp.n_vocab);
    if (notify) s.grad_ready(s.grad_ready_user, m.tensors[0]);
    if (d_inputs_embeds) std::memcpy(d_inputs_embeds, p.dres, (size_t) (N * C) * 4);
    p.have_grad = false;
}

void llama_shift_labels(int32_t * targets, const int32_t * labels, int64_t B, int64_t T) {
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t + 1 < T; t++) targets[b * T + t] = labels[b * T + t + 1];
        targets[b * T + T - 1] = -100;
    }
}

double llama_flops_per_token(const llama_hparams & hp, int64_t T, bool weight_grads, int64_t first_backward_layer) {
    const double C = (double) hp.n_embd, QD = (double) hp.q_dim(), KVD = (double) hp.kv_dim(), F = (double) hp.n_ff;
    const double L = (double) hp.n_layer, Lb = L - (double) first_backward_layer;   // layers with a backward
    const double per_layer = C * QD * 2 + C * KVD * 2 + 3 * C * F;   // weights of the 7 projections
    const double lm_head = (double) hp.n_vocab * C;
    // 2 FLOPs per weight each for the forward, the input gradient and (trainable) the weight gradient
    double gemm = 2.0 * (per_layer * L + lm_head) + 2.0 * (per_layer * Lb + lm_head);
    if (weight_grads) gemm += 2.0 * (per_layer * L + lm_head);
    // a frozen base forms no input gradient at its first backward layer's q, k, v
    else gemm -= 2.0 * (C * QD + 2.0 * C * KVD);
    // causal attention: QK^T and PV, 2*2*HS FLOPs per (query, visible key) per head; average T/2
    // visible keys; backward costs twice the forward
    const double attn_fwd = 4.0 * QD * ((double) T / 2.0);
    return gemm + attn_fwd * (L + 2.0 * Lb);
}

} // namespace peft
