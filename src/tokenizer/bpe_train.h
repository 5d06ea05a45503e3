// bpe_train.h: trains a byte-level BPE tokenizer (GPT-2 / Llama 3 style) on text and writes it as
// a Hugging Face tokenizer directory: tokenizer.json, tokenizer_config.json (with the chat
// template chat.h recognises), special_tokens_map.json.
// The tokenizer it makes: normalizer null; pre_tokenizer Sequence[Split(Llama 3 regex, Isolated),
// ByteLevel(no prefix space, no regex)]; model BPE whose first 256 ids are the 256 byte symbols
// (in GPT-2's byte->char order, so any text encodes), then one token per merge; the special
// tokens after those; decoder ByteLevel; post_processor adds BOS.
// Training: words (regex pieces) are counted once, then merges are learned with incremental
// pair counts (only the words containing the chosen pair are touched) and a lazy max-heap.
// Ties (equal counts) go to the pair with the smaller (left id, right id), so the same input
// gives the same file bytes.
// Not here: encoding with the result (tokenizer.h), chat rendering (chat.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

enum bpe_train_family {
    PEFT_BPE_FAMILY_LLAMA3,   // <|begin_of_text|> ... <|eot_id|>, Llama 3 instruct template
    PEFT_BPE_FAMILY_CHATML,   // <|endoftext|>, <|im_start|>, <|im_end|>, ChatML template
    PEFT_BPE_FAMILY_COUNT,
};
const char * bpe_train_family_name(bpe_train_family f);
status bpe_train_family_from_name(const std::string & name, bpe_train_family & out);

struct bpe_train_options {
    int32_t vocab_size = 4096;                 // total: 256 bytes + merges + special tokens
    int64_t min_frequency = 2;                 // stop merging when the best pair is rarer
    bpe_train_family family = PEFT_BPE_FAMILY_LLAMA3;
    std::vector<std::string> extra_special;    // appended after the family's special tokens
    int64_t model_max_length = 512;            // tokenizer_config.json
    int64_t max_input_bytes = (int64_t) 1 << 30;  // refuse larger inputs (all files together)
};

struct bpe_train_result {
    std::vector<std::string> vocab;            // id -> token, raw bytes (specials as their text)
    std::vector<int32_t> merge_left, merge_right;  // merge i makes token 256 + i
    int32_t n_special = 0;                     // the last n_special ids
    int32_t bos_id = -1, eos_id = -1, pad_id = -1, eot_id = -1;
    // statistics
    int64_t n_bytes = 0, n_words = 0, n_unique_words = 0, n_replaced_chars = 0;
    double seconds_count = 0, seconds_merge = 0;
    std::string stop_reason;                   // why merging stopped ("vocab_size reached", ...)
};

// Trains on the concatenation of texts (each text is pre-tokenized on its own). Invalid UTF-8
// is repaired (U+FFFD per ill-formed subpart, counted in n_replaced_chars). `where` names
// the input in errors.
status bpe_train_texts(const std::vector<std::string> & texts, const bpe_train_options & opt,
                       bpe_train_result & out);
// Reads the files (errors name the file) and trains on them.
status bpe_train_files(const std::vector<std::string> & paths, const bpe_train_options & opt,
                       bpe_train_result & out);

// The three files' text, deterministic (no timestamps, fixed key order).
std::string bpe_tokenizer_json(const bpe_train_result & r, const bpe_train_options & opt);
std::string bpe_tokenizer_config_json(const bpe_train_result & r, const bpe_train_options & opt);
std::string bpe_special_tokens_map_json(const bpe_train_result & r);
// Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json into dir (created
// when missing), each atomically.
status bpe_write_dir(const std::string & dir, const bpe_train_result & r, const bpe_train_options & opt);

// The Llama 3 pre-tokenizer pattern written into tokenizer.json.
extern const char * BPE_LLAMA3_PATTERN;

} // namespace peft
