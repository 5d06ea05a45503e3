// gguf_vocab.h: the tokenizer as llama.cpp's GGUF files hold it (tokenizer.ggml.*, read by
// llama-vocab.cpp), both ways:
//  - the pre-tokenizer names llama.cpp gives the Split regexes it implements (peft export writes
//    the name of the regex a tokenizer.json runs; reading maps the name back to the regex);
//  - a GGUF's byte-level BPE vocabulary ("gpt2": tokens, token_type, merges, bos/eos/pad,
//    add_bos/add_eos) rebuilt as tokenizer.json text, which the tokenizer then loads as usual.
// Not here: SentencePiece vocabularies ("llama": scores instead of merges), refused with a hint.
#pragma once
#include <cstdint>
#include <string>

#include "core/status.h"

namespace peft {

struct gguf_file;

// llama_token_type (llama.h) as written in tokenizer.ggml.token_type
enum : int32_t { GGUF_TOKEN_NORMAL = 1, GGUF_TOKEN_CONTROL = 3, GGUF_TOKEN_USER_DEFINED = 4, GGUF_TOKEN_UNUSED = 5 };

struct gguf_pre_tokenizer {
    const char * regex;   // tokenizer.json's Split pattern (or ByteLevel's GPT-2 regex)
    const char * name;    // tokenizer.ggml.pre
};
// The rows peft knows, terminated by {nullptr, nullptr}.
extern const gguf_pre_tokenizer GGUF_PRE_TOKENIZERS[];

// What tokenizer_config.json would hold, from the GGUF metadata.
struct gguf_vocab_extra {
    std::string chat_template;
    int32_t     bos = -1, eos = -1, pad = -1;
};

// tokenizer.json text equivalent to f's tokenizer.ggml.* metadata. Errors name the file and key.
status gguf_tokenizer_json(const gguf_file & f, std::string & json, gguf_vocab_extra & extra);

} // namespace peft
