// pretok.h: the tokenizer.json pre-tokenizers: Split (the pattern written in the file, run by
// PCRE2 with UTF + UCP and JIT), ByteLevel, Metaspace, Digits, and Sequence of them.
// ByteLevel here only splits (GPT-2 regex when use_regex) and adds the prefix space: pieces stay
// raw bytes, and the BPE model keys its vocabulary by raw bytes too (bpe.h), which is the same
// mapping as HF's byte->char table without converting every byte of the input.
// Not here: normalization (normalize.h), added-token splitting (tokenizer.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct pretok_regex;  // a compiled PCRE2 pattern (opaque; pretok.cpp)

// literal = the pattern is a plain string ({"String": ...} in tokenizer.json).
status pretok_regex_compile(const std::string & pattern, bool literal, const std::string & where,
                            std::shared_ptr<pretok_regex> & out);

enum pretok_kind {
    PEFT_PRETOK_SPLIT,
    PEFT_PRETOK_BYTE_LEVEL,
    PEFT_PRETOK_METASPACE,
    PEFT_PRETOK_COUNT,
};

// HF SplitDelimiterBehavior.
enum split_behavior {
    PEFT_SPLIT_ISOLATED,
    PEFT_SPLIT_REMOVED,
    PEFT_SPLIT_MERGED_WITH_PREVIOUS,
    PEFT_SPLIT_MERGED_WITH_NEXT,
    PEFT_SPLIT_CONTIGUOUS,
    PEFT_SPLIT_COUNT,
};

enum prepend_scheme {
    PEFT_PREPEND_ALWAYS,
    PEFT_PREPEND_FIRST,
    PEFT_PREPEND_NEVER,
};

struct pretok_step {
    pretok_kind kind = PEFT_PRETOK_SPLIT;
    std::shared_ptr<pretok_regex> re;          // SPLIT; BYTE_LEVEL with use_regex (GPT-2 pattern)
    split_behavior behavior = PEFT_SPLIT_ISOLATED;
    bool invert = false;
    bool add_prefix_space = false;             // BYTE_LEVEL
    std::string replacement = "\xE2\x96\x81";  // METASPACE: U+2581
    prepend_scheme scheme = PEFT_PREPEND_ALWAYS;
    bool split = true;                         // METASPACE
};

// The GPT-2 pattern ByteLevel(use_regex=true) applies.
extern const char * PRETOK_GPT2_PATTERN;

// Splits valid UTF-8 `text` into pieces. `first` says whether the text starts the input
// (Metaspace prepend_scheme "first"). Not thread-safe per regex (match buffers are reused):
// the tokenizer serialises calls.
void pretok_apply(const std::vector<pretok_step> & steps, const std::string & text, bool first,
                  std::vector<std::string> & pieces);

// Byte ranges [begin, end) of the pieces one Isolated, non-inverted Split produces: the whole
// pre-tokenizer of Llama 3 / Qwen2 files (their ByteLevel step only maps bytes), without
// building a string per piece. Same thread-safety rule as pretok_apply.
void pretok_split_ranges(pretok_regex & re, const std::string & text, std::vector<size_t> & bounds);

} // namespace peft
