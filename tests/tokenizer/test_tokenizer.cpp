// test_tokenizer.cpp: tokenizer behaviour on small synthetic tokenizer.json files (no assets
// needed): merge order, both merge encodings, ignore_merges, added tokens, the post-processor,
// byte fallback, decoders, UTF-8 repair, error statuses for bad files, and no quadratic blow-up.
#include <chrono>
#include <fstream>

#include "io/json.h"
#include "testing.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"

using namespace peft;

namespace {

std::string cp_utf8(uint32_t cp) {
    std::string s;
    utf8_append(s, cp);
    return s;
}

// A byte-level tokenizer.json: the 256 byte tokens (ids 0..255 in byte order), then one token per
// merge, then the added tokens. merges_as_pairs picks the ["a","b"] encoding.
std::string byte_level_json(const std::vector<std::pair<std::string, std::string>> & merges, bool merges_as_pairs,
                            bool ignore_merges, const std::string & extra_vocab = "") {
    std::string vocab = "{";
    int id = 0;
    for (int b = 0; b < 256; ++b) vocab += (b ? "," : "") + json_quote(cp_utf8(byte_level_char((uint8_t) b))) + ":" + std::to_string(id++);
    std::string ml = "[";
    for (size_t i = 0; i < merges.size(); ++i) {
        auto enc = [](const std::string & raw) {
            std::string s;
            for (unsigned char c : raw) s += cp_utf8(byte_level_char(c));
            return s;
        };
        const std::string a = enc(merges[i].first), b = enc(merges[i].second);
        vocab += "," + json_quote(a + b) + ":" + std::to_string(id++);
        ml += (i ? "," : "") + (merges_as_pairs ? "[" + json_quote(a) + "," + json_quote(b) + "]" : json_quote(a + " " + b));
    }
    vocab += extra_vocab + "}";
    ml += "]";
    const std::string bos_id = std::to_string(id);
    return std::string("{\"version\":\"1.0\",\"added_tokens\":[") +
           "{\"id\":" + bos_id + ",\"content\":\"<|bos|>\",\"special\":true,\"lstrip\":false,\"rstrip\":false,\"single_word\":false,\"normalized\":false}," +
           "{\"id\":" + std::to_string(id + 1) + ",\"content\":\"<|eot|>\",\"special\":true}],"
           "\"normalizer\":null,"
           "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
           "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
           "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
           "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|bos|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
           "\"special_tokens\":{\"<|bos|>\":{\"id\":\"<|bos|>\",\"ids\":[" + bos_id + "],\"tokens\":[\"<|bos|>\"]}}},"
           "\"decoder\":{\"type\":\"ByteLevel\"},"
           "\"model\":{\"type\":\"BPE\",\"ignore_merges\":" + (ignore_merges ? "true" : "false") +
           ",\"vocab\":" + vocab + ",\"merges\":" + ml + "}}";
}

std::unique_ptr<tokenizer> load_text(const std::string & json) {
    std::unique_ptr<tokenizer> t;
    const status st = tokenizer::load_json_text(json, "test.json", t);
    EXPECT_TRUE(st.ok()) << st.message;
    return t;
}

std::vector<std::string> pieces(const tokenizer & t, const std::vector<int32_t> & ids) {
    std::vector<std::string> out;
    for (int32_t id : ids) out.push_back(t.decode(&id, 1));
    return out;
}

const std::vector<std::pair<std::string, std::string>> MERGES = {
    {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}, {"o", "r"}, {" w", "or"}, {"a", "a"}, {"aa", "aa"},
};

} // namespace

TEST(tokenizer, byte_level_merges_in_rank_order) {
    auto t = load_text(byte_level_json(MERGES, false, false));
    ASSERT_TRUE(t);
    EXPECT_EQ(t->kind(), PEFT_TOKENIZER_BPE_BYTE_LEVEL);
    const auto ids = t->encode("hello world");
    EXPECT_EQ(pieces(*t, ids), (std::vector<std::string>{"hello", " wor", "l", "d"}));
    EXPECT_EQ(t->decode(ids), "hello world");
    // "aaaaa": (a a)(a a) a -> (aaaa) a; leftmost wins ties.
    EXPECT_EQ(pieces(*t, t->encode("aaaaa")), (std::vector<std::string>{"aaaa", "a"}));
}

TEST(tokenizer, both_merge_encodings_agree) {
    auto a = load_text(byte_level_json(MERGES, false, false));
    auto b = load_text(byte_level_json(MERGES, true, false));
    ASSERT_TRUE(a && b);
    for (const char * s : {"hello world", "hellohello wor", "aaaaaaa", "x"}) EXPECT_EQ(a->encode(s), b->encode(s)) << s;
}

TEST(tokenizer, ignore_merges_emits_whole_word_from_vocab) {
    // "hlo" is in the vocabulary but no merge builds it.
    const std::string extra = "," + json_quote("hlo") + ":900";
    auto with = load_text(byte_level_json(MERGES, false, true, extra));
    auto without = load_text(byte_level_json(MERGES, false, false, extra));
    ASSERT_TRUE(with && without);
    EXPECT_EQ(with->encode("hlo"), (std::vector<int32_t>{900}));
    EXPECT_EQ(without->encode("hlo").size(), 3u);
}

TEST(tokenizer, added_tokens_split_first_and_template_adds_bos) {
    auto t = load_text(byte_level_json(MERGES, false, false));
    ASSERT_TRUE(t);
    const int32_t bos = t->token_to_id("<|bos|>"), eot = t->token_to_id("<|eot|>");
    ASSERT_GE(bos, 0);
    ASSERT_GE(eot, 0);
    EXPECT_EQ(t->bos_id(), bos);
    const auto ids = t->encode("hello<|eot|>hello", true);
    ASSERT_EQ(ids.size(), 4u);
    EXPECT_EQ(ids[0], bos);
    EXPECT_EQ(ids[2], eot);
    EXPECT_TRUE(t->is_special(eot));
    EXPECT_EQ(t->decode(ids), "<|bos|>hello<|eot|>hello");
    EXPECT_EQ(t->decode(ids, true), "hellohello");
    // parse_special=false: the marker is plain text.
    EXPECT_GT(t->encode("<|eot|>", false, false).size(), 1u);
}

TEST(tokenizer, repeated_character_is_not_quadratic) {
    auto t = load_text(byte_level_json(MERGES, false, false));
    ASSERT_TRUE(t);
    for (char c : {'a', ' ', '1', '!', '\n'}) {
        const std::string s(100000, c);
        const auto t0 = std::chrono::steady_clock::now();
        const auto ids = t->encode(s);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_LT(sec, 1.0) << "100 KB of '" << c << "' took " << sec << " s";
        EXPECT_EQ(t->decode(ids), s);
    }
}

TEST(tokenizer, invalid_utf8_is_repaired_like_whatwg) {
    EXPECT_EQ(utf8_sanitize("a\xff" "b", 3), "a\xEF\xBF\xBD" "b");
    // A truncated 3-byte sequence is one maximal subpart -> one U+FFFD.
    EXPECT_EQ(utf8_sanitize("a\xe2\x82 b", 5), "a\xEF\xBF\xBD b");
    // Overlong C0 AF: both bytes are invalid on their own.
    EXPECT_EQ(utf8_sanitize("\xc0\xaf", 2), "\xEF\xBF\xBD\xEF\xBF\xBD");
    EXPECT_TRUE(utf8_is_valid("\xF0\x9F\x98\x80", 4));
    EXPECT_FALSE(utf8_is_valid("\xED\xA0\x80", 3));  // surrogate
    auto t = load_text(byte_level_json(MERGES, false, false));
    ASSERT_TRUE(t);
    EXPECT_EQ(t->decode(t->encode("x\xffy")), "x\xEF\xBF\xBDy");
}

TEST(tokenizer, byte_fallback_and_sentencepiece_decoders) {
    // Llama-2-style: Prepend + Replace normalizer, byte fallback, Replace/ByteFallback/Fuse/Strip.
    std::string vocab = "{\"<unk>\":0,\"<s>\":1,\"</s>\":2";
    int id = 3;
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        vocab += ",\"" + std::string(name) + "\":" + std::to_string(id++);
    }
    const char * extra[] = {"\xE2\x96\x81", "h", "i", "\xE2\x96\x81h", "\xE2\x96\x81hi"};
    for (const char * e : extra) vocab += "," + json_quote(e) + ":" + std::to_string(id++);
    vocab += "}";
    const std::string json =
        "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},{\"id\":1,\"content\":\"<s>\",\"special\":true},"
        "{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
        "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xE2\x96\x81\"},"
        "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"}]},"
        "\"pre_tokenizer\":null,"
        "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
        "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
        "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\xE2\x96\x81\"},\"content\":\" \"},"
        "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
        "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"fuse_unk\":true,\"unk_token\":\"<unk>\",\"vocab\":" + vocab +
        ",\"merges\":[[\"\xE2\x96\x81\",\"h\"],[\"\xE2\x96\x81h\",\"i\"]]}}";
    auto t = load_text(json);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->kind(), PEFT_TOKENIZER_BPE);
    const int32_t hi = t->token_to_id("\xE2\x96\x81hi");
    // "é" is not in the vocabulary: its two UTF-8 bytes become <0xC3> <0xA9>.
    const auto ids = t->encode("hi \xC3\xA9", true);
    const int32_t c3 = t->token_to_id("<0xC3>"), a9 = t->token_to_id("<0xA9>"), sp = t->token_to_id("\xE2\x96\x81");
    EXPECT_EQ(ids, (std::vector<int32_t>{1, hi, sp, c3, a9}));
    EXPECT_EQ(t->decode(ids, true), "hi \xC3\xA9");
    EXPECT_EQ(t->bos_id(), 1);
}

TEST(tokenizer, bad_files_give_clear_status) {
    std::unique_ptr<tokenizer> t;
    status st = tokenizer::load_json_text("{not json", "bad.json", t);
    EXPECT_EQ(st.code, PEFT_STATUS_FORMAT);
    EXPECT_NE(st.message.find("bad.json"), std::string::npos);
    st = tokenizer::load_json_text("{}", "empty.json", t);
    EXPECT_NE(st.message.find("model"), std::string::npos) << st.message;
    st = tokenizer::load_json_text("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "u.json", t);
    EXPECT_NE(st.message.find("Unigram"), std::string::npos) << st.message;
    st = tokenizer::load_json_text("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}", "m.json", t);
    EXPECT_NE(st.message.find("merges[0]"), std::string::npos) << st.message;
    st = tokenizer::load_json_text("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-3}}}", "id.json", t);
    EXPECT_FALSE(st.ok());
    st = tokenizer::load_json_text("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}},\"pre_tokenizer\":{\"type\":\"Split\","
                                   "\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\"}}", "re.json", t);
    EXPECT_NE(st.message.find("regex"), std::string::npos) << st.message;
    st = tokenizer::load_json_text("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}},\"decoder\":{\"type\":\"WordPiece\"}}", "d.json", t);
    EXPECT_NE(st.message.find("WordPiece"), std::string::npos) << st.message;
    st = tokenizer::load("/nonexistent/tokenizer.json", t);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    EXPECT_NE(st.message.find("/nonexistent"), std::string::npos);
    const std::string dir = peft::testing::temp_dir("tok_empty");
    st = tokenizer::load(dir, t);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    std::ofstream(dir + "/tokenizer.model") << "not a protobuf";
    st = tokenizer::load(dir, t);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("tokenizer.model"), std::string::npos) << st.message;
}

TEST(tokenizer, loads_directory_with_config) {
    const std::string dir = peft::testing::temp_dir("tok_dir");
    std::ofstream(dir + "/tokenizer.json") << byte_level_json(MERGES, true, false);
    std::ofstream(dir + "/tokenizer_config.json") << "{\"bos_token\":\"<|bos|>\",\"eos_token\":{\"content\":\"<|eot|>\"},"
                                                     "\"chat_template\":\"{{ '<|im_start|>' }}\"}";
    std::unique_ptr<tokenizer> t;
    const status st = tokenizer::load(dir, t);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(t->eos_id(), t->token_to_id("<|eot|>"));
    EXPECT_EQ(t->chat_template(), "{{ '<|im_start|>' }}");
}
