// test_data_real.cpp: chat rendering through the data pipeline against the Llama 3 tokenizer's own
// Jinja chat template (ids from tools/tokenizer_truth.mjs, tests/fixtures/tokenizer/
// expected_chat_llama3.json), with the template picked automatically from tokenizer_config.json.
// Needs scripts/fetch_assets.sh; skips without it unless PEFT_REQUIRE_ASSETS=1.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

using namespace peft;

TEST(data_real, llama3_chat_matches_its_jinja_template) {
    const char * env = std::getenv("PEFT_ASSET_DIR");
    const char * home = std::getenv("HOME");
    const std::string dir = (env ? std::string(env) : std::string(home ? home : "/root") + "/.cache/peft-assets") + "/llama3";
    if (!std::filesystem::exists(dir)) {
        const char * req = std::getenv("PEFT_REQUIRE_ASSETS");
        if (req && std::string(req) == "1") FAIL() << dir << " missing: run scripts/fetch_assets.sh";
        GTEST_SKIP() << dir << " missing (run scripts/fetch_assets.sh)";
    }
    std::unique_ptr<tokenizer> tok;
    ASSERT_TRUE(tokenizer::load(dir, tok).ok());
    json_document cases, want;
    ASSERT_TRUE(cases.parse_file(peft::testing::source_path("tests/fixtures/tokenizer/chat_cases.json")).ok());
    ASSERT_TRUE(want.parse_file(peft::testing::source_path("tests/fixtures/tokenizer/expected_chat_llama3.json")).ok());
    const json_value c = cases.root().get("cases"), w = want.root().get("cases");
    ASSERT_EQ(c.size(), w.size());
    const std::string path = peft::testing::temp_dir("data_real") + "/chat.jsonl";
    {
        std::ofstream f(path);
        for (size_t i = 0; i < c.size(); ++i) f << c.at(i).dump() << "\n";
    }
    data_options o;
    o.max_len = 256;
    o.pack = false;
    o.shuffle = false;
    dataset ds;
    const status st = dataset_load(path, *tok, o, ds);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(ds.template_name, "llama3");
    ASSERT_EQ(ds.train.n_rows, (int64_t) c.size());
    for (size_t i = 0; i < c.size(); ++i) {
        std::vector<int32_t> got;
        for (int64_t t = 0; t < ds.train.T; ++t) {
            const size_t k = (size_t) ((int64_t) i * ds.train.T + t);
            if (ds.train.segment_ids[k]) got.push_back(ds.train.input_ids[k]);
        }
        // This template always ends with an empty assistant header (a generation prompt), which
        // a training sample does not have.
        std::vector<int32_t> exp;
        const json_value ids = w.at(i).get("ids");
        for (size_t k = 0; k < ids.size(); ++k) exp.push_back((int32_t) ids.at(k).as_int());
        const std::vector<int32_t> gen = {tok->token_to_id("<|start_header_id|>"), tok->token_to_id("assistant"), tok->token_to_id("<|end_header_id|>"), 271};
        ASSERT_GE(exp.size(), gen.size());
        EXPECT_EQ(std::vector<int32_t>(exp.end() - 4, exp.end()), gen);
        exp.resize(exp.size() - 4);
        EXPECT_EQ(got, exp) << "conversation " << i << ": " << tok->decode(got) << "\nvs\n" << tok->decode(exp);
    }
}
