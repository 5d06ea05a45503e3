// Data-parallel training under a real `mpirun -np 2` on loopback (built only with -DPEFT_MPI=ON;
// scripts/test_mpi.sh). The claims of dist/dist.h checked from outside, as a user runs it:
// 2 ranks with micro_batch_size m train exactly what one process does with 2m (losses, eval
// and the final adapter within the rounding of the reduction order), rank 0 alone writes,
// resume with the same ranks is bit-exact, and a mismatched configuration or a dead rank ends
// the whole job with a message instead of a hang.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "io/json.h"
#include "io/safetensors.h"
#include "testing.h"

using peft::testing::run_shell;
using peft::testing::shell_result;
namespace fs = std::filesystem;

namespace {

// The launcher as CI runs it: 2 ranks on a 2-core box (oversubscribe), root allowed, and a
// timeout that turns a hang into a failure.
std::string mpirun(const std::string & ranks) {
    return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE timeout 120 mpirun --oversubscribe " + ranks;
}

std::string train_args(const std::string & out, int64_t micro_batch) {
    const std::string src = PEFT_SOURCE_DIR;
    return std::string(PEFT_BIN) + " train --base_model " + src + "/models/tiny-llama --datasets " + src +
           "/data/demo/train.jsonl --adapter lora --r 4 --lora_alpha 8 --target_modules all-linear --learning_rate 1e-3"
           " --sequence_len 128 --max_steps 4 --gradient_accumulation_steps 2 --val_set_size 0.05 --eval_steps 2"
           " --logging_steps 1 --seed 1 --threads 1 --progress false --micro_batch_size " +
           std::to_string(micro_batch) + " --output_dir " + out;
}

// Every "loss" and "eval_loss" of metrics.jsonl, in order.
std::vector<double> logged_losses(const std::string & dir) {
    std::ifstream f(dir + "/metrics.jsonl");
    std::vector<double> out;
    std::string line;
    while (std::getline(f, line)) {
        peft::json_document d;
        EXPECT_TRUE(d.parse(line.data(), line.size(), "metrics").ok()) << line;
        for (const char * k : {"loss", "eval_loss"}) {
            if (d.root().get(k).is_number()) out.push_back(d.root().get(k).as_double());
        }
    }
    return out;
}

std::vector<std::vector<float>> adapter_tensors(const std::string & dir) {
    peft::safetensors_file f;
    EXPECT_TRUE(peft::safetensors_open(dir + "/adapter_model.safetensors", f).ok()) << dir;
    std::vector<std::vector<float>> out;
    for (const peft::tensor_info & t : f.tensors) {
        out.emplace_back((size_t) t.n_elements);
        EXPECT_TRUE(peft::read_f32(t, out.back().data()).ok());
    }
    return out;
}

std::set<std::string> names_in(const std::string & dir) {
    std::set<std::string> s;
    for (const auto & e : fs::recursive_directory_iterator(dir)) s.insert(fs::relative(e.path(), dir).string());
    return s;
}

size_t count(const std::string & text, const std::string & what) {
    size_t n = 0;
    for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) n++;
    return n;
}

} // namespace

TEST(dist, two_ranks_train_what_one_process_trains_on_twice_the_batch) {
    const std::string one = peft::testing::temp_dir("dist_one"), two = peft::testing::temp_dir("dist_two");
    shell_result r1 = run_shell(train_args(one, 4));
    ASSERT_EQ(r1.code, 0) << r1.out;
    shell_result r2 = run_shell(mpirun("-np 2 " + train_args(two, 2)));
    ASSERT_EQ(r2.code, 0) << r2.out;
    EXPECT_NE(r2.out.find("data parallel: 2 ranks"), std::string::npos) << r2.out;
    EXPECT_EQ(count(r2.out, "peft train: done:"), 1u) << "rank 0 alone reports\n" << r2.out;

    const std::vector<double> l1 = logged_losses(one), l2 = logged_losses(two);
    ASSERT_EQ(l1.size(), l2.size());
    ASSERT_GE(l1.size(), 4u + 2u);   // 4 steps, evaluations at 0, 2 and 4
    for (size_t i = 0; i < l1.size(); i++) EXPECT_NEAR(l2[i], l1[i], 1e-5 * std::fabs(l1[i])) << "metrics value " << i;

    const auto a1 = adapter_tensors(one), a2 = adapter_tensors(two);
    ASSERT_EQ(a1.size(), a2.size());
    ASSERT_FALSE(a1.empty());
    // Frobenius norm of the difference over that of the tensor: Adam turns the rounding of a
    // gradient element that cancels to near zero into an update of order lr, so single elements
    // may differ by more than the tensor does
    double worst = 0;
    for (size_t t = 0; t < a1.size(); t++) {
        ASSERT_EQ(a1[t].size(), a2[t].size());
        double diff = 0, ref = 0;
        for (size_t i = 0; i < a1[t].size(); i++) {
            diff += ((double) a1[t][i] - a2[t][i]) * ((double) a1[t][i] - a2[t][i]);
            ref += (double) a1[t][i] * a1[t][i];
        }
        worst = std::max(worst, std::sqrt(diff / ref));
        EXPECT_LE(std::sqrt(diff / ref), 1e-4) << "tensor " << t;
    }
    std::printf("2 ranks vs 1 process: worst tensor rel diff %.3g\n", worst);
    // the same files, written once (no second rank's metrics, lock or report)
    EXPECT_EQ(names_in(two), names_in(one));
}

TEST(dist, resume_with_the_same_ranks_is_bit_exact) {
    const std::string dir = peft::testing::temp_dir("dist_resume");
    const std::string args = train_args(dir, 2) + " --save_steps 2";
    shell_result r = run_shell(mpirun("-np 2 " + args));
    ASSERT_EQ(r.code, 0) << r.out;
    const auto straight = adapter_tensors(dir);
    r = run_shell(mpirun("-np 2 " + args + " --resume_from_checkpoint " + dir + "/checkpoint-2"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
    EXPECT_EQ(adapter_tensors(dir), straight);
}

TEST(dist, a_mismatched_configuration_fails_the_job) {
    const std::string dir = peft::testing::temp_dir("dist_mismatch");
    shell_result r = run_shell(mpirun("-np 1 " + train_args(dir, 2) + " : -np 1 " + train_args(dir, 2) + " --learning_rate 2e-3"));
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.code, 124) << "the job hung:\n" << r.out;
    EXPECT_NE(r.out.find("rank 1's configuration differs from rank 0's: rank 0 has \"learning_rate\": 0.001, rank 1 \"learning_rate\": 0.002"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("learning_rate"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(dir + "/adapter_model.safetensors"));
}

TEST(dist, a_rank_that_dies_fails_the_job) {
    const std::string dir = peft::testing::temp_dir("dist_dead");
    shell_result r = run_shell(mpirun("-np 1 " + train_args(dir, 2) + " : -np 1 sh -c 'exit 3'"));
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.code, 124) << "the job hung:\n" << r.out;
    EXPECT_FALSE(fs::exists(dir + "/adapter_model.safetensors"));
}
