// pretok.cpp: PCRE2-backed pre-tokenization. PCRE2 is included here only (ARCHITECTURE §2).
// The pattern from tokenizer.json is compiled as written (UTF + UCP so \p{L}, \s and (?i:)
// follow Unicode like the Rust regex crate HF uses), JIT-compiled when the platform allows.
#include "tokenizer/pretok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace peft {

const char * PRETOK_GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct pretok_regex {
    pcre2_code * code = nullptr;
    pcre2_match_data * md = nullptr;
    pcre2_match_context * mctx = nullptr;
    pcre2_jit_stack * jit_stack = nullptr;
    bool jit = false;
    ~pretok_regex() {
        if (md) pcre2_match_data_free(md);
        if (mctx) pcre2_match_context_free(mctx);
        if (jit_stack) pcre2_jit_stack_free(jit_stack);
        if (code) pcre2_code_free(code);
    }
};

status pretok_regex_compile(const std::string & pattern, bool literal, const std::string & where,
                            std::shared_ptr<pretok_regex> & out) {
    auto re = std::make_shared<pretok_regex>();
    int err = 0;
    PCRE2_SIZE off = 0;
    const uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    re->code = pcre2_compile((PCRE2_SPTR) pattern.data(), pattern.size(), opts, &err, &off, nullptr);
    if (!re->code) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(err, buf, sizeof(buf));
        return make_error(PEFT_STATUS_FORMAT, where,
                          "pre_tokenizer regex does not compile at offset " + std::to_string(off) + ": " + (const char *) buf);
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    re->md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    re->mctx = pcre2_match_context_create(nullptr);
    if (re->jit) {
        // Long whitespace runs make look-ahead alternatives deep; give JIT room to grow.
        re->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
        pcre2_jit_stack_assign(re->mctx, nullptr, re->jit_stack);
    }
    out = std::move(re);
    return status::success();
}

namespace {

struct span { size_t b, e; bool match; };

// Matches of re over text as alternating gap/match spans covering all of text.
void find_spans(pretok_regex & re, const std::string & text, std::vector<span> & spans) {
    spans.clear();
    const PCRE2_SPTR s = (PCRE2_SPTR) text.data();
    const size_t n = text.size();
    size_t pos = 0, last = 0;
    while (pos <= n) {
        // The text is valid UTF-8 (sanitised by the tokenizer), so skip PCRE2's check.
        const int rc = re.jit ? pcre2_jit_match(re.code, s, n, pos, PCRE2_NO_UTF_CHECK, re.md, re.mctx)
                              : pcre2_match(re.code, s, n, pos, PCRE2_NO_UTF_CHECK, re.md, re.mctx);
        if (rc < 0) break;  // no match (or a resource error: the rest is one gap)
        const PCRE2_SIZE * ov = pcre2_get_ovector_pointer(re.md);
        const size_t mb = ov[0], me = ov[1];
        if (me == mb) {
            // Empty match: contributes nothing; step one character on.
            if (mb >= n) break;
            pos = mb + 1;
            while (pos < n && (text[pos] & 0xC0) == 0x80) ++pos;
            continue;
        }
        if (mb > last) spans.push_back({last, mb, false});
        spans.push_back({mb, me, true});
        last = pos = me;
    }
    if (last < n) spans.push_back({last, n, false});
}

void split_piece(pretok_regex & re, split_behavior behavior, bool invert, const std::string & text,
                 std::vector<span> & spans, std::vector<std::string> & out) {
    find_spans(re, text, spans);
    if (invert) for (span & sp : spans) sp.match = !sp.match;
    switch (behavior) {
        case PEFT_SPLIT_ISOLATED:
            for (const span & sp : spans) out.emplace_back(text, sp.b, sp.e - sp.b);
            break;
        case PEFT_SPLIT_REMOVED:
            for (const span & sp : spans) if (!sp.match) out.emplace_back(text, sp.b, sp.e - sp.b);
            break;
        case PEFT_SPLIT_MERGED_WITH_PREVIOUS: {
            // A delimiter ends the current piece.
            size_t start = 0;
            for (const span & sp : spans) {
                if (sp.match) { out.emplace_back(text, start, sp.e - start); start = sp.e; }
            }
            if (start < text.size()) out.emplace_back(text, start, text.size() - start);
            break;
        }
        case PEFT_SPLIT_MERGED_WITH_NEXT: {
            // A delimiter starts a new piece.
            size_t start = 0;
            for (const span & sp : spans) {
                if (sp.match && sp.b > start) { out.emplace_back(text, start, sp.b - start); start = sp.b; }
            }
            if (start < text.size()) out.emplace_back(text, start, text.size() - start);
            break;
        }
        case PEFT_SPLIT_CONTIGUOUS: {
            // Adjacent delimiters form one piece.
            size_t i = 0;
            while (i < spans.size()) {
                size_t j = i + 1;
                if (spans[i].match) while (j < spans.size() && spans[j].match) ++j;
                out.emplace_back(text, spans[i].b, spans[j - 1].e - spans[i].b);
                i = j;
            }
            break;
        }
        case PEFT_SPLIT_COUNT: break;
    }
}

} // namespace

void pretok_split_ranges(pretok_regex & re, const std::string & text, std::vector<size_t> & bounds) {
    // Isolated: every gap and every match is a piece, so the boundaries are all span ends.
    std::vector<span> spans;
    find_spans(re, text, spans);
    bounds.clear();
    bounds.push_back(0);
    for (const span & sp : spans) bounds.push_back(sp.e);
}

void pretok_apply(const std::vector<pretok_step> & steps, const std::string & text, bool first,
                  std::vector<std::string> & pieces) {
    pieces.clear();
    if (text.empty()) return;
    pieces.push_back(text);
    std::vector<std::string> next;
    std::vector<span> spans;
    for (const pretok_step & st : steps) {
        next.clear();
        switch (st.kind) {
            case PEFT_PRETOK_SPLIT:
                for (const std::string & p : pieces) split_piece(*st.re, st.behavior, st.invert, p, spans, next);
                break;
            case PEFT_PRETOK_BYTE_LEVEL:
                for (std::string & p : pieces) {
                    if (st.add_prefix_space && !p.empty() && p[0] != ' ') p.insert(p.begin(), ' ');
                    if (st.re) split_piece(*st.re, PEFT_SPLIT_ISOLATED, false, p, spans, next);
                    else next.push_back(std::move(p));
                }
                break;
            case PEFT_PRETOK_METASPACE:
                for (size_t k = 0; k < pieces.size(); ++k) {
                    std::string p;
                    p.reserve(pieces[k].size() + 3);
                    for (char c : pieces[k]) {
                        if (c == ' ') p += st.replacement; else p.push_back(c);
                    }
                    const bool want_prefix = st.scheme == PEFT_PREPEND_ALWAYS || (st.scheme == PEFT_PREPEND_FIRST && first && k == 0);
                    if (want_prefix && p.compare(0, st.replacement.size(), st.replacement) != 0) p.insert(0, st.replacement);
                    if (!st.split) { next.push_back(std::move(p)); continue; }
                    // Each replacement char starts a new piece (MergedWithNext).
                    size_t start = 0, at = p.find(st.replacement, 1);
                    while (at != std::string::npos) {
                        next.emplace_back(p, start, at - start);
                        start = at;
                        at = p.find(st.replacement, at + st.replacement.size());
                    }
                    next.emplace_back(p, start, std::string::npos);
                }
                break;
            case PEFT_PRETOK_COUNT: break;
        }
        pieces.swap(next);
    }
}

} // namespace peft
