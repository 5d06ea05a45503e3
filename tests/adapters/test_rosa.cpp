// test_rosa.cpp: ROSA (METHODS §17, adapters/rosa.h). The windows (contiguous, length r, in
// [0, k), the random start uniform over the reference's range); the split (W_fixed + B A == W,
// an orthogonal split by Frobenius norms, B's orthonormal columns); the re-factorisation in the
// hook (W_fixed + B A == W_merged, the output unchanged, the base's f32 copy bitwise what the
// model holds, the optimizer moments of exactly A and B zeroed, the lr schedule untouched); the
// merged model equal to the original base plus the accumulated change, which the saved LoRA
// carries (save -> load on a fresh base gives the trained model); a trainer resume bit for bit
// across re-factorisations; the 10-step trajectory of tools/ref_rosa.py; bad keys.
#include <cmath>
#include <cstring>
#include <filesystem>

#include "../train/test_trainer_util.h"
#include "adapter_test_util.h"
#include "adapters/rosa.h"
#include "fixture_util.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "testing.h"
#include "train/config.h"
#include "train/train_loop.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

std::vector<float> base_f32(const linear_weight & w) {
    std::vector<float> W((size_t) (w.OC * w.IC));
    linear_weight_rows_f32(W.data(), w, 0, w.OC);
    return W;
}

// W_fixed + B A in double
std::vector<double> merged_of(const rosa_module & m) {
    std::vector<double> W = peft::testing::scaled_product(m.B.data(), m.A.data(), m.t.out_features, m.t.in_features, m.R, 1.0);
    const std::vector<float> base = base_f32(*m.t.base);
    for (size_t i = 0; i < W.size(); i++) W[i] += base[i];
    return W;
}

double rel_err(const std::vector<double> & a, const std::vector<double> & b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return std::sqrt(num / den);
}

double frob2(const float * x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double) x[i] * x[i];
    return s;
}

rosa_module & mod(adapter_set & s, size_t i) { return dynamic_cast<rosa_module &>(*s.modules[i]); }

std::vector<adapter_module *> module_list(adapter_set & s) {
    std::vector<adapter_module *> v;
    for (auto & m : s.modules) v.push_back(m.get());
    return v;
}

// Records which parameters the method resets.
struct recording_optimizer : optimizer_view {
    std::vector<const float *> reset;
    bool reset_state(const float * value) override {
        reset.push_back(value);
        return true;
    }
};

} // namespace

TEST(rosa, windows_are_contiguous_of_length_r_inside_k) {
    EXPECT_EQ(rosa_window(ROSA_SAMPLE_TOP, 16, 4, 1, 0), 0);
    EXPECT_EQ(rosa_window(ROSA_SAMPLE_BOTTOM, 16, 4, 1, 3), 12);
    // random: start uniform over {0, ..., k-r-1} (torch.randint's exclusive bound); every start
    // is reached, none outside, and the draw depends on the period
    const int64_t k = 10, r = 3;
    std::vector<int> seen((size_t) k, 0);
    int differ = 0;
    for (uint64_t seed = 0; seed < 200; seed++) {
        for (int64_t p = 0; p < 4; p++) {
            const int64_t j = rosa_window(ROSA_SAMPLE_RANDOM, k, r, seed, p);
            ASSERT_GE(j, 0);
            ASSERT_LT(j, k - r);
            seen[(size_t) j]++;
            EXPECT_EQ(j, rosa_window(ROSA_SAMPLE_RANDOM, k, r, seed, p)) << "a pure function of (seed, period)";
            differ += j != rosa_window(ROSA_SAMPLE_RANDOM, k, r, seed, p + 1);
        }
    }
    for (int64_t j = 0; j < k - r; j++) EXPECT_GT(seen[(size_t) j], 60) << "start " << j;   // 800 / 7 each on average
    EXPECT_EQ(seen[(size_t) (k - r)], 0);
    EXPECT_GT(differ, 500);
}

// W = W_fixed + B A to fp32 rounding; the split is orthogonal (||W||^2 = ||W_fixed||^2 + ||B A||^2,
// and ||B A|| = ||A|| because B's columns are orthonormal); A's rows carry the singular values.
TEST(rosa, split_reconstructs_and_is_orthogonal) {
    const int64_t OC = 24, IC = 16, r = 3;
    const std::vector<float> W = peft::testing::fixed_vector(OC * IC, 5, 1.0f);
    for (int64_t j : {0, 5, 13}) {
        std::vector<float> A((size_t) (r * IC)), B((size_t) (OC * r)), Wf((size_t) (OC * IC));
        ASSERT_TRUE(rosa_split(A.data(), B.data(), Wf.data(), W.data(), OC, IC, r, j).ok());
        std::vector<double> rec = peft::testing::scaled_product(B.data(), A.data(), OC, IC, r, 1.0), want(W.begin(), W.end());
        for (size_t i = 0; i < rec.size(); i++) rec[i] += Wf[i];
        EXPECT_LT(rel_err(rec, want), 1e-6) << "window " << j;
        const double w2 = frob2(W.data(), W.size()), f2 = frob2(Wf.data(), Wf.size()), a2 = frob2(A.data(), A.size());
        EXPECT_NEAR(f2 + a2, w2, 1e-5 * w2) << "window " << j;
        for (int64_t c = 0; c < r; c++) {
            for (int64_t d = 0; d < r; d++) {
                double dot = 0;
                for (int64_t o = 0; o < OC; o++) dot += (double) B[o * r + c] * B[o * r + d];
                EXPECT_NEAR(dot, c == d ? 1.0 : 0.0, 1e-5);
            }
        }
        // singular values descend along the window: ||A_c|| >= ||A_c+1||
        for (int64_t c = 0; c + 1 < r; c++) EXPECT_GE(frob2(&A[c * IC], IC), frob2(&A[(c + 1) * IC], IC));
    }
}

// The hook's re-factorisation on a trained-looking adapter: W_fixed + B A equals the merged
// matrix before it, the model's output is unchanged, the f32 copy is the base bit for bit, the
// window moved to the next period's and the optimizer was told to reset exactly A and B.
TEST(rosa, refactorisation_keeps_the_merged_weight_and_the_output) {
    for (dtype storage : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
        auto m = tiny_model(7, storage);
        const batch_data d = make_batch(m->hp.n_vocab);
        adapter_set s;
        ASSERT_TRUE(attach(*m, "{\"adapter\":\"rosa\",\"r\":4,\"target_modules\":\"all-linear\",\"rosa_resample_steps\":3}", s).ok());
        randomize_trainable(adapter_set_params(s), 21);
        adapters_set_training(s, false);
        std::vector<float> before, after;
        forward_logits(*m, d, before);
        std::vector<std::vector<double>> merged;
        for (size_t i = 0; i < s.modules.size(); i++) merged.push_back(merged_of(mod(s, i)));
        recording_optimizer opt;
        std::vector<adapter_module *> ms = module_list(s);
        step_info si;
        si.total_steps = 10;
        si.step = 2;   // not a multiple of 3: nothing happens
        s.method->on_step_end(si, ms.data(), (int64_t) ms.size(), opt);
        EXPECT_TRUE(opt.reset.empty());
        EXPECT_EQ(mod(s, 0).periods, 1);
        si.step = 3;
        s.method->on_step_end(si, ms.data(), (int64_t) ms.size(), opt);
        forward_logits(*m, d, after);
        // bf16: the new base is rounded to bf16, so the output moves by bf16's rounding
        EXPECT_LT(rel_diff(after, before), storage == PEFT_DTYPE_F32 ? 1e-5 : 1e-2) << dtype_name(storage);
        ASSERT_EQ(opt.reset.size(), 2 * s.modules.size());
        for (size_t i = 0; i < s.modules.size(); i++) {
            rosa_module & rm = mod(s, i);
            EXPECT_LT(rel_err(merged_of(rm), merged[i]), storage == PEFT_DTYPE_F32 ? 1e-5 : 1e-2) << rm.t.path;
            EXPECT_EQ(base_f32(*rm.t.base), rm.base_f32) << rm.t.path;
            EXPECT_EQ(rm.periods, 2);
            EXPECT_EQ(rm.window, rosa_window(ROSA_SAMPLE_RANDOM, rm.k(), 4, rm.window_seed, 1));
            EXPECT_EQ(opt.reset[2 * i], rm.A.data());
            EXPECT_EQ(opt.reset[2 * i + 1], rm.B.data());
        }
        si.step = 9;   // a multiple of 3, but the last step of a 9-step run: skipped
        si.total_steps = 9;
        s.method->on_step_end(si, ms.data(), (int64_t) ms.size(), opt);
        EXPECT_EQ(mod(s, 0).periods, 2) << "no re-factorisation after the last step";
    }
}

// Over an NF4 base (re-quantized in place at every split): the accumulated change is the current
// base minus the base as loaded plus B A, after two re-factorisations. The module must keep W0's
// blocks itself; reading W0 through the model's weight would give the re-quantized base (D = B A).
TEST(rosa, accumulated_change_over_a_quantized_base_starts_from_the_loaded_blocks) {
    auto m = tiny_model(7);
    quant_options qo;
    qo.double_quant = true;
    ASSERT_TRUE(llama_quantize_frozen(*m, qo).ok());
    std::vector<std::vector<float>> W0;
    for (int64_t l = 0; l < m->hp.n_layer; l++)
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) W0.push_back(base_f32(m->proj_weight(l, (llama_proj) p)));
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"rosa\",\"r\":4,\"target_modules\":\"all-linear\",\"rosa_resample_steps\":1}", s).ok());
    ASSERT_EQ(s.modules.size(), W0.size());
    recording_optimizer opt;
    std::vector<adapter_module *> ms = module_list(s);
    step_info si;
    si.total_steps = 10;
    for (si.step = 1; si.step <= 2; si.step++) {
        randomize_trainable(adapter_set_params(s), 20 + (uint64_t) si.step);
        s.method->on_step_end(si, ms.data(), (int64_t) ms.size(), opt);
    }
    for (size_t i = 0; i < s.modules.size(); i++) {
        rosa_module & rm = mod(s, i);
        ASSERT_EQ(rm.periods, 3);
        std::vector<double> want = merged_of(rm);
        for (size_t e = 0; e < want.size(); e++) want[e] -= W0[i][e];
        std::vector<float> D(want.size());
        rm.accumulated_change(D.data());
        EXPECT_LT(rel_err(std::vector<double>(D.begin(), D.end()), want), 1e-5) << rm.t.path;
    }
}

// Through train_step with AdamW and a warmup + linear schedule: right after each
// re-factorisation the moments and step counts of A and B are zero (and only theirs: there are
// no others), the first update after it is a fresh AdamW's first update (closed form: every
// element moves by lr g / (|g| + eps) after the decay, as the reference's new optimizer does;
// with the global count kept it would move by about 0.6 lr), the lr follows the schedule's
// closed form across it, and the loss keeps going down.
TEST(rosa, optimizer_state_is_empty_after_a_refactorisation_and_the_lr_continues) {
    auto m = tiny_model(7);
    const batch_data d = make_batch(m->hp.n_vocab);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"rosa\",\"r\":4,\"target_modules\":\"all-linear\",\"rosa_resample_steps\":3}", s).ok());
    train_config tc;
    tc.opt.lr = 1e-2f;
    tc.schedule = PEFT_SCHEDULE_LINEAR;
    tc.warmup_steps = 2;
    tc.total_steps = 8;
    adamw opt;
    ASSERT_TRUE(opt.init(adapter_optim_params(s), tc.opt).ok());
    llama_state ls;
    ASSERT_TRUE(llama_state_init(ls, *m, d.B, d.T, false).ok());
    const llama_batch b = d.batch();
    float first = 0, last = 0;
    std::vector<std::vector<float>> before;   // the values before the first update after a reset
    for (int64_t step = 0; step < tc.total_steps; step++) {
        if (step == 3) {
            for (const optim_param & p : opt.params) before.emplace_back(p.value, p.value + p.n);
        }
        step_result r;
        ASSERT_TRUE(train_step(*m, ls, opt, tc, &b, 1, step, r, &s).ok());
        if (step == 3) {
            double worst = 0;
            for (size_t i = 0; i < opt.params.size(); i++) {
                const optim_param & p = opt.params[i];
                EXPECT_EQ(opt.steps[i], 1) << p.name;
                for (int64_t j = 0; j < p.n; j++) {
                    const double g = p.grad[j];   // the clipped gradient the update used
                    const double want = (double) before[i][(size_t) j] * (1.0 - (double) r.lr * tc.opt.weight_decay) -
                                        (double) r.lr * g / (std::fabs(g) + tc.opt.eps);
                    worst = std::max(worst, std::fabs(p.value[j] - want) / r.lr);
                }
            }
            EXPECT_LT(worst, 1e-4) << "the first update after a reset, in units of lr";
        }
        // transformers' linear schedule: step / warmup, then (total - step) / (total - warmup)
        const double f = step < 2 ? (double) step / 2 : (double) (8 - step) / 6;
        EXPECT_NEAR(r.lr, 1e-2 * f, 1e-9) << "step " << step;
        bool all_zero = true, any_nonzero = false;
        for (size_t i = 0; i < opt.params.size(); i++) {
            for (int64_t j = 0; j < opt.params[i].n; j++) {
                all_zero = all_zero && opt.m[i][j] == 0.0f && opt.v[i][j] == 0.0f;
                any_nonzero = any_nonzero || opt.v[i][j] != 0.0f;
            }
        }
        const int64_t done = step + 1;
        if (done % 3 == 0) {
            EXPECT_TRUE(all_zero) << "after step " << done;
            for (size_t i = 0; i < opt.params.size(); i++) EXPECT_EQ(opt.steps[i], 0) << opt.params[i].name;
        } else {
            EXPECT_TRUE(any_nonzero) << "after step " << done;
        }
        if (step == 0) first = r.loss;
        last = r.loss;
    }
    EXPECT_EQ(mod(s, 0).periods, 3);   // after steps 3 and 6
    EXPECT_LT(last, first);
}

// The invariant: after training across re-factorisations, the merged model is the
// original base plus the accumulated change, and that change is what the saved LoRA holds (a
// rank <= 2 r P product, on the ORIGINAL base): loading it onto a fresh model gives the trained
// model. Two cases: P = 2 (rank 16 = k of the k/v projections, other layers at 16 < k), and
// P = 3 (2 r P = 24 caps at k everywhere: rank_pattern per layer).
TEST(rosa, merged_model_is_base_plus_accumulated_change_and_the_lora_carries_it) {
    for (int64_t steps : {5, 7}) {
        auto m = tiny_model(7);
        auto original = tiny_model(7);
        const batch_data d = make_batch(m->hp.n_vocab);
        adapter_set s;
        ASSERT_TRUE(attach(*m, "{\"adapter\":\"rosa\",\"r\":4,\"target_modules\":\"all-linear\",\"rosa_resample_steps\":2}", s).ok());
        adamw opt;
        adamw_config oc;
        oc.lr = 1e-2f;
        ASSERT_TRUE(opt.init(adapter_optim_params(s), oc).ok());
        train_config tc;
        tc.opt = oc;
        tc.total_steps = steps;
        llama_state ls;
        ASSERT_TRUE(llama_state_init(ls, *m, d.B, d.T, false).ok());
        const llama_batch b = d.batch();
        for (int64_t step = 0; step < steps; step++) {
            step_result r;
            ASSERT_TRUE(train_step(*m, ls, opt, tc, &b, 1, step, r, &s).ok());
        }
        const int64_t P = (steps - 1) / 2 + 1;
        ASSERT_EQ(mod(s, 0).periods, P);
        adapters_set_training(s, false);
        std::vector<float> trained, reloaded;
        forward_logits(*m, d, trained);

        const std::string dir = peft::testing::temp_dir("rosa_lora_" + std::to_string(steps));
        ASSERT_TRUE(adapter_save(dir, s, "").ok());
        json_document cfg;
        const std::string text = peft::testing::read_text(dir + "/adapter_config.json");
        ASSERT_TRUE(cfg.parse(text.data(), text.size(), "adapter_config.json").ok());
        EXPECT_EQ(cfg.root().get("peft_type").as_string(), "LORA");
        EXPECT_EQ(cfg.root().get("r").as_int(), 8 * P);
        EXPECT_EQ(cfg.root().get("lora_alpha").as_double(), (double) (8 * P));
        safetensors_file f;
        ASSERT_TRUE(safetensors_open(dir + "/adapter_model.safetensors", f).ok());

        // merged weights (f32) against W0 + B_file A_file in double, and against the dense change
        ASSERT_TRUE(adapters_merge(*m, s).ok());
        for (size_t i = 0; i < s.targets.size(); i++) {
            const target_info & t = s.targets[i];
            const std::string key = "base_model.model." + t.path;
            const tensor_info * ta = f.find(key + ".lora_A.weight");
            const tensor_info * tb = f.find(key + ".lora_B.weight");
            ASSERT_TRUE(ta && tb) << key;
            const int64_t q = ta->shape[0];
            EXPECT_EQ(q, std::min<int64_t>(8 * P, std::min(t.in_features, t.out_features))) << key;
            const std::vector<float> A = peft::testing::fixture_tensor(f, key + ".lora_A.weight");
            const std::vector<float> B = peft::testing::fixture_tensor(f, key + ".lora_B.weight");
            std::vector<double> want = peft::testing::scaled_product(B.data(), A.data(), t.out_features, t.in_features, q, 1.0);
            const std::vector<float> W0 = base_f32(original->proj_weight(t.layer, (llama_proj) (i % LLAMA_PROJ_COUNT)));
            for (size_t e = 0; e < want.size(); e++) want[e] += W0[e];
            const std::vector<float> merged = base_f32(*t.base);
            EXPECT_LT(rel_err(std::vector<double>(merged.begin(), merged.end()), want), 1e-6) << key;
            // and the change is really there (training moved the weights)
            double moved = 0;
            for (size_t e = 0; e < W0.size(); e++) moved = std::max(moved, (double) std::fabs(merged[e] - W0[e]));
            EXPECT_GT(moved, 1e-3) << key;
        }
        // the LoRA file on the original base = the trained model
        adapter_set loaded;
        const status st = adapter_load(dir, *original, loaded);
        ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
        forward_logits(*original, d, reloaded);
        EXPECT_LT(rel_diff(reloaded, trained), 1e-5) << "P = " << P;
    }
}

// peft train with checkpoints: 3 steps + resume 3 steps == 6 straight steps bit for bit, with
// re-factorisations at steps 2 and 4 (one before the checkpoint, one after the resume): losses,
// the saved LoRA, and the checkpoint's rosa_base.
// Over an NF4 base too (double-quantized absmax): the re-split base is stored re-quantized, and
// resume must give back those very blocks, not a second quantization of their values.
class rosa_resume : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(base, rosa_resume, ::testing::Values(false, true),
                         [](const auto & p) { return std::string(p.param ? "nf4_double_quant" : "f32"); });
TEST_P(rosa_resume, trainer_resume_is_bit_exact_across_refactorisations) {
    namespace fs = std::filesystem;
    using namespace peft::testing;
    const std::string tag = GetParam() ? "rosa_resume_nf4" : "rosa_resume";
    const std::string model = make_model_dir(tag + "_model");
    const std::string data = make_data_file(model, "train.jsonl", 40, 1);
    const std::string a = temp_dir(tag + "_a"), b = temp_dir(tag + "_b"), c = temp_dir(tag + "_c");
    auto opts = [&](const std::string & out, std::vector<std::pair<std::string, std::string>> extra) {
        if (GetParam()) extra.insert(extra.end(), {{"load_in_4bit", "true"}, {"bnb_4bit_use_double_quant", "true"}});
        std::vector<std::pair<std::string, std::string>> flags = {
            {"base_model", model}, {"datasets", data}, {"output_dir", out}, {"adapter", "rosa"}, {"r", "4"},
            {"rosa_resample_steps", "2"}, {"target_modules", "all-linear"}, {"learning_rate", "1e-2"},
            {"micro_batch_size", "2"}, {"sequence_len", "32"}, {"lr_scheduler", "cosine"}, {"warmup_steps", "1"},
            {"max_steps", "6"}, {"seed", "7"}, {"progress", "false"}, {"threads", "1"}};
        flags.insert(flags.end(), extra.begin(), extra.end());
        config_entries e;
        for (const auto & kv : flags) EXPECT_TRUE(config_set_flag(e, kv.first, kv.second).ok()) << kv.first;
        train_options o;
        const status st = config_build(e, o);
        EXPECT_TRUE(st.ok()) << st.message;
        return o;
    };
    train_summary straight, first, second;
    status st = train_run(opts(a, {}), straight);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_TRUE(train_run(opts(b, {{"save_steps", "3"}}), first).ok());
    ASSERT_TRUE(fs::exists(b + "/checkpoint-3/trainer_state.safetensors"));
    st = train_run(opts(c, {{"resume_from_checkpoint", b + "/checkpoint-3"}}), second);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(straight.losses.size(), 6u);
    ASSERT_EQ(second.losses.size(), 3u);
    for (size_t i = 0; i < 3; i++) {
        EXPECT_EQ(first.losses[i], straight.losses[i]) << "step " << i + 1;
        EXPECT_EQ(second.losses[i], straight.losses[i + 3]) << "step " << i + 4;
        EXPECT_EQ(second.grad_norms[i], straight.grad_norms[i + 3]) << "step " << i + 4;
    }
    safetensors_file ts;
    ASSERT_TRUE(safetensors_open(b + "/checkpoint-3/trainer_state.safetensors", ts).ok());
    bool has_base = false;
    for (const std::string & n : ts.names()) has_base = has_base || n.find("rosa_base") != std::string::npos;
    EXPECT_TRUE(has_base) << "the checkpoint carries the re-split bases";
    safetensors_file fa, fc;
    ASSERT_TRUE(safetensors_open(a + "/adapter_model.safetensors", fa).ok());
    ASSERT_TRUE(safetensors_open(c + "/adapter_model.safetensors", fc).ok());
    ASSERT_EQ(fa.names(), fc.names());
    for (const std::string & n : fa.names()) {
        const tensor_info * x = fa.find(n);
        const tensor_info * y = fc.find(n);
        ASSERT_EQ(x->n_bytes, y->n_bytes) << n;
        EXPECT_EQ(std::memcmp(x->data, y->data, (size_t) x->n_bytes), 0) << n << " differs after resume";
    }
}

// 10 AdamW steps on the llama_gqa fixture, r = 2, window top, re-factorised after steps 4 and 8,
// against tools/ref_rosa.py (which zeroes the moments as optimizer_view does): the losses, and
// per module the merged weight's change from W0, the base, |A| and |B| (SVD signs are free).
TEST(rosa_parity, ten_adamw_steps_with_two_refactorisations_match_pytorch) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    auto original = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*original, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    config cfg("{\"adapter\":\"rosa\",\"r\":2,\"rosa_resample_steps\":4,\"rosa_sample_method\":\"top\",\"target_modules\":\"all-linear\"}");
    adapter_set s;
    ASSERT_TRUE(adapters_attach(*m, cfg.root(), 1, s).ok());
    ASSERT_EQ(s.modules.size(), 14u);
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(peft::testing::source_path("tests/fixtures/rosa/reference.safetensors"), ref).ok());
    const std::vector<float> losses = peft::testing::trajectory_train(*m, s, peft::testing::parity_batch_load());
    const double worst_loss = peft::testing::expect_losses(ref, losses, 1e-5);
    double worst_change = 0, worst_abs = 0, worst_base = 0;
    for (size_t i = 0; i < s.modules.size(); i++) {
        rosa_module & rm = mod(s, i);
        EXPECT_EQ(rm.periods, 3);
        const std::string key = "final." + rm.t.path;
        const std::vector<float> W0 = base_f32(original->proj_weight(rm.t.layer, (llama_proj) (i % LLAMA_PROJ_COUNT)));
        const std::vector<double> merged = merged_of(rm);
        const std::vector<float> want = peft::testing::fixture_tensor(ref, key + ".merged");
        ASSERT_EQ(want.size(), merged.size());
        // the change from W0 (about 1e-3 .. 1e-2), normwise
        double diff = 0, scale = 0;
        for (size_t e = 0; e < want.size(); e++) {
            diff = std::max(diff, std::fabs(merged[e] - want[e]));
            scale = std::max(scale, std::fabs((double) want[e] - W0[e]));
        }
        worst_change = std::max(worst_change, diff / scale);
        EXPECT_LT(diff / scale, 1e-3) << key;
        const std::vector<float> wbase = peft::testing::fixture_tensor(ref, key + ".rosa_base");
        double bd = 0;
        for (size_t e = 0; e < wbase.size(); e++) bd = std::max(bd, (double) std::fabs(wbase[e] - rm.base_f32[e]));
        worst_base = std::max(worst_base, bd);
        // The split of a re-factorised W into base and factors goes through two SVDs, which magnify
        // last-bit differences between builds: factors 3.2e-5 (Release) and 1.3e-4 (ASan build),
        // base 1.3e-5 (ASan), against entries up to 0.5 and 0.06: bounds near 1e-3 of those scales.
        EXPECT_LT(bd, 5e-5) << key << ".rosa_base";
        const std::vector<float> aa = peft::testing::fixture_tensor(ref, key + ".lora_A.abs");
        const std::vector<float> ba = peft::testing::fixture_tensor(ref, key + ".lora_B.abs");
        double ad = 0;
        for (size_t e = 0; e < aa.size(); e++) ad = std::max(ad, (double) std::fabs(std::fabs(rm.A[e]) - aa[e]));
        for (size_t e = 0; e < ba.size(); e++) ad = std::max(ad, (double) std::fabs(std::fabs(rm.B[e]) - ba[e]));
        worst_abs = std::max(worst_abs, ad);
        EXPECT_LT(ad, 5e-4) << key << " |A|, |B|";
    }
    std::printf("rosa parity: worst loss rel %.3g, merged change normwise %.3g, base max abs %.3g, |A|,|B| max abs %.3g\n",
                worst_loss, worst_change, worst_base, worst_abs);
}

TEST(rosa, bad_config_is_refused_with_the_key) {
    auto m = tiny_model(7);
    const char * bad[] = {"{\"adapter\":\"rosa\",\"r\":16}", "{\"adapter\":\"rosa\",\"rosa_resample_steps\":0}",
                          "{\"adapter\":\"rosa\",\"rosa_sample_method\":\"middle\"}", "{\"adapter\":\"rosa\",\"lora_alpha\":16}",
                          "{\"adapter\":\"rosa\",\"r\":0}"};
    const char * key[] = {"r = 16", "rosa_resample_steps", "rosa_sample_method", "lora_alpha", "r"};
    for (int i = 0; i < 5; i++) {
        adapter_set s;
        const status st = attach(*m, bad[i], s);
        ASSERT_FALSE(st.ok()) << bad[i];
        EXPECT_NE(st.message.find(key[i]), std::string::npos) << st.message;
    }
}
