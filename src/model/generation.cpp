// generation.cpp: chat prompt tokens, generation_config.json end-of-sequence ids, the UTF-8
// streaming boundary, greedy held-out accuracy (generation.h).
#include "model/generation.h"

#include <algorithm>
#include <filesystem>

#include "io/json.h"
#include "model/llama_infer.h"
#include "model/sample.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace peft {

namespace {

// The token that ends the assistant's reply in this template (-1 when the tokenizer lacks it).
int32_t chat_end_of_turn(const tokenizer & tok, chat_template_kind kind) {
    return kind == PEFT_CHAT_LLAMA3   ? tok.token_to_id("<|eot_id|>")
           : kind == PEFT_CHAT_CHATML ? tok.token_to_id("<|im_end|>")
                                      : tok.eos_id();
}

std::string trimmed(const std::string & s) {
    const char * ws = " \t\r\n\f\v";
    const size_t a = s.find_first_not_of(ws);
    if (a == std::string::npos) return "";
    return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

} // namespace

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
    end_of_turn = chat_end_of_turn(tok, kind);
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

status answer_examples_load(const std::string & path, const tokenizer & tok, const std::string & chat_template, int64_t vocab_size,
                            int64_t max_len, std::vector<answer_example> & out, std::vector<int32_t> & stops, int64_t * n_skipped) {
    // The file is read as `peft eval` reads it, one sample per row, so prompt and reply are the
    // tokens training renders and scores.
    data_options o;
    o.max_len = max_len;
    o.pack = false;
    o.shuffle = false;
    o.chat_template = chat_template;
    o.vocab_size = vocab_size;
    dataset d;
    PEFT_TRY(dataset_load(path, tok, o, d));
    int tmpl = 0;
    std::string why;
    PEFT_TRY(data_pick_template(tok, o, tmpl, why));
    stops.clear();
    for (int32_t id : {chat_end_of_turn(tok, (chat_template_kind) tmpl), tok.eos_id()}) {
        if (id >= 0 && std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
    }
    out.clear();
    int64_t skipped = 0;
    const data_rows & r = d.train;
    for (int64_t row = 0; row < r.n_rows; row++) {
        const size_t b = (size_t) (row * r.T);
        int64_t p = 0;
        while (p < r.T && !r.prompt_mask.empty() && r.prompt_mask[b + (size_t) p]) p++;
        int64_t e = p;
        while (e < r.T && r.segment_ids[b + (size_t) e] != 0 && r.labels[b + (size_t) e] != -100) e++;
        // the trained run ends with the template's end-of-turn (or EOS): the stop, not the answer
        while (e > p && std::find(stops.begin(), stops.end(), r.input_ids[b + (size_t) (e - 1)]) != stops.end()) e--;
        if (p == 0 || e == p) {
            skipped++;
            continue;
        }
        answer_example x;
        x.prompt.assign(r.input_ids.begin() + (std::ptrdiff_t) b, r.input_ids.begin() + (std::ptrdiff_t) (b + (size_t) p));
        x.expected.assign(r.input_ids.begin() + (std::ptrdiff_t) (b + (size_t) p), r.input_ids.begin() + (std::ptrdiff_t) (b + (size_t) e));
        out.push_back(std::move(x));
    }
    if (n_skipped) *n_skipped = skipped;
    if (out.empty()) {
        status st = make_error(PEFT_STATUS_FORMAT, path, "no question with an answer: accuracy needs alpaca (instruction/output) or messages lines");
        st.hint = "{\"text\"} lines have no prompt to answer";
        return st;
    }
    return status::success();
}

status greedy_answers(const llama_model & m, const std::vector<answer_example> & ex, const std::vector<int32_t> & stops,
                      int64_t n_parallel, std::vector<std::vector<int32_t>> & answers, int64_t extra_tokens) {
    const int64_t V = m.hp.n_vocab;
    n_parallel = std::max<int64_t>(1, n_parallel);
    answers.assign(ex.size(), {});
    std::vector<int64_t> limit(ex.size());
    int64_t max_ctx = 1;
    for (size_t i = 0; i < ex.size(); i++) {
        const int64_t np = (int64_t) ex[i].prompt.size();
        if (np < 1 || np >= m.hp.max_position) {
            return make_error(PEFT_STATUS_ARGUMENT, "accuracy", "question " + std::to_string(i + 1) + " has " + std::to_string(np) +
                              " prompt tokens; the model holds " + std::to_string(m.hp.max_position));
        }
        limit[i] = std::min<int64_t>((int64_t) ex[i].expected.size() + std::max<int64_t>(0, extra_tokens), m.hp.max_position - np);
        max_ctx = std::max(max_ctx, np + limit[i]);
    }
    adapter_module * const * table = m.adapters.empty() ? nullptr : m.adapters.data();
    llama_layer_hook * hook = table ? m.layer_hook : nullptr;
    llama_infer_batch b;   // a hook that routes whole prompts sees each prompt in one chunk
    PEFT_TRY(llama_infer_batch_init(b, m, hook && hook->whole_prompt() ? std::max<int64_t>(256, max_ctx) : 256, max_ctx));
    std::vector<std::vector<float>> logits;
    for (size_t i0 = 0; i0 < ex.size(); i0 += (size_t) n_parallel) {
        const size_t n = std::min(ex.size() - i0, (size_t) n_parallel);
        std::vector<llama_infer_state> st(n);
        std::vector<llama_infer_seq> seqs(n);
        std::vector<int32_t> next(n);
        logits.resize(n);
        for (size_t j = 0; j < n; j++) {
            const answer_example & e = ex[i0 + j];
            PEFT_TRY(llama_infer_init(st[j], m, (int64_t) e.prompt.size() + limit[i0 + j], 1));
            logits[j].resize((size_t) V);
            seqs[j] = {&st[j], e.prompt.data(), (int64_t) e.prompt.size(), table, logits[j].data(), hook};
        }
        std::vector<size_t> live(n);   // index j of each sequence in seqs' current order
        for (size_t j = 0; j < n; j++) live[j] = j;
        while (!seqs.empty()) {
            PEFT_TRY(llama_infer_eval_multi(m, b, seqs.data(), (int64_t) seqs.size()));
            std::vector<llama_infer_seq> still;
            std::vector<size_t> still_j;
            for (size_t k = 0; k < seqs.size(); k++) {
                const size_t j = live[k];
                std::vector<int32_t> & a = answers[i0 + j];
                const int32_t t = sample_argmax(logits[j].data(), V);
                if (std::find(stops.begin(), stops.end(), t) != stops.end()) continue;
                a.push_back(t);
                if ((int64_t) a.size() >= limit[i0 + j]) continue;
                next[j] = t;
                still.push_back({&st[j], &next[j], 1, table, logits[j].data(), hook});
                still_j.push_back(j);
            }
            seqs.swap(still);
            live.swap(still_j);
        }
    }
    return status::success();
}

bool answer_matches(const tokenizer & tok, const std::vector<int32_t> & answer, const std::vector<int32_t> & expected) {
    return trimmed(tok.decode(answer, true)) == trimmed(tok.decode(expected, true));
}

status accuracy_evaluate(const llama_model & m, const tokenizer & tok, const std::vector<answer_example> & ex,
                         const std::vector<int32_t> & stops, int64_t n_parallel, accuracy_result & out) {
    out = accuracy_result{};
    PEFT_TRY(greedy_answers(m, ex, stops, n_parallel, out.answers));
    out.n = (int64_t) ex.size();
    out.correct.assign(ex.size(), 0);
    for (size_t i = 0; i < ex.size(); i++) {
        out.correct[i] = answer_matches(tok, out.answers[i], ex[i].expected);
        out.n_correct += out.correct[i];
    }
    return status::success();
}

} // namespace peft
