// test_tokenizer_real.cpp: the real tokenizers (fetched by scripts/fetch_assets.sh into
// ${PEFT_ASSET_DIR:-$HOME/.cache/peft-assets}) against the committed ground truth in
// tests/fixtures/tokenizer/expected_<model>.json (made by tools/tokenizer_truth.mjs with the
// packages' own tokenizers). Ids must match exactly. Without the assets these tests skip,
// unless PEFT_REQUIRE_ASSETS=1 (scripts/test.sh, CI), where a missing asset is a failure.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "io/json.h"
#include "testing.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"

using namespace peft;

namespace {

std::string asset_dir() {
    if (const char * d = std::getenv("PEFT_ASSET_DIR")) return d;
    const char * home = std::getenv("HOME");
    return std::string(home ? home : "/root") + "/.cache/peft-assets";
}

bool require_assets() {
    const char * r = std::getenv("PEFT_REQUIRE_ASSETS");
    return r && std::string(r) == "1";
}

// Returns the asset path, or "" after failing/skipping the test when it is absent.
#define ASSET_OR_SKIP(var, rel)                                                                         \
    const std::string var = asset_dir() + "/" + (rel);                                                  \
    if (!std::filesystem::exists(var)) {                                                                \
        if (require_assets()) FAIL() << var << " missing: run scripts/fetch_assets.sh";                 \
        GTEST_SKIP() << var << " missing (run scripts/fetch_assets.sh; PEFT_REQUIRE_ASSETS=1 makes this fail)"; \
    }

std::vector<int32_t> ids_of(const json_value & a) {
    std::vector<int32_t> v;
    for (size_t i = 0; i < a.size(); ++i) v.push_back((int32_t) a.at(i).as_int());
    return v;
}

std::string show(const std::vector<int32_t> & v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s + "]";
}

// Encodes every case with the tokenizer at `path` and compares with expected_<model>.json.
void check_model(const std::string & model, const std::string & path, bool roundtrip) {
    std::unique_ptr<tokenizer> tok;
    const status st = tokenizer::load(path, tok);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::vector<std::string> cases = peft::testing::tokenizer_cases();
    json_document doc;
    const status st2 = doc.parse_file(peft::testing::source_path("tests/fixtures/tokenizer/expected_" + model + ".json"));
    ASSERT_TRUE(st2.ok()) << st2.message;
    const json_value want = doc.root().get("cases");
    ASSERT_EQ(want.size(), cases.size()) << "fixture out of date: rerun tools/tokenizer_truth.mjs";
    ASSERT_GE(cases.size(), 60u);
    int bad = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const std::vector<int32_t> got = tok->encode(cases[i], false);
        const std::vector<int32_t> exp = ids_of(want.at(i).get("ids"));
        const std::vector<int32_t> got_s = tok->encode(cases[i], true);
        const std::vector<int32_t> exp_s = ids_of(want.at(i).get("ids_special"));
        if (got != exp || got_s != exp_s) {
            ++bad;
            ADD_FAILURE() << model << " case " << i << " \"" << cases[i] << "\"\n  got      " << show(got) << "\n  expected "
                          << show(exp) << "\n  with specials got " << show(got_s) << " expected " << show(exp_s);
        }
        // Lossless tokenizers give the text back; invalid UTF-8 is repaired on the way in, so
        // only valid inputs can round-trip.
        if (roundtrip && utf8_is_valid(cases[i].data(), cases[i].size())) {
            EXPECT_EQ(tok->decode(got), cases[i]) << model << " case " << i << " does not round-trip";
        }
    }
    EXPECT_EQ(bad, 0) << model << ": " << bad << " of " << cases.size() << " cases differ";
}

} // namespace

TEST(tokenizer_real, llama3_matches_reference) {
    ASSET_OR_SKIP(dir, "llama3");
    check_model("llama3", dir, true);
}

TEST(tokenizer_real, qwen3_matches_reference) {
    ASSET_OR_SKIP(dir, "qwen3");
    check_model("qwen3", dir, false);
}

TEST(tokenizer_real, mistral_matches_reference) {
    ASSET_OR_SKIP(dir, "mistral");
    check_model("mistral", dir, false);
}

TEST(tokenizer_real, gpt2_matches_reference) {
    ASSET_OR_SKIP(dir, "gpt2");
    check_model("gpt2", dir, true);
}

TEST(tokenizer_real, llama2_sentencepiece_matches_reference) {
#ifndef PEFT_HAVE_SENTENCEPIECE
    GTEST_SKIP() << "built without libsentencepiece";
#else
    ASSET_OR_SKIP(dir, "llama2");
    check_model("llama2", dir, false);
#endif
}

TEST(tokenizer_real, llama3_speed_and_no_quadratic_blowup) {
    ASSET_OR_SKIP(dir, "llama3");
    ASSET_OR_SKIP(text_path, "moby_dick.txt");
    std::unique_ptr<tokenizer> tok;
    ASSERT_TRUE(tokenizer::load(dir, tok).ok());
    for (char c : {'a', ' ', '7', '!'}) {
        const std::string s(100000, c);
        const auto t0 = std::chrono::steady_clock::now();
        const auto ids = tok->encode(s);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_LT(sec, 1.0) << "100 KB of '" << c << "': " << sec << " s";
        EXPECT_EQ(tok->decode(ids), s);
    }
    std::ifstream f(text_path, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok->encode(text);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The README number comes from `peft tokenize --bench`; this only guards against collapse.
    std::printf("llama3 Moby Dick: %zu bytes -> %zu tokens in %.3f s = %.1f MB/s\n", text.size(), ids.size(), sec,
                text.size() / sec / 1e6);
    EXPECT_GT(text.size() / sec / 1e6, 1.0);
    EXPECT_EQ(tok->decode(ids), text);
}
