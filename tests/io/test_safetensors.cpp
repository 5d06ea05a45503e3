// test_safetensors.cpp: the safetensors reader/writer. A handcrafted-corruption enum (in the
// style of ggml's test-gguf) with one value per validation check, valid edge cases, golden
// bytes from the reference writer's tests, random write -> read round trips, and sharded
// checkpoint directories.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/safetensors.h"
#include "testing.h"

using namespace peft;

namespace {

std::string le64(uint64_t v) {
    std::string r(8, '\0');
    std::memcpy(r.data(), &v, 8);
    return r;
}

// 8-byte length + header + data, no padding (the reader does not require it).
std::string st_bytes(const std::string & header, const std::string & data = "") {
    return le64(header.size()) + header + data;
}

// Parses a copy of `bytes` that stays alive until the next call: the views in `f` point into
// the parsed buffer, and callers pass temporaries.
status parse_bytes(const std::string & bytes, safetensors_file & f, const std::string & where = "model.safetensors") {
    static std::string keep;
    keep = bytes;
    return safetensors_parse((const uint8_t *) keep.data(), keep.size(), where, f);
}

std::string entry(const std::string & name, const std::string & dtype, const std::string & shape, uint64_t b, uint64_t e) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(b) +
           "," + std::to_string(e) + "]}";
}

// "t" + to_string(i) trips GCC 12's false -Wrestrict positive; append instead.
std::string tname(int i) {
    std::string r = "t";
    r += std::to_string(i);
    return r;
}

void write_all(const std::string & path, const std::string & bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), (std::streamsize) bytes.size());
}

// ---- handcrafted corruptions ------------------------------------------------------------------

enum corruption {
    CORRUPT_FILE_TOO_SMALL,
    CORRUPT_FILE_EMPTY,
    CORRUPT_HEADER_TOO_LARGE,
    CORRUPT_HEADER_LENGTH_U64_MAX,
    CORRUPT_HEADER_BEYOND_FILE,
    CORRUPT_HEADER_EMPTY,
    CORRUPT_HEADER_NOT_BRACE,
    CORRUPT_HEADER_LEADING_SPACE,
    CORRUPT_HEADER_NOT_UTF8,
    CORRUPT_HEADER_OVERLONG_UTF8,
    CORRUPT_HEADER_SURROGATE_UTF8,
    CORRUPT_HEADER_INVALID_JSON,
    CORRUPT_HEADER_TRAILING_JSON,
    CORRUPT_HEADER_NUL_PADDING,
    CORRUPT_DUPLICATE_TENSOR_NAME,
    CORRUPT_DUPLICATE_FIELD,
    CORRUPT_DUPLICATE_METADATA_KEY,
    CORRUPT_ENTRY_NOT_OBJECT,
    CORRUPT_MISSING_DTYPE,
    CORRUPT_MISSING_SHAPE,
    CORRUPT_MISSING_OFFSETS,
    CORRUPT_DTYPE_NOT_STRING,
    CORRUPT_UNKNOWN_DTYPE,
    CORRUPT_DTYPE_LOWERCASE,
    CORRUPT_SHAPE_NOT_ARRAY,
    CORRUPT_SHAPE_NEGATIVE_DIM,
    CORRUPT_SHAPE_FLOAT_DIM,
    CORRUPT_SHAPE_STRING_DIM,
    CORRUPT_SHAPE_TOO_MANY_DIMS,
    CORRUPT_OFFSETS_NOT_ARRAY,
    CORRUPT_OFFSETS_WRONG_LENGTH,
    CORRUPT_OFFSETS_NEGATIVE,
    CORRUPT_OFFSETS_FLOAT,
    CORRUPT_METADATA_NOT_OBJECT,
    CORRUPT_METADATA_NON_STRING_VALUE,
    CORRUPT_NAME_TOO_LONG,
    CORRUPT_NAME_NUL,
    CORRUPT_OFFSETS_NOT_FROM_ZERO,
    CORRUPT_OFFSETS_GAP,
    CORRUPT_OFFSETS_OVERLAP,
    CORRUPT_OFFSETS_END_BEFORE_BEGIN,
    CORRUPT_SHAPE_PRODUCT_OVERFLOW,
    CORRUPT_BYTE_SIZE_OVERFLOW,
    CORRUPT_SUBBYTE_MISALIGNED,
    CORRUPT_SIZE_MISMATCH,
    CORRUPT_SIZE_MISMATCH_ZERO_DIM,
    CORRUPT_TRAILING_BYTES,
    CORRUPT_TRUNCATED,
    CORRUPT_OFFSET_HUGE,
    CORRUPT_COUNT,
};

const char * CORRUPTION_NAMES[] = {
    "FILE_TOO_SMALL", "FILE_EMPTY", "HEADER_TOO_LARGE", "HEADER_LENGTH_U64_MAX", "HEADER_BEYOND_FILE", "HEADER_EMPTY",
    "HEADER_NOT_BRACE", "HEADER_LEADING_SPACE", "HEADER_NOT_UTF8", "HEADER_OVERLONG_UTF8", "HEADER_SURROGATE_UTF8",
    "HEADER_INVALID_JSON", "HEADER_TRAILING_JSON", "HEADER_NUL_PADDING", "DUPLICATE_TENSOR_NAME", "DUPLICATE_FIELD",
    "DUPLICATE_METADATA_KEY", "ENTRY_NOT_OBJECT", "MISSING_DTYPE", "MISSING_SHAPE", "MISSING_OFFSETS",
    "DTYPE_NOT_STRING", "UNKNOWN_DTYPE", "DTYPE_LOWERCASE", "SHAPE_NOT_ARRAY", "SHAPE_NEGATIVE_DIM",
    "SHAPE_FLOAT_DIM", "SHAPE_STRING_DIM", "SHAPE_TOO_MANY_DIMS", "OFFSETS_NOT_ARRAY", "OFFSETS_WRONG_LENGTH",
    "OFFSETS_NEGATIVE", "OFFSETS_FLOAT", "METADATA_NOT_OBJECT", "METADATA_NON_STRING_VALUE", "NAME_TOO_LONG",
    "NAME_NUL", "OFFSETS_NOT_FROM_ZERO", "OFFSETS_GAP", "OFFSETS_OVERLAP", "OFFSETS_END_BEFORE_BEGIN",
    "SHAPE_PRODUCT_OVERFLOW", "BYTE_SIZE_OVERFLOW", "SUBBYTE_MISALIGNED", "SIZE_MISMATCH", "SIZE_MISMATCH_ZERO_DIM",
    "TRAILING_BYTES", "TRUNCATED", "OFFSET_HUGE",
};
static_assert(sizeof(CORRUPTION_NAMES) / sizeof(CORRUPTION_NAMES[0]) == CORRUPT_COUNT);

struct corrupt_case {
    std::string bytes;
    std::string expect;  // substring of the error message
};

corrupt_case make_corrupt(corruption c) {
    using namespace std::string_literals;
    const std::string ok_a = entry("a", "F32", "[2,2]", 0, 16);  // a valid first tensor
    const std::string d16(16, '\x01');
    const std::string where = "model.safetensors: ";
    switch (c) {
        case CORRUPT_FILE_TOO_SMALL: return {"\x02\0\0\0\0"s, where + "file size: expected at least 8 bytes"};
        case CORRUPT_FILE_EMPTY: return {"", "got 0 bytes"};
        case CORRUPT_HEADER_TOO_LARGE:
            return {le64(100000001) + "{}", "header length: expected at most 100000000 bytes, got 100000001 bytes"};
        case CORRUPT_HEADER_LENGTH_U64_MAX: return {le64(UINT64_MAX) + "{}", "got 18446744073709551615 bytes"};
        case CORRUPT_HEADER_BEYOND_FILE: return {le64(1000) + "{}      ", "header length 1000: expected the header to fit"};
        case CORRUPT_HEADER_EMPTY: return {le64(0), "header: expected a JSON object starting with '{', got an empty header"};
        case CORRUPT_HEADER_NOT_BRACE: return {st_bytes("[]"), "starting with '{', got first byte 0x5b"};
        case CORRUPT_HEADER_LEADING_SPACE: return {st_bytes(" {}"), "got first byte 0x20"};
        case CORRUPT_HEADER_NOT_UTF8: return {st_bytes("{\"a\xff\":1}"), "header: invalid UTF-8 at header byte 3"};
        case CORRUPT_HEADER_OVERLONG_UTF8: return {st_bytes("{\"\xc0\xaf\":1}"), "invalid UTF-8 at header byte 2"};
        case CORRUPT_HEADER_SURROGATE_UTF8: return {st_bytes("{\"\xed\xa0\x80\":1}"), "invalid UTF-8 at header byte 2"};
        case CORRUPT_HEADER_INVALID_JSON: return {st_bytes("{\"a\":"), where + "header: invalid JSON"};
        case CORRUPT_HEADER_TRAILING_JSON: return {st_bytes("{} {}"), "header: invalid JSON"};
        case CORRUPT_HEADER_NUL_PADDING: return {st_bytes("{}\0\0\0\0\0\0"s), "header: invalid JSON"};
        case CORRUPT_DUPLICATE_TENSOR_NAME:
            return {st_bytes("{" + ok_a + "," + entry("a", "F32", "[2,2]", 16, 32) + "}", d16 + d16), "duplicate key \"a\""};
        case CORRUPT_DUPLICATE_FIELD:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", d16),
                    "duplicate key \"dtype\""};
        case CORRUPT_DUPLICATE_METADATA_KEY:
            return {st_bytes("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"), "duplicate key \"k\""};
        case CORRUPT_ENTRY_NOT_OBJECT:
            return {st_bytes("{\"a\":[1,2]}"), "tensor 'a': expected an object with dtype, shape, data_offsets, got [1,2]"};
        case CORRUPT_MISSING_DTYPE:
            return {st_bytes("{\"a\":{\"shape\":[2,2],\"data_offsets\":[0,16]}}", d16), "tensor 'a': missing field 'dtype'"};
        case CORRUPT_MISSING_SHAPE:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", d16), "tensor 'a': missing field 'shape'"};
        case CORRUPT_MISSING_OFFSETS:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2]}}", d16), "tensor 'a': missing field 'data_offsets'"};
        case CORRUPT_DTYPE_NOT_STRING:
            return {st_bytes("{\"a\":{\"dtype\":4,\"shape\":[2,2],\"data_offsets\":[0,16]}}", d16),
                    "tensor 'a': dtype: expected a string, got 4"};
        case CORRUPT_UNKNOWN_DTYPE:
            return {st_bytes("{" + entry("a", "Q4_0", "[2,2]", 0, 16) + "}", d16), "tensor 'a': unknown dtype 'Q4_0'"};
        case CORRUPT_DTYPE_LOWERCASE:
            return {st_bytes("{" + entry("a", "f32", "[2,2]", 0, 16) + "}", d16), "unknown dtype 'f32'"};
        case CORRUPT_SHAPE_NOT_ARRAY:
            return {st_bytes("{" + entry("a", "F32", "4", 0, 16) + "}", d16), "tensor 'a': shape: expected an array, got 4"};
        case CORRUPT_SHAPE_NEGATIVE_DIM:
            return {st_bytes("{" + entry("a", "F32", "[2,-2]", 0, 16) + "}", d16),
                    "tensor 'a': shape[1]: expected a non-negative integer, got -2"};
        case CORRUPT_SHAPE_FLOAT_DIM:
            return {st_bytes("{" + entry("a", "F32", "[2.0,2]", 0, 16) + "}", d16), "shape[0]: expected a non-negative integer"};
        case CORRUPT_SHAPE_STRING_DIM:
            return {st_bytes("{" + entry("a", "F32", "[\"2\",2]", 0, 16) + "}", d16), "shape[0]: expected a non-negative integer"};
        case CORRUPT_SHAPE_TOO_MANY_DIMS:
            return {st_bytes("{" + entry("a", "F32", "[1,1,1,1,1,1,1,1,4]", 0, 16) + "}", d16),
                    "tensor 'a': shape: expected at most 8 dims, got 9 dims"};
        case CORRUPT_OFFSETS_NOT_ARRAY:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":16}}", d16),
                    "tensor 'a': data_offsets: expected an array [begin, end]"};
        case CORRUPT_OFFSETS_WRONG_LENGTH:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8,16]}}", d16),
                    "data_offsets: expected an array [begin, end], got [0,8,16]"};
        case CORRUPT_OFFSETS_NEGATIVE:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[-16,0]}}", d16),
                    "tensor 'a': data_offsets[0]: expected a non-negative integer, got -16"};
        case CORRUPT_OFFSETS_FLOAT:
            return {st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16.5]}}", d16),
                    "data_offsets[1]: expected a non-negative integer"};
        case CORRUPT_METADATA_NOT_OBJECT:
            return {st_bytes("{\"__metadata__\":[\"x\"]}"), "__metadata__: expected an object of strings"};
        case CORRUPT_METADATA_NON_STRING_VALUE:
            return {st_bytes("{\"__metadata__\":{\"format\":\"pt\",\"step\":5}}"),
                    "__metadata__ 'step': expected a string value, got 5"};
        case CORRUPT_NAME_TOO_LONG:
            return {st_bytes("{" + entry(std::string(1025, 'n'), "F32", "[2,2]", 0, 16) + "}", d16),
                    "name length: expected at most 1024 bytes, got 1025 bytes"};
        case CORRUPT_NAME_NUL:
            return {st_bytes("{" + entry("a\\u0000b", "F32", "[2,2]", 0, 16) + "}", d16),
                    "tensor 'a\\x00b': name contains a NUL byte"};
        case CORRUPT_OFFSETS_NOT_FROM_ZERO:
            return {st_bytes("{" + entry("a", "F32", "[2,2]", 4, 20) + "}", "xxxx" + d16),
                    "tensor 'a': data_offsets [4, 20]: expected begin 0 (the first tensor), got 4 (a gap)"};
        case CORRUPT_OFFSETS_GAP:
            return {st_bytes("{" + ok_a + "," + entry("b", "F32", "[4]", 20, 36) + "}", d16 + "gap!" + d16),
                    "tensor 'b': data_offsets [20, 36]: expected begin 16 (the end of tensor 'a'), got 20 (a gap)"};
        case CORRUPT_OFFSETS_OVERLAP:
            return {st_bytes("{" + ok_a + "," + entry("b", "F32", "[4]", 8, 24) + "}", d16 + "12345678"),
                    "tensor 'b': data_offsets [8, 24]: expected begin 16 (the end of tensor 'a'), got 8 (overlaps"};
        case CORRUPT_OFFSETS_END_BEFORE_BEGIN:
            return {st_bytes("{" + entry("a", "F32", "[0]", 0, 0) + "," + entry("b", "F32", "[0]", 16, 0) + "}"),
                    "tensor 'b': data_offsets [16, 0]: expected end >= begin"};
        case CORRUPT_SHAPE_PRODUCT_OVERFLOW:
            return {st_bytes("{" + entry("a", "U8", "[4294967296,4294967296,2]", 0, 0) + "}"),
                    "tensor 'a': shape [4294967296, 4294967296, 2]: element count overflows 64 bits"};
        case CORRUPT_BYTE_SIZE_OVERFLOW:
            return {st_bytes("{" + entry("a", "F64", "[4611686018427387904]", 0, 0) + "}"),
                    "tensor 'a': F64 [4611686018427387904]: size in bits overflows 64 bits"};
        case CORRUPT_SUBBYTE_MISALIGNED:
            return {st_bytes("{" + entry("a", "F4", "[3]", 0, 2) + "}", "xx"),
                    "tensor 'a': F4 [3]: expected a whole number of bytes, got 12 bits"};
        case CORRUPT_SIZE_MISMATCH:
            return {st_bytes("{" + entry("lm_head.weight", "BF16", "[2,4]", 0, 10) + "}", std::string(10, '\0')),
                    "model.safetensors: tensor 'lm_head.weight': data_offsets [0, 10]: expected 16 bytes for BF16 [2, 4], got 10"};
        case CORRUPT_SIZE_MISMATCH_ZERO_DIM:
            return {st_bytes("{" + entry("a", "F32", "[0,4]", 0, 16) + "}", d16),
                    "data_offsets [0, 16]: expected 0 bytes for F32 [0, 4], got 16"};
        case CORRUPT_TRAILING_BYTES:
            return {st_bytes("{" + ok_a + "}", d16 + "PK\x03\x04"),
                    "data buffer: expected 16 bytes (the end of the last tensor), got 20 bytes in the file (4 trailing bytes)"};
        case CORRUPT_TRUNCATED:
            return {st_bytes("{" + ok_a + "}", d16.substr(0, 10)),
                    "data buffer: expected 16 bytes (the end of the last tensor), got 10 bytes in the file (truncated: 6 bytes missing)"};
        case CORRUPT_OFFSET_HUGE:
            // the largest U8 tensor whose size in bits still fits 64 bits
            return {st_bytes("{" + entry("a", "U8", "[2305843009213693951]", 0, 2305843009213693951ull) + "}"),
                    "got 0 bytes in the file (truncated: 2305843009213693951 bytes missing)"};
        case CORRUPT_COUNT: break;
    }
    return {};
}

} // namespace

TEST(safetensors, handcrafted_corruptions_are_rejected) {
    for (int c = 0; c < CORRUPT_COUNT; c++) {
        SCOPED_TRACE(CORRUPTION_NAMES[c]);
        corrupt_case cc = make_corrupt((corruption) c);
        ASSERT_FALSE(cc.expect.empty());
        safetensors_file f;
        status s = parse_bytes(cc.bytes, f);
        ASSERT_FALSE(s.ok());
        EXPECT_EQ(s.code, PEFT_STATUS_FORMAT);
        EXPECT_NE(s.message.find(cc.expect), std::string::npos) << "message: " << s.message << "\nexpected: " << cc.expect;
        EXPECT_EQ(s.message.rfind("model.safetensors: ", 0), 0u) << s.message;  // names the file
        EXPECT_TRUE(f.tensors.empty());
    }
}

TEST(safetensors, size_mismatch_message_is_exact) {
    corrupt_case cc = make_corrupt(CORRUPT_SIZE_MISMATCH);
    safetensors_file f;
    status s = parse_bytes(cc.bytes, f);
    EXPECT_EQ(s.message, "model.safetensors: tensor 'lm_head.weight': data_offsets [0, 10]: expected 16 bytes for BF16 [2, 4], got 10");
}

// Every corruption also fails from a file on disk, through mmap.
TEST(safetensors, handcrafted_corruptions_from_files) {
    std::string dir = peft::testing::temp_dir("st_corrupt");
    for (int c = 0; c < CORRUPT_COUNT; c++) {
        SCOPED_TRACE(CORRUPTION_NAMES[c]);
        corrupt_case cc = make_corrupt((corruption) c);
        std::string path = dir + "/model.safetensors";
        write_all(path, cc.bytes);
        safetensors_file f;
        status s = safetensors_open(path, f);
        ASSERT_FALSE(s.ok());
        EXPECT_NE(s.message.find(path), std::string::npos) << s.message;
    }
    std::filesystem::remove_all(dir);
}

// ---- valid files ------------------------------------------------------------------------------

TEST(safetensors, empty_header_and_padding) {
    safetensors_file f;
    ASSERT_TRUE(parse_bytes(st_bytes("{}"), f).ok());
    EXPECT_TRUE(f.tensors.empty());
    ASSERT_TRUE(parse_bytes(st_bytes("{}      "), f).ok());  // space padding is allowed
    EXPECT_EQ(f.header_size, 8u);
    ASSERT_TRUE(parse_bytes(st_bytes("{\"__metadata__\":null}"), f).ok());  // as the reference (Option)
    EXPECT_TRUE(f.metadata.empty());
    ASSERT_TRUE(parse_bytes(st_bytes("{ \"a\" : {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]} }\n\t ", "z"), f).ok());
}

TEST(safetensors, scalar_empty_and_metadata) {
    float one = 1.5f;
    std::string data(reinterpret_cast<const char *>(&one), 4);
    std::string h = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"\\u00e9\"}," + entry("empty", "F32", "[0,3]", 0, 0) + "," +
                    entry("s", "F32", "[]", 0, 4) + "," + entry("z", "BF16", "[5,0,2]", 4, 4) + "}";
    safetensors_file f;
    status s = parse_bytes(st_bytes(h, data), f);
    ASSERT_TRUE(s.ok()) << s.message;
    ASSERT_EQ(f.tensors.size(), 3u);
    const tensor_info * sc = f.find("s");
    ASSERT_NE(sc, nullptr);
    EXPECT_TRUE(sc->shape.empty());
    EXPECT_EQ(sc->n_elements, 1u);
    EXPECT_EQ(sc->n_bytes, 4u);
    float got = 0;
    ASSERT_TRUE(read_f32(*sc, &got).ok());
    EXPECT_EQ(got, 1.5f);
    const tensor_info * e = f.find("empty");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->n_elements, 0u);
    EXPECT_EQ(e->shape, (std::vector<int64_t>{0, 3}));
    EXPECT_TRUE(read_f32(*e, nullptr).ok());
    EXPECT_EQ(f.find("z")->describe(), "BF16 [5, 0, 2]");
    EXPECT_EQ(f.find("nope"), nullptr);
    ASSERT_EQ(f.metadata.size(), 2u);
    EXPECT_EQ(f.metadata[0].first, "format");
    ASSERT_NE(f.metadata_get("note"), nullptr);
    EXPECT_EQ(*f.metadata_get("note"), "\xc3\xa9");
    EXPECT_EQ(f.metadata_get("missing"), nullptr);
    EXPECT_EQ(f.names(), (std::vector<std::string>{"empty", "s", "z"}));
}

TEST(safetensors, float_dtypes_convert) {
    const float vals[4] = {1.0f, -2.5f, 0.333251953125f, 65504.0f};
    std::string d32(reinterpret_cast<const char *>(vals), 16), d16, dbf;
    for (float v : vals) {
        uint16_t h = f32_to_f16(v), b = f32_to_bf16(v);
        d16.append(reinterpret_cast<const char *>(&h), 2);
        dbf.append(reinterpret_cast<const char *>(&b), 2);
    }
    std::string h = "{" + entry("f32", "F32", "[2,2]", 0, 16) + "," + entry("f16", "F16", "[4]", 16, 24) + "," +
                    entry("bf16", "BF16", "[1,4]", 24, 32) + "}";
    safetensors_file f;
    ASSERT_TRUE(parse_bytes(st_bytes(h, d32 + d16 + dbf), f).ok());
    float out[4];
    const tensor_info * t = f.find("f32");
    ASSERT_TRUE(t && t->is_float && t->type == PEFT_DTYPE_F32 && t->bits == 32);
    ASSERT_TRUE(read_f32(*t, out).ok());
    for (int i = 0; i < 4; i++) EXPECT_EQ(out[i], vals[i]);
    t = f.find("f16");
    ASSERT_TRUE(t && t->type == PEFT_DTYPE_F16);
    ASSERT_TRUE(read_f32(*t, out).ok());
    for (int i = 0; i < 4; i++) EXPECT_EQ(out[i], vals[i]);
    t = f.find("bf16");
    ASSERT_TRUE(t && t->type == PEFT_DTYPE_BF16);
    ASSERT_TRUE(read_f32(*t, out).ok());
    for (int i = 0; i < 4; i++) EXPECT_EQ(out[i], bf16_to_f32(f32_to_bf16(vals[i])));
    // partial range and a range past the end
    ASSERT_TRUE(read_f32_range(*t, 1, 2, out).ok());
    EXPECT_EQ(out[0], -2.5f);
    status s = read_f32_range(*t, 3, 2, out);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message.find("element range"), std::string::npos);
}

// An odd header length puts the data at odd addresses: views must say so and read_f32 must
// still convert correctly (memcpy, never a misaligned load).
TEST(safetensors, unaligned_data_reads_correctly) {
    std::vector<float> vals(3000);
    for (size_t i = 0; i < vals.size(); i++) vals[i] = (float) i * 0.25f - 100.0f;
    std::string d32(reinterpret_cast<const char *>(vals.data()), vals.size() * 4), dbf;
    for (float v : vals) {
        uint16_t b = f32_to_bf16(v);
        dbf.append(reinterpret_cast<const char *>(&b), 2);
    }
    std::string h = "{" + entry("b", "BF16", "[3000]", 0, 6000) + "," + entry("f", "F32", "[3000]", 6000, 18000) + "}";
    if (h.size() % 2 == 0) h += " ";
    std::string bytes = st_bytes(h, dbf + d32);
    // place the file at an 8-aligned address so the parity of the header decides alignment
    std::vector<uint64_t> storage(bytes.size() / 8 + 1);
    std::memcpy(storage.data(), bytes.data(), bytes.size());
    safetensors_file f;
    ASSERT_TRUE(safetensors_parse((const uint8_t *) storage.data(), bytes.size(), "u", f).ok());
    const tensor_info * b = f.find("b");
    const tensor_info * fl = f.find("f");
    EXPECT_FALSE(b->aligned);
    EXPECT_FALSE(fl->aligned);
    std::vector<float> out(3000);
    ASSERT_TRUE(read_f32(*fl, out.data()).ok());
    EXPECT_EQ(0, std::memcmp(out.data(), vals.data(), 12000));
    ASSERT_TRUE(read_f32(*b, out.data()).ok());
    for (size_t i = 0; i < vals.size(); i++) ASSERT_EQ(out[i], bf16_to_f32(f32_to_bf16(vals[i]))) << i;
}

TEST(safetensors, non_float_dtypes_parse_with_bit_sizes) {
    struct {
        const char * name;
        const char * shape;
        uint64_t bytes;
        uint32_t bits;
    } cases[] = {
        {"I64", "[3]", 24, 64},  {"U8", "[5]", 5, 8},       {"F64", "[2]", 16, 64},  {"BOOL", "[3]", 3, 8},
        {"I32", "[2,2]", 16, 32}, {"U64", "[1]", 8, 64},    {"I8", "[2]", 2, 8},     {"I16", "[2]", 4, 16},
        {"U16", "[2]", 4, 16},   {"U32", "[1]", 4, 32},     {"C64", "[1]", 8, 64},   {"F8_E4M3", "[3]", 3, 8},
        {"F8_E5M2", "[1]", 1, 8}, {"F8_E8M0", "[1]", 1, 8}, {"F8_E4M3FNUZ", "[1]", 1, 8},
        {"F8_E5M2FNUZ", "[1]", 1, 8}, {"F4", "[2,3]", 3, 4}, {"F6_E2M3", "[4]", 3, 6}, {"F6_E3M2", "[8]", 6, 6},
    };
    std::string h = "{";
    std::string data;
    uint64_t off = 0;
    int i = 0;
    for (const auto & c : cases) {
        if (i) h += ",";
        h += entry(tname(i++), c.name, c.shape, off, off + c.bytes);
        off += c.bytes;
        data += std::string(c.bytes, '\x07');
    }
    h += "}";
    safetensors_file f;
    status s = parse_bytes(st_bytes(h, data), f);
    ASSERT_TRUE(s.ok()) << s.message;
    i = 0;
    for (const auto & c : cases) {
        const tensor_info * t = f.find(tname(i++));
        ASSERT_NE(t, nullptr);
        EXPECT_STREQ(safetensors_dtype_name(t->st_dtype), c.name);
        EXPECT_EQ(t->bits, c.bits) << c.name;
        EXPECT_EQ(t->n_bytes, c.bytes) << c.name;
        EXPECT_FALSE(t->is_float);
        float dummy[16];
        status r = read_f32(*t, dummy);
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(r.code, PEFT_STATUS_SHAPE);
        EXPECT_NE(r.message.find(std::string("dtype: expected F32, F16 or BF16, got ") + c.name + " (unsupported"),
                  std::string::npos)
            << r.message;
    }
}

// Offsets in any header order are fine as long as, sorted, they tile the buffer.
TEST(safetensors, header_order_differs_from_offset_order) {
    std::string h = "{" + entry("z_first", "U8", "[4]", 0, 4) + "," + entry("a_last", "U8", "[2]", 6, 8) + "," +
                    entry("m_mid", "U8", "[2]", 4, 6) + ",\"__metadata__\":{}}";
    safetensors_file f;
    ASSERT_TRUE(parse_bytes(st_bytes(h, "abcdefgh"), f).ok());
    ASSERT_EQ(f.tensors.size(), 3u);
    EXPECT_EQ(f.tensors[0].name, "z_first");  // offset order
    EXPECT_EQ(f.tensors[1].name, "m_mid");
    EXPECT_EQ(std::string((const char *) f.find("a_last")->data, 2), "gh");
}

TEST(safetensors, unknown_fields_are_ignored_like_the_reference) {
    std::string h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[1,{}]}}";
    safetensors_file f;
    EXPECT_TRUE(parse_bytes(st_bytes(h, "x"), f).ok());
}

TEST(safetensors, large_unsigned_offsets_do_not_wrap) {
    // 2^63 as begin: neither negative nor accepted
    std::string h = "{" + entry("a", "U8", "[0]", 9223372036854775808ull, 9223372036854775808ull) + "}";
    safetensors_file f;
    status s = parse_bytes(st_bytes(h), f);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message.find("expected begin 0 (the first tensor), got 9223372036854775808"), std::string::npos) << s.message;
}

// ---- files on disk ----------------------------------------------------------------------------

TEST(safetensors, open_errors_name_the_path) {
    std::string dir = peft::testing::temp_dir("st_open");
    safetensors_file f;
    status s = safetensors_open(dir + "/missing.safetensors", f);
    EXPECT_EQ(s.code, PEFT_STATUS_IO);
    EXPECT_NE(s.message.find("missing.safetensors: file not found"), std::string::npos) << s.message;
    s = safetensors_open(dir, f);
    EXPECT_NE(s.message.find("is a directory"), std::string::npos) << s.message;
    write_all(dir + "/empty.safetensors", "");
    s = safetensors_open(dir + "/empty.safetensors", f);
    EXPECT_NE(s.message.find("empty.safetensors: file size: expected at least 8 bytes (the header length), got 0 bytes"), std::string::npos)
        << s.message;
    std::filesystem::remove_all(dir);
}

// The reference writer's own tests pin these bytes (safetensors/src/tensor.rs test_serialization,
// test_empty); matching them means files we write are byte-identical to Python's save_file.
TEST(safetensors, writer_matches_reference_bytes) {
    const float v[6] = {0, 1, 2, 3, 4, 5};
    std::string out;
    ASSERT_TRUE(safetensors_serialize({{"attn.0", PEFT_DTYPE_F32, {1, 2, 3}, v, ""}}, {}, out).ok());
    std::string want_header = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    ASSERT_EQ(want_header.size(), 64u);
    EXPECT_EQ(out, le64(64) + want_header + std::string(reinterpret_cast<const char *>(v), 24));

    ASSERT_TRUE(safetensors_serialize({{"attn0", PEFT_DTYPE_F32, {1, 1, 2, 3}, v, ""}}, {}, out).ok());
    EXPECT_EQ(out.substr(0, 8), le64(72));
    EXPECT_EQ(out.substr(8, 72), "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ");

    ASSERT_TRUE(safetensors_serialize({}, {}, out).ok());
    EXPECT_EQ(out, le64(8) + "{}      ");
    ASSERT_TRUE(safetensors_serialize({}, {{"framework", "pt"}}, out).ok());
    EXPECT_EQ(out, le64(40) + "{\"__metadata__\":{\"framework\":\"pt\"}}     ");
}

TEST(safetensors, writer_orders_by_alignment_then_name) {
    int64_t i64 = 7;
    float f32 = 1;
    uint16_t bf = 0x3f80;
    uint8_t u8 = 9;
    std::vector<safetensors_tensor_to_write> ts = {
        {"b_f32", PEFT_DTYPE_F32, {}, &f32, ""},
        {"a_bf16", PEFT_DTYPE_BF16, {1}, &bf, ""},
        {"c_i64", PEFT_DTYPE_F32, {1}, &i64, "I64"},
        {"d_u8", PEFT_DTYPE_F32, {1}, &u8, "U8"},
        {"a_f32", PEFT_DTYPE_F32, {1}, &f32, ""},
    };
    std::string out;
    ASSERT_TRUE(safetensors_serialize(ts, {}, out).ok());
    safetensors_file f;
    ASSERT_TRUE(parse_bytes(out, f).ok());
    std::vector<std::string> order;
    for (const auto & t : f.tensors) order.push_back(t.name);
    EXPECT_EQ(order, (std::vector<std::string>{"c_i64", "a_f32", "b_f32", "a_bf16", "d_u8"}));
    for (const auto & t : f.tensors) EXPECT_TRUE(t.aligned) << t.name;  // header padded to 8
    EXPECT_EQ((8 + f.header_size) % 8, 0u);
}

TEST(safetensors, writer_rejects_bad_input) {
    float x[4] = {};
    std::string out;
    auto bad = [&](std::vector<safetensors_tensor_to_write> ts, std::vector<std::pair<std::string, std::string>> md,
                   const char * expect) {
        status s = safetensors_serialize(ts, md, out);
        EXPECT_FALSE(s.ok()) << expect;
        EXPECT_NE(s.message.find(expect), std::string::npos) << s.message;
    };
    bad({{"a", PEFT_DTYPE_F32, {1}, x, ""}, {"a", PEFT_DTYPE_BF16, {1}, x, ""}}, {}, "duplicate tensor 'a'");
    bad({{"a", PEFT_DTYPE_F32, {-1}, x, ""}}, {}, "bad shape");
    bad({{"a", PEFT_DTYPE_F32, {1, 1, 1, 1, 1, 1, 1, 1, 1}, x, ""}}, {}, "more than 8 dims");
    bad({{"a", PEFT_DTYPE_F32, {2}, nullptr, ""}}, {}, "no data");
    bad({{"a", PEFT_DTYPE_F32, {1}, x, "Q8"}}, {}, "unknown dtype 'Q8'");
    bad({{"__metadata__", PEFT_DTYPE_F32, {1}, x, ""}}, {}, "invalid tensor name");
    bad({{"a", PEFT_DTYPE_F32, {3}, x, "F4"}}, {}, "not a whole number of bytes");
    bad({}, {{"k", "1"}, {"k", "2"}}, "duplicate __metadata__ key 'k'");
}

// Random write -> read round trips over every whole-byte dtype, shapes with zeros and scalars.
TEST(safetensors, random_round_trips) {
    std::mt19937_64 rng(1234);
    std::string dir = peft::testing::temp_dir("st_roundtrip");
    const std::string path = dir + "/rt.safetensors";
    for (int iter = 0; iter < 60; iter++) {
        SCOPED_TRACE(iter);
        int n = (int) (rng() % 7);
        std::vector<std::string> blobs(n);
        std::vector<safetensors_tensor_to_write> ts(n);
        for (int i = 0; i < n; i++) {
            auto & t = ts[i];
            t.name = "layer." + std::to_string(rng() % 1000) + ".w" + std::to_string(i);
            safetensors_dtype dt;
            do dt = (safetensors_dtype) (rng() % SAFETENSORS_DTYPE_COUNT);
            while (safetensors_dtype_bits(dt) % 8 != 0);
            t.raw_dtype = safetensors_dtype_name(dt);
            int nd = (int) (rng() % 5);
            uint64_t nel = 1;
            for (int d = 0; d < nd; d++) {
                t.shape.push_back((int64_t) (rng() % 6));
                nel *= (uint64_t) t.shape.back();
            }
            blobs[i].resize(nel * safetensors_dtype_bits(dt) / 8);
            for (char & ch : blobs[i]) ch = (char) rng();
            t.data = blobs[i].data();
        }
        std::vector<std::pair<std::string, std::string>> md;
        if (rng() % 2) md = {{"format", "pt"}, {"it\"er", std::to_string(iter) + "\n\xc3\xa9"}};
        ASSERT_TRUE(safetensors_write(path, ts, md).ok());
        safetensors_file f;
        status s = safetensors_open(path, f);
        ASSERT_TRUE(s.ok()) << s.message;
        ASSERT_EQ(f.tensors.size(), (size_t) n);
        EXPECT_EQ(f.metadata, md);
        for (int i = 0; i < n; i++) {
            const tensor_info * t = f.find(ts[i].name);
            ASSERT_NE(t, nullptr);
            EXPECT_STREQ(safetensors_dtype_name(t->st_dtype), ts[i].raw_dtype.c_str());
            EXPECT_EQ(t->shape, ts[i].shape);
            ASSERT_EQ(t->n_bytes, blobs[i].size());
            EXPECT_EQ(0, std::memcmp(t->data, blobs[i].data(), blobs[i].size()));
            EXPECT_TRUE(t->aligned);
            if (t->is_float && t->n_elements > 0) {
                std::vector<float> got(t->n_elements), want(t->n_elements);
                ASSERT_TRUE(read_f32(*t, got.data()).ok());
                convert_to_f32(t->type, blobs[i].data(), want.data(), want.size());
                EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4));
            }
        }
        // the in-memory serialiser produces the same bytes as the file writer
        std::string mem;
        ASSERT_TRUE(safetensors_serialize(ts, md, mem).ok());
        std::ifstream in(path, std::ios::binary);
        EXPECT_EQ(mem, std::string(std::istreambuf_iterator<char>(in), {}));
    }
    // nothing but the final file is left in the directory
    int files = 0;
    for (const auto & e : std::filesystem::directory_iterator(dir)) {
        files++;
        EXPECT_EQ(e.path().filename(), "rt.safetensors");
    }
    EXPECT_EQ(files, 1);
    std::filesystem::remove_all(dir);
}

// ---- sharded checkpoints ---------------------------------------------------------------------

namespace {

struct shard_fixture {
    std::string dir;
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};

    explicit shard_fixture(const std::string & name) : dir(peft::testing::temp_dir(name)) {
        EXPECT_TRUE(safetensors_write(dir + "/model-00001-of-00002.safetensors",
                                      {{"embed.weight", PEFT_DTYPE_F32, {2, 2}, a, ""}, {"norm.weight", PEFT_DTYPE_F32, {2}, b, ""}},
                                      {{"format", "pt"}})
                        .ok());
        EXPECT_TRUE(
            safetensors_write(dir + "/model-00002-of-00002.safetensors", {{"lm_head.weight", PEFT_DTYPE_F32, {3}, c, ""}}, {})
                .ok());
    }
    ~shard_fixture() { std::filesystem::remove_all(dir); }

    void write_index(const std::string & weight_map) {
        write_all(dir + "/model.safetensors.index.json",
                  "{\"metadata\":{\"total_size\":36},\"weight_map\":" + weight_map + "}");
    }
};

const char * GOOD_MAP = "{\"embed.weight\":\"model-00001-of-00002.safetensors\","
                        "\"lm_head.weight\":\"model-00002-of-00002.safetensors\","
                        "\"norm.weight\":\"model-00001-of-00002.safetensors\"}";

} // namespace

TEST(safetensors_model, sharded_index) {
    shard_fixture fx("st_sharded");
    fx.write_index(GOOD_MAP);
    safetensors_model m;
    status s = safetensors_open_model(fx.dir, m);
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(m.shards.size(), 2u);
    EXPECT_EQ(m.names(), (std::vector<std::string>{"embed.weight", "lm_head.weight", "norm.weight"}));
    const tensor_info * t = m.find("lm_head.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_NE(t->file.find("model-00002-of-00002.safetensors"), std::string::npos);
    float out[4];
    ASSERT_TRUE(read_f32(*t, out).ok());
    EXPECT_EQ(out[2], 9.0f);
    ASSERT_NE(m.find("embed.weight"), nullptr);
    ASSERT_TRUE(read_f32(*m.find("embed.weight"), out).ok());
    EXPECT_EQ(out[3], 4.0f);
    EXPECT_EQ(m.find("missing"), nullptr);
    // survives a move (views point into shared mappings)
    safetensors_model moved = std::move(m);
    ASSERT_TRUE(read_f32(*moved.find("norm.weight"), out).ok());
    EXPECT_EQ(out[1], 6.0f);
}

TEST(safetensors_model, single_file) {
    std::string dir = peft::testing::temp_dir("st_single");
    float x[2] = {1, 2};
    ASSERT_TRUE(safetensors_write(dir + "/model.safetensors", {{"w", PEFT_DTYPE_BF16, {1}, x, ""}, {"v", PEFT_DTYPE_F32, {2}, x, ""}}, {}).ok());
    safetensors_model m;
    status s = safetensors_open_model(dir, m);
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_TRUE(m.index_path.empty());
    EXPECT_EQ(m.names(), (std::vector<std::string>{"v", "w"}));
    EXPECT_NE(m.find("w"), nullptr);
    std::filesystem::remove_all(dir);
}

TEST(safetensors_model, errors) {
    shard_fixture fx("st_model_err");
    safetensors_model m;
    auto expect_error = [&](const char * want) {
        status s = safetensors_open_model(fx.dir, m);
        ASSERT_FALSE(s.ok()) << want;
        EXPECT_NE(s.message.find(want), std::string::npos) << s.message;
    };
    // neither file
    expect_error("no safetensors model: looked for model.safetensors.index.json and model.safetensors");
    // a tensor mapped to a shard that lacks it
    fx.write_index("{\"embed.weight\":\"model-00002-of-00002.safetensors\"}");
    expect_error("weight_map tensor 'embed.weight' is mapped to shard 'model-00002-of-00002.safetensors', which does not contain it");
    // a missing shard file
    fx.write_index("{\"embed.weight\":\"model-00003-of-00003.safetensors\"}");
    expect_error("model-00003-of-00003.safetensors: file not found (shard listed in");
    // shard names may not leave the directory
    fx.write_index("{\"embed.weight\":\"../model-00001-of-00002.safetensors\"}");
    expect_error("expected a plain file name in the model directory");
    fx.write_index("{\"embed.weight\":7}");
    expect_error("weight_map tensor 'embed.weight': expected a shard file name, got 7");
    write_all(fx.dir + "/model.safetensors.index.json", "{\"metadata\":{}}");
    expect_error("missing field 'weight_map'");
    write_all(fx.dir + "/model.safetensors.index.json", "{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}");
    expect_error("duplicate key \"a\"");
    // a corrupt shard
    fx.write_index(GOOD_MAP);
    write_all(fx.dir + "/model-00002-of-00002.safetensors", "junk");
    expect_error("model-00002-of-00002.safetensors: file size: expected at least 8 bytes");

    status s = safetensors_open_model(fx.dir + "/nope", m);
    EXPECT_NE(s.message.find("model directory not found"), std::string::npos) << s.message;
    s = safetensors_open_model(fx.dir + "/model-00001-of-00002.safetensors", m);
    EXPECT_NE(s.message.find("not a directory"), std::string::npos) << s.message;
}
