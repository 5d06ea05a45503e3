// data.cpp: JSONL / text -> tokenized samples -> packed or padded rows (see data.h for the
// conventions: unshifted labels, segment and position ids). Each JSONL line is parsed on its own
// with the JSON wrapper, so one bad line names its line number and nothing else is lost.
#include "train/data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/rng.h"
#include "io/json.h"
#include "tokenizer/chat.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"

namespace peft {

static const int32_t IGNORE = -100;

status data_pick_template(const tokenizer & tok, const data_options & opt, int & tmpl, std::string & why) {
    chat_template_kind k = PEFT_CHAT_PLAIN;
    if (!opt.chat_template.empty() && opt.chat_template != "auto") {
        PEFT_TRY(chat_template_from_name(opt.chat_template, k));
        why = "requested";
    } else if (chat_template_detect(tok.chat_template(), k)) {
        why = "matches tokenizer_config.json chat_template";
    } else if (tok.token_to_id("<|start_header_id|>") >= 0 && tok.token_to_id("<|eot_id|>") >= 0) {
        k = PEFT_CHAT_LLAMA3;
        why = "tokenizer has Llama 3 header tokens";
    } else if (tok.token_to_id("<|im_start|>") >= 0 && tok.token_to_id("<|im_end|>") >= 0) {
        k = PEFT_CHAT_CHATML;
        why = "tokenizer has ChatML tokens";
    } else {
        k = PEFT_CHAT_PLAIN;
        why = "no known chat template found; using plain";
    }
    tmpl = (int) k;
    return status::success();
}

namespace {

std::string token_name(const tokenizer & tok, int32_t id) { return id >= 0 ? tok.token_to_piece(id) : std::string(); }

status field_error(const std::string & where, const std::string & field, const std::string & expected, const json_value & got) {
    std::string g = !got.valid() ? "nothing (missing)" : got.is_string() ? "a string" : got.is_number() ? "a number"
                  : got.is_array() ? "an array" : got.is_object() ? "an object" : got.is_bool() ? "a boolean" : "null";
    return make_mismatch(PEFT_STATUS_FORMAT, where, "field \"" + field + "\"", expected, g);
}

// Appends the tokens of rendered segments with labels per the trainable flags.
status encode_segments(const tokenizer & tok, const std::vector<chat_segment> & segs, bool train_all, const std::string & where,
                       const std::string & tmpl_name, data_sample & out) {
    std::vector<int32_t> ids;
    bool in_prompt = true;   // until the first trained segment
    for (const chat_segment & s : segs) {
        in_prompt = in_prompt && !s.trainable;
        if (s.special) {
            const int32_t id = tok.token_to_id(s.text);
            if (id < 0) {
                status st = make_error(PEFT_STATUS_CONFIG, where, "chat template " + tmpl_name + " needs the token \"" + s.text + "\", which the tokenizer lacks");
                st.hint = "pick a template that fits the model with chat_template (llama3, chatml, llama2, alpaca, plain)";
                return st;
            }
            ids.assign(1, id);
        } else {
            // Message text never turns into special tokens (no template injection from data).
            ids = tok.encode(s.text, false, false);
        }
        const bool train = train_all || s.trainable;
        for (int32_t id : ids) {
            out.input_ids.push_back(id);
            out.labels.push_back(train ? id : IGNORE);
        }
        if (in_prompt) out.prompt_len = (int64_t) out.input_ids.size();
    }
    return status::success();
}

status get_string(const json_value & obj, const std::string & key, const std::string & where, bool required, std::string & out) {
    const json_value v = obj.get(key);
    if (!v.valid() || v.is_null()) {
        if (required) return field_error(where, key, "a string", v);
        out.clear();
        return status::success();
    }
    if (!v.is_string()) return field_error(where, key, "a string", v);
    out = v.as_string();
    return status::success();
}

} // namespace

status data_parse_line(const std::string & line, const std::string & where, const tokenizer & tok,
                       const data_options & opt, int tmpl, data_sample & out) {
    out.input_ids.clear();
    out.labels.clear();
    out.prompt_len = 0;
    const size_t bad = utf8_first_invalid(line.data(), line.size());
    if (bad != line.size()) return make_error(PEFT_STATUS_FORMAT, where, "invalid UTF-8 at byte " + std::to_string(bad + 1) + " of the line");
    json_document doc;
    PEFT_TRY(doc.parse(line.data(), line.size(), where));
    const json_value r = doc.root();
    if (!r.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "expected a JSON object per line");
    const chat_template_kind kind = (chat_template_kind) tmpl;
    const std::string bos = token_name(tok, tok.bos_id()), eos = token_name(tok, tok.eos_id());

    if (r.get("input_ids").valid()) {
        const json_value ids = r.get("input_ids"), labels = r.get("labels");
        if (!ids.is_array() || ids.size() == 0) return field_error(where, "input_ids", "a non-empty array of token ids", ids);
        const bool has_labels = labels.valid() && !labels.is_null();
        if (has_labels && (!labels.is_array() || labels.size() != ids.size())) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, "field \"labels\"", "an array as long as input_ids (" + std::to_string(ids.size()) + ")",
                                 labels.is_array() ? std::to_string(labels.size()) + " entries" : "not an array");
        }
        const int64_t V = opt.vocab_size > 0 ? opt.vocab_size : tok.n_vocab();
        const std::string id_range = opt.vocab_size > 0 ? "an id below the model's vocab_size " + std::to_string(V)
                                                        : "an id in [0, " + std::to_string(V) + ") (the tokenizer's size)";
        for (size_t i = 0; i < ids.size(); ++i) {
            const json_value v = ids.at(i);
            if (!v.is_integer() || v.as_int() < 0 || v.as_int() >= V) {
                return make_mismatch(PEFT_STATUS_FORMAT, where, "input_ids[" + std::to_string(i) + "]", id_range, v.dump());
            }
            out.input_ids.push_back((int32_t) v.as_int());
            int32_t lab = (int32_t) v.as_int();
            if (has_labels) {
                const json_value l = labels.at(i);
                if (!l.is_integer() || (l.as_int() != IGNORE && (l.as_int() < 0 || l.as_int() >= V))) {
                    return make_mismatch(PEFT_STATUS_FORMAT, where, "labels[" + std::to_string(i) + "]", "-100 or " + id_range, l.dump());
                }
                lab = (int32_t) l.as_int();
            }
            out.labels.push_back(lab);
        }
        if (has_labels) {
            while (out.prompt_len < (int64_t) out.labels.size() && out.labels[(size_t) out.prompt_len] == IGNORE) ++out.prompt_len;
        }
        return status::success();
    }

    if (r.get("messages").valid()) {
        const json_value msgs = r.get("messages");
        if (!msgs.is_array() || msgs.size() == 0) return field_error(where, "messages", "a non-empty array", msgs);
        std::vector<chat_message> conv;
        for (size_t i = 0; i < msgs.size(); ++i) {
            const json_value m = msgs.at(i);
            const std::string f = "messages[" + std::to_string(i) + "]";
            if (!m.is_object()) return field_error(where, f, "an object with role and content", m);
            chat_message cm;
            PEFT_TRY(get_string(m, "role", where + ": " + f, true, cm.role));
            PEFT_TRY(get_string(m, "content", where + ": " + f, true, cm.content));
            conv.push_back(std::move(cm));
        }
        std::vector<chat_segment> segs;
        PEFT_TRY(chat_render(kind, conv, bos, eos, where, segs));
        return encode_segments(tok, segs, opt.train_on_inputs, where, chat_template_name(kind), out);
    }

    if (r.get("instruction").valid() || r.get("output").valid()) {
        chat_message user, reply;
        user.role = "user";
        reply.role = "assistant";
        PEFT_TRY(get_string(r, "instruction", where, true, user.content));
        PEFT_TRY(get_string(r, "input", where, false, user.input));
        PEFT_TRY(get_string(r, "output", where, true, reply.content));
        // Templates other than alpaca see instruction and input as one user message.
        if (kind != PEFT_CHAT_ALPACA && !user.input.empty()) {
            user.content += "\n\n" + user.input;
            user.input.clear();
        }
        std::vector<chat_segment> segs;
        PEFT_TRY(chat_render(kind, {user, reply}, bos, eos, where, segs));
        return encode_segments(tok, segs, opt.train_on_inputs, where, chat_template_name(kind), out);
    }

    if (r.get("text").valid()) {
        std::string text;
        PEFT_TRY(get_string(r, "text", where, true, text));
        if (text.empty()) return make_error(PEFT_STATUS_FORMAT, where, "field \"text\" is empty");
        out.input_ids = tok.encode(text, true);
        if (opt.add_eos_to_text && tok.eos_id() >= 0) out.input_ids.push_back(tok.eos_id());
        out.labels = out.input_ids;
        return status::success();
    }
    status st = make_error(PEFT_STATUS_FORMAT, where, "no known fields: expected \"text\", \"messages\", \"instruction\"/\"output\" or \"input_ids\"");
    return st;
}

void data_build_rows(const std::vector<data_sample> & samples, const data_options & opt, int32_t pad_id,
                     data_rows & out, int64_t * n_truncated) {
    const int64_t T = opt.max_len;
    out = data_rows{};
    out.T = T;
    int64_t used = T;  // tokens used in the current row; T = no open row
    int32_t seg = 0;
    auto new_row = [&]() {
        out.input_ids.insert(out.input_ids.end(), (size_t) T, pad_id);
        out.labels.insert(out.labels.end(), (size_t) T, IGNORE);
        out.position_ids.insert(out.position_ids.end(), (size_t) T, 0);
        out.segment_ids.insert(out.segment_ids.end(), (size_t) T, 0);
        out.prompt_mask.insert(out.prompt_mask.end(), (size_t) T, 0);
        ++out.n_rows;
        used = 0;
        seg = 0;
    };
    for (const data_sample & s : samples) {
        int64_t n = (int64_t) s.input_ids.size();
        if (n == 0) continue;
        if (n > T) {
            n = T;
            if (n_truncated) ++*n_truncated;
        }
        if (!opt.pack || used + n > T) new_row();
        const size_t base = (size_t) ((out.n_rows - 1) * T + used);
        ++seg;
        for (int64_t i = 0; i < n; ++i) {
            out.input_ids[base + (size_t) i] = s.input_ids[(size_t) i];
            // The first token of a sample is never a target (see data.h).
            out.labels[base + (size_t) i] = i == 0 ? IGNORE : s.labels[(size_t) i];
            out.position_ids[base + (size_t) i] = (int32_t) i;
            out.segment_ids[base + (size_t) i] = seg;
            out.prompt_mask[base + (size_t) i] = i < s.prompt_len;
        }
        used += n;
    }
}

status dataset_load(const std::string & path, const tokenizer & tok, const data_options & opt, dataset & out) {
    out = dataset{};
    if (opt.max_len < 2 || opt.max_len > ((int64_t) 1 << 20)) {
        return make_mismatch(PEFT_STATUS_CONFIG, path, "max_len", "in [2, 2^20]", std::to_string(opt.max_len));
    }
    if (!(opt.held_out_fraction >= 0.0 && opt.held_out_fraction < 1.0)) {
        return make_mismatch(PEFT_STATUS_CONFIG, path, "held_out_fraction", "in [0, 1)", std::to_string(opt.held_out_fraction));
    }
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
        status st = make_error(PEFT_STATUS_IO, path, "is a directory, not a data file");
        st.hint = "give a .jsonl file (one JSON object per line) or a .txt file";
        return st;
    }
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error(PEFT_STATUS_IO, path, "cannot open data file for reading");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return make_error(PEFT_STATUS_IO, path, "read error");
    const std::string text = ss.str();
    if ((int64_t) text.size() > opt.max_bytes) return make_error(PEFT_STATUS_IO, path, "file larger than max_bytes");

    std::vector<data_sample> samples;
    const bool is_txt = path.size() >= 4 && path.compare(path.size() - 4, 4, ".txt") == 0;
    if (is_txt) {
        const size_t bad = utf8_first_invalid(text.data(), text.size());
        if (bad != text.size()) {
            size_t line = 1 + (size_t) std::count(text.begin(), text.begin() + (std::ptrdiff_t) bad, '\n');
            return make_error(PEFT_STATUS_FORMAT, path + ":" + std::to_string(line), "invalid UTF-8");
        }
        std::vector<int32_t> ids = tok.encode(text, true);
        if (opt.add_eos_to_text && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
        // A corpus is cut into consecutive rows rather than truncated.
        for (size_t b = 0; b < ids.size(); b += (size_t) opt.max_len) {
            data_sample s;
            s.input_ids.assign(ids.begin() + (std::ptrdiff_t) b, ids.begin() + (std::ptrdiff_t) std::min(ids.size(), b + (size_t) opt.max_len));
            s.labels = s.input_ids;
            samples.push_back(std::move(s));
        }
    } else {
        int tmpl = PEFT_CHAT_PLAIN;
        std::string why;
        PEFT_TRY(data_pick_template(tok, opt, tmpl, why));
        bool used_template = false;
        size_t pos = 0, lineno = 0;
        while (pos < text.size()) {
            size_t e = text.find('\n', pos);
            if (e == std::string::npos) e = text.size();
            ++lineno;
            std::string line = text.substr(pos, e - pos);
            pos = e + 1;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.find_first_not_of(" \t") == std::string::npos) continue;
            const std::string where = path + ":" + std::to_string(lineno);
            data_sample s;
            const status st = data_parse_line(line, where, tok, opt, tmpl, s);
            if (!st.ok()) {
                if (!opt.skip_bad_lines) {
                    status e2 = st;
                    if (e2.hint.empty()) e2.hint = "fix the line, or count and skip bad lines: skip_bad_lines: true (peft train) / --skip-bad-lines (peft eval)";
                    return e2;
                }
                ++out.n_skipped_lines;
                continue;
            }
            used_template = used_template || line.find("\"messages\"") != std::string::npos || line.find("\"instruction\"") != std::string::npos;
            samples.push_back(std::move(s));
        }
        if (used_template) out.template_name = chat_template_name((chat_template_kind) tmpl);
        if (out.n_skipped_lines > 0) out.warnings.push_back(std::to_string(out.n_skipped_lines) + " bad lines skipped in " + path);
    }
    // Truncate first, then drop samples with nothing to learn: a sample whose every trained
    // token lies past max_len (a long prompt) would add rows that score zero tokens.
    int64_t n_lost = 0, keep_len = 0;   // samples emptied by truncation; the length that keeps them
    for (data_sample & s : samples) {
        if ((int64_t) s.input_ids.size() <= opt.max_len) continue;
        ++out.n_truncated;
        const auto first = std::find_if(s.labels.begin() + 1, s.labels.end(), [](int32_t l) { return l != IGNORE; });
        const int64_t at = first - s.labels.begin();
        if (first != s.labels.end() && at >= opt.max_len) {
            ++n_lost;
            keep_len = std::max(keep_len, at + 1);
        }
        s.input_ids.resize((size_t) opt.max_len);
        s.labels.resize((size_t) opt.max_len);
    }
    samples.erase(std::remove_if(samples.begin(), samples.end(), [](const data_sample & s) {
        return s.input_ids.size() < 2 || std::all_of(s.labels.begin() + 1, s.labels.end(), [](int32_t l) { return l == IGNORE; });
    }), samples.end());
    const std::string lost = std::to_string(n_lost) + " samples lost every trained token to truncation at sequence_len " +
                             std::to_string(opt.max_len);
    if (samples.empty()) {
        status st = make_error(PEFT_STATUS_FORMAT, path, "no scored tokens: no sample has a token to train on or score");
        if (n_lost > 0) {
            st.message += " (" + lost + ")";
            st.hint = "sequence_len " + std::to_string(keep_len) + " or more keeps them";
        }
        if (out.n_skipped_lines > 0) st.message += " (" + std::to_string(out.n_skipped_lines) + " bad lines skipped)";
        return st;
    }
    if (n_lost > 0) out.warnings.push_back(lost + " and were dropped; sequence_len " + std::to_string(keep_len) + " or more keeps them");
    if (opt.shuffle) {
        // Fisher-Yates with the project's deterministic generator: same seed, same order everywhere.
        rng g(opt.seed);
        for (size_t i = samples.size() - 1; i > 0; --i) {
            const uint64_t r = ((uint64_t) g.next_u32() << 32) | g.next_u32();
            std::swap(samples[i], samples[(size_t) (r % (i + 1))]);
        }
    }
    size_t n_held = 0;
    if (opt.held_out_fraction > 0.0 && samples.size() >= 2) {
        n_held = std::max<size_t>(1, (size_t) (opt.held_out_fraction * (double) samples.size() + 0.5));
        n_held = std::min(n_held, samples.size() - 1);
    }
    const std::vector<data_sample> held(samples.begin(), samples.begin() + (std::ptrdiff_t) n_held);
    const std::vector<data_sample> train(samples.begin() + (std::ptrdiff_t) n_held, samples.end());
    int32_t pad = tok.pad_id() >= 0 ? tok.pad_id() : tok.eos_id() >= 0 ? tok.eos_id() : 0;
    data_build_rows(train, opt, pad, out.train, nullptr);   // samples are already truncated
    data_build_rows(held, opt, pad, out.held_out, nullptr);
    out.n_samples = (int64_t) samples.size();
    out.n_held_out_samples = (int64_t) n_held;
    for (const data_rows * r : {&out.train, &out.held_out}) {
        for (size_t i = 0; i < r->segment_ids.size(); ++i) {
            out.n_tokens += r->segment_ids[i] != 0;
            out.n_label_tokens += r->labels[i] != IGNORE;
        }
    }
    if (out.n_truncated > 0) {
        out.warnings.push_back(std::to_string(out.n_truncated) + " samples longer than " + std::to_string(opt.max_len) + " tokens were truncated");
    }
    return status::success();
}

} // namespace peft
