// bpe.cpp: BPE merge loop with a rank heap (see bpe.h for the algorithm and its sources).
#include "tokenizer/bpe.h"

#include <cstdio>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "tokenizer/normalize.h"

namespace peft {

namespace {

struct merge_value { int32_t rank; int32_t new_id; };

// Transparent hashing: look words up by string_view without building a std::string.
struct sv_hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V> using sv_map = std::unordered_map<std::string, V, sv_hash, std::equal_to<>>;

inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t) (uint32_t) a << 32) | (uint32_t) b; }

struct symbol {
    int32_t id;
    int32_t prev, next;  // indices in the word, -1 at the ends
    bool alive;
};

struct heap_entry {
    int32_t rank, pos, new_id;
    // std::priority_queue is a max-heap: "less" means larger rank, then larger position.
    bool operator<(const heap_entry & o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

} // namespace

struct bpe_model_impl {
    bpe_options opt;
    sv_map<int32_t> key_to_id;                             // internal key (raw bytes if byte-level)
    std::unordered_map<std::string, int32_t> token_to_id;  // file form
    std::unordered_map<uint64_t, merge_value> merges;
    int32_t byte_id[256];        // byte-level: id of each single byte; byte_fallback: <0xXX>
    int32_t ascii_id[128];       // SentencePiece-style: id of each ASCII character
    sv_map<std::vector<int32_t>> cache;
    // Scratch reused across words.
    std::vector<symbol> syms;
    std::vector<heap_entry> heap_buf;

    void push_pair(std::priority_queue<heap_entry> & heap, int32_t l) {
        const int32_t r = syms[l].next;
        if (r < 0) return;
        auto it = merges.find(pair_key(syms[l].id, syms[r].id));
        if (it != merges.end()) heap.push({it->second.rank, l, it->second.new_id});
    }

    void initial_symbols(const char * s, size_t n, std::vector<int32_t> & ids) {
        ids.clear();
        const unsigned char * u = (const unsigned char *) s;
        if (opt.byte_level) {
            for (size_t i = 0; i < n; ++i) {
                const int32_t id = byte_id[u[i]] >= 0 ? byte_id[u[i]] : opt.unk_id;
                if (id >= 0) ids.push_back(id);
            }
            return;
        }
        bool last_unk = false;
        size_t i = 0;
        while (i < n) {
            size_t len = utf8_len(u[i]);
            if (i + len > n) len = n - i;
            int32_t id = -1;
            if (u[i] < 0x80) id = ascii_id[u[i]];
            else {
                auto it = key_to_id.find(std::string_view(s + i, len));
                if (it != key_to_id.end()) id = it->second;
            }
            if (id >= 0) { ids.push_back(id); last_unk = false; i += len; continue; }
            bool bytes_ok = opt.byte_fallback;
            for (size_t k = 0; bytes_ok && k < len; ++k) bytes_ok = byte_id[u[i + k]] >= 0;
            if (bytes_ok) {
                for (size_t k = 0; k < len; ++k) ids.push_back(byte_id[u[i + k]]);
                last_unk = false;
            } else if (opt.unk_id >= 0) {
                if (!(opt.fuse_unk && last_unk)) ids.push_back(opt.unk_id);
                last_unk = true;
            }
            i += len;
        }
    }

    void merge_word(std::vector<int32_t> & ids) {
        const int32_t n = (int32_t) ids.size();
        if (n < 2) return;
        syms.resize((size_t) n);
        for (int32_t i = 0; i < n; ++i) syms[(size_t) i] = {ids[(size_t) i], i - 1, i + 1 < n ? i + 1 : -1, true};
        heap_buf.clear();
        std::priority_queue<heap_entry> heap(std::less<heap_entry>(), std::move(heap_buf));
        for (int32_t i = 0; i + 1 < n; ++i) push_pair(heap, i);
        while (!heap.empty()) {
            const heap_entry top = heap.top();
            heap.pop();
            symbol & l = syms[(size_t) top.pos];
            if (!l.alive || l.next < 0) continue;
            symbol & r = syms[(size_t) l.next];
            // Stale entry: the pair at this position changed since it was pushed.
            auto it = merges.find(pair_key(l.id, r.id));
            if (it == merges.end() || it->second.new_id != top.new_id || it->second.rank != top.rank) continue;
            l.id = top.new_id;
            r.alive = false;
            l.next = r.next;
            if (r.next >= 0) syms[(size_t) r.next].prev = top.pos;
            if (l.prev >= 0) push_pair(heap, l.prev);
            push_pair(heap, top.pos);
        }
        ids.clear();
        for (int32_t i = 0; i >= 0; i = syms[(size_t) i].next) ids.push_back(syms[(size_t) i].id);
    }
};

bpe_model::bpe_model() : p(std::make_unique<bpe_model_impl>()) {}
bpe_model::~bpe_model() = default;

status bpe_model::init(const std::vector<std::string> & tokens, const std::vector<std::string> & merges_left,
                       const std::vector<std::string> & merges_right, const bpe_options & opt, const std::string & where) {
    bpe_model_impl & m = *p;
    m.opt = opt;
    m.key_to_id.clear();
    m.token_to_id.clear();
    m.merges.clear();
    m.cache.clear();
    m.key_to_id.reserve(tokens.size());
    m.token_to_id.reserve(tokens.size());
    for (int & v : m.byte_id) v = -1;
    for (int & v : m.ascii_id) v = -1;
    std::string key;
    for (size_t id = 0; id < tokens.size(); ++id) {
        const std::string & t = tokens[id];
        if (t.empty()) continue;
        m.token_to_id.emplace(t, (int32_t) id);
        if (opt.byte_level) {
            if (!byte_level_decode(t, key)) continue;  // not producible from bytes
        } else {
            key = t;
        }
        m.key_to_id.emplace(key, (int32_t) id);
        if (key.size() == 1) {
            const unsigned char c = (unsigned char) key[0];
            if (opt.byte_level) m.byte_id[c] = (int32_t) id;
            else if (c < 0x80) m.ascii_id[c] = (int32_t) id;
        }
    }
    if (opt.byte_fallback && !opt.byte_level) {
        for (int b = 0; b < 256; ++b) {
            char name[8];
            std::snprintf(name, sizeof(name), "<0x%02X>", b);
            auto it = m.token_to_id.find(name);
            m.byte_id[b] = it == m.token_to_id.end() ? -1 : it->second;
        }
    }
    if (merges_left.size() != merges_right.size()) return make_error(PEFT_STATUS_FORMAT, where, "model.merges: uneven pairs");
    m.merges.reserve(merges_left.size());
    for (size_t i = 0; i < merges_left.size(); ++i) {
        auto a = m.token_to_id.find(merges_left[i]);
        auto b = m.token_to_id.find(merges_right[i]);
        auto c = m.token_to_id.find(merges_left[i] + merges_right[i]);
        if (a == m.token_to_id.end() || b == m.token_to_id.end() || c == m.token_to_id.end()) {
            return make_error(PEFT_STATUS_FORMAT, where,
                              "model.merges[" + std::to_string(i) + "]: \"" + merges_left[i] + " " + merges_right[i] +
                                  "\" uses a token not in model.vocab");
        }
        // First occurrence wins, as in HF (later duplicates never fire).
        m.merges.emplace(pair_key(a->second, b->second), merge_value{(int32_t) i, c->second});
    }
    return status::success();
}

void bpe_model::encode_word(const char * s, size_t n, std::vector<int32_t> & out) {
    bpe_model_impl & m = *p;
    if (n == 0) return;
    const bool cacheable = n <= 256;
    const std::string_view key(s, n);
    if (cacheable) {
        auto it = m.cache.find(key);
        if (it != m.cache.end()) { out.insert(out.end(), it->second.begin(), it->second.end()); return; }
    }
    if (m.opt.ignore_merges) {
        auto it = m.key_to_id.find(key);
        if (it != m.key_to_id.end()) { out.push_back(it->second); return; }
    }
    std::vector<int32_t> ids;
    m.initial_symbols(s, n, ids);
    m.merge_word(ids);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cacheable) {
        if (m.cache.size() >= (1u << 18)) m.cache.clear();  // bounded memory on huge corpora
        m.cache.emplace(std::string(key), std::move(ids));
    }
}

void bpe_model::clear_cache() { p->cache.clear(); }

int32_t bpe_model::find(const std::string & token) const {
    auto it = p->token_to_id.find(token);
    return it == p->token_to_id.end() ? -1 : it->second;
}

} // namespace peft
