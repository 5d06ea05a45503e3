// test_cli_train.cpp: `peft train` and `peft eval` as a user runs them (the real binary):
// a YAML config, the adapter reloaded by `peft eval` reproducing the logged eval loss exactly,
// SIGINT writing a checkpoint that resumes to the same final adapter as an uninterrupted run,
// a full disk while checkpointing (RLIMIT_FSIZE) leaving the previous checkpoint intact, and
// clear errors with non-zero exits on bad input.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "io/json.h"
#include "io/safetensors.h"
#include "testing.h"
#include "train/test_trainer_util.h"

using namespace peft;
using namespace peft::testing;
namespace fs = std::filesystem;

namespace {

child_result spawn(const std::vector<std::string> & args, long fsize_limit = 0,
                   bool (*on_output)(pid_t, const std::string &) = nullptr, bool passive_omp = false) {
    spawn_options o;
    o.fsize_limit = fsize_limit;
    o.passive_omp = passive_omp;
    if (on_output) o.on_output = on_output;
    return spawn_peft(args, o);
}

struct files {
    std::string model, data, test_data;
};

const files & fixture() {
    static files f = [] {
        files x;
        x.model = make_model_dir("cli_train_model");
        x.data = make_data_file(x.model, "train.jsonl", 30, 11);
        x.test_data = make_data_file(x.model, "test.jsonl", 5, 12);
        return x;
    }();
    return f;
}

std::vector<std::string> lora_args(const std::string & out) {
    const files & f = fixture();
    return {"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", out, "--r", "4", "--target-modules",
            "q_proj,v_proj,down_proj", "--learning-rate", "1e-2", "--micro_batch_size", "2", "--sequence_len", "32",
            "--threads", "1", "--seed", "5", "--lr_scheduler", "constant"};
}

std::string last_eval_loss_text(const std::string & metrics) {
    std::string last;
    for (const std::string & l : read_lines(metrics)) {
        const size_t p = l.find("\"eval_loss\": ");
        if (p == std::string::npos) continue;
        const size_t b = p + 13, e = l.find(',', b);
        last = l.substr(b, e - b);
    }
    return last;
}

std::string json_number_text(const std::string & out, const std::string & key) {
    const size_t p = out.find("\"" + key + "\": ");
    if (p == std::string::npos) return "";
    const size_t b = p + key.size() + 4;
    return out.substr(b, out.find_first_of(",}", b) - b);
}

std::string file_bytes(const std::string & path) { return read_text(path); }

// The test data's loss through `peft eval` with model_args (--model M [--adapter A]); -1 on failure.
double eval_loss(const files & f, const std::vector<std::string> & model_args) {
    std::vector<std::string> a = {"eval", "--data", f.test_data, "--json", "--sequence_len", "32", "--batch", "2", "--threads", "1"};
    a.insert(a.end(), model_args.begin(), model_args.end());
    child_result e = spawn(a);
    EXPECT_EQ(e.code, 0) << e.out;
    json_document d;
    return d.parse(e.out.data(), e.out.size(), "eval").ok() ? d.root().get("loss").as_double() : -1.0;
}

// peft eval of the run's adapter reproduces its last logged eval loss (relative adapter_tol), and
// the model peft merge writes from it does too (relative 1e-4).
void expect_eval_and_merge_reproduce_the_logged_loss(const files & f, const std::string & run, double adapter_tol) {
    const double logged = std::stod(last_eval_loss_text(run + "/metrics.jsonl"));
    EXPECT_NEAR(eval_loss(f, {"--model", f.model, "--adapter", run}), logged, adapter_tol * logged);
    const child_result r = spawn({"merge", "--model", f.model, "--adapter", run, "--out", run + "-merged", "--dtype", "f32", "--threads", "1"});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NEAR(eval_loss(f, {"--model", run + "-merged"}), logged, 1e-4 * logged);
}

} // namespace

TEST(cli_train, help_shows_examples_and_keys) {
    child_result r = spawn({"train", "--help"});
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("examples"), std::string::npos);
    EXPECT_NE(r.out.find("TinyLlama"), std::string::npos);
    EXPECT_NE(r.out.find("lora_alpha"), std::string::npos);
    r = spawn({"eval", "--help"});
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("--adapter"), std::string::npos);
    r = spawn({"--help"});
    EXPECT_NE(r.out.find("train"), std::string::npos);
    EXPECT_NE(r.out.find("eval"), std::string::npos);
}

TEST(cli_train, yaml_config_then_eval_reproduces_the_logged_eval_loss_exactly) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_yaml");
    const std::string cfg = out + "/lora.yaml";
    std::ofstream(cfg) << "base_model: " << f.model << "\n"
                       << "datasets:\n  - path: " << f.data << "\n"
                       << "test_datasets:\n  - path: " << f.test_data << "\n"
                       << "output_dir: " << out << "/run\n"
                       << "adapter: lora\nr: 4\nlora_alpha: 16\ntarget_modules: all-linear\n"
                       << "learning_rate: 5e-3\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\nsequence_len: 32\n"
                       << "max_steps: 6\neval_steps: 3\nthreads: 1\n";
    child_result r = spawn({"train", cfg, "--max-steps", "8"});   // the flag overrides the file
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("step 8/8"), std::string::npos) << r.out;   // plain progress lines (not a TTY)
    EXPECT_NE(r.out.find("trainable params"), std::string::npos) << r.out;
    const std::string logged = last_eval_loss_text(out + "/run/metrics.jsonl");
    ASSERT_FALSE(logged.empty());
    r = spawn({"eval", "--model", f.model, "--adapter", out + "/run", "--data", f.test_data, "--json", "--sequence_len", "32",
               "--batch", "2", "--threads", "1"});
    ASSERT_EQ(r.code, 0) << r.out;
    json_document d;
    ASSERT_TRUE(d.parse(r.out.data(), r.out.size(), "eval output").ok()) << r.out;
    EXPECT_TRUE(d.root().get("tokens").is_integer());
    EXPECT_EQ(json_number_text(r.out, "loss"), logged) << r.out;
    EXPECT_NEAR(d.root().get("perplexity").as_double(), std::exp(d.root().get("loss").as_double()), 1e-9);
    // the base model alone is worse on the held-out file
    child_result base = spawn({"eval", "--model", f.model, "--data", f.test_data, "--json", "--sequence_len", "32", "--batch", "2", "--threads", "1"});
    ASSERT_EQ(base.code, 0) << base.out;
    json_document db;
    ASSERT_TRUE(db.parse(base.out.data(), base.out.size(), "eval output").ok()) << base.out;
    EXPECT_GT(db.root().get("loss").as_double(), d.root().get("loss").as_double());
}

// PiSSA end to end: the default file is a plain LoRA on the original model (eval reproduces the
// logged eval loss to float rounding: rank 2r on W instead of rank r on W_res); with
// save_residual_model the residual model is written beside the rank-r adapter, and that adapter
// is refused on the original model.
TEST(cli_train, pissa_trains_and_saves_both_forms) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_pissa");
    auto eval_loss = [&](const std::string & model, const std::string & adapter) {
        child_result r = spawn({"eval", "--model", model, "--adapter", adapter, "--data", f.test_data, "--json", "--sequence_len", "32",
                                "--batch", "2", "--threads", "1"});
        EXPECT_EQ(r.code, 0) << r.out;
        json_document d;
        return d.parse(r.out.data(), r.out.size(), "eval").ok() ? d.root().get("loss").as_double() : -1.0;
    };
    for (const char * residual : {"false", "true"}) {
        const std::string run = out + "/run_" + residual;
        child_result r = spawn({"train", "--base_model", f.model, "--datasets", f.data, "--test_datasets", f.test_data, "--output_dir", run,
                                "--r", "4", "--lora_alpha", "4", "--target_modules", "all-linear", "--init_lora_weights", "pissa_niter_2",
                                "--save_residual_model", residual, "--learning_rate", "2e-3", "--micro_batch_size", "2", "--sequence_len", "32",
                                "--max_steps", "4", "--threads", "1"});
        ASSERT_EQ(r.code, 0) << r.out;
        const double logged = std::stod(last_eval_loss_text(run + "/metrics.jsonl"));
        if (std::string(residual) == "false") {
            EXPECT_FALSE(std::filesystem::exists(run + "/residual_model"));
            EXPECT_NEAR(eval_loss(f.model, run), logged, 1e-4 * logged);
        } else {
            EXPECT_TRUE(std::filesystem::exists(run + "/residual_model/model.safetensors"));
            EXPECT_NE(read_text(run + "/residual_model/config.json").find("\"peft_residual_init\": \"pissa_niter_2\""), std::string::npos);
            EXPECT_NEAR(eval_loss(run + "/residual_model", run), logged, 1e-6 * logged);
            r = spawn({"eval", "--model", f.model, "--adapter", run, "--data", f.test_data});
            EXPECT_EQ(r.code, 2) << r.out;
            EXPECT_NE(r.out.find("residual base"), std::string::npos) << r.out;
        }
    }
}

// A PiSSA run resumes bit for bit without a new SVD: the initial factors are in the checkpoint
// and the residual base is rebuilt from them.
TEST(cli_train, pissa_resumes_bit_exactly_from_its_initial_factors) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_pissa_resume");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", dir, "--r", "4",
                                        "--target_modules", "all-linear", "--init_lora_weights", "pissa_niter_2", "--learning_rate", "2e-3",
                                        "--micro_batch_size", "2", "--sequence_len", "32", "--max_steps", "6", "--save_steps", "3",
                                        "--threads", "1"};
    };
    child_result r = spawn(args(out + "/straight"));
    ASSERT_EQ(r.code, 0) << r.out;
    auto resumed = args(out + "/resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/straight/checkpoint-3"});
    r = spawn(resumed);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("no SVD"), std::string::npos) << r.out;
    EXPECT_TRUE(read_text(out + "/resumed/adapter_model.safetensors") == read_text(out + "/straight/adapter_model.safetensors"));
}

// Deep LoRA through peft train: the compression's calibration gradient comes from the training
// rows (no deep_lora_data), the file is a plain LoRA (r = lora_alpha = 4), and a resumed run
// takes U_c, V_c from the checkpoint (no calibration pass) and ends bit for bit where the
// uninterrupted run does.
TEST(cli_train, deep_lora_calibrates_on_the_training_rows_and_resumes_bit_exactly) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_deep_lora");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", dir, "--adapter", "deep_lora",
                                        "--r", "4", "--deep_lora_samples", "4", "--deep_lora_gamma", "0.1", "--target_modules", "all-linear",
                                        "--learning_rate", "1e-2", "--micro_batch_size", "2", "--sequence_len", "32", "--max_steps", "6",
                                        "--save_steps", "3", "--threads", "1"};
    };
    child_result r = spawn(args(out + "/straight"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("calibration: 4 training rows"), std::string::npos) << r.out;
    const std::string cfg = read_text(out + "/straight/adapter_config.json");
    EXPECT_NE(cfg.find("\"peft_type\": \"LORA\""), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("\"lora_alpha\": 4,"), std::string::npos) << cfg;
    auto resumed = args(out + "/resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/straight/checkpoint-3"});
    r = spawn(resumed);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("calibration:"), std::string::npos) << "a resumed run must not recompute the compression:\n" << r.out;
    EXPECT_TRUE(read_text(out + "/resumed/adapter_model.safetensors") == read_text(out + "/straight/adapter_model.safetensors"));
}

// DoRA end to end (use_dora): the adapter reloaded by peft eval reproduces the logged eval loss
// exactly (the norms are recomputed from the file's A, B by the same code), a resumed run ends
// with the same adapter bit for bit (restore marks the norms stale), and peft merge writes a
// model whose eval loss is the adapter's to rounding.
TEST(cli_train, dora_evals_resumes_and_merges) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_dora");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--test_datasets", f.test_data,
                                        "--output_dir", dir, "--r", "4", "--target_modules", "all-linear", "--use_dora", "true",
                                        "--learning_rate", "5e-3", "--micro_batch_size", "2", "--sequence_len", "32", "--max_steps", "6",
                                        "--save_steps", "3", "--eval_steps", "6", "--threads", "1"};
    };
    child_result r = spawn(args(out + "/straight"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(read_text(out + "/straight/adapter_config.json").find("\"use_dora\": true"), std::string::npos);
    auto eval = [&](const std::vector<std::string> & model_args) {
        std::vector<std::string> a = {"eval"};
        a.insert(a.end(), model_args.begin(), model_args.end());
        a.insert(a.end(), {"--data", f.test_data, "--json", "--sequence_len", "32", "--batch", "2", "--threads", "1"});
        return spawn(a);
    };
    r = eval({"--model", f.model, "--adapter", out + "/straight"});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(json_number_text(r.out, "loss"), last_eval_loss_text(out + "/straight/metrics.jsonl")) << r.out;
    const double adapted = std::stod(json_number_text(r.out, "loss"));

    auto resumed = args(out + "/resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/straight/checkpoint-3"});
    r = spawn(resumed);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(read_text(out + "/resumed/adapter_model.safetensors") == read_text(out + "/straight/adapter_model.safetensors"));

    r = spawn({"merge", "--model", f.model, "--adapter", out + "/straight", "--out", out + "/merged", "--dtype", "f32", "--threads", "1"});
    ASSERT_EQ(r.code, 0) << r.out;
    r = eval({"--model", out + "/merged"});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NEAR(std::stod(json_number_text(r.out, "loss")), adapted, 1e-5 * adapted);
}

// CorDA through peft train: the calibration data streams through the model, the covariances are
// cached in covariance_file and reused by the next run (same adapter, no calibration pass); a
// cache made for other target modules, and corda without data, are refused.
TEST(cli_train, corda_calibrates_caches_and_reuses_covariances) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_corda");
    const std::string cov = out + "/cov.safetensors";
    auto args = [&](const std::string & dir, const std::string & targets) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", dir, "--r", "4",
                                        "--target_modules", targets, "--init_lora_weights", "corda", "--corda_data", f.test_data,
                                        "--corda_samples", "4", "--corda_config", "{\"corda_method\": \"kpm\", \"covariance_file\": \"" + cov + "\"}",
                                        "--learning_rate", "2e-3", "--micro_batch_size", "2", "--sequence_len", "32", "--max_steps", "3",
                                        "--threads", "1"};
    };
    child_result r = spawn(args(out + "/a", "q_proj,down_proj"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("calibration: 4 samples"), std::string::npos) << r.out;
    ASSERT_TRUE(std::filesystem::exists(cov));
    r = spawn(args(out + "/b", "q_proj,down_proj"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("calibration:"), std::string::npos) << "the cached covariances were not reused:\n" << r.out;
    EXPECT_TRUE(read_text(out + "/a/adapter_model.safetensors") == read_text(out + "/b/adapter_model.safetensors"));
    r = spawn(args(out + "/c", "v_proj"));
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("another model or set of target modules"), std::string::npos) << r.out;
    r = spawn({"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", out + "/d", "--init_lora_weights", "corda"});
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("corda_data"), std::string::npos) << r.out;
}

// METHODS §8 (7) at this scale: after the same fine-tune of the bundled model on the demo task,
// CorDA KPM (calibrated on text whose knowledge should survive) keeps that text's loss closer to
// the base model's than IPM (calibrated on the task). Measured with 30 steps on the earlier demo task
// (Bible verses): base 4.59, KPM 5.30, IPM 9.21 on held-out verses.
TEST(cli_train, corda_kpm_forgets_less_than_ipm) {
    const std::string out = temp_dir("cli_train_corda_modes");
    const std::string model = source_path("models/tiny-llama"), task = source_path("data/demo/train.jsonl");
    // knowledge: the bare passages of the held-out questions (text of the pretraining's kind)
    std::vector<std::string> verses;
    for (const std::string & line : read_lines(source_path("data/demo/held_out.jsonl"))) {
        json_document d;
        ASSERT_TRUE(d.parse(line.data(), line.size(), "held_out").ok());
        const std::string q = d.root().get("instruction").as_string();
        verses.push_back("{\"text\": " + json_quote(q.substr(q.find('\n') + 1)) + "}\n");
    }
    std::ofstream(out + "/know.jsonl") << [&] { std::string s; for (size_t i = 0; i < 40; i++) s += verses[i]; return s; }();
    std::ofstream(out + "/know_eval.jsonl") << [&] { std::string s; for (size_t i = 40; i < verses.size(); i++) s += verses[i]; return s; }();
    auto loss = [&](const std::vector<std::string> & extra) {
        std::vector<std::string> a = {"eval", "--model", model, "--data", out + "/know_eval.jsonl", "--json", "--sequence_len", "128", "--threads", "2"};
        a.insert(a.end(), extra.begin(), extra.end());
        const child_result r = spawn(a);
        EXPECT_EQ(r.code, 0) << r.out;
        json_document d;
        return d.parse(r.out.data(), r.out.size(), "eval").ok() ? d.root().get("loss").as_double() : 0.0;
    };
    const double base = loss({});
    double after[2] = {0, 0};
    for (int kpm = 0; kpm < 2; kpm++) {
        const std::string dir = out + (kpm ? "/kpm" : "/ipm");
        const child_result r = spawn({"train", "--base_model", model, "--datasets", task, "--output_dir", dir, "--r", "16", "--lora_alpha", "16",
                                      "--target_modules", "all-linear", "--init_lora_weights", "corda", "--corda_data",
                                      kpm ? out + "/know.jsonl" : task, "--corda_samples", "64", "--corda_config",
                                      kpm ? "{\"corda_method\": \"kpm\"}" : "{\"corda_method\": \"ipm\"}", "--learning_rate", "3e-3",
                                      "--micro_batch_size", "8", "--sequence_len", "128", "--max_steps", "30", "--threads", "2"},
                                     0, nullptr, true);
        ASSERT_EQ(r.code, 0) << r.out;
        after[kpm] = loss({"--adapter", dir});
    }
    EXPECT_LT(std::fabs(after[1] - base), std::fabs(after[0] - base)) << "base " << base << ", ipm " << after[0] << ", kpm " << after[1];
}

TEST(cli_train, two_threads_same_seed_same_losses_and_adapter_bit_for_bit) {
    std::string metrics[2], adapter[2];
    for (int i = 0; i < 2; ++i) {
        const std::string out = temp_dir("cli_train_det" + std::to_string(i));
        std::vector<std::string> args = lora_args(out);
        args.insert(args.end(), {"--threads", "2", "--max_steps", "4", "--lora_dropout", "0.1", "--gradient_accumulation_steps", "2"});
        child_result r = spawn(args, 0, nullptr, true);
        ASSERT_EQ(r.code, 0) << r.out;
        for (const std::string & l : read_lines(out + "/metrics.jsonl")) metrics[i] += json_number_text(l, "loss") + " " + json_number_text(l, "grad_norm") + "\n";
        adapter[i] = file_bytes(out + "/adapter_model.safetensors");
    }
    EXPECT_EQ(metrics[0], metrics[1]);
    EXPECT_FALSE(adapter[0].empty());
    EXPECT_TRUE(adapter[0] == adapter[1]);
}

static bool interrupt_after_a_few_steps(pid_t pid, const std::string & out) {
    if (out.find("step 3/") == std::string::npos) return false;
    kill(pid, SIGINT);
    return true;
}

TEST(cli_train, sigint_writes_a_checkpoint_that_resumes_to_the_uninterrupted_result) {
    const std::string out = temp_dir("cli_train_sigint"), straight = temp_dir("cli_train_sigint_straight");
    std::vector<std::string> args = lora_args(out);
    args.insert(args.end(), {"--max_steps", "1000000"});
    child_result r = spawn(args, 0, interrupt_after_a_few_steps);
    ASSERT_EQ(r.code, 130) << r.out;
    EXPECT_NE(r.out.find("interrupted at step"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--resume_from_checkpoint"), std::string::npos) << r.out;
    // exactly one complete checkpoint, no temporary directory
    std::vector<std::string> ckpts;
    for (const auto & e : fs::directory_iterator(out)) {
        const std::string n = e.path().filename().string();
        EXPECT_EQ(n.find(".tmp"), std::string::npos) << n;
        if (n.rfind("checkpoint-", 0) == 0) ckpts.push_back(n);
    }
    ASSERT_EQ(ckpts.size(), 1u) << r.out;
    const int64_t k = std::stoll(ckpts[0].substr(11));
    ASSERT_GE(k, 3);
    // resume to k + 3 steps; an uninterrupted run of k + 3 steps gives the same adapter bytes
    // (constant schedule: the lr does not depend on the total)
    const std::string total = std::to_string(k + 3);
    std::vector<std::string> resume = lora_args(out);
    resume.insert(resume.end(), {"--max_steps", total, "--resume_from_checkpoint", "latest"});
    r = spawn(resume);
    ASSERT_EQ(r.code, 0) << r.out;
    std::vector<std::string> full = lora_args(straight);
    full.insert(full.end(), {"--max_steps", total});
    r = spawn(full);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(file_bytes(out + "/adapter_model.safetensors") == file_bytes(straight + "/adapter_model.safetensors"));
    // the metrics history is continuous: one line per step 1..k+3
    int n_steps = 0;
    for (const std::string & l : read_lines(out + "/metrics.jsonl")) n_steps += l.find("\"loss\"") != std::string::npos;
    EXPECT_EQ(n_steps, k + 3);
}

TEST(cli_train, disk_full_while_checkpointing_keeps_the_previous_checkpoint) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_diskfull");
    std::vector<std::string> args = {"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", out, "--adapter", "full",
                                     "--micro_batch_size", "2", "--sequence_len", "32", "--save_steps", "2", "--threads", "1"};
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--max_steps", "2"});
    child_result r = spawn(a);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string ck2 = file_bytes(out + "/checkpoint-2/trainer_state.safetensors");
    ASSERT_FALSE(ck2.empty());
    // model.safetensors (80 KB in f32) cannot be written under a 40 KB file-size limit
    std::vector<std::string> b = args;
    b.insert(b.end(), {"--max_steps", "4", "--resume_from_checkpoint", "latest"});
    r = spawn(b, 40000);
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("saving checkpoint-4 failed"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(out + "/checkpoint-4"));
    EXPECT_FALSE(fs::exists(out + "/checkpoint-4.tmp"));
    EXPECT_EQ(file_bytes(out + "/checkpoint-2/trainer_state.safetensors"), ck2);
    safetensors_file sf;
    EXPECT_TRUE(safetensors_open(out + "/checkpoint-2/model.safetensors", sf).ok());
    // and the run continues from it once there is space again
    r = spawn(b);
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(fs::exists(out + "/checkpoint-4/model.safetensors"));
}

TEST(cli_train, bad_input_fails_clearly) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_bad");
    child_result r = spawn({"train", "--base_model", f.model, "--datasets", f.data, "--learning_rte", "1e-4"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("did you mean '--learning_rate'"), std::string::npos) << r.out;
    r = spawn({"train", "--datasets", f.data});
    EXPECT_EQ(r.code, 2);   // a configuration error is a usage error
    EXPECT_NE(r.out.find("base_model is required"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("HINT"), std::string::npos) << r.out;
    std::ofstream(out + "/c.yaml") << "base_model: " << f.model << "\ndatasets: " << f.data << "\nnum_epoch: 2\n";
    r = spawn({"train", out + "/c.yaml"});
    EXPECT_EQ(r.code, 2);   // a configuration error is a usage error
    EXPECT_NE(r.out.find("did you mean 'num_epochs'"), std::string::npos) << r.out;
    r = spawn({"train", out + "/missing.yaml"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find("missing.yaml"), std::string::npos) << r.out;
    r = spawn({"train", "--base_model", "/nonexistent/model", "--datasets", f.data, "--output_dir", out + "/o"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find("/nonexistent/model"), std::string::npos) << r.out;
    r = spawn({"train", "--base_model", f.model, "--datasets", out + "/nope.jsonl", "--output_dir", out + "/o"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find("nope.jsonl"), std::string::npos) << r.out;
    r = spawn({"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", f.data + "/sub"});
    EXPECT_EQ(r.code, 2);   // a configuration error is a usage error
    EXPECT_NE(r.out.find("output_dir"), std::string::npos) << r.out;
    // adapter configuration errors surface before training, with the adapter's hint
    r = spawn({"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", out + "/o", "--target_modules", "foo_proj"});
    EXPECT_EQ(r.code, 2);   // a configuration error is a usage error
    EXPECT_NE(r.out.find("q_proj, k_proj"), std::string::npos) << r.out;
    r = spawn({"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", out + "/o", "--r", "100"});
    EXPECT_EQ(r.code, 2);   // a configuration error is a usage error
    EXPECT_NE(r.out.find("rank 100"), std::string::npos) << r.out;
    r = spawn({"eval", "--model", f.model});
    EXPECT_NE(r.code, 0);
    r = spawn({"eval", "--model", f.model, "--data", f.data, "--adapter", out + "/no_adapter"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find("no_adapter"), std::string::npos) << r.out;
}

// Under an MPI launcher a build without MPI must not start N unrelated copies writing one
// output_dir (tests/dist covers the MPI build).
TEST(cli_train, under_mpirun_without_mpi_support_says_how_to_build_it) {
#ifdef PEFT_MPI_BUILD
    GTEST_SKIP() << "this build has MPI";
#endif
    const shell_result r = run_shell("OMPI_COMM_WORLD_SIZE=2 " + std::string(PEFT_BIN) + " train --base_model " +
                                     source_path("models/tiny-llama") + " --datasets x.jsonl --output_dir " + temp_dir("cli_no_mpi"));
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("no MPI support"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("-DPEFT_MPI=ON"), std::string::npos) << r.out;
}

// VeRA through the commands: peft train (dropout on, a checkpoint mid-way) resumes bit for bit
// (the shared projections come back from the key, the dropout counters from the checkpoint),
// peft eval of the adapter reproduces the logged eval loss, and peft merge writes a model with
// the same loss.
TEST(cli_train, vera_resumes_bit_exactly_evals_and_merges) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_vera");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--test_datasets", f.test_data,
                                        "--output_dir", dir, "--adapter", "vera", "--r", "16", "--vera_dropout", "0.1",
                                        "--target_modules", "all-linear", "--learning_rate", "5e-2", "--micro_batch_size", "2",
                                        "--sequence_len", "32", "--max_steps", "6", "--save_steps", "3", "--threads", "1"};
    };
    child_result r = spawn(args(out + "/straight"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("adapter vera"), std::string::npos) << r.out;
    auto resumed = args(out + "/resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/straight/checkpoint-3"});
    r = spawn(resumed);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
    EXPECT_TRUE(read_text(out + "/resumed/adapter_model.safetensors") == read_text(out + "/straight/adapter_model.safetensors"));
    EXPECT_NE(read_text(out + "/straight/adapter_config.json").find("\"peft_type\": \"VERA\""), std::string::npos);

    expect_eval_and_merge_reproduce_the_logged_loss(f, out + "/straight", 1e-6);
}

// ROSA re-splits every 2 steps (after steps 2 and 4, the checkpoint at 3 between them): the
// resumed run writes the same adapter byte for byte; the saved LoRA of the accumulated change
// (r = 2 r P = 24 here: P = 3 periods, with every 16-wide layer capped through rank_pattern) on
// the original base evaluates to the logged loss, and so does the merged model.
TEST(cli_train, rosa_resumes_bit_exactly_evals_and_merges) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_rosa");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--test_datasets", f.test_data,
                                        "--output_dir", dir, "--adapter", "rosa", "--r", "4", "--rosa_resample_steps", "2",
                                        "--target_modules", "all-linear", "--learning_rate", "1e-2", "--micro_batch_size", "2",
                                        "--sequence_len", "32", "--max_steps", "6", "--save_steps", "3", "--threads", "1"};
    };
    child_result r = spawn(args(out + "/straight"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("adapter rosa"), std::string::npos) << r.out;
    auto resumed = args(out + "/resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/straight/checkpoint-3"});
    r = spawn(resumed);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
    EXPECT_TRUE(read_text(out + "/resumed/adapter_model.safetensors") == read_text(out + "/straight/adapter_model.safetensors"));
    const std::string cfg = read_text(out + "/straight/adapter_config.json");
    EXPECT_NE(cfg.find("\"peft_type\": \"LORA\""), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("\"r\": 24"), std::string::npos) << cfg;

    expect_eval_and_merge_reproduce_the_logged_loss(f, out + "/straight", 1e-5);
}

// AdaLoRA through the commands: pruning runs within the 6 steps (tinit 1, tfinal 2), a run resumed
// from the checkpoint in the middle of the schedule (importance EMAs and masks from the
// checkpoint) writes the same files, the final ranks are printed and differ across modules, the
// file holds rank_pattern and the truncated tensors, and eval / merge reproduce the logged loss.
TEST(cli_train, adalora_prunes_resumes_bit_exactly_evals_and_merges) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_adalora");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--test_datasets", f.test_data,
                                        "--output_dir", dir, "--adapter", "adalora", "--init_r", "4", "--target_r", "2",
                                        "--total_step", "6", "--tinit", "1", "--tfinal", "2", "--lora_dropout", "0.1",
                                        "--target_modules", "all-linear", "--learning_rate", "5e-2", "--micro_batch_size", "2",
                                        "--sequence_len", "32", "--max_steps", "6", "--save_steps", "1", "--threads", "1"};
    };
    child_result r = spawn(args(out + "/straight"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("adapter adalora"), std::string::npos) << r.out;
    const size_t at = r.out.find("adalora: final ranks");
    ASSERT_NE(at, std::string::npos) << r.out;
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    EXPECT_EQ(line.find("min 2, max 2"), std::string::npos) << "the ranks should differ across modules: " << line;
    // step 3: mid-schedule (the EMAs matter); step 5: after the final allocation (the frozen pattern matters)
    for (const char * ck : {"3", "5"}) {
        const std::string dir = out + "/resumed" + ck;
        auto resumed = args(dir);
        resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/straight/checkpoint-" + ck});
        r = spawn(resumed);
        ASSERT_EQ(r.code, 0) << r.out;
        EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
        EXPECT_TRUE(read_text(dir + "/adapter_model.safetensors") == read_text(out + "/straight/adapter_model.safetensors")) << ck;
        EXPECT_EQ(read_text(dir + "/adapter_config.json"), read_text(out + "/straight/adapter_config.json")) << ck;
    }
    const std::string cfg = read_text(out + "/straight/adapter_config.json");
    EXPECT_NE(cfg.find("\"peft_type\": \"ADALORA\""), std::string::npos);
    EXPECT_NE(cfg.find("\"model.layers.0.self_attn.q_proj.lora_E\": ["), std::string::npos) << cfg;
    // the final ranks as a table beside the adapter and in the report, one row per module
    const std::vector<std::string> ranks = read_lines(out + "/straight/adalora_ranks.tsv");
    ASSERT_FALSE(ranks.empty());
    EXPECT_EQ(ranks[0], "module\trank\tinit_r");
    EXPECT_EQ(ranks.size(), 1u + 2u * 7u) << "2 layers x 7 projections";
    EXPECT_NE(read_text(out + "/straight/report.html").find("AdaLoRA ranks"), std::string::npos);

    expect_eval_and_merge_reproduce_the_logged_loss(f, out + "/straight", 1e-6);
}

// LoRA-drop end to end: stage 1 prints the importance table and drops modules, the run writes
// the PEFT form (plain LORA, loaded by eval and merge), the native form and the table (TSV and
// report.html).
TEST(cli_train, lora_drop_trains_writes_both_forms_and_the_table_evals_and_merges) {
    const files & f = fixture();
    const std::string out = temp_dir("cli_train_lora_drop");
    auto args = [&](const std::string & dir) {
        return std::vector<std::string>{"train", "--base_model", f.model, "--datasets", f.data, "--test_datasets", f.test_data,
                                        "--output_dir", dir, "--adapter", "lora_drop", "--r", "4", "--lora_alpha", "8",
                                        "--target_modules", "all-linear", "--lora_drop_fraction", "0.5", "--lora_drop_threshold", "0.7",
                                        "--learning_rate", "1e-2", "--micro_batch_size", "2", "--sequence_len", "32", "--max_steps", "4",
                                        "--save_steps", "2", "--threads", "1"};
    };
    child_result r = spawn(args(out));
    ASSERT_EQ(r.code, 0) << r.out;
    // a resumed run repeats stage 1, finds the same structure and continues bit for bit
    auto resumed = args(out + "-resumed");
    resumed.insert(resumed.end(), {"--resume_from_checkpoint", out + "/checkpoint-2"});
    const child_result rr = spawn(resumed);
    ASSERT_EQ(rr.code, 0) << rr.out;
    EXPECT_TRUE(read_text(out + "-resumed/adapter_model.safetensors") == read_text(out + "/adapter_model.safetensors"));
    EXPECT_TRUE(read_text(out + "-resumed/native/adapter_model.safetensors") == read_text(out + "/native/adapter_model.safetensors"));
    EXPECT_NE(r.out.find("probe training"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("lora_drop: importance"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" shared\n"), std::string::npos) << "threshold 0.7 should drop some modules: " << r.out;
    EXPECT_NE(read_text(out + "/adapter_config.json").find("\"peft_type\": \"LORA\""), std::string::npos);
    EXPECT_NE(read_text(out + "/native/adapter_config.json").find("\"peft_type\": \"LORA_DROP\""), std::string::npos);
    const std::string tsv = read_text(out + "/lora_drop_importance.tsv");
    EXPECT_EQ(tsv.rfind("module\tg\timportance\tlora\n", 0), 0u) << tsv;
    EXPECT_NE(read_text(out + "/report.html").find("LoRA-drop importance"), std::string::npos);
    expect_eval_and_merge_reproduce_the_logged_loss(f, out, 1e-6);
    // the native form evaluates to the same loss
    EXPECT_NEAR(eval_loss(f, {"--model", f.model, "--adapter", out + "/native"}), std::stod(last_eval_loss_text(out + "/metrics.jsonl")),
                1e-6 * std::stod(last_eval_loss_text(out + "/metrics.jsonl")));
}
