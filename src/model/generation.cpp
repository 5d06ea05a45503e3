// generation.cpp: chat prompt tokens, generation_config.json end-of-sequence ids, the UTF-8
// streaming boundary (generation.h).
#include "model/generation.h"

#include <filesystem>

#include "io/json.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace peft {

status chat_prompt(const tokenizer & tok, std::vector<chat_message> msgs, const std::string & tmpl_name, const std::string & where,
                   std::vector<int32_t> & ids, int32_t & end_of_turn, std::string & used) {
    data_options o;
    o.chat_template = tmpl_name;
    int tmpl = 0;
    std::string why;
    PEFT_TRY(data_pick_template(tok, o, tmpl, why));
    const chat_template_kind kind = (chat_template_kind) tmpl;
    used = std::string(chat_template_name(kind)) + " (" + why + ")";
    msgs.push_back({"assistant", "", ""});
    auto name = [&](int32_t id) { return id >= 0 ? tok.token_to_piece(id) : std::string(); };
    std::vector<chat_segment> segs;
    PEFT_TRY(chat_render(kind, msgs, name(tok.bos_id()), name(tok.eos_id()), where, segs));
    ids.clear();
    for (const chat_segment & s : segs) {
        if (s.trainable) break;   // the (empty) reply and its end-of-turn token
        if (s.special) {
            const int32_t id = tok.token_to_id(s.text);
            if (id < 0) {
                status st = make_error(PEFT_STATUS_CONFIG, where, std::string("chat template ") + chat_template_name(kind) +
                                       " needs the token \"" + s.text + "\", which the tokenizer lacks");
                st.hint = "pick a template that fits the model with --template (llama3, chatml, llama2, alpaca, plain)";
                return st;
            }
            ids.push_back(id);
        } else {
            // user text never turns into special tokens (no template injection from the prompt)
            std::vector<int32_t> t = tok.encode(s.text, false, false);
            ids.insert(ids.end(), t.begin(), t.end());
        }
    }
    end_of_turn = kind == PEFT_CHAT_LLAMA3   ? tok.token_to_id("<|eot_id|>")
                  : kind == PEFT_CHAT_CHATML ? tok.token_to_id("<|im_end|>")
                                             : tok.eos_id();
    return status::success();
}

void generation_config_eos(const std::string & model_dir, std::vector<int32_t> & out) {
    const std::string path = model_dir + "/generation_config.json";
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return;
    json_document doc;
    if (!doc.parse_file(path, (size_t) 1 << 20).ok()) return;   // optional file: ignore if broken
    json_value e = doc.root().get("eos_token_id");
    if (e.is_integer()) out.push_back((int32_t) e.as_int(-1));
    if (e.is_array()) {
        for (size_t i = 0; i < e.size(); i++) {
            if (e.at(i).is_integer()) out.push_back((int32_t) e.at(i).as_int(-1));
        }
    }
}

size_t complete_utf8_prefix(const std::string & s) {
    const size_t n = s.size();
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        const unsigned char c = (unsigned char) s[n - back];
        if ((c & 0xC0) == 0x80) continue;   // continuation byte: keep looking for the lead
        const size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need ? n - back : n;
    }
    return n;
}

} // namespace peft
