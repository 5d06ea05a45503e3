// test_gguf_read.cpp: the GGUF reader (io/gguf_read.h) on files built byte by byte here, one
// per corruption class of FORMATS.md "Validating untrusted files / GGUF" (the handcrafted file
// types of ggml's tests/test-gguf.cpp), each expected to fail with an error naming the key or
// tensor; the valid file they start from, and our writer's files, read back exactly.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/gguf_read.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "testing.h"

using namespace peft;

namespace {

template <typename T> void put(std::string & s, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    s.append(b, sizeof(T));
}
void put_str(std::string & s, const std::string & v) {
    put<uint64_t>(s, v.size());
    s += v;
}

struct tensor_spec {
    std::string          name;
    std::vector<int64_t> ne;
    uint32_t             type = GGUF_TENSOR_F32;
    uint64_t             offset = 0;
    uint64_t             nbytes = 0;   // data written for it (then padded)
};

// The fields of a small file; each corruption edits one, then build() lays it out.
struct spec {
    std::string magic = "GGUF";
    uint32_t    version = 3;
    int64_t     n_tensors_override = -1, n_kv_override = -1;
    std::vector<std::string> kvs;           // serialized key/value pairs
    std::vector<tensor_spec> tensors;
    uint32_t    alignment = 32;
    int64_t     cut = 0;                     // bytes removed from the end
    std::string trailing;                    // bytes appended

    std::string build() const {
        std::string s = magic;
        put<uint32_t>(s, version);
        put<uint64_t>(s, n_tensors_override >= 0 ? (uint64_t) n_tensors_override : tensors.size());
        put<uint64_t>(s, n_kv_override >= 0 ? (uint64_t) n_kv_override : kvs.size());
        for (const std::string & kv : kvs) s += kv;
        for (const tensor_spec & t : tensors) {
            put_str(s, t.name);
            put<uint32_t>(s, (uint32_t) t.ne.size());
            for (int64_t d : t.ne) put<int64_t>(s, d);
            put<uint32_t>(s, t.type);
            put<uint64_t>(s, t.offset);
        }
        s.resize((s.size() + alignment - 1) / alignment * alignment, '\0');
        uint64_t at = 0;
        const size_t data_start = s.size();
        for (const tensor_spec & t : tensors) {
            at = std::max<uint64_t>(at, t.offset + t.nbytes);
        }
        s.resize(data_start + (at + alignment - 1) / alignment * alignment, '\0');
        for (size_t i = data_start; i < s.size(); i++) s[i] = (char) (i * 7);   // data bytes
        s.resize(s.size() - (size_t) cut);
        return s + trailing;
    }
};

std::string kv_u32(const std::string & key, uint32_t v, uint32_t type = GGUF_VALUE_UINT32) {
    std::string s;
    put_str(s, key);
    put<uint32_t>(s, type);
    put<uint32_t>(s, v);
    return s;
}
std::string kv_str(const std::string & key, const std::string & v) {
    std::string s;
    put_str(s, key);
    put<uint32_t>(s, GGUF_VALUE_STRING);
    put_str(s, v);
    return s;
}
std::string kv_arr_str(const std::string & key, const std::vector<std::string> & v, uint64_t count_override = 0) {
    std::string s;
    put_str(s, key);
    put<uint32_t>(s, GGUF_VALUE_ARRAY);
    put<uint32_t>(s, GGUF_VALUE_STRING);
    put<uint64_t>(s, count_override ? count_override : v.size());
    for (const std::string & x : v) put_str(s, x);
    return s;
}

// A valid file: three metadata entries, two tensors (F32 [8, 2] and Q8_0 [32]).
spec valid() {
    spec s;
    s.kvs = {kv_str("general.architecture", "llama"), kv_u32("general.alignment", 32), kv_arr_str("tokenizer.ggml.tokens", {"a", "b", "c"})};
    s.tensors = {{"a.weight", {8, 2}, GGUF_TENSOR_F32, 0, 64}, {"b.weight", {32}, GGUF_TENSOR_Q8_0, 64, 34}};
    return s;
}

status parse(const std::string & bytes, gguf_file & f) { return gguf_parse((const uint8_t *) bytes.data(), bytes.size(), "test.gguf", f); }

struct corruption {
    const char * name;
    std::function<void(spec &)> edit;
    const char * expect;   // in the error message
};

} // namespace

TEST(gguf_read, valid_file_reads_back) {
    const std::string bytes = valid().build();
    gguf_file f;
    status st = parse(bytes, f);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(f.version, 3u);
    ASSERT_EQ(f.kv.size(), 3u);
    std::string arch;
    ASSERT_TRUE(f.get_str("general.architecture", arch, true).ok());
    EXPECT_EQ(arch, "llama");
    std::vector<std::string_view> toks;
    ASSERT_TRUE(f.get_arr_str("tokenizer.ggml.tokens", toks, true).ok());
    EXPECT_EQ(toks, (std::vector<std::string_view>{"a", "b", "c"}));
    ASSERT_EQ(f.tensors.size(), 2u);
    const gguf_tensor_view * b = f.find("b.weight");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->type, GGUF_TENSOR_Q8_0);
    EXPECT_EQ(b->nbytes, 34u);
    EXPECT_EQ(b->ne, (std::vector<int64_t>{32}));
    // data start = header padded to 32; tensor b at +64
    const size_t header = bytes.size() - 128;
    EXPECT_EQ((size_t) (b->data - (const uint8_t *) bytes.data()), header + 64);
    // wrong-typed and missing keys are errors naming the key
    uint32_t u = 0;
    st = f.get_u32("general.architecture", u, true);
    EXPECT_NE(st.message.find("general.architecture"), std::string::npos) << st.message;
    st = f.get_str("general.name", arch, true);
    EXPECT_NE(st.message.find("general.name"), std::string::npos) << st.message;
    EXPECT_TRUE(f.get_str("general.name", arch, false).ok());
}

TEST(gguf_read, every_corruption_class_is_refused_naming_what) {
    const std::vector<corruption> cases = {
        {"bad magic", [](spec & s) { s.magic = "GGML"; }, "bad magic \"GGML\""},
        {"version 1", [](spec & s) { s.version = 1; }, "GGUF version 1"},
        {"future version", [](spec & s) { s.version = 4; }, "GGUF version 4"},
        {"byte-swapped version", [](spec & s) { s.version = 3u << 24; }, "version 50331648"},
        {"tensor count beyond the file", [](spec & s) { s.n_tensors_override = 1ll << 40; }, "cannot fit"},
        {"kv count beyond the file", [](spec & s) { s.n_kv_override = 1ll << 40; }, "cannot fit"},
        {"string length beyond the file", [](spec & s) { s.kvs[0] = kv_str("general.architecture", "llama"); s.kvs[0][8 + 20 + 4 + 2] = (char) 0x7f; }, "key 'general.architecture' string"},
        {"array count beyond the file", [](spec & s) { s.kvs[2] = kv_arr_str("tokenizer.ggml.tokens", {"a"}, 1ull << 29); }, "key 'tokenizer.ggml.tokens' strings"},
        {"array over the element cap", [](spec & s) { s.kvs[2] = kv_arr_str("tokenizer.ggml.tokens", {"a"}, (1ull << 30) + 1); }, "over the limit"},
        {"empty key", [](spec & s) { s.kvs[0] = kv_str("", "x"); }, "empty metadata key"},
        {"key over 256 bytes", [](spec & s) { s.kvs[0] = kv_str(std::string(300, 'k'), "x"); }, "metadata key: length 300"},
        {"unknown value type", [](spec & s) { s.kvs[1] = kv_u32("general.alignment", 32, 13); }, "key 'general.alignment': unknown value type 13"},
        {"duplicate key", [](spec & s) { s.kvs[2] = kv_str("general.architecture", "qwen2"); }, "key 'general.architecture' appears twice"},
        {"alignment not a power of two", [](spec & s) { s.kvs[1] = kv_u32("general.alignment", 48); }, "general.alignment"},
        {"alignment of the wrong type", [](spec & s) { s.kvs[1] = kv_u32("general.alignment", 32, GGUF_VALUE_INT32); }, "general.alignment' type"},
        {"empty tensor name", [](spec & s) { s.tensors[0].name = ""; }, "names are 1 to 63 bytes"},
        {"tensor name over 63 bytes", [](spec & s) { s.tensors[0].name = std::string(64, 't'); }, "names are 1 to 63 bytes, got 64"},
        {"duplicate tensor name", [](spec & s) { s.tensors[1].name = "a.weight"; }, "tensor 'a.weight' appears twice"},
        {"five dims", [](spec & s) { s.tensors[0].ne = {2, 2, 2, 1, 1}; }, "tensor 'a.weight': 5 dims"},
        {"zero dims", [](spec & s) { s.tensors[0].ne = {}; }, "tensor 'a.weight': 0 dims"},
        {"negative dim", [](spec & s) { s.tensors[0].ne = {8, -2}; }, "tensor 'a.weight'"},
        {"shape overflow", [](spec & s) { s.tensors[0].ne = {1ll << 40, 1ll << 40}; }, "tensor 'a.weight'"},
        {"byte size overflow", [](spec & s) { s.tensors[0].ne = {1ll << 31, 1ll << 31}; }, "tensor 'a.weight'"},
        {"unknown tensor type", [](spec & s) { s.tensors[0].type = 41; }, "tensor 'a.weight': unknown ggml type 41"},
        {"removed tensor type", [](spec & s) { s.tensors[0].type = 4; }, "unknown ggml type 4"},
        {"row not a whole block", [](spec & s) { s.tensors[1].ne = {48}; }, "tensor 'b.weight'"},
        {"misaligned offset", [](spec & s) { s.tensors[1].offset = 72; }, "tensor 'b.weight': offset 72 is not a multiple"},
        {"overlapping tensors", [](spec & s) { s.tensors[1].offset = 32; }, "tensor 'b.weight': offset 32 overlaps"},
        {"gap between tensors", [](spec & s) { s.tensors[1].offset = 96; }, "tensor 'b.weight': offset 96 leaves a gap"},
        {"first tensor not at 0", [](spec & s) { s.tensors[0].offset = 32; s.tensors[1].offset = 96; }, "tensor 'a.weight'"},
        {"data beyond the file", [](spec & s) { s.cut = 64; }, "tensor 'b.weight': data"},
        {"truncated header", [](spec & s) { s.tensors.clear(); s.n_tensors_override = 1; }, "tensor"},
        {"trailing bytes", [](spec & s) { s.trailing = std::string(32, 'x'); }, "32 bytes after the last tensor"},
    };
    for (const corruption & c : cases) {
        spec s = valid();
        c.edit(s);
        gguf_file f;
        const status st = parse(s.build(), f);
        EXPECT_FALSE(st.ok()) << c.name;
        EXPECT_EQ(st.code, PEFT_STATUS_FORMAT) << c.name << ": " << st.message;
        EXPECT_NE(st.message.find("test.gguf"), std::string::npos) << c.name << ": " << st.message;
        EXPECT_NE(st.message.find(c.expect), std::string::npos) << c.name << ": " << st.message;
    }
}

TEST(gguf_read, every_prefix_of_a_valid_file_is_refused) {
    const std::string bytes = valid().build();
    for (size_t n = 0; n + 30 < bytes.size(); n++) {   // the last tensor's padding (30 bytes) may be cut
        gguf_file f;
        EXPECT_FALSE(parse(bytes.substr(0, n), f).ok()) << n;
    }
}

TEST(gguf_read, writer_files_read_back) {
    gguf_writer w;
    w.set_str("general.architecture", "llama");
    w.set_u32("general.alignment", GGUF_ALIGNMENT);
    w.set_f32("x.eps", 1e-5f);
    w.set_bool("x.flag", true);
    w.set_arr_i32("x.ids", {1, -2, 3});
    w.set_arr_f32("x.vals", {0.5f, 2.0f});
    ASSERT_TRUE(w.add_tensor("t0", {3}, GGUF_TENSOR_F32).ok());
    ASSERT_TRUE(w.add_tensor("t1", {32, 2}, GGUF_TENSOR_Q8_0).ok());
    struct src : gguf_tensor_source {
        status fill(size_t i, std::vector<uint8_t> & out) override {
            out.assign(i == 0 ? 12 : 68, (uint8_t) (i + 1));
            return {};
        }
    } data;
    const std::string path = peft::testing::temp_dir("gguf_read_writer") + "/w.gguf";
    ASSERT_TRUE(w.write(path, data, false).ok());
    ASSERT_TRUE(gguf_is_file(path));
    gguf_file f;
    status st = gguf_open(path, f);
    ASSERT_TRUE(st.ok()) << st.message;
    float eps = 0;
    bool flag = false;
    std::vector<int32_t> ids;
    std::vector<float> vals;
    ASSERT_TRUE(f.get_f32("x.eps", eps, true).ok());
    ASSERT_TRUE(f.get_bool("x.flag", flag, true).ok());
    ASSERT_TRUE(f.get_arr_i32("x.ids", ids, true).ok());
    ASSERT_TRUE(f.get_arr_f32("x.vals", vals, true).ok());
    EXPECT_EQ(eps, 1e-5f);
    EXPECT_TRUE(flag);
    EXPECT_EQ(ids, (std::vector<int32_t>{1, -2, 3}));
    EXPECT_EQ(vals, (std::vector<float>{0.5f, 2.0f}));
    ASSERT_EQ(f.tensors.size(), 2u);
    EXPECT_EQ(f.tensors[1].ne, (std::vector<int64_t>{32, 2}));
    EXPECT_TRUE(f.tensors[0].aligned);
    for (uint64_t i = 0; i < f.tensors[1].nbytes; i++) ASSERT_EQ(f.tensors[1].data[i], 2);
    EXPECT_FALSE(gguf_is_file(peft::testing::source_path("models/tiny-llama/config.json")));
}

// The fuzz seed tests/fuzz/corpus_gguf/tiny_llama.gguf reaches the model and tokenizer paths
// (so mutations of it exercise them): it loads, and its vocabulary encodes as its merges say.
TEST(gguf_read, fuzz_seed_tiny_llama_loads_as_model_and_tokenizer) {
    const std::string path = peft::testing::source_path("tests/fuzz/corpus_gguf/tiny_llama.gguf");
    llama_model m;
    status st = llama_load(m, path, false);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(m.hp.n_layer, 1);
    EXPECT_EQ(m.hp.n_head_kv, 1);
    EXPECT_TRUE(m.hp.tie_embeddings);
    std::unique_ptr<tokenizer> tok;
    st = tokenizer::load(path, tok);
    ASSERT_TRUE(st.ok()) << st.message;
    // BOS from add_bos_token, "ab" by the merge a+b, " a" by the merge \u0120+a
    EXPECT_EQ(tok->encode("ab a", true), (std::vector<int32_t>{6, 2, 4}));
    EXPECT_EQ(tok->decode({2, 4}), "ab a");
    EXPECT_EQ(tok->chat_template(), "{{ messages }}");
    EXPECT_EQ(tok->bos_id(), 6);
}
