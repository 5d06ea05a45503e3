// test_json.cpp: the JSON wrapper (io/json.h): duplicate keys and depth rejected with clear
// messages, accessors and their fallbacks, quoting, file loading.
#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "testing.h"

using namespace peft;

namespace {
status parse(json_document & d, const std::string & text, const std::string & where = "cfg.json") {
    return d.parse(text.data(), text.size(), where);
}
} // namespace

TEST(json, duplicate_keys_rejected_at_any_level) {
    json_document d;
    status s = parse(d, "{\"a\":1,\"b\":2,\"a\":3}");
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code, PEFT_STATUS_FORMAT);
    EXPECT_EQ(s.message, "cfg.json: invalid JSON: duplicate key \"a\"");
    s = parse(d, "{\"x\":[{\"k\":1},{\"k\":2,\"k\":3}]}");
    EXPECT_NE(s.message.find("duplicate key \"k\""), std::string::npos) << s.message;
    s = parse(d, "{\"o\":{\"a\":{\"deep\":1,\"deep\":1}}}");
    EXPECT_FALSE(s.ok());
    // the same key in sibling and nested objects is fine
    s = parse(d, "{\"k\":{\"k\":1},\"j\":{\"k\":2},\"a\":[{\"k\":1},{\"k\":2}]}");
    EXPECT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(d.root().get("j").get("k").as_int(), 2);
}

TEST(json, deep_nesting_rejected) {
    json_document d;
    std::string ok = std::string(200, '[') + std::string(200, ']');
    EXPECT_TRUE(parse(d, ok).ok());
    std::string deep = std::string(300, '[') + std::string(300, ']');
    status s = parse(d, deep);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message.find("nesting deeper than 256 levels"), std::string::npos) << s.message;
    std::string objs;
    for (int i = 0; i < 300; i++) objs += "{\"a\":";
    objs += '1';
    objs.append(300, '}');
    EXPECT_FALSE(parse(d, objs).ok());
    // a million brackets: rejected quickly, no stack overflow
    std::string huge(1000000, '[');
    EXPECT_FALSE(parse(d, huge).ok());
}

TEST(json, invalid_json_messages) {
    json_document d;
    for (const char * bad : {"", "{", "{\"a\":}", "[1,2,]", "{'a':1}", "nul", "{\"a\":1} x", "\"\xff\"", "01"}) {
        status s = parse(d, bad, "x.json");
        ASSERT_FALSE(s.ok()) << bad;
        EXPECT_EQ(s.message.rfind("x.json: invalid JSON: ", 0), 0u) << s.message;
    }
    // nlohmann alone stops at a NUL and ignores the rest ("{}\0junk" would parse)
    status s = parse(d, std::string("{}\0junk", 7));
    EXPECT_EQ(s.message, "cfg.json: invalid JSON: NUL byte at offset 2");
    EXPECT_FALSE(parse(d, std::string("\"a\0b\"", 5)).ok());
    EXPECT_TRUE(d.parse(nullptr, 0, "e").code == PEFT_STATUS_FORMAT);  // empty input, null pointer
    s = d.parse("[1]", 3, "small.json", 2);
    EXPECT_EQ(s.message, "small.json: JSON text size: expected at most 2 bytes, got 3 bytes");
    // a failed parse leaves an empty (null) document, not a half-built one
    EXPECT_TRUE(d.root().is_null());
}

TEST(json, accessors) {
    json_document d;
    ASSERT_TRUE(parse(d, R"({"s":"hi","i":-3,"u":18446744073709551615,"big":9223372036854775807,"f":2.5,"g":4.0,
                           "h":1e300,"b":true,"n":null,"a":[1,"x",{}],"o":{"z":1,"y":2}})")
                    .ok());
    json_value r = d.root();
    EXPECT_TRUE(r.is_object());
    EXPECT_EQ(r.size(), 11u);
    EXPECT_EQ(r.get("s").as_string(), "hi");
    EXPECT_EQ(r.get("s").as_int(7), 7);  // wrong type -> fallback
    EXPECT_EQ(r.get("i").as_int(), -3);
    EXPECT_TRUE(r.get("i").is_integer());
    EXPECT_EQ(r.get("u").as_int(-1), -1);  // does not fit int64: fallback, not a wrapped value
    EXPECT_TRUE(r.get("u").is_integer());
    EXPECT_EQ(r.get("big").as_int(), INT64_MAX);
    EXPECT_EQ(r.get("f").as_double(), 2.5);
    EXPECT_EQ(r.get("f").as_int(-1), -1);
    EXPECT_EQ(r.get("g").as_int(-1), 4);
    EXPECT_EQ(r.get("h").as_int(-1), -1);  // out of int64 range: no UB, fallback
    EXPECT_FALSE(r.get("f").is_integer());
    EXPECT_TRUE(r.get("b").as_bool());
    EXPECT_TRUE(r.get("n").is_null());
    EXPECT_TRUE(r.get("n").valid());
    EXPECT_FALSE(r.get("missing").valid());
    EXPECT_FALSE(r.get("missing").is_null());
    EXPECT_EQ(r.get("missing").as_string("fb"), "fb");
    json_value a = r.get("a");
    EXPECT_TRUE(a.is_array());
    EXPECT_EQ(a.size(), 3u);
    EXPECT_EQ(a.at(1).as_string(), "x");
    EXPECT_TRUE(a.at(2).is_object());
    EXPECT_FALSE(a.at(3).valid());
    EXPECT_FALSE(a.get("x").valid());
    json_value o = r.get("o");
    EXPECT_EQ(o.key_at(0), "z");  // document order
    EXPECT_EQ(o.key_at(1), "y");
    EXPECT_EQ(o.value_at(1).as_int(), 2);
    EXPECT_EQ(o.key_at(2), "");
    EXPECT_FALSE(o.value_at(2).valid());
    EXPECT_EQ(o.dump(), "{\"z\":1,\"y\":2}");
    EXPECT_EQ(r.key_at(10), "o");
    EXPECT_EQ(json_value{}.dump(), "null");
    EXPECT_EQ(json_value{}.size(), 0u);
}

TEST(json, many_members_iterate_fast) {
    // key_at/value_at are O(1): 200k members iterate in well under a second
    std::string text = "{";
    for (int i = 0; i < 200000; i++) text += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
    text += "}";
    json_document d;
    ASSERT_TRUE(parse(d, text).ok());
    json_value r = d.root();
    int64_t sum = 0;
    for (size_t i = 0; i < r.size(); i++) {
        std::string want = "k";  // (not "k" + to_string: GCC 12 false -Wrestrict)
        want += std::to_string(i);
        ASSERT_EQ(r.key_at(i), want);
        sum += r.value_at(i).as_int();
    }
    EXPECT_EQ(sum, (int64_t) 199999 * 200000 / 2);
}

TEST(json, quote_round_trips) {
    for (std::string s : {std::string(""), std::string("plain"), std::string("q\"b\\s/"), std::string("\n\t\x01\x1f"),
                          std::string("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), std::string("a\0b", 3)}) {
        std::string q = json_quote(s);
        json_document d;
        ASSERT_TRUE(parse(d, q).ok()) << q;
        EXPECT_EQ(d.root().as_string(), s);
    }
    EXPECT_EQ(json_quote("a\"b"), "\"a\\\"b\"");
    // invalid UTF-8 is replaced, never produces unparsable output
    std::string q = json_quote("bad\xff");
    json_document d;
    EXPECT_TRUE(parse(d, q).ok()) << q;
}

TEST(json, parse_file) {
    std::string dir = peft::testing::temp_dir("json_file");
    json_document d;
    status s = d.parse_file(dir + "/missing.json");
    EXPECT_EQ(s.code, PEFT_STATUS_IO);
    EXPECT_NE(s.message.find("missing.json: file not found"), std::string::npos) << s.message;
    s = d.parse_file(dir);
    EXPECT_NE(s.message.find("is a directory"), std::string::npos) << s.message;
    {
        std::ofstream f(dir + "/c.json");
        f << "{\"hidden_size\": 64}\n";
    }
    s = d.parse_file(dir + "/c.json");
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(d.root().get("hidden_size").as_int(), 64);
    s = d.parse_file(dir + "/c.json", 5);
    EXPECT_NE(s.message.find("JSON file size: expected at most 5 bytes"), std::string::npos) << s.message;
    {
        std::ofstream f(dir + "/bad.json");
        f << "{\"a\": 1,}";
    }
    s = d.parse_file(dir + "/bad.json");
    EXPECT_NE(s.message.find("bad.json: invalid JSON"), std::string::npos) << s.message;
    std::filesystem::remove_all(dir);
}
