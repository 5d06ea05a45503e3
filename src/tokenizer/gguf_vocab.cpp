// gguf_vocab.cpp: tokenizer.ggml.* <-> tokenizer.json (see gguf_vocab.h).
#include "tokenizer/gguf_vocab.h"

#include <string_view>
#include <vector>

#include "io/gguf_read.h"
#include "io/json.h"

namespace peft {

// convert_hf_to_gguf.py's get_vocab_base_pre names for the tokenizers whose regex llama.cpp
// implements (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_*); "gpt-2" is ByteLevel's own regex.
const gguf_pre_tokenizer GGUF_PRE_TOKENIZERS[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "llama-bpe"},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen2"},
    {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", "gpt-2"},
    {nullptr, nullptr},
};

namespace {

status unsupported(const gguf_file & f, const std::string & what, const std::string & hint) {
    status st = make_error(PEFT_STATUS_CONFIG, f.path, what);
    st.hint = hint;
    return st;
}

// {"type": "SpecialToken", "id": name} in a template, and its entry in special_tokens
void template_token(const std::string & name, int32_t id, std::string & single, std::string & specials) {
    const std::string q = json_quote(name);
    single += "{\"SpecialToken\":{\"id\":" + q + ",\"type_id\":0}},";
    if (!specials.empty()) specials += ",";
    specials += q + ":{\"id\":" + q + ",\"ids\":[" + std::to_string(id) + "],\"tokens\":[" + q + "]}";
}

} // namespace

status gguf_tokenizer_json(const gguf_file & f, std::string & json, gguf_vocab_extra & extra) {
    const std::string TOKENIZER_HINT = "pass the model's Hugging Face tokenizer with --tokenizer DIR (tokenizer.json)";
    std::string model;
    PEFT_TRY(f.get_str("tokenizer.ggml.model", model, true));
    if (model != "gpt2") {
        return unsupported(f, "tokenizer.ggml.model \"" + model + "\": only byte-level BPE (\"gpt2\") vocabularies are read from GGUF",
                           model == "llama" ? "a SentencePiece vocabulary (Llama 2, TinyLlama, Mistral): " + TOKENIZER_HINT : TOKENIZER_HINT);
    }
    std::string pre = "default";
    PEFT_TRY(f.get_str("tokenizer.ggml.pre", pre, false));
    const char * regex = nullptr;
    for (const gguf_pre_tokenizer * p = GGUF_PRE_TOKENIZERS; p->name; p++) {
        if (pre == p->name) regex = p->regex;
    }
    if (!regex) {
        std::string known;
        for (const gguf_pre_tokenizer * p = GGUF_PRE_TOKENIZERS; p->name; p++) known += std::string(known.empty() ? "" : ", ") + p->name;
        return unsupported(f, "tokenizer.ggml.pre \"" + pre + "\" is not a pre-tokenizer peft knows (" + known + ")", TOKENIZER_HINT);
    }
    std::vector<std::string_view> tokens, merges;
    std::vector<int32_t> types;
    PEFT_TRY(f.get_arr_str("tokenizer.ggml.tokens", tokens, true));
    PEFT_TRY(f.get_arr_str("tokenizer.ggml.merges", merges, true));
    PEFT_TRY(f.get_arr_i32("tokenizer.ggml.token_type", types, false));
    if (!types.empty() && types.size() != tokens.size()) {
        return make_mismatch(PEFT_STATUS_FORMAT, f.path, "key 'tokenizer.ggml.token_type' length", std::to_string(tokens.size()) + " (one per token)",
                             std::to_string(types.size()));
    }
    uint32_t id = 0;
    bool add_bos = false, add_eos = false;
    for (auto [key, slot] : {std::pair<const char *, int32_t *>{"tokenizer.ggml.bos_token_id", &extra.bos},
                             {"tokenizer.ggml.eos_token_id", &extra.eos}, {"tokenizer.ggml.padding_token_id", &extra.pad}}) {
        if (!f.find_kv(key)) continue;
        PEFT_TRY(f.get_u32(key, id, true));
        if (id >= tokens.size()) {
            return make_mismatch(PEFT_STATUS_FORMAT, f.path, std::string("key '") + key + "'", "an id below " + std::to_string(tokens.size()),
                                 std::to_string(id));
        }
        *slot = (int32_t) id;
    }
    PEFT_TRY(f.get_bool("tokenizer.ggml.add_bos_token", add_bos, false));
    PEFT_TRY(f.get_bool("tokenizer.ggml.add_eos_token", add_eos, false));
    PEFT_TRY(f.get_str("tokenizer.chat_template", extra.chat_template, false));

    // control / user-defined tokens are HF added tokens; unused ids (the converter's [PAD<id>]) are left out
    std::string vocab, added;
    for (size_t i = 0; i < tokens.size(); i++) {
        const int32_t type = types.empty() ? GGUF_TOKEN_NORMAL : types[i];
        const std::string q = json_quote(std::string(tokens[i]));
        if (type == GGUF_TOKEN_UNUSED) continue;
        if (type == GGUF_TOKEN_CONTROL || type == GGUF_TOKEN_USER_DEFINED) {
            added += std::string(added.empty() ? "" : ",") + "{\"id\":" + std::to_string(i) + ",\"content\":" + q +
                     ",\"special\":" + (type == GGUF_TOKEN_CONTROL ? "true" : "false") + "}";
        } else {
            vocab += std::string(vocab.empty() ? "" : ",") + q + ":" + std::to_string(i);
        }
    }
    std::string merge_list;
    for (std::string_view m : merges) merge_list += std::string(merge_list.empty() ? "" : ",") + json_quote(std::string(m));
    std::string single, specials;
    if (add_bos && extra.bos >= 0) template_token(std::string(tokens[(size_t) extra.bos]), extra.bos, single, specials);
    single += "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},";
    if (add_eos && extra.eos >= 0) template_token(std::string(tokens[(size_t) extra.eos]), extra.eos, single, specials);
    single.pop_back();
    json = "{\"added_tokens\":[" + added + "],\"normalizer\":null,"
           "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":" +
           json_quote(regex) + "},\"behavior\":\"Isolated\",\"invert\":false},"
           "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},"
           "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[" + single + "],\"pair\":[],\"special_tokens\":{" + specials + "}},"
           "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
           "\"model\":{\"type\":\"BPE\",\"byte_fallback\":false,\"vocab\":{" + vocab + "},\"merges\":[" + merge_list + "]}}";
    return {};
}

} // namespace peft
