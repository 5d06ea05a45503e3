// bpe_train.cpp: byte-level BPE training (see bpe_train.h) and the HF files it writes.
// Our own implementation of the textbook algorithm (Sennrich et al. 2016, byte-level as in
// GPT-2): count regex pieces once, then repeatedly merge the most frequent adjacent pair.
// Per merge only the words that contain the pair are rewritten, and only the pair counts next
// to a merged position change, so a merge costs O(occurrences), not O(corpus).
#include "tokenizer/bpe_train.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <fstream>
#include <queue>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "io/atomic_file.h"
#include "io/json.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretok.h"

namespace peft {

const char * BPE_LLAMA3_PATTERN =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

static const char * FAMILY_NAMES[] = {"llama3", "chatml"};
static_assert(sizeof(FAMILY_NAMES) / sizeof(FAMILY_NAMES[0]) == PEFT_BPE_FAMILY_COUNT);

const char * bpe_train_family_name(bpe_train_family f) {
    return f >= 0 && f < PEFT_BPE_FAMILY_COUNT ? FAMILY_NAMES[f] : "?";
}

status bpe_train_family_from_name(const std::string & name, bpe_train_family & out) {
    for (int k = 0; k < PEFT_BPE_FAMILY_COUNT; ++k) {
        if (name == FAMILY_NAMES[k]) { out = (bpe_train_family) k; return status::success(); }
    }
    status st = make_error(PEFT_STATUS_ARGUMENT, "--template", "unknown template family \"" + name + "\"");
    st.hint = "use llama3 or chatml";
    return st;
}

namespace {

// The family's special tokens, in id order, and which of them play bos/eos/pad/end-of-turn.
struct family_spec {
    std::vector<std::string> tokens;
    const char * bos;   // "" = none
    const char * eos;
    const char * pad;
    const char * eot;
    const char * chat_template;
};

// Meta's Llama 3 Instruct template, verbatim, so chat_template_detect (chat.h) picks llama3 and
// HF transformers renders the same text as our chat_render.
const char * LLAMA3_TEMPLATE =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}";

// The ChatML template as given in the HF chat-templating documentation.
const char * CHATML_TEMPLATE =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

family_spec family_get(bpe_train_family f) {
    if (f == PEFT_BPE_FAMILY_CHATML) {
        // No BOS, as Qwen2: the template carries the structure.
        return {{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, "", "<|endoftext|>", "<|endoftext|>", "<|im_end|>",
                CHATML_TEMPLATE};
    }
    // Llama 3.1 names, including its dedicated padding token so padding never reads as EOS.
    return {{"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
             "<|finetune_right_pad_id|>"},
            "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|eot_id|>", LLAMA3_TEMPLATE};
}

std::vector<std::string> all_special(const bpe_train_options & opt) {
    std::vector<std::string> s = family_get(opt.family).tokens;
    for (const std::string & e : opt.extra_special) {
        if (std::find(s.begin(), s.end(), e) == s.end()) s.push_back(e);
    }
    return s;
}

uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t) (uint32_t) a << 32) | (uint32_t) b; }
int32_t pair_left(uint64_t k) { return (int32_t) (k >> 32); }
int32_t pair_right(uint64_t k) { return (int32_t) (k & 0xffffffffu); }

struct heap_entry {
    int64_t count;
    uint64_t pair;
    // priority_queue pops the largest: higher count first, then the smaller pair.
    bool operator<(const heap_entry & o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

struct word {
    std::vector<int32_t> sym;
    int64_t count;
};

// Base ids 0..255 follow GPT-2's byte->char order (printable bytes by code point, then the
// remapped ones), as GPT-2 and Llama 3 vocabularies do: id 0 is "!".
void byte_order(int32_t byte_to_id[256], uint8_t id_to_byte[256]) {
    std::vector<std::pair<uint32_t, int>> v;
    for (int b = 0; b < 256; ++b) v.push_back({byte_level_char((uint8_t) b), b});
    std::sort(v.begin(), v.end());
    for (int i = 0; i < 256; ++i) {
        byte_to_id[v[(size_t) i].second] = i;
        id_to_byte[i] = (uint8_t) v[(size_t) i].second;
    }
}

} // namespace

status bpe_train_texts(const std::vector<std::string> & texts, const bpe_train_options & opt,
                       bpe_train_result & out) {
    out = bpe_train_result{};
    const std::vector<std::string> specials = all_special(opt);
    const int64_t min_vocab = 256 + (int64_t) specials.size();
    if (opt.vocab_size < min_vocab) {
        status st = make_mismatch(PEFT_STATUS_ARGUMENT, "bpe_train", "vocab_size",
                                  "at least " + std::to_string(min_vocab) + " (256 byte tokens + " + std::to_string(specials.size()) + " special tokens)",
                                  std::to_string(opt.vocab_size));
        st.hint = "a few thousand is typical for a tiny model, e.g. --vocab-size 4096";
        return st;
    }
    if (opt.vocab_size > (1 << 24)) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, "bpe_train", "vocab_size", "at most 2^24", std::to_string(opt.vocab_size));
    }
    if (opt.min_frequency < 1) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, "bpe_train", "min_frequency", ">= 1", std::to_string(opt.min_frequency));
    }
    for (const std::string & s : specials) {
        if (s.empty() || !utf8_is_valid(s.data(), s.size())) {
            return make_error(PEFT_STATUS_ARGUMENT, "bpe_train", "special token \"" + s + "\": expected non-empty valid UTF-8");
        }
    }

    // ---- 1. word frequencies -----------------------------------------------------------
    const auto t0 = std::chrono::steady_clock::now();
    std::shared_ptr<pretok_regex> re;
    PEFT_TRY(pretok_regex_compile(BPE_LLAMA3_PATTERN, false, "bpe_train", re));
    std::unordered_map<std::string, int64_t> freq;
    std::vector<size_t> bounds;
    for (const std::string & raw : texts) {
        out.n_bytes += (int64_t) raw.size();
        std::string fixed;
        const std::string * text = &raw;
        if (!utf8_is_valid(raw.data(), raw.size())) {
            fixed = utf8_sanitize(raw.data(), raw.size());
            // Each repair inserts U+FFFD (3 bytes); count them for the report.
            int64_t before = 0, after = 0;
            for (size_t i = 0; i + 2 < raw.size(); ++i) before += raw.compare(i, 3, "\xEF\xBF\xBD") == 0;
            for (size_t i = 0; i + 2 < fixed.size(); ++i) after += fixed.compare(i, 3, "\xEF\xBF\xBD") == 0;
            out.n_replaced_chars += after - before;
            text = &fixed;
        }
        pretok_split_ranges(*re, *text, bounds);  // consecutive piece boundaries
        for (size_t i = 0; i + 1 < bounds.size(); ++i) {
            if (bounds[i + 1] <= bounds[i]) continue;
            ++freq[text->substr(bounds[i], bounds[i + 1] - bounds[i])];
            ++out.n_words;
        }
    }
    // Sorted by bytes so nothing depends on hash order.
    std::vector<std::pair<std::string, int64_t>> sorted(freq.begin(), freq.end());
    freq.clear();
    std::sort(sorted.begin(), sorted.end());
    out.n_unique_words = (int64_t) sorted.size();

    int32_t byte_to_id[256];
    uint8_t id_to_byte[256];
    byte_order(byte_to_id, id_to_byte);
    std::vector<word> words(sorted.size());
    for (size_t w = 0; w < sorted.size(); ++w) {
        words[w].count = sorted[w].second;
        words[w].sym.reserve(sorted[w].first.size());
        for (unsigned char c : sorted[w].first) words[w].sym.push_back(byte_to_id[c]);
    }
    sorted.clear();
    sorted.shrink_to_fit();
    out.vocab.resize(256);
    for (int i = 0; i < 256; ++i) out.vocab[(size_t) i] = std::string(1, (char) id_to_byte[i]);
    const auto t1 = std::chrono::steady_clock::now();
    out.seconds_count = std::chrono::duration<double>(t1 - t0).count();

    // ---- 2. initial pair counts and where each pair occurs -------------------------------
    std::unordered_map<uint64_t, int64_t> counts;
    std::unordered_map<uint64_t, std::vector<int32_t>> where;  // word indices, may repeat
    counts.reserve(1 << 16);
    where.reserve(1 << 16);
    for (size_t w = 0; w < words.size(); ++w) {
        const std::vector<int32_t> & s = words[w].sym;
        for (size_t i = 0; i + 1 < s.size(); ++i) {
            const uint64_t k = pair_key(s[i], s[i + 1]);
            counts[k] += words[w].count;
            std::vector<int32_t> & lst = where[k];
            if (lst.empty() || lst.back() != (int32_t) w) lst.push_back((int32_t) w);
        }
    }
    std::priority_queue<heap_entry> heap;
    {
        // Built from a sorted list so the heap's internal layout is deterministic too.
        std::vector<heap_entry> init;
        init.reserve(counts.size());
        for (const auto & kv : counts) init.push_back({kv.second, kv.first});
        std::sort(init.begin(), init.end(), [](const heap_entry & a, const heap_entry & b) { return a.pair < b.pair; });
        heap = std::priority_queue<heap_entry>(std::less<heap_entry>(), std::move(init));
    }

    // ---- 3. merges -----------------------------------------------------------------------
    const int64_t n_merges_max = opt.vocab_size - min_vocab;
    std::vector<int32_t> stamp(words.size(), -1);
    std::vector<int32_t> merged;          // new symbol list of the word being rewritten
    std::vector<uint8_t> touched;         // old position i is part of a merged pair
    std::unordered_map<uint64_t, int64_t> delta;
    std::vector<uint64_t> delta_order;    // first-seen order, for deterministic heap pushes
    out.stop_reason = "vocab_size reached";
    while ((int64_t) out.merge_left.size() < n_merges_max) {
        if (heap.empty()) { out.stop_reason = "no pairs left (every word is one token)"; break; }
        const heap_entry top = heap.top();
        heap.pop();
        const auto it = counts.find(top.pair);
        const int64_t cur = it == counts.end() ? 0 : it->second;
        if (cur != top.count) {
            // Stale entry (counts of old pairs only go down): requeue with the true count.
            if (cur > 0) heap.push({cur, top.pair});
            continue;
        }
        if (cur < opt.min_frequency) {
            out.stop_reason = "no pair occurs at least min_frequency (" + std::to_string(opt.min_frequency) + ") times";
            break;
        }
        const int32_t a = pair_left(top.pair), b = pair_right(top.pair);
        const int32_t c = (int32_t) out.vocab.size();
        out.vocab.push_back(out.vocab[(size_t) a] + out.vocab[(size_t) b]);
        out.merge_left.push_back(a);
        out.merge_right.push_back(b);

        std::vector<int32_t> occ = std::move(where[top.pair]);
        where.erase(top.pair);
        delta.clear();
        delta_order.clear();
        auto add = [&](int32_t x, int32_t y, int64_t v) {
            const uint64_t k = pair_key(x, y);
            auto [d, fresh] = delta.try_emplace(k, 0);
            if (fresh) delta_order.push_back(k);
            d->second += v;
        };
        for (int32_t w : occ) {
            if (stamp[(size_t) w] == c) continue;  // listed twice
            stamp[(size_t) w] = c;
            std::vector<int32_t> & s = words[(size_t) w].sym;
            const int64_t f = words[(size_t) w].count;
            const size_t n = s.size();
            merged.clear();
            touched.assign(n, 0);
            bool any = false;
            for (size_t i = 0; i < n;) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                    touched[i] = touched[i + 1] = 1;
                    merged.push_back(c);
                    i += 2;
                    any = true;
                } else {
                    merged.push_back(s[i]);
                    ++i;
                }
            }
            if (!any) continue;  // the pair left this word in an earlier merge
            // Pairs next to a merged position change; all others are the same in both lists.
            for (size_t i = 0; i + 1 < n; ++i) {
                if (touched[i] || touched[i + 1]) add(s[i], s[i + 1], -f);
            }
            for (size_t i = 0; i + 1 < merged.size(); ++i) {
                if (merged[i] == c || merged[i + 1] == c) {
                    add(merged[i], merged[i + 1], f);
                    std::vector<int32_t> & lst = where[pair_key(merged[i], merged[i + 1])];
                    if (lst.empty() || lst.back() != w) lst.push_back(w);
                }
            }
            s.swap(merged);
        }
        for (uint64_t k : delta_order) {
            const int64_t d = delta[k];
            if (d == 0) continue;
            int64_t & v = counts[k];
            v += d;
            if (v <= 0) { counts.erase(k); continue; }
            // Only pairs with the new symbol grow; those are new and need a heap entry.
            if (d > 0) heap.push({v, k});
        }
        counts.erase(top.pair);
    }
    out.seconds_merge = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

    // ---- 4. special tokens after the merges ------------------------------------------------
    const family_spec fam = family_get(opt.family);
    for (const std::string & s : specials) {
        const int32_t id = (int32_t) out.vocab.size();
        out.vocab.push_back(s);
        if (s == fam.bos) out.bos_id = id;
        if (s == fam.eos) out.eos_id = id;
        if (s == fam.pad) out.pad_id = id;
        if (s == fam.eot) out.eot_id = id;
    }
    out.n_special = (int32_t) specials.size();
    return status::success();
}

status bpe_train_files(const std::vector<std::string> & paths, const bpe_train_options & opt,
                       bpe_train_result & out) {
    if (paths.empty()) return make_error(PEFT_STATUS_ARGUMENT, "bpe_train", "no input files");
    std::vector<std::string> texts;
    int64_t total = 0;
    for (const std::string & p : paths) {
        std::error_code ec;
        if (!std::filesystem::is_regular_file(p, ec)) {
            return make_error(PEFT_STATUS_IO, p, "no such file (or not a regular file)");
        }
        std::ifstream f(p, std::ios::binary);
        if (!f) return make_error(PEFT_STATUS_IO, p, "cannot open for reading");
        std::ostringstream ss;
        ss << f.rdbuf();
        if (f.bad()) return make_error(PEFT_STATUS_IO, p, "read error");
        texts.push_back(ss.str());
        total += (int64_t) texts.back().size();
        if (total > opt.max_input_bytes) {
            return make_mismatch(PEFT_STATUS_ARGUMENT, p, "input size", "at most " + std::to_string(opt.max_input_bytes) + " bytes in all",
                                 std::to_string(total));
        }
    }
    if (total == 0) return make_error(PEFT_STATUS_ARGUMENT, paths[0], "the input files are empty: nothing to learn merges from");
    return bpe_train_texts(texts, opt, out);
}

// ---- writers -------------------------------------------------------------------------------

namespace {

// A vocabulary string in GPT-2's byte->char alphabet (what tokenizer.json stores).
std::string to_byte_level(const std::string & raw) {
    std::string s;
    for (unsigned char c : raw) utf8_append(s, byte_level_char(c));
    return s;
}

std::string added_token_json(int32_t id, const std::string & content) {
    return "{\"id\": " + std::to_string(id) + ", \"content\": " + json_quote(content) +
           ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}";
}

std::string token_name(const bpe_train_result & r, int32_t id) {
    return id >= 0 && (size_t) id < r.vocab.size() ? r.vocab[(size_t) id] : "";
}

} // namespace

std::string bpe_tokenizer_json(const bpe_train_result & r, const bpe_train_options & opt) {
    (void) opt;
    const int32_t n_model = (int32_t) r.vocab.size() - r.n_special;
    std::string j;
    j.reserve(r.vocab.size() * 48);
    j += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n";
    for (int32_t id = n_model; id < (int32_t) r.vocab.size(); ++id) {
        j += "    " + added_token_json(id, r.vocab[(size_t) id]) + (id + 1 < (int32_t) r.vocab.size() ? ",\n" : "\n");
    }
    j += "  ],\n  \"normalizer\": null,\n";
    j += "  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [\n"
         "    {\"type\": \"Split\", \"pattern\": {\"Regex\": " + json_quote(BPE_LLAMA3_PATTERN) +
         "}, \"behavior\": \"Isolated\", \"invert\": false},\n"
         "    {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}\n  ]},\n";
    j += "  \"post_processor\": ";
    if (r.bos_id >= 0) {
        const std::string bos = json_quote(token_name(r, r.bos_id));
        j += "{\"type\": \"Sequence\", \"processors\": [\n"
             "    {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false, \"use_regex\": true},\n"
             "    {\"type\": \"TemplateProcessing\",\n"
             "     \"single\": [{\"SpecialToken\": {\"id\": " + bos + ", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],\n"
             "     \"pair\": [{\"SpecialToken\": {\"id\": " + bos + ", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, "
             "{\"SpecialToken\": {\"id\": " + bos + ", \"type_id\": 1}}, {\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}],\n"
             "     \"special_tokens\": {" + bos + ": {\"id\": " + bos + ", \"ids\": [" + std::to_string(r.bos_id) + "], \"tokens\": [" + bos + "]}}}\n  ]},\n";
    } else {
        j += "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false},\n";
    }
    j += "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n";
    j += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
         "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n"
         "    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n    \"vocab\": {\n";
    for (int32_t id = 0; id < n_model; ++id) {
        j += "      " + json_quote(to_byte_level(r.vocab[(size_t) id])) + ": " + std::to_string(id) + (id + 1 < n_model ? ",\n" : "\n");
    }
    j += "    },\n    \"merges\": [\n";
    for (size_t i = 0; i < r.merge_left.size(); ++i) {
        j += "      [" + json_quote(to_byte_level(r.vocab[(size_t) r.merge_left[i]])) + ", " +
             json_quote(to_byte_level(r.vocab[(size_t) r.merge_right[i]])) + "]" + (i + 1 < r.merge_left.size() ? ",\n" : "\n");
    }
    j += "    ]\n  }\n}\n";
    return j;
}

std::string bpe_tokenizer_config_json(const bpe_train_result & r, const bpe_train_options & opt) {
    const family_spec fam = family_get(opt.family);
    const int32_t n_model = (int32_t) r.vocab.size() - r.n_special;
    std::string j = "{\n  \"add_bos_token\": " + std::string(r.bos_id >= 0 ? "true" : "false") + ",\n  \"add_eos_token\": false,\n";
    j += "  \"added_tokens_decoder\": {\n";
    for (int32_t id = n_model; id < (int32_t) r.vocab.size(); ++id) {
        j += "    \"" + std::to_string(id) + "\": {\"content\": " + json_quote(r.vocab[(size_t) id]) +
             ", \"lstrip\": false, \"normalized\": false, \"rstrip\": false, \"single_word\": false, \"special\": true}" +
             (id + 1 < (int32_t) r.vocab.size() ? ",\n" : "\n");
    }
    j += "  },\n";
    j += "  \"bos_token\": " + (r.bos_id >= 0 ? json_quote(token_name(r, r.bos_id)) : std::string("null")) + ",\n";
    j += "  \"chat_template\": " + json_quote(fam.chat_template) + ",\n";
    j += "  \"clean_up_tokenization_spaces\": false,\n";
    j += "  \"eos_token\": " + json_quote(token_name(r, r.eos_id)) + ",\n";
    j += "  \"model_input_names\": [\"input_ids\", \"attention_mask\"],\n";
    j += "  \"model_max_length\": " + std::to_string(opt.model_max_length) + ",\n";
    j += "  \"pad_token\": " + json_quote(token_name(r, r.pad_id)) + ",\n";
    j += "  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n";
    return j;
}

std::string bpe_special_tokens_map_json(const bpe_train_result & r) {
    auto entry = [&](const char * key, int32_t id, bool last) {
        return "  \"" + std::string(key) + "\": {\"content\": " + json_quote(token_name(r, id)) +
               ", \"lstrip\": false, \"normalized\": false, \"rstrip\": false, \"single_word\": false}" + (last ? "\n" : ",\n");
    };
    std::string j = "{\n";
    if (r.bos_id >= 0) j += entry("bos_token", r.bos_id, false);
    j += entry("eos_token", r.eos_id, false);
    j += entry("pad_token", r.pad_id, true);
    j += "}\n";
    return j;
}

status bpe_write_dir(const std::string & dir, const bpe_train_result & r, const bpe_train_options & opt) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec || !std::filesystem::is_directory(dir, ec)) return make_error(PEFT_STATUS_IO, dir, "cannot create the output directory");
    const std::string base = (std::filesystem::path(dir) / "").string();
    PEFT_TRY(write_file_atomic(base + "tokenizer.json", bpe_tokenizer_json(r, opt)));
    PEFT_TRY(write_file_atomic(base + "tokenizer_config.json", bpe_tokenizer_config_json(r, opt)));
    PEFT_TRY(write_file_atomic(base + "special_tokens_map.json", bpe_special_tokens_map_json(r)));
    return status::success();
}

} // namespace peft
