// tokenizer.cpp: loading tokenizer.json / tokenizer.model / GPT-2 files into one tokenizer,
// added-token splitting, the post-processor template and the decoder chain (HF `tokenizers`
// semantics, FORMATS.md §2d). The BPE merge loop is in bpe.cpp, regex splitting in pretok.cpp,
// normalizers in normalize.cpp, libsentencepiece in spm.cpp.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "io/gguf_read.h"
#include "io/json.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretok.h"
#include "tokenizer/spm.h"

namespace peft {

namespace fs = std::filesystem;

static const char * TOKENIZER_KIND_NAMES[] = {"bpe-byte-level", "bpe", "sentencepiece"};
static_assert(sizeof(TOKENIZER_KIND_NAMES) / sizeof(TOKENIZER_KIND_NAMES[0]) == PEFT_TOKENIZER_KIND_COUNT);
const char * tokenizer_kind_name(tokenizer_kind k) {
    return k >= 0 && k < PEFT_TOKENIZER_KIND_COUNT ? TOKENIZER_KIND_NAMES[k] : "?";
}

namespace {

struct added_token {
    int32_t id;
    std::string content;
    bool special, lstrip, rstrip, single_word;
};

enum decoder_kind {
    PEFT_DECODER_BYTE_LEVEL,
    PEFT_DECODER_REPLACE,
    PEFT_DECODER_BYTE_FALLBACK,
    PEFT_DECODER_FUSE,
    PEFT_DECODER_STRIP,
    PEFT_DECODER_METASPACE,
};

struct decoder_step {
    decoder_kind kind;
    std::string a, b;          // REPLACE a -> b; STRIP content (a); METASPACE replacement (a)
    int start = 0, stop = 0;   // STRIP
    bool prepend = true;       // METASPACE: strip the first token's leading space
};

} // namespace

struct tokenizer_impl {
    tokenizer_kind kind = PEFT_TOKENIZER_BPE_BYTE_LEVEL;
    std::string source;
    std::vector<std::string> id_to_token;          // file form, added tokens included
    std::vector<uint8_t> special;                  // per id
    std::vector<added_token> added;
    // Added tokens grouped by first byte, longest first, for leftmost-longest matching.
    std::vector<std::vector<int32_t>> added_by_byte = std::vector<std::vector<int32_t>>(256);
    std::unordered_map<std::string, int32_t> added_to_id;
    std::vector<normalizer_step> normalizers;
    std::vector<pretok_step> pretoks;
    bpe_model bpe;
    std::shared_ptr<spm_model> spm;
    std::vector<int32_t> prefix, suffix;           // post-processor template, single sequence
    std::vector<decoder_step> decoders;
    pretok_regex * fast_split = nullptr;           // set when the pre-tokenizer is one plain Split (+ByteLevel)
    int32_t bos = -1, eos = -1, pad = -1;
    std::string chat_template;
    mutable std::mutex mu;                         // guards bpe cache and regex scratch
    std::vector<size_t> bounds;                    // scratch for fast_split

    int32_t find(const std::string & s) const {
        auto it = added_to_id.find(s);
        if (it != added_to_id.end()) return it->second;
        if (spm) return spm_piece_to_id(*spm, s);
        return bpe.find(s);
    }

    void index_added() {
        added_to_id.clear();
        for (auto & v : added_by_byte) v.clear();
        for (size_t i = 0; i < added.size(); ++i) {
            const added_token & t = added[i];
            if (t.content.empty()) continue;
            added_to_id[t.content] = t.id;
            added_by_byte[(unsigned char) t.content[0]].push_back((int32_t) i);
        }
        for (auto & v : added_by_byte) {
            std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) {
                return added[(size_t) a].content.size() > added[(size_t) b].content.size();
            });
        }
    }

    void encode_text(const std::string & seg, bool first, std::vector<int32_t> & ids, std::vector<std::string> & pieces) {
        if (seg.empty()) return;
        if (spm) { spm_encode(*spm, seg, ids); return; }
        const std::string norm = normalizers.empty() ? seg : normalize_apply(normalizers, seg);
        if (pretoks.empty()) { bpe.encode_word(norm.data(), norm.size(), ids); return; }
        if (fast_split) {
            pretok_split_ranges(*fast_split, norm, bounds);
            for (size_t k = 0; k + 1 < bounds.size(); ++k) bpe.encode_word(norm.data() + bounds[k], bounds[k + 1] - bounds[k], ids);
            return;
        }
        pretok_apply(pretoks, norm, first, pieces);
        for (const std::string & w : pieces) bpe.encode_word(w.data(), w.size(), ids);
    }
};

static bool is_word_byte(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }
static bool is_space_byte(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

tokenizer::tokenizer() : p(std::make_unique<tokenizer_impl>()) {}
tokenizer::~tokenizer() = default;

std::vector<int32_t> tokenizer::encode(const std::string & raw, bool add_special, bool parse_special) const {
    tokenizer_impl & m = *p;
    std::lock_guard<std::mutex> lock(m.mu);
    std::vector<int32_t> ids;
    if (add_special) ids = m.prefix;
    const std::string text = m.spm ? raw : utf8_sanitize(raw.data(), raw.size());
    std::vector<std::string> pieces;
    const size_t n = text.size();
    size_t seg_begin = 0;  // start of the pending plain-text segment
    size_t i = 0;
    bool have_added = parse_special && !m.added.empty();
    while (have_added && i < n) {
        const auto & cands = m.added_by_byte[(unsigned char) text[i]];
        const added_token * hit = nullptr;
        for (int32_t c : cands) {
            const added_token & t = m.added[(size_t) c];
            if (text.compare(i, t.content.size(), t.content) != 0) continue;
            if (t.single_word) {
                const size_t e = i + t.content.size();
                if ((i > 0 && is_word_byte((unsigned char) text[i - 1])) || (e < n && is_word_byte((unsigned char) text[e]))) continue;
            }
            hit = &t;
            break;
        }
        if (!hit) { ++i; continue; }
        size_t seg_end = i, next = i + hit->content.size();
        if (hit->lstrip) while (seg_end > seg_begin && is_space_byte((unsigned char) text[seg_end - 1])) --seg_end;
        if (hit->rstrip) while (next < n && is_space_byte((unsigned char) text[next])) ++next;
        m.encode_text(text.substr(seg_begin, seg_end - seg_begin), seg_begin == 0, ids, pieces);
        ids.push_back(hit->id);
        seg_begin = i = next;
    }
    m.encode_text(text.substr(seg_begin), seg_begin == 0, ids, pieces);
    if (add_special) ids.insert(ids.end(), m.suffix.begin(), m.suffix.end());
    return ids;
}

// One <0xXX> token -> its byte, or -1.
static int byte_fallback_value(const std::string & t) {
    if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    const int h = hex(t[3]), l = hex(t[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
}

static std::string replace_all_str(const std::string & s, const std::string & a, const std::string & b) {
    if (a.empty()) return s;
    std::string out;
    size_t i = 0;
    for (size_t j; (j = s.find(a, i)) != std::string::npos; i = j + a.size()) { out.append(s, i, j - i); out += b; }
    out.append(s, i, std::string::npos);
    return out;
}

std::string tokenizer::decode(const int32_t * ids, size_t n, bool skip_special) const {
    const tokenizer_impl & m = *p;
    if (m.spm) {
        std::vector<int32_t> keep;
        for (size_t i = 0; i < n; ++i) if (!(skip_special && is_special(ids[i]))) keep.push_back(ids[i]);
        std::lock_guard<std::mutex> lock(m.mu);
        return spm_decode(*m.spm, keep.data(), keep.size());
    }
    std::vector<std::string> toks;
    toks.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        const int32_t id = ids[i];
        if (id < 0 || (size_t) id >= m.id_to_token.size()) continue;
        if (skip_special && m.special[(size_t) id]) continue;
        toks.push_back(m.id_to_token[(size_t) id]);
    }
    for (const decoder_step & d : m.decoders) {
        switch (d.kind) {
            case PEFT_DECODER_BYTE_LEVEL: {
                std::string all, bytes;
                for (const std::string & t : toks) {
                    if (byte_level_decode(t, bytes)) all += bytes; else all += t;
                }
                toks.assign(1, std::move(all));
                break;
            }
            case PEFT_DECODER_REPLACE:
                for (std::string & t : toks) t = replace_all_str(t, d.a, d.b);
                break;
            case PEFT_DECODER_BYTE_FALLBACK: {
                std::vector<std::string> out;
                std::string run;
                bool in_run = false;
                auto flush = [&]() {
                    if (!in_run) return;
                    if (utf8_is_valid(run.data(), run.size())) out.push_back(run);
                    else for (size_t k = 0; k < run.size(); ++k) out.push_back("\xEF\xBF\xBD");
                    run.clear();
                    in_run = false;
                };
                for (std::string & t : toks) {
                    const int b = byte_fallback_value(t);
                    if (b >= 0) { run.push_back((char) b); in_run = true; continue; }
                    flush();
                    out.push_back(std::move(t));
                }
                flush();
                toks.swap(out);
                break;
            }
            case PEFT_DECODER_FUSE: {
                std::string all;
                for (const std::string & t : toks) all += t;
                toks.assign(1, std::move(all));
                break;
            }
            case PEFT_DECODER_STRIP:
                for (std::string & t : toks) {
                    size_t b = 0, e = t.size();
                    for (int k = 0; k < d.start && t.compare(b, d.a.size(), d.a) == 0 && b + d.a.size() <= e; ++k) b += d.a.size();
                    for (int k = 0; k < d.stop && e >= b + d.a.size() && t.compare(e - d.a.size(), d.a.size(), d.a) == 0; ++k) e -= d.a.size();
                    t = t.substr(b, e - b);
                }
                break;
            case PEFT_DECODER_METASPACE:
                for (size_t k = 0; k < toks.size(); ++k) {
                    toks[k] = replace_all_str(toks[k], d.a, " ");
                    if (k == 0 && d.prepend && !toks[k].empty() && toks[k][0] == ' ') toks[k].erase(0, 1);
                }
                break;
        }
    }
    std::string out;
    for (const std::string & t : toks) out += t;
    return out;
}

std::string tokenizer::decode(const std::vector<int32_t> & ids, bool skip_special) const {
    return decode(ids.data(), ids.size(), skip_special);
}

std::string tokenizer::token_to_piece(int32_t id) const {
    if (p->spm) return spm_id_to_piece(*p->spm, id);
    return id >= 0 && (size_t) id < p->id_to_token.size() ? p->id_to_token[(size_t) id] : std::string();
}
int32_t tokenizer::token_to_id(const std::string & piece) const { return p->find(piece); }
bool tokenizer::is_special(int32_t id) const {
    if (p->spm) return spm_is_control(*p->spm, id);
    return id >= 0 && (size_t) id < p->special.size() && p->special[(size_t) id];
}
int32_t tokenizer::n_vocab() const { return p->spm ? spm_vocab_size(*p->spm) : (int32_t) p->id_to_token.size(); }
int32_t tokenizer::bos_id() const { return p->bos; }
int32_t tokenizer::eos_id() const { return p->eos; }
int32_t tokenizer::pad_id() const { return p->pad; }
tokenizer_kind tokenizer::kind() const { return p->kind; }
bool tokenizer::lossless() const { return p->kind == PEFT_TOKENIZER_BPE_BYTE_LEVEL && p->normalizers.empty(); }
const std::string & tokenizer::chat_template() const { return p->chat_template; }
const std::string & tokenizer::source() const { return p->source; }

// ---- loading ---------------------------------------------------------------------------------

namespace {

status read_text_file(const std::string & path, std::string & out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error(PEFT_STATUS_IO, path, "cannot open for reading");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return make_error(PEFT_STATUS_IO, path, "read failed");
    out = ss.str();
    return status::success();
}

status parse_pattern(const json_value & pat, const std::string & where, const std::string & field,
                     std::string & text, bool & literal) {
    if (pat.get("Regex").is_string()) { text = pat.get("Regex").as_string(); literal = false; return status::success(); }
    if (pat.get("String").is_string()) { text = pat.get("String").as_string(); literal = true; return status::success(); }
    return make_error(PEFT_STATUS_FORMAT, where, field + ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
}

status parse_normalizer(const json_value & n, const std::string & where, std::vector<normalizer_step> & out) {
    if (!n.valid() || n.is_null()) return status::success();
    if (!n.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "normalizer: expected an object or null");
    const std::string type = n.get("type").as_string();
    normalizer_step st;
    if (type == "Sequence") {
        const json_value list = n.get("normalizers");
        if (!list.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "normalizer.normalizers: expected an array");
        for (size_t i = 0; i < list.size(); ++i) PEFT_TRY(parse_normalizer(list.at(i), where, out));
        return status::success();
    }
    if (type == "NFC") st.kind = PEFT_NORMALIZER_NFC;
    else if (type == "NFD") st.kind = PEFT_NORMALIZER_NFD;
    else if (type == "NFKC") st.kind = PEFT_NORMALIZER_NFKC;
    else if (type == "NFKD") st.kind = PEFT_NORMALIZER_NFKD;
    else if (type == "Lowercase") st.kind = PEFT_NORMALIZER_LOWERCASE;
    else if (type == "Prepend") { st.kind = PEFT_NORMALIZER_PREPEND; st.a = n.get("prepend").as_string(); }
    else if (type == "Strip") {
        st.kind = PEFT_NORMALIZER_STRIP;
        st.flags = (n.get("strip_left").as_bool(true) ? 1 : 0) | (n.get("strip_right").as_bool(true) ? 2 : 0);
    } else if (type == "Replace") {
        bool literal = true;
        PEFT_TRY(parse_pattern(n.get("pattern"), where, "normalizer Replace", st.a, literal));
        if (!literal) return make_error(PEFT_STATUS_FORMAT, where, "normalizer Replace with a Regex pattern is not supported");
        st.kind = PEFT_NORMALIZER_REPLACE;
        st.b = n.get("content").as_string();
    } else {
        return make_error(PEFT_STATUS_FORMAT, where, "normalizer type \"" + type + "\" is not supported (NFC/NFD/NFKC/NFKD, Prepend, Replace, Lowercase, Strip, Sequence are)");
    }
    out.push_back(std::move(st));
    return status::success();
}

status regex_step(const std::string & pattern, bool literal, split_behavior b, bool invert, const std::string & where,
                  std::vector<pretok_step> & out) {
    pretok_step st;
    st.kind = PEFT_PRETOK_SPLIT;
    st.behavior = b;
    st.invert = invert;
    PEFT_TRY(pretok_regex_compile(pattern, literal, where, st.re));
    out.push_back(std::move(st));
    return status::success();
}

prepend_scheme parse_scheme(const json_value & n) {
    const json_value s = n.get("prepend_scheme");
    if (s.is_string()) {
        const std::string v = s.as_string();
        return v == "first" ? PEFT_PREPEND_FIRST : v == "never" ? PEFT_PREPEND_NEVER : PEFT_PREPEND_ALWAYS;
    }
    // Older files: add_prefix_space (default true).
    return n.get("add_prefix_space").as_bool(true) ? PEFT_PREPEND_ALWAYS : PEFT_PREPEND_NEVER;
}

status parse_pretok(const json_value & n, const std::string & where, std::vector<pretok_step> & out) {
    if (!n.valid() || n.is_null()) return status::success();
    if (!n.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "pre_tokenizer: expected an object or null");
    const std::string type = n.get("type").as_string();
    if (type == "Sequence") {
        const json_value list = n.get("pretokenizers");
        if (!list.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "pre_tokenizer.pretokenizers: expected an array");
        for (size_t i = 0; i < list.size(); ++i) PEFT_TRY(parse_pretok(list.at(i), where, out));
        return status::success();
    }
    if (type == "Split") {
        std::string pat;
        bool literal = false;
        PEFT_TRY(parse_pattern(n.get("pattern"), where, "pre_tokenizer Split", pat, literal));
        const std::string b = n.get("behavior").as_string("Isolated");
        split_behavior beh;
        if (b == "Isolated") beh = PEFT_SPLIT_ISOLATED;
        else if (b == "Removed") beh = PEFT_SPLIT_REMOVED;
        else if (b == "MergedWithPrevious") beh = PEFT_SPLIT_MERGED_WITH_PREVIOUS;
        else if (b == "MergedWithNext") beh = PEFT_SPLIT_MERGED_WITH_NEXT;
        else if (b == "Contiguous") beh = PEFT_SPLIT_CONTIGUOUS;
        else return make_error(PEFT_STATUS_FORMAT, where, "pre_tokenizer Split: unknown behavior \"" + b + "\"");
        return regex_step(pat, literal, beh, n.get("invert").as_bool(false), where, out);
    }
    if (type == "ByteLevel") {
        pretok_step st;
        st.kind = PEFT_PRETOK_BYTE_LEVEL;
        st.add_prefix_space = n.get("add_prefix_space").as_bool(true);
        if (n.get("use_regex").as_bool(true)) PEFT_TRY(pretok_regex_compile(PRETOK_GPT2_PATTERN, false, where, st.re));
        out.push_back(std::move(st));
        return status::success();
    }
    if (type == "Metaspace") {
        pretok_step st;
        st.kind = PEFT_PRETOK_METASPACE;
        st.replacement = n.get("replacement").as_string("\xE2\x96\x81");
        // HF's replacement is one char; splitting on "" would never advance
        if (st.replacement.empty()) return make_error(PEFT_STATUS_FORMAT, where, "pre_tokenizer Metaspace: empty replacement");
        st.scheme = parse_scheme(n);
        st.split = n.get("split").as_bool(true);
        out.push_back(std::move(st));
        return status::success();
    }
    if (type == "Digits") {
        return n.get("individual_digits").as_bool(false) ? regex_step("\\p{N}", false, PEFT_SPLIT_ISOLATED, false, where, out)
                                                         : regex_step("\\p{N}+", false, PEFT_SPLIT_ISOLATED, false, where, out);
    }
    if (type == "WhitespaceSplit") return regex_step("\\s+", false, PEFT_SPLIT_REMOVED, false, where, out);
    if (type == "Whitespace") return regex_step("\\w+|[^\\w\\s]+", false, PEFT_SPLIT_REMOVED, true, where, out);
    return make_error(PEFT_STATUS_FORMAT, where, "pre_tokenizer type \"" + type + "\" is not supported (Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence are)");
}

status parse_decoder(const json_value & n, const std::string & where, std::vector<decoder_step> & out) {
    if (!n.valid() || n.is_null()) return status::success();
    if (!n.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "decoder: expected an object or null");
    const std::string type = n.get("type").as_string();
    decoder_step d{};
    if (type == "Sequence") {
        const json_value list = n.get("decoders");
        if (!list.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "decoder.decoders: expected an array");
        for (size_t i = 0; i < list.size(); ++i) PEFT_TRY(parse_decoder(list.at(i), where, out));
        return status::success();
    }
    if (type == "ByteLevel") d.kind = PEFT_DECODER_BYTE_LEVEL;
    else if (type == "ByteFallback") d.kind = PEFT_DECODER_BYTE_FALLBACK;
    else if (type == "Fuse") d.kind = PEFT_DECODER_FUSE;
    else if (type == "Replace") {
        bool literal = true;
        PEFT_TRY(parse_pattern(n.get("pattern"), where, "decoder Replace", d.a, literal));
        if (!literal) return make_error(PEFT_STATUS_FORMAT, where, "decoder Replace with a Regex pattern is not supported");
        d.kind = PEFT_DECODER_REPLACE;
        d.b = n.get("content").as_string();
    } else if (type == "Strip") {
        d.kind = PEFT_DECODER_STRIP;
        d.a = n.get("content").as_string(" ");
        // HF's content is one char; stripping "" would loop `start` times for nothing
        if (d.a.empty()) return make_error(PEFT_STATUS_FORMAT, where, "decoder Strip: empty content");
        d.start = (int) n.get("start").as_int(0);
        d.stop = (int) n.get("stop").as_int(0);
    } else if (type == "Metaspace") {
        d.kind = PEFT_DECODER_METASPACE;
        d.a = n.get("replacement").as_string("\xE2\x96\x81");
        if (d.a.empty()) return make_error(PEFT_STATUS_FORMAT, where, "decoder Metaspace: empty replacement");
        d.prepend = parse_scheme(n) != PEFT_PREPEND_NEVER;
    } else {
        return make_error(PEFT_STATUS_FORMAT, where, "decoder type \"" + type + "\" is not supported (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence are)");
    }
    out.push_back(std::move(d));
    return status::success();
}

status parse_post(const json_value & n, const std::string & where, tokenizer_impl & m) {
    if (!n.valid() || n.is_null()) return status::success();
    if (!n.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "post_processor: expected an object or null");
    const std::string type = n.get("type").as_string();
    if (type == "ByteLevel") return status::success();  // offsets only
    if (type == "Sequence") {
        const json_value list = n.get("processors");
        if (!list.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "post_processor.processors: expected an array");
        for (size_t i = 0; i < list.size(); ++i) PEFT_TRY(parse_post(list.at(i), where, m));
        return status::success();
    }
    if (type != "TemplateProcessing") {
        return make_error(PEFT_STATUS_FORMAT, where, "post_processor type \"" + type + "\" is not supported (TemplateProcessing, ByteLevel, Sequence are)");
    }
    const json_value single = n.get("single");
    const json_value specials = n.get("special_tokens");
    if (!single.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "post_processor.single: expected an array");
    m.prefix.clear();
    m.suffix.clear();
    bool seen_seq = false;
    for (size_t i = 0; i < single.size(); ++i) {
        const json_value item = single.at(i);
        if (item.get("Sequence").valid()) { seen_seq = true; continue; }
        const json_value sp = item.get("SpecialToken");
        if (!sp.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "post_processor.single[" + std::to_string(i) + "]: expected Sequence or SpecialToken");
        const std::string name = sp.get("id").as_string();
        const json_value entry = specials.get(name);
        std::vector<int64_t> ids;
        if (entry.get("ids").is_array()) {
            for (size_t k = 0; k < entry.get("ids").size(); ++k) ids.push_back(entry.get("ids").at(k).as_int(-1));
        } else {
            ids.push_back(m.find(name));
        }
        for (int64_t id : ids) {
            // the template's ids go straight into encode()'s output: they must be vocabulary ids
            if (id < 0 || id >= (int64_t) m.id_to_token.size()) {
                return make_error(PEFT_STATUS_FORMAT, where, "post_processor: special token \"" + name + "\" has no id in the vocabulary");
            }
            (seen_seq ? m.suffix : m.prefix).push_back((int32_t) id);
        }
    }
    return status::success();
}

// tokenizer_config.json's bos_token etc.: a string or {"content": ...}.
std::string config_token(const json_value & v) {
    if (v.is_string()) return v.as_string();
    if (v.is_object()) return v.get("content").as_string();
    return "";
}

status load_config(const std::string & path, tokenizer_impl & m) {
    json_document doc;
    PEFT_TRY(doc.parse_file(path));
    const json_value r = doc.root();
    if (!r.is_object()) return make_error(PEFT_STATUS_FORMAT, path, "expected a JSON object");
    const json_value ct = r.get("chat_template");
    if (ct.is_string()) m.chat_template = ct.as_string();
    else if (ct.is_array() && ct.size() > 0) {
        // A list of named templates: take "default".
        for (size_t i = 0; i < ct.size(); ++i) {
            if (ct.at(i).get("name").as_string() == "default") m.chat_template = ct.at(i).get("template").as_string();
        }
    }
    auto pick = [&](const char * key, int32_t & id) {
        const std::string name = config_token(r.get(key));
        if (name.empty()) return;
        const int32_t t = m.find(name);
        if (t >= 0) id = t;
    };
    pick("bos_token", m.bos);
    pick("eos_token", m.eos);
    pick("pad_token", m.pad);
    return status::success();
}

status finish(tokenizer_impl & m) {
    m.special.assign(m.id_to_token.size(), 0);
    for (const added_token & t : m.added) {
        if (t.id >= 0 && (size_t) t.id < m.special.size() && t.special) m.special[(size_t) t.id] = 1;
    }
    m.index_added();
    if (m.bos < 0 && !m.prefix.empty()) m.bos = m.prefix[0];
    // Llama 3 / Qwen2 shape: Split(Isolated) then a ByteLevel that neither splits nor prefixes.
    const auto & pt = m.pretoks;
    const bool plain_split = !pt.empty() && pt[0].kind == PEFT_PRETOK_SPLIT && pt[0].behavior == PEFT_SPLIT_ISOLATED && !pt[0].invert;
    const bool bl_noop = pt.size() == 2 && pt[1].kind == PEFT_PRETOK_BYTE_LEVEL && !pt[1].re && !pt[1].add_prefix_space;
    m.fast_split = plain_split && (pt.size() == 1 || bl_noop) ? pt[0].re.get() : nullptr;
    if (m.eos < 0 && !m.suffix.empty()) m.eos = m.suffix.back();
    return status::success();
}

status load_json_impl(const json_document & doc, const std::string & where, tokenizer_impl & m) {
    const json_value r = doc.root();
    if (!r.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "expected a JSON object at the top level");
    const json_value model = r.get("model");
    if (!model.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "model: missing or not an object");
    const std::string type = model.get("type").as_string("BPE");
    if (type != "BPE") {
        return make_error(PEFT_STATUS_FORMAT, where, "model.type \"" + type + "\" is not supported (only BPE: Llama, Qwen, Mistral, GPT-2)");
    }
    if (!model.get("continuing_subword_prefix").as_string().empty() || !model.get("end_of_word_suffix").as_string().empty()) {
        return make_error(PEFT_STATUS_FORMAT, where, "model: continuing_subword_prefix / end_of_word_suffix are not supported");
    }
    const json_value vocab = model.get("vocab");
    if (!vocab.is_object() || vocab.size() == 0) return make_error(PEFT_STATUS_FORMAT, where, "model.vocab: missing, empty or not an object");
    const json_value added = r.get("added_tokens");
    if (added.valid() && !added.is_null() && !added.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "added_tokens: expected an array");

    // Ids are dense in practice; cap them so a hostile file cannot make us allocate a huge table.
    const int64_t MAX_ID = 1 << 24;
    int64_t max_id = -1;
    auto check_id = [&](const json_value & v, const std::string & field, int32_t & id) -> status {
        if (!v.is_integer() || v.as_int() < 0 || v.as_int() >= MAX_ID) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, field, "an integer id in [0, 2^24)", v.valid() ? v.dump() : "nothing");
        }
        id = (int32_t) v.as_int();
        max_id = std::max<int64_t>(max_id, id);
        return status::success();
    };
    std::vector<int32_t> vids(vocab.size());
    for (size_t i = 0; i < vocab.size(); ++i) PEFT_TRY(check_id(vocab.value_at(i), "model.vocab[\"" + vocab.key_at(i) + "\"]", vids[i]));
    for (size_t i = 0; added.is_array() && i < added.size(); ++i) {
        const json_value a = added.at(i);
        added_token t{};
        PEFT_TRY(check_id(a.get("id"), "added_tokens[" + std::to_string(i) + "].id", t.id));
        if (!a.get("content").is_string()) return make_error(PEFT_STATUS_FORMAT, where, "added_tokens[" + std::to_string(i) + "].content: expected a string");
        t.content = a.get("content").as_string();
        t.special = a.get("special").as_bool(false);
        t.lstrip = a.get("lstrip").as_bool(false);
        t.rstrip = a.get("rstrip").as_bool(false);
        t.single_word = a.get("single_word").as_bool(false);
        m.added.push_back(std::move(t));
    }
    m.id_to_token.assign((size_t) max_id + 1, std::string());
    std::vector<std::string> model_tokens((size_t) max_id + 1);
    for (size_t i = 0; i < vocab.size(); ++i) {
        std::string & slot = model_tokens[(size_t) vids[i]];
        if (!slot.empty()) return make_error(PEFT_STATUS_FORMAT, where, "model.vocab: id " + std::to_string(vids[i]) + " is used twice");
        slot = vocab.key_at(i);
        m.id_to_token[(size_t) vids[i]] = slot;
    }
    for (const added_token & t : m.added) m.id_to_token[(size_t) t.id] = t.content;

    // Merges: "a b" strings (legacy) or ["a", "b"] pairs; rank = index.
    std::vector<std::string> ml, mr;
    const json_value merges = model.get("merges");
    if (merges.valid() && !merges.is_null()) {
        if (!merges.is_array()) return make_error(PEFT_STATUS_FORMAT, where, "model.merges: expected an array");
        ml.reserve(merges.size());
        mr.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const json_value e = merges.at(i);
            if (e.is_string()) {
                const std::string s = e.as_string();
                const size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
                    return make_error(PEFT_STATUS_FORMAT, where, "model.merges[" + std::to_string(i) + "]: expected \"a b\", got \"" + s + "\"");
                }
                ml.push_back(s.substr(0, sp));
                mr.push_back(s.substr(sp + 1));
            } else if (e.is_array() && e.size() == 2 && e.at(0).is_string() && e.at(1).is_string()) {
                ml.push_back(e.at(0).as_string());
                mr.push_back(e.at(1).as_string());
            } else {
                return make_error(PEFT_STATUS_FORMAT, where, "model.merges[" + std::to_string(i) + "]: expected \"a b\" or [\"a\", \"b\"]");
            }
        }
    }

    PEFT_TRY(parse_normalizer(r.get("normalizer"), where, m.normalizers));
    PEFT_TRY(parse_pretok(r.get("pre_tokenizer"), where, m.pretoks));
    PEFT_TRY(parse_decoder(r.get("decoder"), where, m.decoders));

    bpe_options opt;
    for (size_t i = 0; i < m.pretoks.size(); ++i) {
        if (m.pretoks[i].kind != PEFT_PRETOK_BYTE_LEVEL) continue;
        // Pieces stay raw bytes (pretok.h), which is only equivalent when ByteLevel comes last.
        if (i + 1 != m.pretoks.size()) return make_error(PEFT_STATUS_FORMAT, where, "pre_tokenizer: ByteLevel must be the last step");
        opt.byte_level = true;
    }
    opt.byte_fallback = model.get("byte_fallback").as_bool(false);
    opt.fuse_unk = model.get("fuse_unk").as_bool(false);
    opt.ignore_merges = model.get("ignore_merges").as_bool(false);
    const json_value unk = model.get("unk_token");
    if (unk.is_string()) {
        for (size_t i = 0; i < model_tokens.size(); ++i) if (model_tokens[i] == unk.as_string()) opt.unk_id = (int32_t) i;
    }
    m.kind = opt.byte_level ? PEFT_TOKENIZER_BPE_BYTE_LEVEL : PEFT_TOKENIZER_BPE;
    PEFT_TRY(m.bpe.init(model_tokens, ml, mr, opt, where));
    // Added tokens are found by the splitter; make them findable by name before the template.
    m.index_added();
    PEFT_TRY(parse_post(r.get("post_processor"), where, m));
    return status::success();
}

// The original GPT-2 release: encoder.json (token -> id) and vocab.bpe ("#version" + merges).
status load_gpt2(const std::string & dir, tokenizer_impl & m) {
    const std::string enc_path = (fs::path(dir) / "encoder.json").string();
    const std::string bpe_path = (fs::path(dir) / "vocab.bpe").string();
    json_document doc;
    PEFT_TRY(doc.parse_file(enc_path));
    const json_value vocab = doc.root();
    if (!vocab.is_object() || vocab.size() == 0) return make_error(PEFT_STATUS_FORMAT, enc_path, "expected an object of token -> id");
    std::vector<std::string> tokens;
    for (size_t i = 0; i < vocab.size(); ++i) {
        const json_value v = vocab.value_at(i);
        if (!v.is_integer() || v.as_int() < 0 || v.as_int() >= (1 << 24)) {
            return make_mismatch(PEFT_STATUS_FORMAT, enc_path, "\"" + vocab.key_at(i) + "\"", "an id in [0, 2^24)", v.dump());
        }
        const size_t id = (size_t) v.as_int();
        if (tokens.size() <= id) tokens.resize(id + 1);
        tokens[id] = vocab.key_at(i);
    }
    std::string text;
    PEFT_TRY(read_text_file(bpe_path, text));
    std::vector<std::string> ml, mr;
    std::istringstream lines(text);
    std::string line;
    size_t lineno = 0;
    while (std::getline(lines, line)) {
        ++lineno;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty() || line[0] == '#') continue;
        const size_t sp = line.find(' ');
        if (sp == std::string::npos) return make_error(PEFT_STATUS_FORMAT, bpe_path + ":" + std::to_string(lineno), "expected \"a b\"");
        ml.push_back(line.substr(0, sp));
        mr.push_back(line.substr(sp + 1));
    }
    bpe_options opt;
    opt.byte_level = true;
    PEFT_TRY(m.bpe.init(tokens, ml, mr, opt, bpe_path));
    pretok_step st;
    st.kind = PEFT_PRETOK_BYTE_LEVEL;
    PEFT_TRY(pretok_regex_compile(PRETOK_GPT2_PATTERN, false, bpe_path, st.re));
    m.pretoks.push_back(std::move(st));
    m.decoders.push_back({PEFT_DECODER_BYTE_LEVEL, "", "", 0, 0, true});
    m.id_to_token = tokens;
    m.kind = PEFT_TOKENIZER_BPE_BYTE_LEVEL;
    const int32_t eot = m.bpe.find("<|endoftext|>");
    if (eot >= 0) {
        m.added.push_back({eot, "<|endoftext|>", true, false, false, false});
        m.bos = m.eos = eot;
    }
    return status::success();
}

status load_spm_file(const std::string & path, tokenizer_impl & m) {
    PEFT_TRY(spm_load(path, m.spm));
    m.kind = PEFT_TOKENIZER_SENTENCEPIECE;
    m.bos = spm_bos_id(*m.spm);
    m.eos = spm_eos_id(*m.spm);
    m.pad = spm_pad_id(*m.spm);
    // The HF LlamaTokenizer default: add_bos_token=True, add_eos_token=False.
    if (m.bos >= 0) m.prefix.push_back(m.bos);
    return status::success();
}

bool is_file(const fs::path & p) {
    std::error_code ec;
    return fs::is_regular_file(p, ec);
}

} // namespace

status tokenizer::load_json_text(const std::string & text, const std::string & where, std::unique_ptr<tokenizer> & out) {
    std::unique_ptr<tokenizer> t(new tokenizer());
    t->p->source = where;
    json_document doc;
    PEFT_TRY(doc.parse(text.data(), text.size(), where));
    PEFT_TRY(load_json_impl(doc, where, *t->p));
    PEFT_TRY(finish(*t->p));
    out = std::move(t);
    return status::success();
}

// A GGUF model file: its tokenizer.ggml.* metadata as tokenizer.json, or for a SentencePiece
// ("llama") vocabulary as a sentencepiece model (gguf_vocab.h), plus what tokenizer_config.json
// would add (ids and the chat template).
status tokenizer::load_gguf(const std::string & path, std::unique_ptr<tokenizer> & out) {
    gguf_file f;
    PEFT_TRY(gguf_open(path, f));
    std::string model;
    PEFT_TRY(f.get_str("tokenizer.ggml.model", model, true));
    gguf_vocab_extra extra;
    if (model == "llama") {
        std::string proto;
        PEFT_TRY(gguf_spm_model_proto(f, proto, extra));
        std::unique_ptr<tokenizer> t(new tokenizer());
        tokenizer_impl & m = *t->p;
        m.source = path;
        PEFT_TRY(spm_load_proto(proto, path, m.spm));
        m.kind = PEFT_TOKENIZER_SENTENCEPIECE;
        if (extra.add_bos && extra.bos >= 0) m.prefix.push_back(extra.bos);
        if (extra.add_eos && extra.eos >= 0) m.suffix.push_back(extra.eos);
        // as llama.cpp: control, unknown and user-defined tokens are found in text first
        for (const gguf_vocab_extra::added & a : extra.added_tokens) m.added.push_back({a.id, a.content, a.special, false, false, false});
        PEFT_TRY(finish(m));
        out = std::move(t);
    } else {
        std::string text;
        PEFT_TRY(gguf_tokenizer_json(f, text, extra));
        PEFT_TRY(load_json_text(text, path, out));
    }
    tokenizer_impl & m = *out->p;
    m.chat_template = extra.chat_template;
    if (extra.bos >= 0) m.bos = extra.bos;
    if (extra.eos >= 0) m.eos = extra.eos;
    if (extra.pad >= 0) m.pad = extra.pad;
    return status::success();
}

status tokenizer::load(const std::string & path, std::unique_ptr<tokenizer> & out) {
    std::error_code ec;
    const fs::path in(path);
    if (!fs::exists(in, ec)) return make_error(PEFT_STATUS_IO, path, "no such file or directory");
    if (gguf_is_file(path)) return load_gguf(path, out);
    fs::path dir, file;
    if (fs::is_directory(in, ec)) {
        dir = in;
        if (is_file(in / "tokenizer.json")) file = in / "tokenizer.json";
        else if (is_file(in / "tokenizer.model")) file = in / "tokenizer.model";
        else if (is_file(in / "encoder.json") && is_file(in / "vocab.bpe")) file = in / "encoder.json";
        else {
            status st = make_error(PEFT_STATUS_IO, path, "no tokenizer.json, tokenizer.model or encoder.json + vocab.bpe in this directory");
            st.hint = "pass the model directory that holds the tokenizer files";
            return st;
        }
    } else {
        file = in;
        dir = in.parent_path();
        if (dir.empty()) dir = ".";
    }
    std::unique_ptr<tokenizer> t(new tokenizer());
    tokenizer_impl & m = *t->p;
    m.source = file.string();
    const std::string name = file.filename().string();
    if (name == "encoder.json" || name == "vocab.bpe") {
        PEFT_TRY(load_gpt2(dir.string(), m));
    } else if (file.extension() == ".model") {
        PEFT_TRY(load_spm_file(file.string(), m));
    } else {
        json_document doc;
        PEFT_TRY(doc.parse_file(file.string()));
        PEFT_TRY(load_json_impl(doc, file.string(), m));
    }
    PEFT_TRY(finish(m));
    if (is_file(dir / "tokenizer_config.json")) PEFT_TRY(load_config((dir / "tokenizer_config.json").string(), m));
    out = std::move(t);
    return status::success();
}

const std::vector<std::string> & hf_companion_files() {
    static const std::vector<std::string> files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                                                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json"};
    return files;
}

} // namespace peft
