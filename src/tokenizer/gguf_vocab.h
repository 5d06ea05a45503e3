// gguf_vocab.h: the tokenizer as llama.cpp's GGUF files hold it (tokenizer.ggml.*, read by
// llama-vocab.cpp), both ways:
//  - the pre-tokenizer names llama.cpp gives the Split regexes it implements (peft export writes
//    the name of the regex a tokenizer.json runs; reading maps the name back to the regex);
//  - a GGUF's byte-level BPE vocabulary ("gpt2": tokens, token_type, merges, bos/eos/pad,
//    add_bos/add_eos) rebuilt as tokenizer.json text, which the tokenizer then loads as usual;
//  - a GGUF's SentencePiece vocabulary ("llama": tokens, scores, token_type) rebuilt as the
//    serialized sentencepiece ModelProto of a BPE model, which libsentencepiece loads (spm.h).
//    llama.cpp's SPM tokenizer is that model's algorithm: merge the adjacent pair whose
//    concatenation is the highest-scored piece, byte pieces for what is left, a "▁" prefix.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct gguf_file;

// llama_token_type (llama.h) as written in tokenizer.ggml.token_type
// (the numbers of sentencepiece's ModelProto.SentencePiece.Type too)
enum : int32_t {
    GGUF_TOKEN_NORMAL = 1, GGUF_TOKEN_UNKNOWN = 2, GGUF_TOKEN_CONTROL = 3, GGUF_TOKEN_USER_DEFINED = 4, GGUF_TOKEN_UNUSED = 5,
    GGUF_TOKEN_BYTE = 6
};

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
    bool        add_bos = false, add_eos = false;   // read by gguf_spm_model_proto (the JSON holds them itself)
    // gguf_spm_model_proto: the tokens llama.cpp finds in text before the SentencePiece model
    // runs (control and unknown: special; user-defined: not special), as HF added tokens
    struct added { int32_t id; std::string content; bool special; };
    std::vector<added> added_tokens;
};

// tokenizer.json text equivalent to f's tokenizer.ggml.* metadata. Errors name the file and key.
// Refuses a "llama" vocabulary (gguf_spm_model_proto reads those).
status gguf_tokenizer_json(const gguf_file & f, std::string & json, gguf_vocab_extra & extra);

// A serialized sentencepiece ModelProto equivalent to f's "llama" vocabulary (tokenizer.ggml.tokens,
// scores, token_type, bos/eos/unk/pad ids, add_bos/add_eos, add_space_prefix). Errors name the file and key.
status gguf_spm_model_proto(const gguf_file & f, std::string & proto, gguf_vocab_extra & extra);

} // namespace peft
