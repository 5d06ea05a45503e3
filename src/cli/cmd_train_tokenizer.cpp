// cmd_train_tokenizer.cpp: `peft train-tokenizer`: learns a byte-level BPE vocabulary from text
// files and writes a Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json), then reloads it to check that it round-trips.
// Not here: the training algorithm and the file contents (tokenizer/bpe_train.h).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "io/json.h"
#include "io/output_guard.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/tokenizer.h"

namespace peft {

int cmd_train_tokenizer(int argc, char ** argv) {
    CLI::App app{"Trains a byte-level BPE tokenizer (Llama 3 pre-tokenizer regex + ByteLevel, all 256 bytes in the\n"
                 "vocabulary) on text files and writes tokenizer.json, tokenizer_config.json and\n"
                 "special_tokens_map.json into --out. Deterministic: the same input gives the same bytes.\n\n"
                 "examples:\n"
                 "  peft train-tokenizer --input corpus.txt --vocab-size 4096 --out models/tiny-llama\n"
                 "  peft train-tokenizer --input a.txt b.txt --vocab-size 8000 --template chatml --out tok/",
                 "peft train-tokenizer"};
    std::vector<std::string> inputs, extra;
    std::string out_dir, family = "llama3";
    bpe_train_options opt;
    app.add_option("--input", inputs, "text files to learn from (UTF-8; invalid bytes are replaced)")->required();
    app.add_option("--vocab-size", opt.vocab_size, "total vocabulary: 256 byte tokens + merges + special tokens")->required();
    app.add_option("--out", out_dir, "output directory (created when missing)")->required();
    app.add_option("--template", family, "special tokens and chat template family: llama3 or chatml");
    app.add_option("--special-tokens", extra, "more special tokens, appended after the family's");
    app.add_option("--min-frequency", opt.min_frequency, "stop when the most frequent pair occurs fewer times")->check(CLI::Range(1, 1 << 30));
    app.add_option("--model-max-length", opt.model_max_length, "model_max_length in tokenizer_config.json")->check(CLI::Range(1, 1 << 30));
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    status st = bpe_train_family_from_name(family, opt.family);
    if (!st.ok()) return cli_fail("train-tokenizer", st);
    opt.extra_special = extra;
    // --out may be a model directory: only tokenizer files this command wrote earlier are replaced
    const std::vector<std::string> names = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    std::vector<input_path> in;
    for (const std::string & f : inputs) in.push_back({"input file", f});
    st = output_check_overlap(out_dir, "--out", in);
    if (st.ok()) st = output_check_names(out_dir, "train-tokenizer", names);
    if (!st.ok()) return cli_fail("train-tokenizer", st);

    bpe_train_result r;
    st = bpe_train_files(inputs, opt, r);
    if (!st.ok()) return cli_fail("train-tokenizer", st);
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    st = output_mark(out_dir, "train-tokenizer", names);   // before writing: a crash leaves files a rerun may replace
    if (st.ok()) st = bpe_write_dir(out_dir, r, opt);
    if (!st.ok()) return cli_fail("train-tokenizer", st);

    // Reload through the real loader so a file it cannot read never leaves this command.
    std::unique_ptr<tokenizer> tok;
    st = tokenizer::load(out_dir, tok);
    if (!st.ok()) return cli_fail("train-tokenizer", st);

    const double secs = r.seconds_count + r.seconds_merge;
    std::printf("{\"out\":%s,\"vocab_size\":%zu,\"merges\":%zu,\"special\":%d,\"bos_id\":%d,\"eos_id\":%d,\"pad_id\":%d,"
                "\"eot_id\":%d,\"bytes\":%lld,\"words\":%lld,\"unique_words\":%lld,\"replaced_chars\":%lld,"
                "\"count_s\":%.3f,\"merge_s\":%.3f,\"mb_per_s\":%.2f,\"stop\":%s}\n",
                json_quote(out_dir).c_str(), r.vocab.size(), r.merge_left.size(), r.n_special, r.bos_id, r.eos_id, r.pad_id,
                r.eot_id, (long long) r.n_bytes, (long long) r.n_words, (long long) r.n_unique_words,
                (long long) r.n_replaced_chars, r.seconds_count, r.seconds_merge, secs > 0 ? (double) r.n_bytes / secs / 1e6 : 0.0,
                json_quote(r.stop_reason).c_str());
    if ((int64_t) r.vocab.size() < opt.vocab_size) {
        std::fprintf(stderr, "peft train-tokenizer: note: vocabulary is %zu, not %d: %s\n", r.vocab.size(), opt.vocab_size,
                     r.stop_reason.c_str());
    }
    return 0;
}

} // namespace peft
