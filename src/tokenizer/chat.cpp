// chat.cpp: named chat templates, written to produce the same text as the models' published
// Jinja templates (Llama 3 instruct, ChatML/Qwen, Llama 2 chat, Stanford Alpaca), split into
// segments so the assistant's reply can be told from the prompt.
#include "tokenizer/chat.h"

namespace peft {

static const char * CHAT_NAMES[] = {"llama3", "chatml", "llama2", "alpaca", "plain"};
static_assert(sizeof(CHAT_NAMES) / sizeof(CHAT_NAMES[0]) == PEFT_CHAT_COUNT);

const char * chat_template_name(chat_template_kind k) { return k >= 0 && k < PEFT_CHAT_COUNT ? CHAT_NAMES[k] : "?"; }

status chat_template_from_name(const std::string & name, chat_template_kind & out) {
    for (int k = 0; k < PEFT_CHAT_COUNT; ++k) {
        if (name == CHAT_NAMES[k]) { out = (chat_template_kind) k; return status::success(); }
    }
    status st = make_error(PEFT_STATUS_CONFIG, "chat_template", "unknown template \"" + name + "\"");
    st.hint = "use one of: llama3, chatml, llama2, alpaca, plain (or leave it unset to pick from tokenizer_config.json)";
    return st;
}

bool chat_template_detect(const std::string & j, chat_template_kind & out) {
    auto has = [&](const char * s) { return j.find(s) != std::string::npos; };
    if (j.empty()) return false;
    if (has("<|start_header_id|>") && has("<|eot_id|>")) out = PEFT_CHAT_LLAMA3;
    else if (has("<|im_start|>") && has("<|im_end|>")) out = PEFT_CHAT_CHATML;
    else if (has("[INST]") && has("[/INST]")) out = PEFT_CHAT_LLAMA2;
    else if (has("### Instruction:") && has("### Response:")) out = PEFT_CHAT_ALPACA;
    else return false;
    return true;
}

static std::string trim(const std::string & s) {
    const char * ws = " \t\n\r\f\v";
    const size_t b = s.find_first_not_of(ws);
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

namespace {

struct builder {
    std::vector<chat_segment> & out;
    void text(const std::string & t, bool train = false) {
        if (t.empty()) return;
        // Adjacent text with the same flag is one segment, so it tokenizes as one string.
        if (!out.empty() && !out.back().special && out.back().trainable == train) { out.back().text += t; return; }
        out.push_back({t, false, train});
    }
    void special(const std::string & name, bool train = false) {
        if (!name.empty()) out.push_back({name, true, train});
    }
};

const char * ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";
const char * ALPACA_PREAMBLE_INPUT = "Below is an instruction that describes a task, paired with an input that provides further context. "
                                     "Write a response that appropriately completes the request.\n\n";

} // namespace

status chat_render(chat_template_kind kind, const std::vector<chat_message> & messages, const std::string & bos,
                   const std::string & eos, const std::string & where, std::vector<chat_segment> & out) {
    out.clear();
    bool any_assistant = false;
    for (size_t i = 0; i < messages.size(); ++i) {
        const std::string & r = messages[i].role;
        if (r != "system" && r != "user" && r != "assistant") {
            return make_error(PEFT_STATUS_FORMAT, where, "messages[" + std::to_string(i) + "].role: expected system, user or assistant, got \"" + r + "\"");
        }
        if (r == "system" && i != 0) return make_error(PEFT_STATUS_FORMAT, where, "messages[" + std::to_string(i) + "]: a system message must come first");
        any_assistant = any_assistant || r == "assistant";
    }
    if (!any_assistant) return make_error(PEFT_STATUS_FORMAT, where, "messages: no assistant turn to learn from");
    builder b{out};
    switch (kind) {
        case PEFT_CHAT_LLAMA3:
            // <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>...
            b.special(bos);
            for (const chat_message & m : messages) {
                const bool a = m.role == "assistant";
                b.special("<|start_header_id|>");
                b.text(m.role);
                b.special("<|end_header_id|>");
                b.text("\n\n");
                b.text(trim(m.content), a);
                b.special("<|eot_id|>", a);
            }
            break;
        case PEFT_CHAT_CHATML:
            // <|im_start|>{role}\n{content}<|im_end|>\n
            for (const chat_message & m : messages) {
                const bool a = m.role == "assistant";
                b.special("<|im_start|>");
                b.text(m.role + "\n");
                b.text(m.content, a);
                b.special("<|im_end|>", a);
                b.text("\n");
            }
            break;
        case PEFT_CHAT_LLAMA2: {
            // <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>
            std::string system;
            size_t i = 0;
            if (!messages.empty() && messages[0].role == "system") { system = trim(messages[0].content); i = 1; }
            bool first_user = true;
            for (; i < messages.size(); ++i) {
                const chat_message & m = messages[i];
                if (m.role == "user") {
                    b.special(bos);
                    std::string u = trim(m.content);
                    if (first_user && !system.empty()) u = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + u;
                    first_user = false;
                    b.text("[INST] " + u + " [/INST]");
                } else {
                    b.text(" " + trim(m.content) + " ", true);
                    b.special(eos, true);
                }
            }
            break;
        }
        case PEFT_CHAT_ALPACA: {
            b.special(bos);
            std::string system;
            size_t i = 0;
            if (!messages.empty() && messages[0].role == "system") { system = messages[0].content + "\n\n"; i = 1; }
            bool first = true;
            for (; i < messages.size(); ++i) {
                const chat_message & m = messages[i];
                if (m.role == "user") {
                    std::string t = first ? (!system.empty() ? system : m.input.empty() ? ALPACA_PREAMBLE : ALPACA_PREAMBLE_INPUT) : "\n\n";
                    first = false;
                    t += "### Instruction:\n" + m.content + "\n\n";
                    if (!m.input.empty()) t += "### Input:\n" + m.input + "\n\n";
                    t += "### Response:\n";
                    b.text(t);
                } else {
                    b.text(m.content, true);
                    b.special(eos, true);
                }
            }
            break;
        }
        case PEFT_CHAT_PLAIN:
            // Contents one per line; the reply ends with EOS.
            b.special(bos);
            for (const chat_message & m : messages) {
                const bool a = m.role == "assistant";
                std::string c = m.content;
                if (!m.input.empty()) c += "\n\n" + m.input;
                b.text(c, a);
                if (a) b.special(eos, true);
                else b.text("\n");
            }
            break;
        case PEFT_CHAT_COUNT:
            return make_error(PEFT_STATUS_CONFIG, where, "chat template: invalid kind");
    }
    return status::success();
}

} // namespace peft
