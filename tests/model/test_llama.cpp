// Llama model against the PyTorch fixtures of tools/ref_llama.py (tests/fixtures/README.md):
// logits, loss, every parameter gradient, the frozen-base input gradient, and a 10-step
// AdamW trajectory with warmup + cosine schedule and clipping.
#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/safetensors.h"
#include "model/llama.h"
#include "train/trainer.h"
#include "testing.h"

using namespace peft;
using peft::testing::source_path;

namespace {

struct fixture {
    safetensors_file ref;
    int64_t B = 0, T = 0;
    std::vector<int32_t> tokens, labels, targets, pos, seg;

    std::vector<float> f32(const std::string & name) const {
        const tensor_info * t = ref.find(name);
        EXPECT_NE(t, nullptr) << name;
        if (!t) return {};
        std::vector<float> v((size_t) t->n_elements);
        EXPECT_TRUE(read_f32(*t, v.data()).ok());
        return v;
    }
    std::vector<int32_t> i32(const std::string & name) const {
        const tensor_info * t = ref.find(name);
        std::vector<int32_t> v((size_t) t->n_elements);
        std::memcpy(v.data(), t->data, (size_t) t->n_bytes);
        return v;
    }
    llama_batch batch() const {
        llama_batch b;
        b.tokens = tokens.data();
        b.targets = targets.data();
        b.pos = pos.data();
        b.seg = seg.data();
        b.B = B;
        b.T = T;
        return b;
    }
};

void load_fixture(const std::string & dir, fixture & f) {
    ASSERT_TRUE(safetensors_open(dir + "/reference.safetensors", f.ref).ok());
    const tensor_info * ids = f.ref.find("input_ids");
    ASSERT_NE(ids, nullptr);
    f.B = ids->shape[0];
    f.T = ids->shape[1];
    f.tokens = f.i32("input_ids");
    f.labels = f.i32("labels");
    f.pos = f.i32("position_ids");
    f.seg = f.i32("segment_ids");
    f.targets.resize(f.labels.size());
    llama_shift_labels(f.targets.data(), f.labels.data(), f.B, f.T);
}

// normwise: max|a-b| <= tol * max|b|
::testing::AssertionResult close_normwise(const float * got, const std::vector<float> & want, double tol, const std::string & what) {
    double maxref = 0;
    for (float w : want) maxref = std::max(maxref, (double) std::fabs(w));
    return peft::testing::check_close(got, want.data(), (int64_t) want.size(), 0.0, tol * std::max(maxref, 1e-30), what.c_str());
}

const char * FIXTURES[] = {"llama_gqa", "qwen2_tied", "llama3_packed", "llama_bias"};

class llama_fixture : public ::testing::TestWithParam<const char *> {};

} // namespace

TEST_P(llama_fixture, forward_and_all_gradients_match_pytorch) {
    std::string dir = source_path(std::string("tests/fixtures/") + GetParam());
    fixture f;
    load_fixture(dir, f);
    llama_model m;
    status st = llama_load(m, dir, /*trainable=*/true);
    ASSERT_TRUE(st.ok()) << st.message;
    llama_state s;
    ASSERT_TRUE(llama_state_init(s, m, f.B, f.T, false).ok());
    std::vector<float> logits((size_t) (f.B * f.T * m.hp.n_vocab));
    llama_batch b = f.batch();
    float loss = llama_forward(m, s, b, 1.0f, logits.data());
    std::vector<float> dembd((size_t) (f.B * f.T * m.hp.n_embd));
    llama_backward(m, s, b, dembd.data());

    float want_loss = f.f32("loss")[0];
    EXPECT_NEAR(loss, want_loss, 1e-4 * std::fabs(want_loss));
    EXPECT_TRUE(close_normwise(logits.data(), f.f32("logits"), 1e-4, "logits"));
    EXPECT_TRUE(close_normwise(dembd.data(), f.f32("grad.inputs_embeds"), 1e-3, "grad.inputs_embeds"));
    int checked = 0;
    for (llama_tensor & t : m.tensors) {
        std::vector<float> want = f.f32("grad." + t.name);
        ASSERT_EQ((int64_t) want.size(), t.numel()) << t.name;
        EXPECT_TRUE(close_normwise(t.grad, want, 1e-3, "grad." + t.name));
        checked++;
    }
    int grad_keys = 0;
    for (const tensor_info & t : f.ref.tensors) grad_keys += t.name.rfind("grad.", 0) == 0;
    EXPECT_EQ(checked + 1, grad_keys) << "every grad.* key of the fixture (params + inputs_embeds) is checked";
}

TEST_P(llama_fixture, frozen_base_gives_the_same_input_gradient_without_weight_grads) {
    std::string dir = source_path(std::string("tests/fixtures/") + GetParam());
    fixture f;
    load_fixture(dir, f);
    llama_model m;
    ASSERT_TRUE(llama_load(m, dir, /*trainable=*/false).ok());
    EXPECT_EQ(m.grad_arena.capacity, 0u);
    for (const llama_tensor & t : m.tensors) EXPECT_EQ(t.grad, nullptr);
    llama_state s;
    ASSERT_TRUE(llama_state_init(s, m, f.B, f.T, false).ok());
    llama_batch b = f.batch();
    float loss = llama_forward(m, s, b, 1.0f);
    std::vector<float> dembd((size_t) (f.B * f.T * m.hp.n_embd));
    llama_backward(m, s, b, dembd.data());
    EXPECT_NEAR(loss, f.f32("loss")[0], 1e-4 * f.f32("loss")[0]);
    EXPECT_TRUE(close_normwise(dembd.data(), f.f32("grad.inputs_embeds"), 1e-3, "grad.inputs_embeds"));
}

TEST_P(llama_fixture, adamw_trajectory_with_warmup_cosine_and_clipping_matches_pytorch) {
    std::string dir = source_path(std::string("tests/fixtures/") + GetParam());
    fixture f;
    load_fixture(dir, f);
    for (int run = 0; run < 2; run++) {  // 0: cosine + warmup + clip, 1: constant lr, no clip
        llama_model m;
        ASSERT_TRUE(llama_load(m, dir, true).ok());
        llama_state s;
        ASSERT_TRUE(llama_state_init(s, m, f.B, f.T, false).ok());
        train_config cfg;
        cfg.opt.lr = 1e-3f;
        cfg.opt.weight_decay = 0.01f;
        cfg.schedule = run == 0 ? PEFT_SCHEDULE_COSINE : PEFT_SCHEDULE_CONSTANT;
        cfg.warmup_steps = run == 0 ? 2 : 0;
        cfg.total_steps = 10;
        cfg.max_grad_norm = run == 0 ? 1.0f : 0.0f;
        adamw opt;
        ASSERT_TRUE(opt.init(llama_optim_params(m), cfg.opt).ok());
        std::vector<std::vector<float>> initial;
        for (llama_tensor & t : m.tensors) initial.emplace_back((const float *) t.data, (const float *) t.data + t.numel());
        llama_batch b = f.batch();
        std::vector<float> want_loss = f.f32(run == 0 ? "traj.loss" : "traj_const.loss");
        std::vector<float> want_lr, want_norm;
        if (run == 0) {
            want_lr = f.f32("traj.lr");
            want_norm = f.f32("traj.grad_norm");
        }
        for (int64_t step = 0; step < 10; step++) {
            step_result r;
            status st = train_step(m, s, opt, cfg, &b, 1, step, r);
            ASSERT_TRUE(st.ok()) << st.message;
            EXPECT_NEAR(r.loss, want_loss[(size_t) step], 1e-4 * want_loss[(size_t) step]) << "step " << step;
            if (run == 0) {
                EXPECT_NEAR(r.lr, want_lr[(size_t) step], 1e-6 * 1e-3) << "step " << step;
                EXPECT_NEAR(r.grad_norm, want_norm[(size_t) step], 1e-4 * want_norm[(size_t) step]) << "step " << step;
            }
        }
        if (run == 0) {
            // Final weights are compared against the size of each tensor's update, not its
            // value: Adam moves every element by about lr per step however small its gradient,
            // and m/sqrt(v) turns float-order noise in a near-zero gradient (qwen2 k_proj.bias:
            // a constant added to every key barely changes softmax) into a visible change of
            // the step. PyTorch's own f32 run drifts from float64 by <= 1e-3 of max|update|
            // (tests/fixtures/README.md, --check), so two f32 implementations agree within
            // ~2e-3 of it; 1e-2 leaves margin, while a wrong gradient or optimizer step moves
            // the update by O(1).
            for (size_t i = 0; i < m.tensors.size(); i++) {
                const llama_tensor & t = m.tensors[i];
                std::vector<float> want = f.f32("final." + t.name);
                double max_update = 0;
                for (size_t j = 0; j < want.size(); j++) {
                    max_update = std::max(max_update, (double) std::fabs(want[j] - initial[i][j]));
                }
                EXPECT_TRUE(peft::testing::check_close((const float *) t.data, want.data(), t.numel(), 0.0, 1e-2 * max_update,
                                                       ("final." + t.name).c_str()));
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(fixtures, llama_fixture, ::testing::ValuesIn(FIXTURES));

TEST(llama, recompute_gives_bit_identical_gradients) {
    std::string dir = source_path("tests/fixtures/llama_gqa");
    fixture f;
    load_fixture(dir, f);
    std::vector<std::vector<float>> grads[2];
    std::vector<float> dembd[2];
    for (int rc = 0; rc < 2; rc++) {
        llama_model m;
        ASSERT_TRUE(llama_load(m, dir, true).ok());
        llama_state s;
        ASSERT_TRUE(llama_state_init(s, m, f.B, f.T, rc == 1).ok());
        llama_batch b = f.batch();
        llama_forward(m, s, b, 1.0f);
        dembd[rc].resize((size_t) (f.B * f.T * m.hp.n_embd));
        llama_backward(m, s, b, dembd[rc].data());
        for (llama_tensor & t : m.tensors) grads[rc].emplace_back(t.grad, t.grad + t.numel());
    }
    EXPECT_EQ(dembd[0], dembd[1]);
    ASSERT_EQ(grads[0].size(), grads[1].size());
    for (size_t i = 0; i < grads[0].size(); i++) EXPECT_EQ(grads[0][i], grads[1][i]) << i;
}

// Trains one step on two rows of T tokens, as one batch or accumulated one row at a time, and
// returns every gradient of both (the two rows have equal numbers of valid targets: mean of
// per-row means == batch mean).
static void grads_of_one_batch_and_of_two_rows(int64_t V, int64_t T, std::vector<float> (&g)[2]) {
    llama_hparams hp;
    ASSERT_TRUE(llama_hparams_named_shape("tiny", hp));
    hp.n_vocab = V; hp.n_embd = 32; hp.n_layer = 2; hp.n_head = 4; hp.n_head_kv = 2; hp.head_dim = 8; hp.n_ff = 48;
    std::vector<int32_t> tok(2 * T), tgt(2 * T);
    for (int64_t i = 0; i < 2 * T; i++) { tok[(size_t) i] = (int32_t) ((i * 37 + 5) % 128); }
    llama_shift_labels(tgt.data(), tok.data(), 2, T);
    for (int mode = 0; mode < 2; mode++) {
        llama_model m;
        ASSERT_TRUE(llama_init_random(m, hp, true, 3).ok());
        llama_state s;
        ASSERT_TRUE(llama_state_init(s, m, mode == 0 ? 2 : 1, T, false).ok());
        adamw opt;
        ASSERT_TRUE(opt.init(llama_optim_params(m), adamw_config()).ok());
        train_config cfg;
        cfg.max_grad_norm = 0.0f;
        step_result r;
        if (mode == 0) {
            llama_batch b{tok.data(), tgt.data(), nullptr, nullptr, 2, T};
            ASSERT_TRUE(train_step(m, s, opt, cfg, &b, 1, 0, r).ok());
        } else {
            llama_batch b[2] = {{tok.data(), tgt.data(), nullptr, nullptr, 1, T},
                                {tok.data() + T, tgt.data() + T, nullptr, nullptr, 1, T}};
            ASSERT_TRUE(train_step(m, s, opt, cfg, b, 2, 0, r).ok());
        }
        for (llama_tensor & t : m.tensors) g[mode].insert(g[mode].end(), t.grad, t.grad + t.numel());
    }
}

TEST(llama, gradient_accumulation_equals_one_batch_of_equal_rows) {
    std::vector<float> g[2];
    grads_of_one_batch_and_of_two_rows(128, 8, g);
    EXPECT_TRUE(peft::testing::check_close(g[1].data(), g[0].data(), (int64_t) g[0].size(), 1e-4, 1e-7, "accumulated grads"));
}

// lm_head + cross-entropy run over row chunks of about 32 MB of logits: at a vocabulary of 2^17
// that is 64 rows, so the 80 rows of the batch go as two chunks of 40 and each accumulated row
// as one; the gradients (lm_head's summed over the chunks) agree
TEST(llama, lm_head_in_row_chunks_equals_one_chunk) {
    std::vector<float> g[2];
    grads_of_one_batch_and_of_two_rows(int64_t(1) << 17, 40, g);
    EXPECT_TRUE(peft::testing::check_close(g[1].data(), g[0].data(), (int64_t) g[0].size(), 1e-4, 1e-7, "chunked grads"));
}

TEST(llama, bf16_checkpoint_stays_bf16_and_matches_f32_closely) {
    std::string src = source_path("tests/fixtures/llama_gqa");
    std::string dir = peft::testing::temp_dir("bf16_model");
    std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
    safetensors_file in;
    ASSERT_TRUE(safetensors_open(src + "/model.safetensors", in).ok());
    std::vector<std::vector<uint16_t>> bufs;
    std::vector<safetensors_tensor_to_write> out;
    for (const tensor_info & t : in.tensors) {
        std::vector<float> f((size_t) t.n_elements);
        ASSERT_TRUE(read_f32(t, f.data()).ok());
        bufs.emplace_back(f.size());
        convert_from_f32(PEFT_DTYPE_BF16, f.data(), bufs.back().data(), f.size());
        out.push_back({t.name, PEFT_DTYPE_BF16, t.shape, bufs.back().data(), ""});
    }
    ASSERT_TRUE(safetensors_write(dir + "/model.safetensors", out, {{"format", "pt"}}).ok());

    fixture f;
    load_fixture(src, f);
    llama_model m;
    ASSERT_TRUE(llama_load(m, dir, false).ok());
    EXPECT_EQ(m.w.layers[0].wq.type, PEFT_DTYPE_BF16);
    EXPECT_EQ(m.w.embed.type, PEFT_DTYPE_BF16);
    EXPECT_EQ(m.storage_arena.capacity, 0u) << "aligned bf16 weights are used in place";
    llama_state s;
    ASSERT_TRUE(llama_state_init(s, m, f.B, f.T, false).ok());
    llama_batch b = f.batch();
    std::vector<float> logits((size_t) (f.B * f.T * m.hp.n_vocab));
    llama_forward(m, s, b, 0.0f, logits.data());
    // bf16 weights carry ~3 significant digits; logits stay within a few 1e-2 normwise
    EXPECT_TRUE(close_normwise(logits.data(), f.f32("logits"), 3e-2, "bf16 logits"));
    std::filesystem::remove_all(dir);
}
