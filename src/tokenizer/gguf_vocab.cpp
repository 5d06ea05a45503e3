// gguf_vocab.cpp: tokenizer.ggml.* <-> tokenizer.json (see gguf_vocab.h).
#include "tokenizer/gguf_vocab.h"

#include <cstring>
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

// bos/eos/pad ids (each below n_tokens), add_bos/add_eos (llama.cpp's defaults when absent:
// true/false for SentencePiece, false/false otherwise) and the chat template.
status read_specials(const gguf_file & f, size_t n_tokens, bool spm, gguf_vocab_extra & extra) {
    uint32_t id = 0;
    for (auto [key, slot] : {std::pair<const char *, int32_t *>{"tokenizer.ggml.bos_token_id", &extra.bos},
                             {"tokenizer.ggml.eos_token_id", &extra.eos}, {"tokenizer.ggml.padding_token_id", &extra.pad}}) {
        if (!f.find_kv(key)) continue;
        PEFT_TRY(f.get_u32(key, id, true));
        if (id >= n_tokens) {
            return make_mismatch(PEFT_STATUS_FORMAT, f.path, std::string("key '") + key + "'", "an id below " + std::to_string(n_tokens),
                                 std::to_string(id));
        }
        *slot = (int32_t) id;
    }
    extra.add_bos = spm;
    extra.add_eos = false;
    PEFT_TRY(f.get_bool("tokenizer.ggml.add_bos_token", extra.add_bos, false));
    PEFT_TRY(f.get_bool("tokenizer.ggml.add_eos_token", extra.add_eos, false));
    return f.get_str("tokenizer.chat_template", extra.chat_template, false);
}

// Protocol buffer wire format (https://protobuf.dev/programming-guides/encoding/), the few
// field kinds a ModelProto needs.
void pb_varint(std::string & out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back((char) (v | 0x80));
        v >>= 7;
    }
    out.push_back((char) v);
}
void pb_int(std::string & out, int field, int64_t v) {   // int32 / bool / enum; negative int32 as 10 bytes
    pb_varint(out, (uint64_t) field << 3);
    pb_varint(out, (uint64_t) v);
}
void pb_bytes(std::string & out, int field, const std::string & v) {   // string / bytes / message
    pb_varint(out, (uint64_t) field << 3 | 2);
    pb_varint(out, v.size());
    out += v;
}
void pb_float(std::string & out, int field, float v) {
    pb_varint(out, (uint64_t) field << 3 | 5);
    char b[4];
    std::memcpy(b, &v, 4);   // little-endian, as the hosts peft runs on
    out.append(b, 4);
}

} // namespace

status gguf_spm_model_proto(const gguf_file & f, std::string & proto, gguf_vocab_extra & extra) {
    std::vector<std::string_view> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    PEFT_TRY(f.get_arr_str("tokenizer.ggml.tokens", tokens, true));
    PEFT_TRY(f.get_arr_f32("tokenizer.ggml.scores", scores, false));
    PEFT_TRY(f.get_arr_i32("tokenizer.ggml.token_type", types, false));
    for (auto [key, n] : {std::pair<const char *, size_t>{"tokenizer.ggml.scores", scores.size()}, {"tokenizer.ggml.token_type", types.size()}}) {
        if (n != 0 && n != tokens.size()) {
            return make_mismatch(PEFT_STATUS_FORMAT, f.path, std::string("key '") + key + "' length", std::to_string(tokens.size()) + " (one per token)",
                                 std::to_string(n));
        }
    }
    PEFT_TRY(read_specials(f, tokens.size(), true, extra));
    uint32_t unk = 0;   // llama.cpp's SPM default
    PEFT_TRY(f.get_u32("tokenizer.ggml.unknown_token_id", unk, false));
    bool add_space_prefix = true;
    PEFT_TRY(f.get_bool("tokenizer.ggml.add_space_prefix", add_space_prefix, false));
    bool byte_fallback = false;
    std::string pieces;
    for (size_t i = 0; i < tokens.size(); i++) {
        int32_t type = types.empty() ? GGUF_TOKEN_NORMAL : types[i];
        if (type < GGUF_TOKEN_NORMAL || type > GGUF_TOKEN_BYTE) {
            return make_mismatch(PEFT_STATUS_FORMAT, f.path, "key 'tokenizer.ggml.token_type'[" + std::to_string(i) + "]",
                                 "a token type 1..6", std::to_string(type));
        }
        if (i == unk) type = GGUF_TOKEN_UNKNOWN;
        else if (type == GGUF_TOKEN_UNKNOWN) type = GGUF_TOKEN_CONTROL;   // one unknown piece: the id llama.cpp uses
        byte_fallback |= type == GGUF_TOKEN_BYTE;
        const bool special = type == GGUF_TOKEN_CONTROL || type == GGUF_TOKEN_UNKNOWN;
        if ((special || type == GGUF_TOKEN_USER_DEFINED) && !tokens[i].empty()) {
            extra.added_tokens.push_back({(int32_t) i, std::string(tokens[i]), special});
        }
        std::string piece;
        pb_bytes(piece, 1, std::string(tokens[i]));
        pb_float(piece, 2, scores.empty() ? 0.0f : scores[i]);
        pb_int(piece, 3, type);
        pb_bytes(pieces, 1, piece);   // ModelProto.pieces
    }
    if (unk >= tokens.size()) {
        return make_mismatch(PEFT_STATUS_FORMAT, f.path, "key 'tokenizer.ggml.unknown_token_id'", "an id below " + std::to_string(tokens.size()),
                             std::to_string(unk));
    }
    // TrainerSpec: a BPE model; the special pieces by name, as the processor looks them up
    std::string trainer;
    pb_int(trainer, 3, 2);                      // model_type BPE
    pb_int(trainer, 26, 1);                     // allow_whitespace_only_pieces (runs of "▁" are pieces)
    pb_int(trainer, 35, byte_fallback);         // byte_fallback
    pb_int(trainer, 40, unk);                   // unk_id
    pb_int(trainer, 41, extra.bos);             // bos_id
    pb_int(trainer, 42, extra.eos);             // eos_id
    pb_int(trainer, 43, extra.pad);             // pad_id
    pb_bytes(trainer, 45, std::string(tokens[unk]));
    if (extra.bos >= 0) pb_bytes(trainer, 46, std::string(tokens[(size_t) extra.bos]));
    if (extra.eos >= 0) pb_bytes(trainer, 47, std::string(tokens[(size_t) extra.eos]));
    if (extra.pad >= 0) pb_bytes(trainer, 48, std::string(tokens[(size_t) extra.pad]));
    // NormalizerSpec: what llama.cpp does to text: no Unicode normalization, whitespace kept as
    // it is and escaped to "▁", the "▁" prefix unless add_space_prefix is false
    std::string normalizer;
    pb_bytes(normalizer, 1, "identity");
    pb_int(normalizer, 3, add_space_prefix);    // add_dummy_prefix
    pb_int(normalizer, 4, 0);                   // remove_extra_whitespaces
    pb_int(normalizer, 5, 1);                   // escape_whitespaces
    proto = pieces;
    pb_bytes(proto, 2, trainer);
    pb_bytes(proto, 3, normalizer);
    return {};
}

status gguf_tokenizer_json(const gguf_file & f, std::string & json, gguf_vocab_extra & extra) {
    const std::string TOKENIZER_HINT = "pass the model's Hugging Face tokenizer with --tokenizer DIR (tokenizer.json)";
    std::string model;
    PEFT_TRY(f.get_str("tokenizer.ggml.model", model, true));
    if (model != "gpt2") {
        return unsupported(f, "tokenizer.ggml.model \"" + model + "\": only byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") "
                           "vocabularies are read from GGUF", TOKENIZER_HINT);
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
    PEFT_TRY(read_specials(f, tokens.size(), false, extra));
    const bool add_bos = extra.add_bos, add_eos = extra.add_eos;

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
