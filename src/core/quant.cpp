// quant.cpp: the block-quantized type table and bitsandbytes' NF4 + double quantization
// (tools/ref_nf4.py is the PyTorch re-implementation the tests compare against, bit for bit);
// the ggml rows call kernels/ggml_quant.h.
// Not here: matrix products over quantized weights (kernels/nf4.cpp).
#include "core/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "kernels/ggml_quant.h"

namespace peft {

const float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

// create_dynamic_map(signed=True) as torch's f32 linspace makes it (its last bits depend on
// torch's vectorised linspace, so the values are kept rather than recomputed; the fixture
// tests/fixtures/nf4 checks them). Printed by `tools/ref_nf4.py --print-map`.
static const uint32_t DYNAMIC_MAP_BITS[256] = {
    0xbf7e3333u, 0xbf7a9999u, 0xbf770000u, 0xbf736666u, 0xbf6fccccu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dccccu, 0xbf5a3333u, 0xbf569999u, 0xbf530000u, 0xbf4f6666u, 0xbf4bccccu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6667u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6667u,
    0xbf27cccdu, 0xbf243333u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u, 0xbef93334u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53332u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13332u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d999au, 0xbe6f3334u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe359999u, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f5u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c28u, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147au, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae147u,
    0xbcfeb852u, 0xbce7ae13u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae13u, 0x3cfeb852u, 0x3d0ae147u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147au, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c28u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f5u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e359999u, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3334u, 0x3e7d999au, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13332u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53332u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93334u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6667u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6667u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bccccu, 0x3f4f6666u, 0x3f530000u, 0x3f569999u, 0x3f5a3333u, 0x3f5dccccu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fccccu, 0x3f736666u, 0x3f770000u, 0x3f7a9999u, 0x3f7e3333u, 0x3f800000u,
};

const float * quant_dynamic_map() {
    static const auto table = [] {
        std::vector<float> t(256);
        std::memcpy(t.data(), DYNAMIC_MAP_BITS, sizeof(DYNAMIC_MAP_BITS));
        return t;
    }();
    return table.data();
}

// ---- the type table ----------------------------------------------------------------------

// 32 bytes -> 64 values; the even element sits in the high nibble (bitsandbytes' packing).
static void nf4_dequant_block(const uint8_t * src, float scale, float * dst) {
    for (int j = 0; j < 32; j++) {
        dst[2 * j] = NF4_CODE[src[j] >> 4] * scale;
        dst[2 * j + 1] = NF4_CODE[src[j] & 15] * scale;
    }
}

static void nf4_quantize_block(const float * w, uint8_t * dst, float * absmax);

// The ggml types: one block through the row functions; their scales live in the block.
static void q8_0_dequant_block(const uint8_t * src, float, float * dst) { ggml_dequantize_row_q8_0(src, dst, GGML_QK8_0); }
static void q4_0_dequant_block(const uint8_t * src, float, float * dst) { ggml_dequantize_row_q4_0(src, dst, GGML_QK4_0); }
static void q4_K_dequant_block(const uint8_t * src, float, float * dst) { ggml_dequantize_row_q4_K(src, dst, GGML_QK_K); }
static void q8_0_quantize_block(const float * w, uint8_t * dst, float *) { ggml_quantize_row_q8_0(w, dst, GGML_QK8_0); }
static void q4_0_quantize_block(const float * w, uint8_t * dst, float *) { ggml_quantize_row_q4_0(w, dst, GGML_QK4_0); }
static void q4_K_quantize_block(const float * w, uint8_t * dst, float *) { ggml_quantize_row_q4_K(w, dst, GGML_QK_K); }

static const qtype_traits QTYPES[] = {
    {"nf4", 64, 32, true, nf4_dequant_block, nf4_quantize_block},
    {"q8_0", GGML_QK8_0, 2 + GGML_QK8_0, false, q8_0_dequant_block, q8_0_quantize_block},
    {"q4_0", GGML_QK4_0, 2 + GGML_QK4_0 / 2, false, q4_0_dequant_block, q4_0_quantize_block},
    {"q4_K", GGML_QK_K, 4 + 12 + GGML_QK_K / 2, false, q4_K_dequant_block, q4_K_quantize_block},
};
static_assert(sizeof(QTYPES) / sizeof(QTYPES[0]) == PEFT_QTYPE_COUNT);

const qtype_traits & qtype_info(qtype t) {
    PEFT_ASSERT(t >= 0 && t < PEFT_QTYPE_COUNT);
    return QTYPES[t];
}

bool qtype_from_name(const std::string & name, qtype * out) {
    for (int t = 0; t < PEFT_QTYPE_COUNT; t++) {
        if (name == QTYPES[t].name) {
            *out = (qtype) t;
            return true;
        }
    }
    return false;
}

size_t qtensor::bytes() const {
    const size_t side = scales.nested ? scales.code.size() + scales.absmax2.size() * 4 + 4 : scales.f32.size() * 4;
    return (size_t) n_blocks() * qtype_info(type).block_bytes + side;
}

status quant_options_parse(const std::string & quant_type, const std::string & compute_dtype, bool double_quant,
                           const std::string & where, quant_options & out) {
    if (!qtype_from_name(quant_type, &out.type) || out.type != PEFT_QTYPE_NF4) {
        status st = make_mismatch(PEFT_STATUS_CONFIG, where, "bnb_4bit_quant_type", "nf4", quant_type);
        st.hint = "fp4 is not implemented; nf4 is what QLoRA uses";
        return st;
    }
    if (compute_dtype == "float32" || compute_dtype == "f32") out.bf16_values = false;
    else if (compute_dtype == "bfloat16" || compute_dtype == "bf16") out.bf16_values = true;
    else return make_mismatch(PEFT_STATUS_CONFIG, where, "bnb_4bit_compute_dtype", "float32 or bfloat16", compute_dtype);
    out.double_quant = double_quant;
    return {};
}

// ---- quantization ------------------------------------------------------------------------

// torch.argmin(|u - code|) over an ascending table: the nearer of the two values around u, the
// lower index on a tie, 0 for NaN (an all-zero block scales 0 by 1/0). Distances grow away
// from u, so the two neighbours decide.
static int nearest_code(const float * code, int n, float u) {
    if (std::isnan(u)) return 0;
    const int hi = (int) (std::lower_bound(code, code + n, u) - code);
    if (hi == 0) return 0;
    if (hi == n) return n - 1;
    return std::fabs(u - code[hi - 1]) <= std::fabs(u - code[hi]) ? hi - 1 : hi;
}

// bitsandbytes' absmax scaling: u = clamp(v * (1/absmax), -1, 1) (NaN passes through).
static float scale_to_unit(float v, float inv) {
    const float u = v * inv;
    return u < -1.0f ? -1.0f : (u > 1.0f ? 1.0f : u);
}

static float block_absmax(const float * v, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) m = std::max(m, std::fabs(v[i]));
    return m;
}

void qscales_nest(const float * absmax, int64_t n, float offset, qscales & s) {
    const float * dmap = quant_dynamic_map();
    s.nested = true;
    s.offset = offset;
    s.f32.clear();
    s.code.resize((size_t) n);
    const int64_t n2 = (n + QUANT_NESTED_BLOCK - 1) / QUANT_NESTED_BLOCK;
    s.absmax2.resize((size_t) n2);
    std::vector<float> c(QUANT_NESTED_BLOCK);
    for (int64_t b2 = 0; b2 < n2; b2++) {
        const int64_t i0 = b2 * QUANT_NESTED_BLOCK, len = std::min(QUANT_NESTED_BLOCK, n - i0);
        for (int64_t i = 0; i < len; i++) c[(size_t) i] = absmax[i0 + i] - offset;
        const float a2 = block_absmax(c.data(), len);
        const float inv = 1.0f / a2;
        s.absmax2[(size_t) b2] = a2;
        for (int64_t i = 0; i < len; i++) s.code[(size_t) (i0 + i)] = (uint8_t) nearest_code(dmap, 256, scale_to_unit(c[(size_t) i], inv));
    }
}

// The mean of the scales, exactly rounded. bnb takes torch's f32 mean, whose last bit depends
// on torch's summation order; that one value may differ by an ulp (tests/fixtures/README.md).
static float mean_f32(const float * v, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += v[i];
    return (float) (s / (double) n);
}

static void nf4_quantize_block(const float * w, uint8_t * dst, float * absmax) {
    const float am = block_absmax(w, 64);
    const float inv = 1.0f / am;
    for (int j = 0; j < 32; j++) {
        const int hi = nearest_code(NF4_CODE, 16, scale_to_unit(w[2 * j], inv));
        const int lo = nearest_code(NF4_CODE, 16, scale_to_unit(w[2 * j + 1], inv));
        dst[j] = (uint8_t) (hi << 4 | lo);
    }
    *absmax = am;
}

status qtensor_quantize(const float * W, int64_t OC, int64_t IC, const quant_options & o, const std::string & name, qtensor & out) {
    const qtype_traits & tr = qtype_info(o.type);
    if ((OC * IC) % tr.block != 0) {
        status st = make_error(PEFT_STATUS_SHAPE, name, std::string(tr.name) + " quantization needs whole " + std::to_string(tr.block) +
                               "-element blocks, but [" + std::to_string(OC) + ", " + std::to_string(IC) + "] has " +
                               std::to_string(OC * IC) + " elements");
        st.hint = "load this model without load_in_4bit (this weight's size is not a multiple of " + std::to_string(tr.block) + ")";
        return st;
    }
    out.type = o.type;
    out.OC = OC;
    out.IC = IC;
    out.bf16_values = o.bf16_values;
    out.mapped = nullptr;
    const int64_t nb = out.n_blocks();
    out.data.resize((size_t) nb * tr.block_bytes);
    std::vector<float> absmax(tr.side_scales ? (size_t) nb : 1);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        tr.quantize_block(W + b * tr.block, out.data.data() + (size_t) b * tr.block_bytes, &absmax[tr.side_scales ? (size_t) b : 0]);
    }
    if (!tr.side_scales) {
        out.scales = {};
    } else if (o.double_quant) {
        qscales_nest(absmax.data(), nb, mean_f32(absmax.data(), nb), out.scales);
    } else {
        out.scales = {};
        out.scales.f32 = std::move(absmax);
    }
    return {};
}

// ---- dequantization ----------------------------------------------------------------------

void qtensor_block_scales(const qtensor & q, int64_t b0, int64_t n, float * dst) {
    const qscales & s = q.scales;
    if (!qtype_info(q.type).side_scales) {
        std::fill(dst, dst + n, 1.0f);
        return;
    }
    if (!s.nested) {
        std::memcpy(dst, s.f32.data() + b0, (size_t) n * 4);
        return;
    }
    // bnb: dequantize_blockwise (f32 product), then += offset: two roundings (this file is
    // built without FMA contraction, CMakeLists.txt)
    const float * dmap = quant_dynamic_map();
    for (int64_t i = 0; i < n; i++) {
        const int64_t b = b0 + i;
        const float v = dmap[s.code[(size_t) b]] * s.absmax2[(size_t) (b / QUANT_NESTED_BLOCK)];
        dst[i] = v + s.offset;
    }
}

void qtensor_round_values(const qtensor & q, float * v, int64_t n) {
    if (!q.bf16_values) return;
    for (int64_t i = 0; i < n; i++) v[i] = bf16_to_f32(f32_to_bf16(v[i]));
}

void qtensor_dequant_range(const qtensor & q, int64_t e0, int64_t e1, float * dst) {
    const qtype_traits & tr = qtype_info(q.type);
    const int64_t B = tr.block;
    float v[256];   // one block (every type's block is at most 256)
    PEFT_ASSERT(B <= 256);
    for (int64_t e = e0; e < e1;) {
        const int64_t b = e / B, k0 = e % B, k1 = std::min(B, k0 + (e1 - e));
        float scale;
        qtensor_block_scales(q, b, 1, &scale);
        if (k0 == 0 && k1 == B) {
            tr.dequant_block(q.block_data(b), scale, dst + (e - e0));
        } else {   // a block shared with the neighbouring row
            tr.dequant_block(q.block_data(b), scale, v);
            std::memcpy(dst + (e - e0), v + k0, (size_t) (k1 - k0) * 4);
        }
        e += k1 - k0;
    }
    qtensor_round_values(q, dst, e1 - e0);
}

void qtensor_rows_f32(const qtensor & q, int64_t r0, int64_t r1, float * dst) {
#pragma omp parallel for schedule(static)
    for (int64_t r = r0; r < r1; r++) qtensor_dequant_range(q, r * q.IC, (r + 1) * q.IC, dst + (r - r0) * q.IC);
}

} // namespace peft
