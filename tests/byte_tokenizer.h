// byte_tokenizer.h: the text of a tiny tokenizer.json shared by the tests (testing.h writes it
// to a file) and the fuzz bodies (loaded from memory): a byte-level BPE with the 256 byte tokens
// (ids 0..255), no merges, and `specials` as special added tokens with ids 256, 257, ...; when
// bos_template, a post-processor that prepends specials[0].
#pragma once
#include <string>
#include <vector>

#include "io/json.h"
#include "tokenizer/normalize.h"

namespace peft::testing {

inline std::string byte_tokenizer_json(const std::vector<std::string> & specials, bool bos_template) {
    std::string vocab = "{";
    for (int b = 0; b < 256; ++b) {
        std::string c;
        utf8_append(c, byte_level_char((uint8_t) b));
        if (b) vocab += ',';   // one append at a time: GCC 12 warns (-Wrestrict) on "," + string
        vocab += json_quote(c);
        vocab += ':';
        vocab += std::to_string(b);
    }
    vocab += '}';
    std::string added = "[";
    for (size_t i = 0; i < specials.size(); ++i) {
        if (i) added += ',';
        added += "{\"id\":" + std::to_string(256 + i) + ",\"content\":" + json_quote(specials[i]) + ",\"special\":true}";
    }
    added += ']';
    std::string post;
    if (bos_template && !specials.empty()) {
        const std::string b = json_quote(specials[0]);
        post = "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":" + b +
               ",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{" + b + ":{\"id\":" + b +
               ",\"ids\":[256],\"tokens\":[" + b + "]}}},";
    }
    return "{\"added_tokens\":" + added + ",\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}," +
           post + "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":" + vocab + ",\"merges\":[]}}";
}

} // namespace peft::testing
