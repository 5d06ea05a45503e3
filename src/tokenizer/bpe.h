// bpe.h: the BPE model of tokenizer.json (HF `models/bpe`): a vocabulary, a merge-rank table and
// the merge loop, for both flavours peft.cpp meets:
//   byte-level (GPT-2, Llama 3, Qwen2/3): vocabulary strings are written in GPT-2's byte->char
//     alphabet; here they are keyed by the raw bytes they stand for, and a word starts as one
//     symbol per byte;
//   SentencePiece-style (Llama 2, TinyLlama, Mistral): a word starts as one symbol per UTF-8
//     character; a character not in the vocabulary becomes <0xXX> byte tokens (byte_fallback)
//     or <unk> (consecutive unks fused when fuse_unk).
// The merge loop applies the lowest-rank adjacent pair first (ties: leftmost), with a binary
// heap over a doubly linked symbol list, so a word of n symbols costs O(n log n).
// Not here: splitting text into words (pretok.h), added tokens and decoding (tokenizer.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct bpe_options {
    bool byte_level = false;     // keys are byte-level strings (decoded to raw bytes here)
    bool byte_fallback = false;
    bool fuse_unk = false;
    bool ignore_merges = false;  // a word that is itself in the vocabulary is emitted as one token
    int32_t unk_id = -1;
};

struct bpe_model_impl;

struct bpe_model {
    bpe_model();
    ~bpe_model();
    bpe_model(const bpe_model &) = delete;
    bpe_model & operator=(const bpe_model &) = delete;

    // tokens[id] is the vocabulary string as written in the file (empty for unused ids);
    // merge i joins merges_left[i] + merges_right[i] with rank i. `where` names the file.
    status init(const std::vector<std::string> & tokens, const std::vector<std::string> & merges_left,
                const std::vector<std::string> & merges_right, const bpe_options & opt, const std::string & where);

    // Appends the ids of one pre-tokenized word (raw bytes for byte-level, else UTF-8 text).
    // Results of words up to 256 bytes are cached (not thread-safe: the tokenizer serialises).
    void encode_word(const char * s, size_t n, std::vector<int32_t> & out);
    void clear_cache();

    // Id of a token by its file-form string, or -1.
    int32_t find(const std::string & token) const;

private:
    std::unique_ptr<bpe_model_impl> p;
};

} // namespace peft
