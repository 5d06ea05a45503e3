// chat.h: the named chat templates peft.cpp renders itself (no Jinja): llama3, chatml, llama2,
// alpaca, plain; and recognising which one a tokenizer_config.json `chat_template` is.
// A conversation renders to segments: template scaffolding tokens (by name, e.g.
// "<|start_header_id|>"), text, and a `trainable` flag on the assistant's reply (its text and the
// end-of-turn token), which the data loader turns into labels. Not here: tokenization, labels
// and packing (train/data.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

enum chat_template_kind {
    PEFT_CHAT_LLAMA3,
    PEFT_CHAT_CHATML,
    PEFT_CHAT_LLAMA2,
    PEFT_CHAT_ALPACA,
    PEFT_CHAT_PLAIN,
    PEFT_CHAT_COUNT,
};
const char * chat_template_name(chat_template_kind k);
// Unknown names give a PEFT_STATUS_CONFIG status listing the known ones.
status chat_template_from_name(const std::string & name, chat_template_kind & out);
// Recognises a Jinja chat_template by its markers; false when it matches none.
bool chat_template_detect(const std::string & jinja, chat_template_kind & out);

struct chat_message {
    std::string role;     // system | user | assistant
    std::string content;
    std::string input;    // alpaca's optional "input" for a user turn ("" otherwise)
};

struct chat_segment {
    std::string text;     // plain text, or a token name when special
    bool special = false; // text names one token ("<|eot_id|>", "<s>" ...)
    bool trainable = false;
};

// bos/eos: the tokenizer's BOS/EOS token names ("" when it has none), used by templates that
// need them (llama2's <s>/</s>, alpaca/plain end of reply). Unknown roles and conversations
// without an assistant turn are errors (`where` names file:line).
status chat_render(chat_template_kind kind, const std::vector<chat_message> & messages, const std::string & bos,
                   const std::string & eos, const std::string & where, std::vector<chat_segment> & out);

} // namespace peft
