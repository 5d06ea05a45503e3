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
            "--threads", "1", "--seed", "5", "--lr_scheduler", "constant", "--progress", "false"};
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

class hostile : public ::testing::TestWithParam<hostile_case> {};

TEST_P(hostile, fails_clearly_and_leaves_every_input_as_it_was) {
    const hostile_case & c = GetParam();
    const fixture_files & f = fixture();
    const std::string t = temp_dir(std::string("hostile_") + c.name);
    std::map<std::string, std::string> vars = {{"{TRAIN}", TRAIN}};
    std::string cmd = expand(c.args, vars);
    vars = {{"{MODELNAME}", fs::path(f.model).filename().string()}, {"{MODEL}", f.model}, {"{DATA}", f.data}, {"{ADAPTER}", f.adapter},
            {"{LONG}", f.long_prompts}, {"{BADLINE}", f.bad_line}, {"{ROOT}", f.root}, {"{T}", t}};
    if (*c.setup) ASSERT_EQ(std::system(expand(c.setup, vars).c_str()), 0) << c.setup;
    const auto before_model = snapshot(f.model), before_root = snapshot(f.root), before_t = snapshot(t);
    const child_result r = spawn_peft(split_args(expand(cmd, vars)));
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
    const fixture_files & f = fixture();
    std::string helps;
    for (const char * c : {"train", "eval", "generate", "merge", "tokenize", "train-tokenizer", "bench"}) {
        helps += spawn_peft({c, "--help"}).out;
    }
    int hints = 0;
    for (const hostile_case & c : HOSTILE) {
        const std::string t = temp_dir("hint");
        std::map<std::string, std::string> vars = {{"{TRAIN}", TRAIN}};
        std::string cmd = expand(c.args, vars);
        vars = {{"{MODELNAME}", fs::path(f.model).filename().string()}, {"{MODEL}", f.model}, {"{DATA}", f.data},
                {"{ADAPTER}", f.adapter}, {"{LONG}", f.long_prompts}, {"{BADLINE}", f.bad_line}, {"{ROOT}", f.root}, {"{T}", t}};
        if (*c.setup && std::system(expand(c.setup, vars).c_str()) != 0) continue;
        const std::string out = spawn_peft(split_args(expand(cmd, vars))).out;
        for (size_t p = out.find("HINT:"); p != std::string::npos; p = out.find("HINT:", p + 1)) {
            ++hints;
            const std::string line = out.substr(p, out.find('\n', p) - p);
            for (size_t q = line.find("--"); q != std::string::npos; q = line.find("--", q + 2)) {
                size_t e = q + 2;
                while (e < line.size() && (std::isalnum((unsigned char) line[e]) || line[e] == '-' || line[e] == '_')) e++;
                const std::string flag = line.substr(q, e - q);
                if (flag.size() <= 2) continue;
                std::string alt = flag;   // peft train accepts dashes and underscores alike
                std::replace(alt.begin() + 2, alt.end(), '-', '_');
                EXPECT_TRUE(helps.find(flag) != std::string::npos || helps.find(alt.substr(2)) != std::string::npos)
                    << c.name << ": hint names " << flag << ": " << line;
            }
        }
    }
    EXPECT_GT(hints, 5);
}

} // namespace
