// test_reliability.cpp: peft as a careless or unlucky user meets it, in one place.
//  - hostile_inputs: a table of command lines that must fail with a given exit code and a message
//    naming what is wrong, and must leave every input byte-identical (no command destroys what
//    the user has);
//  - concurrent runs on one output_dir (the second is refused, naming the first's PID);
//  - kill -9 at random points of training + checkpointing and of merge: what is on disk is always
//    complete, and resuming gives the uninterrupted result bit for bit;
//  - a full disk at every write: a small tmpfs when this process may mount one, else a file-size
//    limit (RLIMIT_FSIZE); nothing half-written is left, and finished weights are rescued.
#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <sys/mount.h>
#include <unistd.h>
#include <vector>

#include "io/json.h"
#include "testing.h"
#include "train/test_trainer_util.h"

using namespace peft::testing;
namespace fs = std::filesystem;

namespace {

struct fixture_files {
    std::string root, model, data, adapter, long_prompts, bad_line;
};

std::vector<std::string> train_args(const fixture_files & f, const std::string & out) {
    return {"train", "--base_model", f.model, "--datasets", f.data, "--output_dir", out, "--r", "4", "--target-modules",
            "q_proj,v_proj", "--learning-rate", "1e-2", "--micro_batch_size", "2", "--sequence_len", "32",
            "--threads", "1", "--seed", "5", "--lr_scheduler", "constant"};
}

const fixture_files & fixture() {
    static fixture_files f = [] {
        fixture_files x;
        x.root = temp_dir("reliability");
        x.model = make_model_dir("reliability_model");
        x.data = make_data_file(x.root, "train.jsonl", 20, 3);
        // a prompt of 12 masked tokens, then 4 trained ones: nothing left to score at 8 tokens
        x.long_prompts = x.root + "/long_prompts.jsonl";
        std::ofstream(x.long_prompts) << "{\"input_ids\": [5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],"
                                         " \"labels\": [-100,-100,-100,-100,-100,-100,-100,-100,-100,-100,-100,-100,17,18,19,20]}\n";
        x.bad_line = x.root + "/bad_line.jsonl";
        std::ofstream(x.bad_line) << read_text(x.data) << "{\"input_ids\": [1, 2,\n";
        x.adapter = x.root + "/adapter";
        auto a = train_args(x, x.adapter);
        a.insert(a.end(), {"--max_steps", "2"});
        const child_result r = spawn_peft(a);
        if (r.code != 0) ADD_FAILURE() << r.out;
        return x;
    }();
    return f;
}

// name -> bytes of every regular file below dir (the inputs must stay exactly as they were)
std::map<std::string, std::string> snapshot(const std::string & dir) {
    std::map<std::string, std::string> s;
    for (const auto & e : fs::recursive_directory_iterator(dir)) {
        if (e.is_regular_file()) s[e.path().string()] = read_text(e.path().string());
    }
    return s;
}

std::string expand(std::string s, const std::map<std::string, std::string> & vars) {
    for (const auto & kv : vars) {
        for (size_t p; (p = s.find(kv.first)) != std::string::npos;) s.replace(p, kv.first.size(), kv.second);
    }
    return s;
}

std::vector<std::string> split_args(const std::string & s) {
    std::vector<std::string> out;
    std::string cur;
    bool quoted = false;
    for (char c : s) {
        if (c == '\'') quoted = !quoted;
        else if (c == ' ' && !quoted) {
            if (!cur.empty()) out.push_back(cur);
            cur.clear();
        } else cur += c;
    }
    if (!cur.empty()) out.push_back(cur);
    return out;
}

// One hostile situation: `setup` (a shell line, may be empty) prepares {T}, the fresh directory of
// the case; then `args` runs; the exit code and a piece of the message are checked.
struct hostile_case {
    const char * name;
    const char * setup;
    const char * args;
    int          code;
    const char * message;
};

const char * const TRAIN = "train --base_model {MODEL} --datasets {DATA} --r 4 --max_steps 1 --threads 1 --progress false";

const hostile_case HOSTILE[] = {
    // outputs that are, contain or sit inside an input
    {"merge_out_is_the_adapter", "", "merge --model {MODEL} --adapter {ADAPTER} --out {ADAPTER} --force", 2, "--out is the adapter"},
    {"merge_out_contains_model_and_adapter", "mkdir -p {T}/all && cp -r {MODEL} {T}/all/model && cp -r {ADAPTER} {T}/all/adapter",
     "merge --model {T}/all/model --adapter {T}/all/adapter --out {T}/all --force", 2, "contains the base model"},
    {"merge_out_inside_the_adapter", "", "merge --model {MODEL} --adapter {ADAPTER} --out {ADAPTER}/merged", 2, "lies inside the adapter"},
    {"merge_out_symlink_to_the_adapter", "ln -s {ADAPTER} {T}/link", "merge --model {MODEL} --adapter {ADAPTER} --out {T}/link --force", 2,
     "is the adapter"},
    {"merge_out_relative_path_to_the_model", "", "merge --model {MODEL} --adapter {ADAPTER} --out {MODEL}/../{MODELNAME} --force", 2,
     "is the base model"},
    {"merge_force_on_a_foreign_directory", "mkdir -p {T}/mine && echo keep > {T}/mine/notes.txt",
     "merge --model {MODEL} --adapter {ADAPTER} --out {T}/mine --force", 1, "was not written by peft merge"},
    {"train_full_into_the_base_model", "", "train --base_model {MODEL} --datasets {DATA} --adapter full --output_dir {MODEL} --max_steps 1", 2,
     "output_dir is the base model"},
    {"train_into_a_directory_holding_the_data", "", "train --base_model {MODEL} --datasets {DATA} --output_dir {ROOT} --max_steps 1", 2,
     "output_dir contains the data file"},
    {"train_over_another_commands_adapter", "cp -r {ADAPTER} {T}/a && rm {T}/a/.peft_output.json",
     "train --base_model {MODEL} --datasets {DATA} --output_dir {T}/a --max_steps 1", 1, "was not written by peft train"},
    {"train_tokenizer_into_a_model_directory", "cp -r {MODEL} {T}/m",
     "train-tokenizer --input {DATA} --vocab-size 300 --out {T}/m", 1, "tokenizer.json: exists and was not written by peft train-tokenizer"},
    {"train_tokenizer_over_its_input", "", "train-tokenizer --input {DATA} --vocab-size 300 --out {DATA}", 2, "--out is the input file"},
    // zero work is an error
    {"eval_with_nothing_left_to_score", "", "eval --model {MODEL} --data {LONG} --sequence_len 8", 1, "sequence_len 13 or more keeps them"},
    {"train_with_nothing_left_to_score", "", "train --base_model {MODEL} --datasets {LONG} --sequence_len 8 --output_dir {T}/o", 1,
     "no scored tokens"},
    {"train_sequence_len_2", "", "train --base_model {MODEL} --datasets {LONG} --sequence_len 2 --output_dir {T}/o", 1, "no scored tokens"},
    // bad input names what is wrong
    {"eval_data_is_a_directory", "", "eval --model {MODEL} --data {ROOT}", 1, "is a directory"},
    {"tokenize_file_is_a_directory", "", "tokenize --tokenizer {MODEL} --file {ROOT}", 2, "directory"},
    {"bad_line_hint_names_an_existing_key", "", "train --base_model {MODEL} --datasets {BADLINE} --output_dir {T}/o", 1, "skip_bad_lines: true"},
    {"layers_to_transform_beyond_the_model", "", "{TRAIN} --output_dir {T}/o --layers_to_transform '[0, 99]'", 2, "layer 99"},
    {"exclude_modules_all_linear", "", "{TRAIN} --output_dir {T}/o --target_modules all-linear --exclude_modules all-linear", 2,
     "exclude_modules"},
    {"concurrent_lock_file_of_a_dead_run_is_no_lock", "mkdir -p {T}/o && echo 999999 > {T}/o/.peft_lock", "{TRAIN} --output_dir {T}/o", 0, "done"},
    // usage errors exit 2 in every command
    {"train_threads_negative", "", "{TRAIN} --output_dir {T}/o --threads -3", 2, "threads"},
    {"eval_threads_negative", "", "eval --model {MODEL} --data {DATA} --threads -3", 2, "--threads"},
    {"generate_threads_negative", "", "generate --model {MODEL} --prompt hi --threads -3", 2, "--threads"},
    {"merge_threads_negative", "", "merge --model {MODEL} --adapter {ADAPTER} --out {T}/m --threads -3", 2, "--threads"},
    {"bench_threads_negative", "", "bench --shape tiny --threads -3", 2, "--threads"},
    {"train_unknown_flag", "", "{TRAIN} --output_dir {T}/o --no-such-flag 1", 2, "no-such-flag"},
    {"eval_unknown_flag", "", "eval --model {MODEL} --data {DATA} --no-such-flag", 2, "no-such-flag"},
    {"generate_unknown_flag", "", "generate --model {MODEL} --prompt hi --no-such-flag", 2, "no-such-flag"},
    {"merge_unknown_flag", "", "merge --model {MODEL} --adapter {ADAPTER} --out {T}/m --no-such-flag", 2, "no-such-flag"},
    {"tokenize_unknown_flag", "", "tokenize --tokenizer {MODEL} --text hi --no-such-flag", 2, "no-such-flag"},
    {"train_tokenizer_unknown_flag", "", "train-tokenizer --input {DATA} --vocab-size 300 --out {T}/t --no-such-flag", 2, "no-such-flag"},
    {"bench_unknown_flag", "", "bench --shape tiny --no-such-flag", 2, "no-such-flag"},
    {"unknown_command", "", "no-such-command", 2, "unknown command"},
    {"eval_missing_required", "", "eval --model {MODEL}", 2, "--data"},
};

void PrintTo(const hostile_case & c, std::ostream * os) { *os << c.name; }

// The case's setup and command lines with every {NAME} replaced; t is its fresh directory.
std::pair<std::string, std::vector<std::string>> prepare(const hostile_case & c, const std::string & t) {
    const fixture_files & f = fixture();
    const std::string cmd = expand(c.args, {{"{TRAIN}", TRAIN}});
    const std::map<std::string, std::string> vars = {
        {"{MODELNAME}", fs::path(f.model).filename().string()}, {"{MODEL}", f.model}, {"{DATA}", f.data}, {"{ADAPTER}", f.adapter},
        {"{LONG}", f.long_prompts}, {"{BADLINE}", f.bad_line}, {"{ROOT}", f.root}, {"{T}", t}};
    return {expand(c.setup, vars), split_args(expand(cmd, vars))};
}

// The --flags named in a line of text.
std::vector<std::string> flags_in(const std::string & line) {
    std::vector<std::string> out;
    for (size_t q = line.find("--"); q != std::string::npos; q = line.find("--", q + 2)) {
        size_t e = q + 2;
        while (e < line.size() && (std::islower((unsigned char) line[e]) || line[e] == '-' || line[e] == '_')) e++;
        if (e - q > 3) out.push_back(line.substr(q, e - q));
    }
    return out;
}

class hostile : public ::testing::TestWithParam<hostile_case> {};

TEST_P(hostile, fails_clearly_and_leaves_every_input_as_it_was) {
    const hostile_case & c = GetParam();
    const fixture_files & f = fixture();
    const std::string t = temp_dir(std::string("hostile_") + c.name);
    const auto [setup, args] = prepare(c, t);
    if (!setup.empty()) {
        ASSERT_EQ(std::system(setup.c_str()), 0) << setup;
    }
    const auto before_model = snapshot(f.model), before_root = snapshot(f.root), before_t = snapshot(t);
    const child_result r = spawn_peft(args);
    EXPECT_EQ(r.code, c.code) << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << "want \"" << c.message << "\" in:\n" << r.out;
    EXPECT_EQ(r.out.find("Segmentation"), std::string::npos) << r.out;
    EXPECT_TRUE(snapshot(f.model) == before_model) << "the base model changed";
    EXPECT_TRUE(snapshot(f.root) == before_root) << "the data or the adapter changed";
    if (c.code != 0) {
        // files the case set up (a model copy, somebody's notes) are untouched as well
        for (const auto & kv : before_t) EXPECT_EQ(read_text(kv.first), kv.second) << kv.first;
    }
}

INSTANTIATE_TEST_SUITE_P(reliability, hostile, ::testing::ValuesIn(HOSTILE),
                         [](const ::testing::TestParamInfo<hostile_case> & i) { return std::string(i.param.name); });

// Every HINT line of every case names only options that exist: each --flag in a hint must be
// accepted by some command's --help.
TEST(reliability, hints_name_only_options_that_exist) {
    std::string helps;
    for (const char * c : {"train", "eval", "generate", "merge", "tokenize", "train-tokenizer", "bench"}) {
        helps += spawn_peft({c, "--help"}).out;
    }
    auto accepted = [&](const std::string & flag) {   // peft train takes dashes and underscores alike
        std::string key = flag.substr(2);
        std::replace(key.begin(), key.end(), '-', '_');
        return helps.find(flag) != std::string::npos || helps.find(key) != std::string::npos;
    };
    int hints = 0;
    for (const hostile_case & c : HOSTILE) {
        const auto [setup, args] = prepare(c, temp_dir("hint"));
        if (!setup.empty() && std::system(setup.c_str()) != 0) continue;
        const std::string out = spawn_peft(args).out;
        for (size_t p = out.find("HINT:"); p != std::string::npos; p = out.find("HINT:", p + 1)) {
            ++hints;
            const std::string line = out.substr(p, out.find('\n', p) - p);
            for (const std::string & flag : flags_in(line)) EXPECT_TRUE(accepted(flag)) << c.name << ": hint names " << flag << ": " << line;
        }
    }
    EXPECT_GT(hints, 5);
    // and every hint written in the sources, reached by a test or not
    int flags = 0;
    for (const auto & e : fs::recursive_directory_iterator(source_path("src"))) {
        if (e.path().extension() != ".cpp") continue;
        for (const std::string & line : read_lines(e.path().string())) {
            if (line.find("hint") == std::string::npos) continue;
            for (const std::string & flag : flags_in(line)) {
                ++flags;
                EXPECT_TRUE(accepted(flag)) << e.path().filename() << ": a hint names " << flag << ", which no command accepts";
            }
        }
    }
    EXPECT_GT(flags, 10);
}

} // namespace

namespace {

bool metrics_all_json(const std::string & path, int * n_lines) {
    int n = 0;
    for (const std::string & l : read_lines(path)) {
        peft::json_document d;
        if (!d.parse(l.data(), l.size(), path).ok()) return false;
        ++n;
    }
    if (n_lines) *n_lines = n;
    return true;
}

std::vector<std::string> long_train_args(const std::string & out, const char * steps) {
    std::vector<std::string> a = train_args(fixture(), out);
    a.insert(a.end(), {"--max_steps", steps, "--logging_steps", "1", "--save_steps", "1"});
    return a;
}

} // namespace

TEST(reliability, a_second_run_on_the_same_output_dir_is_refused_naming_the_first) {
    const std::string out = temp_dir("concurrent") + "/o";
    child_result second;
    int first_pid = 0;
    spawn_options o;
    o.passive_omp = true;
    // the first run prints "step 1/..." once it holds the lock; the second starts right then
    o.on_output = [&](int pid, const std::string & text) {
        if (text.find("step 1/") == std::string::npos) return false;
        first_pid = pid;
        second = spawn_peft(long_train_args(out, "3"));
        return true;
    };
    const child_result first = spawn_peft(long_train_args(out, "40"), o);
    EXPECT_EQ(first.code, 0) << first.out;
    EXPECT_EQ(second.code, 1) << second.out;
    EXPECT_NE(second.out.find("in use by another peft train (PID " + std::to_string(first_pid) + ")"), std::string::npos) << second.out;
    int lines = 0;
    EXPECT_TRUE(metrics_all_json(out + "/metrics.jsonl", &lines));
    EXPECT_EQ(lines, 40);
}

// kill -9 at random moments of a run that checkpoints every step; after each kill every
// checkpoint on disk verifies, and resuming from the latest reaches the uninterrupted result.
TEST(reliability, kill_9_at_random_points_of_training_and_saving_always_resumes_bit_exactly) {
    const std::string dir = temp_dir("kill9");
    const child_result straight = spawn_peft(long_train_args(dir + "/straight", "12"));
    ASSERT_EQ(straight.code, 0) << straight.out;
    const std::string want = read_text(dir + "/straight/adapter_model.safetensors");
    std::mt19937 gen(1234);
    int kills = 0;   // rounds whose kill landed before the run finished: 4 are wanted
    for (int round = 0; round < 12 && kills < 4; ++round) {
        const std::string out = dir + "/k" + std::to_string(round);
        // each round: killed after a random number of output bytes (steps and saves interleave)
        std::uniform_int_distribution<int> after_step(1, 10);
        const std::string mark = "step " + std::to_string(after_step(gen)) + "/";
        std::uniform_int_distribution<int> delay_us(0, 20000);
        const int us = delay_us(gen);
        spawn_options o;
        o.passive_omp = true;
        o.on_output = [&](int pid, const std::string & text) {
            if (text.find(mark) == std::string::npos) return false;
            usleep((useconds_t) us);
            kill(pid, SIGKILL);
            return true;
        };
        const child_result killed = spawn_peft(long_train_args(out, "12"), o);
        if (killed.code == 0) {   // it finished within the delay: nothing to resume, the result stands
            EXPECT_TRUE(read_text(out + "/adapter_model.safetensors") == want) << "round " << round;
            continue;
        }
        ASSERT_EQ(killed.code, 128 + SIGKILL) << killed.out;
        kills++;
        auto resume = long_train_args(out, "12");
        resume.insert(resume.end(), {"--resume_from_checkpoint", "latest"});
        const child_result r = spawn_peft(resume);
        ASSERT_EQ(r.code, 0) << mark << " +" << us << "us\n" << r.out;
        EXPECT_TRUE(read_text(out + "/adapter_model.safetensors") == want) << "round " << round << ": " << mark << " +" << us << "us";
        EXPECT_TRUE(metrics_all_json(out + "/metrics.jsonl", nullptr));
    }
    EXPECT_EQ(kills, 4);
}

// kill -9 at random moments of merge: --out is absent or complete; the rerun takes over the
// leftover work directory (its own) and finishes.
TEST(reliability, kill_9_during_merge_leaves_no_partial_output_and_the_rerun_finishes) {
    const fixture_files & f = fixture();
    const std::string dir = temp_dir("kill9_merge");
    std::mt19937 gen(99);
    for (int round = 0; round < 6; ++round) {
        const std::string out = dir + "/m" + std::to_string(round);
        const std::vector<std::string> args = {"merge", "--model", f.model, "--adapter", f.adapter, "--out", out, "--threads", "1"};
        const pid_t pid = fork();
        if (pid == 0) {
            execl(PEFT_BIN, PEFT_BIN, "merge", "--model", f.model.c_str(), "--adapter", f.adapter.c_str(), "--out", out.c_str(), "--threads", "1",
                  (char *) nullptr);
            _exit(127);
        }
        std::uniform_int_distribution<int> delay_us(0, 60000);
        usleep((useconds_t) delay_us(gen));
        kill(pid, SIGKILL);
        int st = 0;
        waitpid(pid, &st, 0);
        if (fs::exists(out)) {   // renamed into place: then it is whole
            EXPECT_TRUE(fs::exists(out + "/model.safetensors") && fs::exists(out + "/config.json")) << out;
            continue;
        }
        const child_result r = spawn_peft(args);
        EXPECT_EQ(r.code, 0) << r.out;
        EXPECT_TRUE(fs::exists(out + "/model.safetensors")) << r.out;
        EXPECT_FALSE(fs::exists(out + ".tmp")) << r.out;
    }
}

// A full disk at each write of a run (metrics, config, checkpoints, final adapter): the output
// directory sits on a tmpfs of growing size, so every write in turn is the one that fails. With
// no permission to mount, a per-process file-size limit stands in (each file in turn too large).
// Whatever fails: a non-zero exit naming a path, no half-written file left, every checkpoint on
// disk verifies, and when only the final write failed the weights are rescued where it says.
TEST(reliability, a_full_disk_at_any_write_loses_nothing_and_says_where_things_are) {
    const std::string dir = temp_dir("disk_full"), mnt = dir + "/mnt", rescue_tmp = dir + "/tmp";
    fs::create_directories(mnt);
    fs::create_directories(rescue_tmp);
    const bool tmpfs = ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4k") == 0;
    if (tmpfs) ::umount(mnt.c_str());
    int failures = 0, rescued = 0, finished = 0;
    for (int k = 1; k <= 24; ++k) {
        const std::string out = mnt + "/o";
        long fsize = 0;
        if (tmpfs) {
            const std::string opt = "size=" + std::to_string(4 * k) + "k";
            ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", 0, opt.c_str()), 0);
        } else {
            fs::remove_all(out);
            fsize = 512L * k;
        }
        auto args = long_train_args(out, "3");
        if (k % 2) args.insert(args.end(), {"--save_steps", "0"});   // odd k: only the final write holds the weights
        spawn_options o;
        o.fsize_limit = fsize;
        o.env = {{"TMPDIR", rescue_tmp}};
        const child_result r = spawn_peft(args, o);
        if (r.code == 0) {
            ++finished;
            EXPECT_TRUE(fs::exists(out + "/adapter_model.safetensors")) << r.out;
        } else {
            ++failures;
            EXPECT_EQ(r.code, 1) << r.out;
            EXPECT_NE(r.out.find(out), std::string::npos) << "the error names no path under output_dir:\n" << r.out;
            for (const auto & e : fs::recursive_directory_iterator(out)) {
                EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << "left behind: " << e.path() << "\n" << r.out;
            }
            const size_t at = r.out.find("they were saved to ");
            if (at != std::string::npos) {
                ++rescued;
                const std::string where = r.out.substr(at + 19, r.out.find(' ', at + 19) - at - 19);
                EXPECT_TRUE(fs::exists(where + "/adapter_model.safetensors")) << where;
                EXPECT_TRUE(fs::exists(where + "/checkpoint-3/trainer_state.safetensors")) << where;
                fs::remove_all(where);
            }
        }
        if (tmpfs) {
            ASSERT_EQ(::umount(mnt.c_str()), 0);
        }
    }
    std::printf("%s: %d runs failed (%d rescued), %d finished\n", tmpfs ? "tmpfs" : "RLIMIT_FSIZE", failures, rescued, finished);
    EXPECT_GT(failures, 0);
    EXPECT_GT(finished, 0) << "no size was large enough: the sweep does not reach a successful run";
    if (tmpfs) {
        EXPECT_GT(rescued, 0) << "no size failed exactly at the final write";
    }
}
