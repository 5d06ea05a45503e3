// cmd_train_tokenizer.cpp: `peft train-tokenizer`: learns a byte-level BPE vocabulary from text
// files and writes a Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json), then reloads it to check that it round-trips.
// Not here: the training algorithm and the file contents (tokenizer/bpe_train.h).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"
#include "io/json.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/tokenizer.h"

namespace peft {

static int train_tokenizer_fail(const status & st) {
    std::fprintf(stderr, "peft train-tokenizer: %s\n", st.message.c_str());
    if (!st.hint.empty()) std::fprintf(stderr, "---> HINT: %s\n", st.hint.c_str());
    return 1;
}

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
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        return app.exit(e);
    }
    status st = bpe_train_family_from_name(family, opt.family);
    if (!st.ok()) return train_tokenizer_fail(st);
    opt.extra_special = extra;

    bpe_train_result r;
    st = bpe_train_files(inputs, opt, r);
    if (!st.ok()) return train_tokenizer_fail(st);
    st = bpe_write_dir(out_dir, r, opt);
    if (!st.ok()) return train_tokenizer_fail(st);

    // Reload through the real loader so a file it cannot read never leaves this command.
    std::unique_ptr<tokenizer> tok;
    st = tokenizer::load(out_dir, tok);
    if (!st.ok()) return train_tokenizer_fail(st);

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
