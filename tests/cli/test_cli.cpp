// Golden CLI runs of the `peft` binary (path compiled in as PEFT_BIN): exit codes, one
// JSON line from bench, clear errors on bad input.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/wait.h>

#include "io/json.h"
#include "testing.h"

namespace {

using run_result = peft::testing::shell_result;

run_result run_peft(const std::string & args) { return peft::testing::run_shell(std::string(PEFT_BIN) + " " + args); }

} // namespace

TEST(cli, help_lists_commands) {
    run_result r = run_peft("--help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("bench"), std::string::npos);
    r = run_peft("bench --help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("example"), std::string::npos);
    r = run_peft("no-such-command");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("unknown command"), std::string::npos);
}

TEST(cli, bench_trains_the_fixture_model_and_prints_one_json_line) {
    std::string model = peft::testing::source_path("tests/fixtures/llama_gqa");
    run_result r = run_peft("bench --model " + model + " --method full --batch 2 --seq 12 --steps 15 --warmup 0 --threads 2 "
                            "--same-batch --lr 3e-3");
    ASSERT_EQ(r.code, 0) << r.out;
    peft::json_document doc;
    ASSERT_TRUE(doc.parse(r.out.data(), r.out.size(), "bench output").ok()) << r.out;
    peft::json_value j = doc.root();
    for (const char * k : {"tokens_per_s", "ms_per_step", "peak_rss_mib", "model_flops_per_token", "achieved_gflops"}) {
        EXPECT_TRUE(j.get(k).is_number()) << k;
    }
    EXPECT_LT(j.get("loss_final").as_double(), 0.8 * j.get("loss_first").as_double()) << r.out;
}

TEST(cli, bench_lora_trains_only_the_adapter_and_the_loss_falls) {
    std::string model = peft::testing::source_path("tests/fixtures/llama_gqa");
    run_result r = run_peft("bench --model " + model + " --method lora --lora-r 4 --lora-alpha 8 --batch 2 --seq 12 --steps 15 "
                            "--warmup 0 --threads 2 --same-batch --lr 1e-2");
    ASSERT_EQ(r.code, 0) << r.out;
    peft::json_document doc;
    ASSERT_TRUE(doc.parse(r.out.data(), r.out.size(), "bench output").ok()) << r.out;
    peft::json_value j = doc.root();
    EXPECT_LT(j.get("loss_final").as_double(), 0.9 * j.get("loss_first").as_double()) << r.out;
    // LoRA FLOPs on top of the frozen base: 6 r (in + out) per target per token
    run_result f = run_peft("bench --model " + model + " --method frozen --batch 2 --seq 12 --steps 1 --warmup 0 --threads 2");
    peft::json_document fd;
    ASSERT_TRUE(fd.parse(f.out.data(), f.out.size(), "bench output").ok()) << f.out;
    const double per_layer = 32 * 2 + (32 + 16) * 2 + 32 * 2 + (32 + 48) * 3;   // sum of in + out of the 7 projections
    EXPECT_DOUBLE_EQ(j.get("model_flops_per_token").as_double() - fd.root().get("model_flops_per_token").as_double(),
                     6.0 * 4 * per_layer * 2);
}

// --layers-to-transform 1 on the 2-layer fixture: layer 0 has no adapter, so the backward stops
// at layer 1. Model FLOPs per token drop by layer 0's input gradient (2 per weight of its 7
// projections: 7680 weights), its attention backward (2 x 4 QD T/2, QD 32, T 12) and its LoRA
// (6 r (in + out)); half the adapter parameters; the loss still falls.
TEST(cli, bench_layers_to_transform_stops_the_backward_at_the_lowest_adapted_layer) {
    std::string model = peft::testing::source_path("tests/fixtures/llama_gqa");
    const std::string common = "bench --model " + model + " --method lora --lora-r 4 --lora-alpha 8 --batch 2 --seq 12 --warmup 0 "
                               "--threads 2 --same-batch --lr 1e-2";
    run_result all = run_peft(common + " --steps 1"), upper = run_peft(common + " --steps 15 --layers-to-transform 1");
    ASSERT_EQ(all.code, 0) << all.out;
    ASSERT_EQ(upper.code, 0) << upper.out;
    peft::json_document da, du;
    ASSERT_TRUE(da.parse(all.out.data(), all.out.size(), "bench output").ok()) << all.out;
    ASSERT_TRUE(du.parse(upper.out.data(), upper.out.size(), "bench output").ok()) << upper.out;
    const peft::json_value a = da.root(), u = du.root();
    EXPECT_EQ(2 * u.get("trainable_params").as_int(0), a.get("trainable_params").as_int(-1));
    const double lora_layer = 6.0 * 4 * (32 * 2 + (32 + 16) * 2 + 32 * 2 + (32 + 48) * 3);
    EXPECT_DOUBLE_EQ(a.get("model_flops_per_token").as_double() - u.get("model_flops_per_token").as_double(),
                     2.0 * 7680 + 2.0 * 4 * 32 * 12 / 2 + lora_layer);
    EXPECT_LT(u.get("loss_final").as_double(), 0.95 * u.get("loss_first").as_double()) << upper.out;
    run_result bad = run_peft("bench --model " + model + " --method full --layers-to-transform 1 --steps 1");
    EXPECT_NE(bad.code, 0);
    EXPECT_NE(bad.out.find("--layers-to-transform"), std::string::npos) << bad.out;
}

// --method galore at rank 4 on the fixture model: the loss falls, and optimizer_state_bytes is
// the closed form: per projected [m, n] weight 2 r max(m, n) + r min(m, n) floats (q, o 32x32;
// k, v 16x32; gate, up 48x32; down 32x48; two layers), 2 floats per element elsewhere
// (embeddings and lm_head 64x32, five norms of 32); full fine-tuning's is 8 bytes per parameter.
TEST(cli, bench_galore_reports_its_optimizer_state_and_the_loss_falls) {
    std::string model = peft::testing::source_path("tests/fixtures/llama_gqa");
    auto bench = [&](const std::string & method) {
        run_result r = run_peft("bench --model " + model + " --method " + method + " --batch 2 --seq 12 --steps 15 --warmup 0 "
                                "--threads 2 --same-batch --lr 3e-3");
        EXPECT_EQ(r.code, 0) << r.out;
        peft::json_document doc;
        EXPECT_TRUE(doc.parse(r.out.data(), r.out.size(), "bench output").ok()) << r.out;
        return doc;
    };
    peft::json_document g = bench("galore --galore-rank 4 --galore-targets attn,mlp"), f = bench("full");
    peft::json_document all = bench("galore --galore-rank 4");   // the bench's default: every 2-D weight
    const int64_t r = 4;
    auto proj = [&](int64_t m, int64_t n) { return 2 * r * std::max(m, n) + r * std::min(m, n); };
    const int64_t layer = 2 * proj(32, 32) + 2 * proj(16, 32) + 2 * proj(48, 32) + proj(32, 48);
    const int64_t plain = 2 * (2 * 64 * 32 + 5 * 32);
    EXPECT_EQ(g.root().get("optimizer_state_bytes").as_int(), 4 * (2 * layer + plain));
    EXPECT_EQ(all.root().get("optimizer_state_bytes").as_int(), 4 * (2 * layer + 2 * proj(64, 32) + 2 * 5 * 32));
    EXPECT_EQ(f.root().get("optimizer_state_bytes").as_int(), 8 * f.root().get("trainable_params").as_int());
    EXPECT_LT(g.root().get("loss_final").as_double(), 0.8 * g.root().get("loss_first").as_double());
}

TEST(cli, bench_is_deterministic_for_a_fixed_seed_and_thread_count) {
    std::string args = "bench --shape tiny --method full --batch 1 --seq 32 --steps 3 --warmup 0 --threads 2 --seed 5";
    run_result a = run_peft(args), b = run_peft(args);
    ASSERT_EQ(a.code, 0) << a.out;
    peft::json_document da, db;
    ASSERT_TRUE(da.parse(a.out.data(), a.out.size(), "a").ok());
    ASSERT_TRUE(db.parse(b.out.data(), b.out.size(), "b").ok());
    EXPECT_EQ(da.root().get("loss_final").dump(), db.root().get("loss_final").dump());
}

TEST(cli, bench_bad_input_fails_with_a_clear_message) {
    run_result r = run_peft("bench --model /nonexistent/dir --steps 1");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("/nonexistent/dir/config.json"), std::string::npos) << r.out;
    r = run_peft("bench --shape tiny --model /x");
    EXPECT_NE(r.code, 0);
    r = run_peft("bench --shape huge");
    EXPECT_NE(r.code, 0);
    r = run_peft("bench --shape tiny --batch 0");
    EXPECT_NE(r.code, 0);
}
