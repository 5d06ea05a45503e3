// tokenizer.h: text <-> token ids, exactly as the model's own tokenizer does it.
// Loads, in this order of preference, from a model directory or a file:
//   tokenizer.json            HF tokenizers format, BPE model (Llama 3, Qwen2/3, GPT-2 exports,
//                             Llama 2 / TinyLlama / Mistral with byte fallback); FORMATS.md §2d
//   tokenizer.model           SentencePiece, through libsentencepiece (when the build has it)
//   encoder.json + vocab.bpe  the original GPT-2 files
//   FILE.gguf                 a GGUF model's tokenizer.ggml.* metadata (byte-level BPE; gguf_vocab.h)
// plus tokenizer_config.json next to it (bos/eos token names, chat_template).
// Encoding = split off added/special tokens -> normalizer -> pre-tokenizer (the regex written in
// the file, run by PCRE2) -> BPE -> post-processor template (BOS/EOS) when add_special.
// Invalid UTF-8 input is repaired first (each maximal ill-formed subpart -> U+FFFD, like a JS
// string or Python's errors="replace"); a tokenizer.model gets the raw bytes (libsentencepiece
// repairs it its own way).
// Not here: chat templates (chat.h), data sets (train/data.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct tokenizer_impl;

enum tokenizer_kind {
    PEFT_TOKENIZER_BPE_BYTE_LEVEL,   // tokenizer.json / GPT-2 files, byte-level BPE
    PEFT_TOKENIZER_BPE,              // tokenizer.json, SentencePiece-style BPE (byte fallback)
    PEFT_TOKENIZER_SENTENCEPIECE,    // tokenizer.model via libsentencepiece
    PEFT_TOKENIZER_KIND_COUNT,
};
const char * tokenizer_kind_name(tokenizer_kind k);

struct tokenizer {
    ~tokenizer();
    tokenizer(const tokenizer &) = delete;
    tokenizer & operator=(const tokenizer &) = delete;

    // path: a model directory or one of the files above. Errors name the file and the field.
    static status load(const std::string & path, std::unique_ptr<tokenizer> & out);
    // From tokenizer.json text in memory (the fuzzable boundary); `where` names it in errors.
    static status load_json_text(const std::string & text, const std::string & where, std::unique_ptr<tokenizer> & out);

    // add_special: apply the post-processor's template (BOS/EOS) as HF encode(add_special_tokens)
    // does. parse_special: text equal to an added token (e.g. "<|eot_id|>") becomes that token,
    // as in HF; false encodes such text as plain text. Thread-safe; calls are serialised.
    std::vector<int32_t> encode(const std::string & text, bool add_special = false, bool parse_special = true) const;
    // Joins the tokens through the file's decoder chain. Output is raw bytes: ids that cut a
    // multi-byte character give its partial bytes (useful when streaming).
    std::string decode(const int32_t * ids, size_t n, bool skip_special = false) const;
    std::string decode(const std::vector<int32_t> & ids, bool skip_special = false) const;

    std::string token_to_piece(int32_t id) const;        // vocabulary string; "" if out of range
    int32_t     token_to_id(const std::string & piece) const;  // -1 if absent
    bool        is_special(int32_t id) const;            // added token marked special / control
    int32_t     n_vocab() const;                         // largest id + 1
    int32_t     bos_id() const;                          // -1 when the model has none
    int32_t     eos_id() const;
    int32_t     pad_id() const;
    tokenizer_kind kind() const;
    // Whether decode(encode(s)) == s for every valid UTF-8 s (byte-level BPE: yes).
    bool        lossless() const;
    const std::string & chat_template() const;           // tokenizer_config.json's, or ""
    const std::string & source() const;                  // the file it was loaded from

private:
    static status load_gguf(const std::string & path, std::unique_ptr<tokenizer> & out);
    tokenizer();
    std::unique_ptr<tokenizer_impl> p;
};

// Files of a Hugging Face model directory that travel with its weights when a new model
// directory is written (peft merge, full fine-tuning): tokenizer files and generation defaults.
const std::vector<std::string> & hf_companion_files();

} // namespace peft
