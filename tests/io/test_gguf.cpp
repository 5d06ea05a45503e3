// test_gguf.cpp: the GGUF writer (io/gguf.h), read back by a small checked reader written here
// from the spec (GGML docs/gguf.md), the Q8_0 encoding against its closed form, the Q/K row
// permutation against convert_hf_to_gguf.py's reshape formula, and the HF -> GGUF name table.
// (Byte-exactness against ggml itself, and llama.cpp loading our files, is tests/gguf/.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/dtype.h"
#include "io/gguf.h"
#include "kernels/ggml_quant.h"
#include "model/gguf_export.h"
#include "model/llama_names.h"
#include "testing.h"

using namespace peft;

namespace {

// A bounded cursor over the file: every read checks what is left (the reader the tests need).
struct cursor {
    const std::string & s;
    size_t pos = 0;
    bool ok = true;
    template <typename T> T get() {
        T v{};
        if (pos + sizeof(T) > s.size()) { ok = false; return v; }
        std::memcpy(&v, s.data() + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }
    std::string str() {
        const uint64_t n = get<uint64_t>();
        if (!ok || n > s.size() - pos) { ok = false; return {}; }
        std::string out = s.substr(pos, (size_t) n);
        pos += (size_t) n;
        return out;
    }
};

struct read_tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type = 0;
    uint64_t offset = 0;
};
struct read_file {
    uint32_t version = 0;
    std::vector<std::pair<std::string, uint32_t>> kv;   // key, value type
    std::vector<std::string> str_values;                // string values in order
    std::vector<read_tensor> tensors;
    size_t data_start = 0;
    std::string bytes;
};

// Parses what gguf_writer writes (scalar, string and array values), all lengths checked.
bool parse(const std::string & path, read_file & f) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    f.bytes = ss.str();
    cursor c{f.bytes};
    if (f.bytes.compare(0, 4, "GGUF") != 0) return false;
    c.pos = 4;
    f.version = c.get<uint32_t>();
    const uint64_t nt = c.get<uint64_t>(), nkv = c.get<uint64_t>();
    if (!c.ok || nt > 1000 || nkv > 1000) return false;
    auto skip_value = [&](uint32_t t) {
        switch (t) {
            case 4: case 5: case 6: c.get<uint32_t>(); break;
            case 7: c.get<uint8_t>(); break;
            case 8: f.str_values.push_back(c.str()); break;
            default: c.ok = false;
        }
    };
    for (uint64_t i = 0; i < nkv && c.ok; i++) {
        std::string key = c.str();
        const uint32_t t = c.get<uint32_t>();
        f.kv.push_back({key, t});
        if (t == 9) {
            const uint32_t et = c.get<uint32_t>();
            const uint64_t n = c.get<uint64_t>();
            if (n > f.bytes.size()) return false;
            for (uint64_t j = 0; j < n && c.ok; j++) {
                if (et == 8) c.str();
                else skip_value(et);
            }
        } else {
            skip_value(t);
        }
    }
    for (uint64_t i = 0; i < nt && c.ok; i++) {
        read_tensor t;
        t.name = c.str();
        const uint32_t nd = c.get<uint32_t>();
        if (nd > 4) return false;
        for (uint32_t d = 0; d < nd; d++) t.ne.push_back(c.get<uint64_t>());
        t.type = c.get<uint32_t>();
        t.offset = c.get<uint64_t>();
        f.tensors.push_back(t);
    }
    f.data_start = (c.pos + 31) / 32 * 32;
    return c.ok;
}

struct vec_source : gguf_tensor_source {
    std::vector<std::vector<uint8_t>> data;
    status fill(size_t i, std::vector<uint8_t> & out) override {
        out = data[i];
        return {};
    }
};

} // namespace

TEST(Gguf, WriterRoundTrip) {
    gguf_writer w;
    w.set_str("general.architecture", "llama");
    w.set_u32("llama.block_count", 2);
    w.set_i32("x.i32", -5);
    w.set_f32("x.f32", 1.5f);
    w.set_bool("x.bool", true);
    w.set_arr_str("x.strs", {"a", "bc", ""});
    w.set_arr_i32("x.ints", {1, 2, 3});
    w.set_arr_f32("x.floats", {0.5f});
    vec_source src;
    // a 3-element f32 vector (12 bytes: padded to 32), a [2, 32] Q8_0 matrix (68 bytes)
    ASSERT_TRUE(w.add_tensor("a", {3}, GGUF_TENSOR_F32).ok());
    ASSERT_TRUE(w.add_tensor("b", {32, 2}, GGUF_TENSOR_Q8_0).ok());
    ASSERT_TRUE(w.add_tensor("c", {5, 1}, GGUF_TENSOR_F16).ok());
    src.data.push_back(std::vector<uint8_t>(12, 1));
    src.data.push_back(std::vector<uint8_t>(68, 2));
    src.data.push_back(std::vector<uint8_t>(10, 3));
    const std::string path = peft::testing::temp_dir("gguf_rt") + "/x.gguf";
    status st = w.write(path, src, false);
    ASSERT_TRUE(st.ok()) << st.message;
    read_file f;
    ASSERT_TRUE(parse(path, f));
    EXPECT_EQ(f.version, 3u);
    ASSERT_EQ(f.kv.size(), 8u);
    EXPECT_EQ(f.kv[0].first, "general.architecture");
    EXPECT_EQ(f.kv[0].second, 8u);
    EXPECT_EQ(f.str_values[0], "llama");
    EXPECT_EQ(f.kv[5].second, 9u);
    ASSERT_EQ(f.tensors.size(), 3u);
    EXPECT_EQ(f.tensors[1].name, "b");
    EXPECT_EQ(f.tensors[1].ne, (std::vector<uint64_t>{32, 2}));
    EXPECT_EQ(f.tensors[1].type, 8u);
    // offsets: running sum of sizes padded to 32
    EXPECT_EQ(f.tensors[0].offset, 0u);
    EXPECT_EQ(f.tensors[1].offset, 32u);
    EXPECT_EQ(f.tensors[2].offset, 128u);
    EXPECT_EQ(f.data_start % 32, 0u);
    // file = header + data, the last tensor padded too (ggml reads the padded size)
    EXPECT_EQ(f.bytes.size(), f.data_start + 160);
    EXPECT_EQ((uint8_t) f.bytes[f.data_start + 32], 2);
    EXPECT_EQ((uint8_t) f.bytes[f.data_start + 128 + 9], 3);
    EXPECT_EQ((uint8_t) f.bytes[f.data_start + 128 + 10], 0);
}

TEST(Gguf, WriterRefusesBadInput) {
    gguf_writer w;
    EXPECT_FALSE(w.add_tensor(std::string(64, 'x'), {4}, GGUF_TENSOR_F32).ok());   // name > 63 bytes
    EXPECT_FALSE(w.add_tensor("five_dims", {1, 1, 1, 1, 1}, GGUF_TENSOR_F32).ok());
    EXPECT_FALSE(w.add_tensor("none", {}, GGUF_TENSOR_F32).ok());
    status st = w.add_tensor("q", {48, 2}, GGUF_TENSOR_Q8_0);                         // 48 % 32 != 0
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("multiple of 32"), std::string::npos) << st.message;
    EXPECT_FALSE(w.add_tensor("huge", {INT64_MAX, 4}, GGUF_TENSOR_F32).ok());        // overflow
    ASSERT_TRUE(w.add_tensor("t", {4}, GGUF_TENSOR_F32).ok());
    EXPECT_FALSE(w.add_tensor("t", {4}, GGUF_TENSOR_F32).ok());                      // duplicate
    // a source giving the wrong byte count, and a repeated key, fail the write; no file is left
    const std::string dir = peft::testing::temp_dir("gguf_bad");
    vec_source src;
    src.data.push_back(std::vector<uint8_t>(15));
    st = w.write(dir + "/x.gguf", src, false);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("'t'"), std::string::npos) << st.message;
    EXPECT_FALSE(std::ifstream(dir + "/x.gguf").good());
    w.set_u32("k", 1);
    w.set_u32("k", 2);
    src.data[0].resize(16);
    st = w.write(dir + "/x.gguf", src, false);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("'k'"), std::string::npos) << st.message;
}

// Q8_0 by its definition (ggml quantize_row_q8_0_ref): d = max|x|/127 (stored f16), q = round(x/d).
TEST(Gguf, Q8BlockClosedForm) {
    std::vector<float> x(64);
    for (int i = 0; i < 32; i++) x[(size_t) i] = (float) (i - 16) * 0.25f;   // max |x| = 4
    // second block all zero: d = 0, q = 0
    std::vector<uint8_t> q(68);
    gguf_quantize_q8_0(x.data(), q.data(), 64);
    uint16_t dh;
    std::memcpy(&dh, q.data(), 2);
    EXPECT_EQ(dh, f32_to_f16(4.0f / 127.0f));
    for (int i = 0; i < 32; i++) {
        EXPECT_EQ((int8_t) q[(size_t) (2 + i)], (int8_t) std::lround((double) x[(size_t) i] * 127.0 / 4.0)) << i;
    }
    EXPECT_EQ((int8_t) q[2], -127);   // -4 -> -127
    for (int i = 0; i < 34; i++) EXPECT_EQ(q[(size_t) (34 + i)], 0) << i;
    std::vector<float> back(64);
    ggml_dequantize_row_q8_0(q.data(), back.data(), 64);
    for (int i = 0; i < 64; i++) EXPECT_NEAR(back[(size_t) i], x[(size_t) i], 4.0 / 127.0 * 0.51) << i;
}

// convert_hf_to_gguf.py: w.reshape(n_head, 2, HS/2, IC).swapaxes(1, 2).reshape(w.shape)
TEST(Gguf, QkPermutationFollowsTheConverter) {
    const int64_t n_head = 2, HS = 6, IC = 3, OC = n_head * HS;
    std::vector<float> w((size_t) (OC * IC)), out(w.size());
    for (size_t i = 0; i < w.size(); i++) w[i] = (float) i;
    llama_gguf_permute_rows(out.data(), w.data(), n_head, OC, IC);
    // the reshape's index map written out: new (h, i, j) = old (h, j, i), i < HS/2, j < 2
    const int64_t want_rows[] = {0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11};
    for (int64_t r = 0; r < OC; r++) {
        for (int64_t c = 0; c < IC; c++) EXPECT_EQ(out[(size_t) (r * IC + c)], w[(size_t) (want_rows[r] * IC + c)]) << r;
    }
}

TEST(Gguf, NameTable) {
    std::string g;
    ASSERT_TRUE(llama_gguf_tensor_name("model.embed_tokens.weight", g));
    EXPECT_EQ(g, "token_embd.weight");
    ASSERT_TRUE(llama_gguf_tensor_name("lm_head.weight", g));
    EXPECT_EQ(g, "output.weight");
    ASSERT_TRUE(llama_gguf_tensor_name("model.norm.weight", g));
    EXPECT_EQ(g, "output_norm.weight");
    ASSERT_TRUE(llama_gguf_tensor_name("model.layers.11.self_attn.o_proj.weight", g));
    EXPECT_EQ(g, "blk.11.attn_output.weight");
    ASSERT_TRUE(llama_gguf_tensor_name("model.layers.0.self_attn.k_proj.bias", g));
    EXPECT_EQ(g, "blk.0.attn_k.bias");
    ASSERT_TRUE(llama_gguf_tensor_name("model.layers.2.post_attention_layernorm.weight", g));
    EXPECT_EQ(g, "blk.2.ffn_norm.weight");
    ASSERT_TRUE(llama_gguf_tensor_name("model.layers.2.mlp.down_proj.weight", g));
    EXPECT_EQ(g, "blk.2.ffn_down.weight");
    EXPECT_FALSE(llama_gguf_tensor_name("model.layers.x.mlp.down_proj.weight", g));
    EXPECT_FALSE(llama_gguf_tensor_name("model.layers.0.mlp.experts.weight", g));
    EXPECT_FALSE(llama_gguf_tensor_name("model.rotary_emb.inv_freq", g));
    EXPECT_EQ(llama_gguf_proj_name(3, LLAMA_PROJ_UP), "blk.3.ffn_up");
}
