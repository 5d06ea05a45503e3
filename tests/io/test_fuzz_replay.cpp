// test_fuzz_replay.cpp: runs the libFuzzer bodies (tests/fuzz/fuzz_bodies.h) over every seed in
// tests/fuzz/corpus_* plus a few thousand deterministic mutations of each (bit flips,
// truncations, length-field overwrites, byte insertions), so CI exercises the fuzz targets
// without clang. It asserts only that each input returns (the bodies abort() on a broken
// invariant); under -DPEFT_SANITIZE=ON, ASan/UBSan also catch memory errors.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "fuzz/fuzz_bodies.h"
#include "testing.h"

namespace {

std::vector<std::string> load_corpus(const std::string & rel) {
    std::vector<std::string> files;
    for (const auto & e : std::filesystem::directory_iterator(peft::testing::source_path(rel))) {
        if (e.is_regular_file()) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    return files;
}

std::string read_all(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

struct splitmix {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    size_t below(size_t n) { return n ? (size_t) (next() % n) : 0; }
};

// One deterministic mutation of `in`, chosen by `r`.
std::string mutate(const std::string & in, splitmix & r) {
    std::string m = in;
    static const uint64_t LENGTHS[] = {0, 1, 2, 7, 8, 100000000, 100000001, 0x7fffffffffffffffull, 0xffffffffffffffffull};
    switch (r.below(8)) {
        case 0:  // flip 1..4 bits
            for (size_t k = 0, n = 1 + r.below(4); k < n && !m.empty(); k++) m[r.below(m.size())] ^= (char) (1u << r.below(8));
            break;
        case 1: m.resize(r.below(m.size() + 1)); break;  // truncate
        case 2: {  // overwrite the length field (first 8 bytes) with a boundary or nearby value
            uint64_t v = r.below(2) ? LENGTHS[r.below(sizeof(LENGTHS) / sizeof(LENGTHS[0]))]
                                    : (uint64_t) (m.size() >= 8 ? m.size() - 8 : 0) + r.below(5) - 2;
            if (m.size() < 8) m.resize(8);
            std::memcpy(m.data(), &v, 8);
        } break;
        case 3: m.insert(r.below(m.size() + 1), std::string(1 + r.below(4), (char) r.next())); break;
        case 4:  // delete a span
            if (!m.empty()) {
                size_t at = r.below(m.size());
                m.erase(at, 1 + r.below(std::min<size_t>(8, m.size() - at)));
            }
            break;
        case 5: {  // replace a digit with an extreme number (offsets, dims)
            std::vector<size_t> digits;
            for (size_t i = 0; i < m.size(); i++) if (m[i] >= '0' && m[i] <= '9') digits.push_back(i);
            static const char * NUMS[] = {"0", "-1", "18446744073709551615", "18446744073709551616", "9223372036854775808",
                                          "4294967296", "1e3", "2.5", "99999999999999999999999"};
            if (!digits.empty()) m.replace(digits[r.below(digits.size())], 1, NUMS[r.below(sizeof(NUMS) / sizeof(NUMS[0]))]);
        } break;
        case 6: m += std::string(1 + r.below(16), (char) r.next()); break;  // trailing bytes
        case 7: {  // duplicate a chunk (duplicate keys, repeated entries)
            if (!m.empty()) {
                size_t a = r.below(m.size()), len = 1 + r.below(std::min<size_t>(64, m.size() - a));
                m.insert(r.below(m.size() + 1), m.substr(a, len));
            }
        } break;
    }
    return m;
}

void replay(const std::string & corpus, int (*body)(const uint8_t *, size_t), int mutations_per_seed) {
    std::vector<std::string> files = load_corpus(corpus);
    ASSERT_GE(files.size(), 3u) << corpus;
    size_t runs = 0;
    for (const std::string & path : files) {
        std::string seed = read_all(path);
        EXPECT_LT(seed.size(), 4096u) << path;
        body((const uint8_t *) seed.data(), seed.size());
        uint64_t h = 1469598103934665603ull;  // FNV-1a of the file name: stable seeds across runs
        for (char c : std::filesystem::path(path).filename().string()) h = (h ^ (uint8_t) c) * 1099511628211ull;
        splitmix r{h};
        std::string cur = seed;
        for (int i = 0; i < mutations_per_seed; i++) {
            // mostly mutate the seed, sometimes stack mutations
            cur = mutate(r.below(4) == 0 ? cur : seed, r);
            // a heap copy of exactly the input size, so ASan sees any over-read
            std::vector<uint8_t> buf(cur.begin(), cur.end());
            body(buf.data(), buf.size());
            runs++;
        }
    }
    EXPECT_GT(runs, 0u);
}

} // namespace

// Mutations per seed: fewer for bodies that do more per input (a tokenizer load encodes seven
// texts; an adapter config attaches to a model twice; mutated YAML alias chains expand up to
// the cap), so each test stays a few seconds, also under ASan.
TEST(fuzz_replay, safetensors_corpus) { replay("tests/fuzz/corpus_safetensors", peft::fuzz::safetensors_one, 3000); }
TEST(fuzz_replay, json_corpus) { replay("tests/fuzz/corpus_json", peft::fuzz::json_one, 3000); }
TEST(fuzz_replay, tokenizer_corpus) { replay("tests/fuzz/corpus_tokenizer", peft::fuzz::tokenizer_one, 300); }
TEST(fuzz_replay, config_corpus) { replay("tests/fuzz/corpus_config", peft::fuzz::config_one, 200); }
TEST(fuzz_replay, data_corpus) { replay("tests/fuzz/corpus_data", peft::fuzz::data_one, 1000); }
TEST(fuzz_replay, adapter_config_corpus) { replay("tests/fuzz/corpus_adapter_config", peft::fuzz::adapter_config_one, 500); }
TEST(fuzz_replay, hparams_corpus) { replay("tests/fuzz/corpus_hparams", peft::fuzz::hparams_one, 3000); }
TEST(fuzz_replay, trainer_state_corpus) { replay("tests/fuzz/corpus_trainer_state", peft::fuzz::trainer_state_one, 3000); }
TEST(fuzz_replay, gguf_corpus) { replay("tests/fuzz/corpus_gguf", peft::fuzz::gguf_one, 2000); }
