// test_cli_milora_moe.cpp: the MiLoRA mixture (adapter: milora_moe) as a user runs it on the
// bundled tiny model and demo data: peft train (prompt-routed, instruction samples), peft eval
// of the saved adapter reproducing the logged eval loss, resume bit for bit (the same prompt routing), peft generate
// with it (unmerged), and clear refusals from peft merge and peft generate --merge.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "testing.h"
#include "train/test_trainer_util.h"

using namespace peft::testing;

namespace {

// The first n lines of data/demo/train.jsonl (alpaca samples: a prompt and a short answer).
std::string demo_subset(const std::string & dir, const std::string & name, int skip, int n) {
    std::ifstream in(source_path("data/demo/train.jsonl"));
    const std::string path = dir + "/" + name;
    std::ofstream out(path);
    std::string line;
    for (int i = 0; i < skip + n && std::getline(in, line); i++) {
        if (i >= skip) out << line << "\n";
    }
    return path;
}

std::string last_eval_loss(const std::string & metrics) {
    std::string last;
    for (const std::string & l : read_lines(metrics)) {
        const size_t p = l.find("\"eval_loss\": ");
        if (p != std::string::npos) last = l.substr(p + 13, l.find(',', p + 13) - p - 13);
    }
    return last;
}

} // namespace

TEST(cli_milora_moe, trains_evals_generates_and_refuses_to_merge) {
    const std::string dir = temp_dir("cli_milora_moe");
    const std::string model = source_path("models/tiny-llama");
    const std::string train = demo_subset(dir, "train.jsonl", 0, 24), test = demo_subset(dir, "test.jsonl", 24, 4);
    const std::string out = dir + "/run";
    auto args = [&](const std::string & o) {
        return std::vector<std::string>{"train", "--base_model", model, "--datasets", train, "--test_datasets", test, "--output_dir", o,
                                        "--adapter", "milora_moe", "--r", "4", "--lora_alpha", "8", "--target_modules", "all-linear",
                                        "--router_top_k", "2", "--router_aux_loss_coef", "0.01", "--learning_rate", "1e-2",
                                        "--micro_batch_size", "2", "--sequence_len", "96", "--max_steps", "4", "--save_steps", "2",
                                        "--threads", "2"};
    };
    child_result r = spawn_peft(args(out));
    ASSERT_EQ(r.code, 0) << r.out;
    // the routers and their optimizer state come back from a checkpoint: the same adapter bytes
    std::vector<std::string> resumed = args(dir + "/resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/checkpoint-2"});
    r = spawn_peft(resumed);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(read_text(dir + "/resumed/adapter_model.safetensors") == read_text(out + "/adapter_model.safetensors"));
    EXPECT_NE(r.out.find("milora_moe"), std::string::npos) << r.out;
    const std::string cfg = read_text(out + "/adapter_config.json");
    EXPECT_NE(cfg.find("\"peft_type\": \"MILORA_MOE\""), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("\"router_aux_loss_coef\": 0.01"), std::string::npos) << cfg;

    // peft eval routes each test sample from its prompt as training did: the logged loss exactly
    const std::string logged = last_eval_loss(out + "/metrics.jsonl");
    ASSERT_FALSE(logged.empty());
    r = spawn_peft({"eval", "--model", model, "--adapter", out, "--data", test, "--json", "--sequence_len", "96", "--batch", "2",
                    "--threads", "2"});
    ASSERT_EQ(r.code, 0) << r.out;
    const size_t p = r.out.find("\"loss\": ");
    ASSERT_NE(p, std::string::npos) << r.out;
    EXPECT_NEAR(std::stod(r.out.substr(p + 8)), std::stod(logged), 1e-5 * std::stod(logged)) << r.out;

    r = spawn_peft({"generate", "--model", model, "--adapter", out, "--prompt",
                    "Which book of the Bible is this verse from?\nIn the beginning God created the heaven and the earth.",
                    "--max-new-tokens", "6", "--threads", "2"});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("unmerged"), std::string::npos) << r.out;

    r = spawn_peft({"generate", "--model", model, "--adapter", out, "--merge", "--prompt", "Hello", "--max-new-tokens", "2"});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("milora_moe adapters cannot be merged"), std::string::npos) << r.out;
    r = spawn_peft({"merge", "--model", model, "--adapter", out, "--out", dir + "/merged"});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("milora_moe adapters cannot be merged"), std::string::npos) << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir + "/merged/model.safetensors"));
}

// peft bench --method milora_moe: one JSON line with the four decode speeds and the two ratios.
TEST(cli_milora_moe, bench_reports_cached_routing_against_lora_and_token_routing) {
    const child_result r = spawn_peft({"bench", "--shape", "tiny", "--method", "milora_moe", "--lora-r", "4", "--router-top-k", "2",
                                       "--seq", "8", "--gen-tokens", "4", "--rounds", "1", "--threads", "1"});
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char * k : {"\"base_decode_tokens_per_s\": ", "\"lora_decode_tokens_per_s\": ", "\"milora_moe_decode_tokens_per_s\": ",
                           "\"milora_moe_token_decode_tokens_per_s\": ", "\"cached_over_lora\": ", "\"cached_over_token_routing\": "}) {
        const size_t p = r.out.find(k);
        ASSERT_NE(p, std::string::npos) << k << " in " << r.out;
        EXPECT_GT(std::stod(r.out.substr(p + std::string(k).size())), 0.0) << k;
    }
}
