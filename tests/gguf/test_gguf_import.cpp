// test_gguf_import.cpp: GGUF files read back as models, tokenizers and adapters
// (model/gguf_import.h, tokenizer/gguf_vocab.h), against the source they were exported from:
//   - `peft export gguf --type f32` of every test model, loaded again: the same hparams, every
//     tensor bit for bit (Q/K un-permuted), the same logits bit for bit; bf16 of tiny-llama too,
//     and its matrices used in place from the mapping (no copy);
//   - the tokenizer rebuilt from tokenizer.ggml.* encodes and decodes a text suite exactly as
//     tokenizer.json does; a SentencePiece ("llama") vocabulary exported from Llama 2's
//     tokenizer.model or Mistral's tokenizer.json encodes the tokenizer fixtures' ground truth;
//     `peft eval` of the GGUF prints the same loss as of the directory;
//   - PEFT LoRA -> export gguf-lora -> peft convert: the same tensors (rank_pattern too);
//     --adapter FILE.gguf gives the same logits as the PEFT directory; an adapter for another
//     base is refused naming the tensor and shapes;
//   - Q8_0 / Q4_0 / Q4_K bases stay quantized and run as their dequantized f32 model; LoRA trains
//     over Q4_K, full fine-tuning is refused, merge writes f32;
//   - peft merge of the GGUF base + GGUF LoRA writes the same checkpoint as from the directories;
//     peft train (LoRA and full) over the GGUF writes what it writes over the directory;
//   - our Q8_0 / Q4_0 / Q4_K dequantization against libggml's own (to_float of ggml's
//     quantize_chunk output), bit for bit; our Q8_0 / Q4_0 quantizers write ggml's bytes and our
//     Q4_K bytes decode the same in ggml; our type table against ggml's.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "gguf_test_util.h"
#include "io/gguf.h"
#include "io/gguf_read.h"
#include "io/safetensors.h"
#include "kernels/ggml_quant.h"
#include "model/llama.h"
#include "model/llama_hparams.h"
#include "model/llama_infer.h"
#include "testing.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"

#if PEFT_LLAMA_ORACLE
#include "ggml.h"
#endif

namespace {

using peft::status;
namespace pt = peft::testing;

std::string export_model(const std::string & model_dir, const std::string & type, const std::string & tag) {
    const std::string out = pt::temp_dir("gguf_import_" + tag) + "/model.gguf";
    const pt::child_result r = pt::spawn_peft({"export", "gguf", "--model", model_dir, "--out", out, "--type", type});
    EXPECT_EQ(r.code, 0) << r.out;
    return out;
}

std::vector<int32_t> some_tokens(int64_t V) {
    std::vector<int32_t> t;
    for (int i = 0; i < 20; i++) t.push_back((int32_t) ((i * 53 + 7) % V));
    return t;
}

void expect_same_model(const std::string & dir, const std::string & gguf) {
    peft::llama_model a, b;
    status st = peft::llama_load(a, dir, false);
    ASSERT_TRUE(st.ok()) << st.message;
    st = peft::llama_load(b, gguf, false);
    ASSERT_TRUE(st.ok()) << st.message;
    const peft::llama_hparams &x = a.hp, &y = b.hp;
    EXPECT_EQ(x.arch == "qwen2", y.arch == "qwen2");
    EXPECT_EQ(x.n_vocab, y.n_vocab);
    EXPECT_EQ(x.n_embd, y.n_embd);
    EXPECT_EQ(x.n_layer, y.n_layer);
    EXPECT_EQ(x.n_head, y.n_head);
    EXPECT_EQ(x.n_head_kv, y.n_head_kv);
    EXPECT_EQ(x.head_dim, y.head_dim);
    EXPECT_EQ(x.n_ff, y.n_ff);
    EXPECT_EQ(x.max_position, y.max_position);
    EXPECT_EQ(x.rms_eps, y.rms_eps);
    EXPECT_EQ(x.rope.theta, y.rope.theta);
    EXPECT_EQ(x.rope.llama3, y.rope.llama3);
    if (x.rope.llama3) {
        EXPECT_EQ(x.rope.factor, y.rope.factor);
        EXPECT_EQ(x.rope.original_max_position, y.rope.original_max_position);
    }
    EXPECT_EQ(x.tie_embeddings, y.tie_embeddings);
    EXPECT_EQ(x.qkv_bias, y.qkv_bias);
    EXPECT_EQ(x.o_bias, y.o_bias);
    EXPECT_EQ(x.mlp_bias, y.mlp_bias);
    EXPECT_EQ(a.inv_freq, b.inv_freq);
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); i++) {
        const peft::llama_tensor &s = a.tensors[i], &t = b.tensors[i];
        ASSERT_EQ(s.name, t.name);
        ASSERT_EQ(s.shape, t.shape);
        std::vector<float> fs((size_t) s.numel()), ft((size_t) t.numel());
        peft::convert_to_f32(s.type, s.data, fs.data(), fs.size());
        peft::convert_to_f32(t.type, t.data, ft.data(), ft.size());
        EXPECT_EQ(std::memcmp(fs.data(), ft.data(), fs.size() * 4), 0) << s.name;
    }
    const std::vector<int32_t> tok = some_tokens(x.n_vocab);
    const std::vector<float> la = pt::forward_logits(a, tok), lb = pt::forward_logits(b, tok);
    ASSERT_EQ(la.size(), lb.size());
    EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * 4), 0) << dir << ": logits differ";
}

// Every tensor of safetensors file a is in b with the same values (as f32; matrices also of the
// same dtype).
void expect_same_tensors(const std::string & a_path, const std::string & b_path) {
    peft::safetensors_file a, b;
    ASSERT_TRUE(peft::safetensors_open(a_path, a).ok());
    ASSERT_TRUE(peft::safetensors_open(b_path, b).ok());
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (const peft::tensor_info & t : a.tensors) {
        const peft::tensor_info * u = b.find(t.name);
        ASSERT_NE(u, nullptr) << t.name;
        EXPECT_EQ(u->shape, t.shape) << t.name;
        if (t.shape.size() == 2) {
            EXPECT_EQ(u->st_dtype, t.st_dtype) << t.name;
        }
        std::vector<float> x((size_t) t.n_elements), y((size_t) u->n_elements);
        ASSERT_TRUE(peft::read_f32(t, x.data()).ok());
        ASSERT_TRUE(peft::read_f32(*u, y.data()).ok());
        EXPECT_EQ(x, y) << b_path << ": " << t.name;
    }
}

} // namespace

TEST(gguf_import, f32_exports_read_back_bit_for_bit) {
    for (const char * rel : {"tests/fixtures/llama_gqa", "tests/fixtures/qwen2_tied", "tests/fixtures/llama_bias",
                             "tests/fixtures/llama3_packed"}) {
        SCOPED_TRACE(rel);
        const std::string dir = pt::source_path(rel);
        expect_same_model(dir, export_model(dir, "f32", std::filesystem::path(rel).filename().string()));
    }
}

TEST(gguf_import, bf16_tiny_llama_reads_in_place_bit_for_bit) {
    const std::string dir = pt::source_path("models/tiny-llama");
    const std::string gguf = export_model(dir, "bf16", "tiny_bf16");
    expect_same_model(dir, gguf);
    // matrices other than llama's permuted Q/K point into the file's mapping: no copy
    peft::llama_model m;
    ASSERT_TRUE(peft::llama_load(m, gguf, false).ok());
    peft::gguf_file f;
    ASSERT_TRUE(peft::gguf_open(gguf, f).ok());
    const peft::llama_tensor * v = m.find("model.layers.0.self_attn.v_proj.weight");
    const peft::llama_tensor * q = m.find("model.layers.0.self_attn.q_proj.weight");
    ASSERT_TRUE(v && q);
    EXPECT_EQ(v->type, peft::PEFT_DTYPE_BF16);
    EXPECT_EQ(q->type, peft::PEFT_DTYPE_BF16);
    auto mapped = std::static_pointer_cast<peft::gguf_file>(m.source);
    ASSERT_TRUE(mapped && mapped->map);
    const uint8_t * lo = mapped->map->data, * hi = lo + mapped->map->size;
    EXPECT_TRUE((const uint8_t *) v->data >= lo && (const uint8_t *) v->data < hi);
    EXPECT_FALSE((const uint8_t *) q->data >= lo && (const uint8_t *) q->data < hi);   // a row-permuted bf16 copy
}

TEST(gguf_import, tokenizer_from_metadata_equals_tokenizer_json) {
    const std::string dir = pt::source_path("models/tiny-llama");
    const std::string gguf = export_model(dir, "f16", "tiny_tok");
    std::unique_ptr<peft::tokenizer> a, b;
    ASSERT_TRUE(peft::tokenizer::load(dir, a).ok());
    status st = peft::tokenizer::load(gguf, b);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(a->bos_id(), b->bos_id());
    EXPECT_EQ(a->eos_id(), b->eos_id());
    EXPECT_EQ(a->chat_template(), b->chat_template());
    const std::vector<std::string> texts = {
        "Hello world", "  leading spaces and trailing  ", "In the beginning God created the heaven and the earth.",
        "numbers 1234567 and 3.14159", "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhich book?<|eot_id|>", "tabs\tand\nnew\r\nlines\n\n\n",
        "don't won't I'M we'll", "", "\xff\xfe invalid utf-8 \xc3"};
    for (const std::string & t : texts) {
        for (bool special : {false, true}) {
            const std::vector<int32_t> ia = a->encode(t, special), ib = b->encode(t, special);
            EXPECT_EQ(ia, ib) << "'" << t << "' add_special " << special;
            EXPECT_EQ(a->decode(ia), b->decode(ib)) << t;
        }
    }
}

// Round trip of the SentencePiece vocabularies: the GGUF we write, read back as a tokenizer
// (--model FILE.gguf), gives the ids of the models' own tokenizers (the committed ground truth
// of tests/fixtures/tokenizer: libsentencepiece for Llama 2, HF tokenizers for Mistral) on the
// text suite; its invalid UTF-8 cases only against libsentencepiece, whose repair the read-back
// shares (HF's differs on a truncated sequence, "a\xe2\x82 b": one U+FFFD, not two).
TEST(gguf_import, sentencepiece_vocabulary_from_metadata_tokenizes_as_the_model_files) {
    for (const gguf_spm_case & c : gguf_spm_cases()) {
        const std::string dir = gguf_test_spm_model(c);
        if (dir.empty()) {
            const char * r = std::getenv("PEFT_REQUIRE_ASSETS");
            if (r && std::string(r) == "1") ADD_FAILURE() << c.asset << " missing from the asset cache: run scripts/fetch_assets.sh";
            continue;
        }
        const std::string out = pt::temp_dir(std::string("gguf_import_spm_") + c.tag) + "/m.gguf";
        const pt::child_result r = pt::spawn_peft({"export", "gguf", "--model", dir, "--out", out, "--type", "f16"});
        ASSERT_EQ(r.code, 0) << r.out;
        std::unique_ptr<peft::tokenizer> tok;
        const peft::status st = peft::tokenizer::load(out, tok);
        ASSERT_TRUE(st.ok()) << st.message;
        EXPECT_EQ(tok->kind(), peft::PEFT_TOKENIZER_SENTENCEPIECE);
        EXPECT_EQ(tok->bos_id(), 1);
        EXPECT_EQ(tok->eos_id(), 2);
        peft::json_document doc;
        ASSERT_TRUE(doc.parse_file(pt::source_path(std::string("tests/fixtures/tokenizer/expected_") + c.expected + ".json")).ok());
        const peft::json_value want = doc.root().get("cases");
        const std::vector<std::string> cases = pt::tokenizer_cases();
        ASSERT_EQ(want.size(), cases.size());
        int n_same = 0;
        int n = 0;
        for (size_t i = 0; i < cases.size(); i++) {
            if (c.hf_tokenizers && !peft::utf8_is_valid(cases[i].data(), cases[i].size())) continue;
            for (bool add_special : {false, true}) {
                n++;
                const peft::json_value w = want.at(i).get(add_special ? "ids_special" : "ids");
                std::vector<int32_t> expect;
                for (size_t k = 0; k < w.size(); k++) expect.push_back((int32_t) w.at(k).as_int());
                const std::vector<int32_t> got = tok->encode(cases[i], add_special, c.hf_tokenizers);
                EXPECT_EQ(got, expect) << c.tag << " case " << i << " \"" << cases[i] << "\" add_special " << add_special;
                n_same += got == expect;
            }
        }
        std::printf("[ gguf ] %s read back from GGUF: %d/%d encodings as the fixture\n", c.tag, n_same, n);
        EXPECT_EQ(tok->decode(tok->encode("Hello world, café 日本語", false)), "Hello world, café 日本語") << c.tag;
    }
}

// A "llama" vocabulary that is not one: each refusal names the file and key.
TEST(gguf_import, bad_sentencepiece_vocabulary_is_refused_naming_the_key) {
    struct zeros : peft::gguf_tensor_source {
        status fill(size_t, std::vector<uint8_t> & out) override {
            out.assign(32 * sizeof(float), 0);
            return {};
        }
    } one_tensor;
    const struct { const char * what; std::vector<int32_t> types; std::vector<float> scores; uint32_t unk; const char * needle; } CASES[] = {
        {"type", {2, 1, 9}, {0, 0, 0}, 0, "tokenizer.ggml.token_type'[2]"},
        {"scores", {2, 1, 1}, {0, 0}, 0, "tokenizer.ggml.scores' length"},
        {"unk", {2, 1, 1}, {0, 0, 0}, 7, "tokenizer.ggml.unknown_token_id"},
    };
    for (const auto & c : CASES) {
        peft::gguf_writer w;
        w.set_str("tokenizer.ggml.model", "llama");
        w.set_arr_str("tokenizer.ggml.tokens", {"<unk>", "\xe2\x96\x81" "a", "b"});
        w.set_arr_f32("tokenizer.ggml.scores", c.scores);
        w.set_arr_i32("tokenizer.ggml.token_type", c.types);
        w.set_u32("tokenizer.ggml.unknown_token_id", c.unk);
        ASSERT_TRUE(w.add_tensor("x", {32}, peft::GGUF_TENSOR_F32).ok());
        const std::string path = pt::temp_dir(std::string("gguf_import_bad_spm_") + c.what) + "/v.gguf";
        ASSERT_TRUE(w.write(path, one_tensor, false).ok());
        std::unique_ptr<peft::tokenizer> tok;
        const status st = peft::tokenizer::load(path, tok);
        EXPECT_FALSE(st.ok()) << c.what;
        EXPECT_NE(st.message.find(path), std::string::npos) << st.message;
        EXPECT_NE(st.message.find(c.needle), std::string::npos) << st.message;
    }
}

TEST(gguf_import, cli_eval_of_the_gguf_equals_eval_of_the_directory) {
    const std::string dir = pt::source_path("models/tiny-llama");
    const std::string gguf = export_model(dir, "bf16", "tiny_eval");
    pt::spawn_options passive;
    passive.passive_omp = true;
    auto eval = [&](const std::string & model) {
        const pt::child_result r = pt::spawn_peft({"eval", "--model", model, "--data", pt::source_path("data/demo/held_out.jsonl"),
                                                   "--json", "--sequence_len", "128", "--batch", "4", "--threads", "2"},
                                                  passive);
        EXPECT_EQ(r.code, 0) << r.out;
        return r.out.substr(r.out.find('{'));
    };
    EXPECT_EQ(eval(dir), eval(gguf));
}

TEST(gguf_import, lora_round_trip_export_convert_gives_the_same_tensors) {
    const std::string dir = pt::source_path("models/tiny-llama");
    for (const std::string & extra : {std::string(""), std::string(",\"rank_pattern\":{\"model.layers.1.self_attn.k_proj\":2}")}) {
        SCOPED_TRACE(extra);
        const std::string tag = extra.empty() ? "plain" : "ranks";
        const std::string adapter = gguf_test_adapter(dir, "import_" + tag, extra);
        const std::string work = pt::temp_dir("gguf_import_lora_" + tag);
        pt::child_result r = pt::spawn_peft({"export", "gguf-lora", "--model", dir, "--adapter", adapter, "--out", work + "/lora.gguf"});
        ASSERT_EQ(r.code, 0) << r.out;
        r = pt::spawn_peft({"convert", "--model", dir, "--adapter", work + "/lora.gguf", "--out", work + "/peft"});
        ASSERT_EQ(r.code, 0) << r.out;
        expect_same_tensors(adapter + "/adapter_model.safetensors", work + "/peft/adapter_model.safetensors");
        // the GGUF adapter and the PEFT directory run the same
        peft::llama_model m1, m2;
        peft::adapter_set s1, s2;
        ASSERT_TRUE(peft::llama_load(m1, dir, false).ok());
        ASSERT_TRUE(peft::llama_load(m2, dir, false).ok());
        ASSERT_TRUE(peft::adapter_load(adapter, m1, s1).ok());
        status st = peft::adapter_load(work + "/lora.gguf", m2, s2);
        ASSERT_TRUE(st.ok()) << st.message;
        const std::vector<int32_t> tok = some_tokens(m1.hp.n_vocab);
        EXPECT_EQ(pt::forward_logits(m1, tok), pt::forward_logits(m2, tok));
    }
}

TEST(gguf_import, lora_for_another_base_is_refused_naming_tensor_and_shapes) {
    const std::string gqa = pt::source_path("tests/fixtures/llama_gqa");
    const std::string adapter = gguf_test_adapter(gqa, "import_other", "");
    const std::string out = pt::temp_dir("gguf_import_other") + "/lora.gguf";
    pt::child_result r = pt::spawn_peft({"export", "gguf-lora", "--model", gqa, "--adapter", adapter, "--out", out});
    ASSERT_EQ(r.code, 0) << r.out;
    peft::llama_model m;
    ASSERT_TRUE(peft::llama_load(m, pt::source_path("models/tiny-llama"), false).ok());
    peft::adapter_set s;
    const status st = peft::adapter_load(out, m, s);
    EXPECT_FALSE(st.ok());
    // llama_gqa has C = 32, tiny-llama 256: the first pair checked (in name order) is refused
    EXPECT_NE(st.message.find("tensor 'blk.0.attn_k.weight.lora_a' ne: expected [256, 4]"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("[OC 128, IC 256]"), std::string::npos) << st.message;
    EXPECT_NE(st.hint.find("another base"), std::string::npos) << st.hint;
    EXPECT_TRUE(m.adapters.empty());
}

// A frozen load keeps Q8_0 / Q4_0 / Q4_K matrices quantized (embeddings too, used in place from the
// mapping: no f32 copy); a trainable load dequantizes them into f32 masters, which is the
// reference: the same logits up to summation order, and the same decode-sized (GEMV) products.
TEST(gguf_import, quantized_base_stays_quantized_and_runs_as_its_dequantized_model) {
    const std::string dir = pt::source_path("models/tiny-llama");
    for (const char * type : {"q8_0", "q4_0", "q4_k"}) {
        SCOPED_TRACE(type);
        const std::string gguf = export_model(dir, type, std::string("tiny_") + type);
        peft::llama_model mq, mf;
        status st = peft::llama_load(mq, gguf, false);
        ASSERT_TRUE(st.ok()) << st.message;
        ASSERT_TRUE(peft::llama_load(mf, gguf, true).ok());
        const peft::llama_tensor * up = mq.find("model.layers.0.mlp.up_proj.weight");
        ASSERT_TRUE(up->q);
        EXPECT_EQ(up->data, nullptr);
        EXPECT_TRUE(up->q->mapped);   // in place; Q/K are permuted copies of the blocks
        EXPECT_TRUE(mq.find("model.layers.0.self_attn.q_proj.weight")->q->data.size() > 0);
        EXPECT_TRUE(mq.find("model.embed_tokens.weight")->q);
        EXPECT_FALSE(mq.find("model.layers.0.mlp.down_proj.weight")->q);   // IC 688: written F16
        EXPECT_EQ(std::string(peft::qtype_info(up->q->type).name), std::string(type) == "q4_k" ? "q4_K" : type);
        const size_t q_bytes = up->q->bytes(), f32_bytes = (size_t) up->numel() * 4;
        EXPECT_LT(q_bytes * (std::string(type) == "q8_0" ? 3 : 7), f32_bytes);
        const std::vector<int32_t> tok = some_tokens(mq.hp.n_vocab);
        const std::vector<float> got = pt::forward_logits(mq, tok), want = pt::forward_logits(mf, tok);
        EXPECT_LT(pt::rel_error(got.data(), want.data(), (int64_t) want.size()), 1e-5);
        for (int64_t N : {1, 3}) {   // the GEMV path against the f32 GEMM
            const peft::linear_weight & wq = mq.proj_weight(1, peft::LLAMA_PROJ_UP), & wf = mf.proj_weight(1, peft::LLAMA_PROJ_UP);
            const std::vector<float> x = pt::fixed_vector(N * wq.IC, 5, 1.0f);
            std::vector<float> yq((size_t) (N * wq.OC)), yf((size_t) (N * wq.OC));
            peft::linear_forward(yq.data(), x.data(), wq, nullptr, N);
            peft::linear_forward(yf.data(), x.data(), wf, nullptr, N);
            EXPECT_LT(pt::rel_error(yq.data(), yf.data(), (int64_t) yf.size()), 1e-6);
        }
        // decoding one token at a time (KV cache, GEMV products) gives the last row's logits
        peft::llama_infer_state is;
        ASSERT_TRUE(peft::llama_infer_init(is, mq, 64).ok());
        std::vector<float> last((size_t) mq.hp.n_vocab);
        for (int32_t t : tok) ASSERT_TRUE(peft::llama_infer_eval(mq, is, &t, 1, last.data()).ok());
        EXPECT_LT(pt::rel_error(last.data(), want.data() + (tok.size() - 1) * (size_t) mq.hp.n_vocab, mq.hp.n_vocab), 1e-5);
    }
}

// PiSSA over a Q4_K base: the residual is re-quantized to Q4_K (as over NF4), so base + adapter
// is the original model up to one more Q4_K rounding of the residual.
TEST(gguf_import, pissa_over_a_q4_k_base_requantizes_the_residual) {
    const std::string gguf = export_model(pt::source_path("models/tiny-llama"), "q4_k", "pissa_q4k");
    peft::llama_model m;
    ASSERT_TRUE(peft::llama_load(m, gguf, false).ok());
    const std::vector<int32_t> tok = some_tokens(m.hp.n_vocab);
    const std::vector<float> before = pt::forward_logits(m, tok);
    const std::string cfg = "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":4,\"init_lora_weights\":\"pissa\",\"target_modules\":[\"q_proj\",\"up_proj\"]}";
    peft::json_document doc;
    ASSERT_TRUE(doc.parse(cfg.data(), cfg.size(), "test").ok());
    peft::adapter_set set;
    status st = peft::adapters_attach(m, doc.root(), 3, set);
    ASSERT_TRUE(st.ok()) << st.message;
    const peft::llama_tensor * up = m.find("model.layers.0.mlp.up_proj.weight");
    ASSERT_TRUE(up->q);
    EXPECT_EQ(up->q->type, peft::PEFT_QTYPE_Q4_K);
    EXPECT_EQ(up->q->mapped, nullptr);   // the residual, not the file's blocks
    const std::vector<float> after = pt::forward_logits(m, tok);
    const double err = pt::rel_error(after.data(), before.data(), (int64_t) before.size());
    EXPECT_GT(err, 0.0);
    EXPECT_LT(err, 0.05);
}

namespace {
std::vector<double> logged_losses(const std::string & metrics) {
    std::vector<double> out;
    std::ifstream in(metrics);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (size_t at = text.find("\"loss\": "); at != std::string::npos; at = text.find("\"loss\": ", at + 1)) {
        out.push_back(std::stod(text.substr(at + 8)));
    }
    return out;
}
} // namespace

// LoRA trains over a Q4_K base as stored (the loss falls on one repeated sample), full fine-tuning
// is refused naming the tensor, and peft merge writes the adapted model in full precision: an f32
// checkpoint whose logits are the quantized base's with the adapter.
TEST(gguf_import, lora_trains_over_a_q4_k_base_and_merges_to_full_precision) {
    const std::string dir = pt::source_path("models/tiny-llama");
    const std::string gguf = export_model(dir, "q4_k", "train_q4k");
    const std::string work = pt::temp_dir("gguf_import_q4k_train");
    {
        std::ifstream in(pt::source_path("data/demo/train.jsonl"));
        std::string line;
        ASSERT_TRUE(std::getline(in, line));
        std::ofstream(work + "/one.jsonl") << line << "\n" << line << "\n" << line << "\n" << line << "\n";
    }
    pt::spawn_options passive;
    passive.passive_omp = true;
    pt::child_result r = pt::spawn_peft({"train", "--base_model", gguf, "--adapter", "lora", "--datasets", work + "/one.jsonl",
                                         "--output_dir", work + "/lora", "--max_steps", "12", "--sequence_len", "128",
                                         "--learning_rate", "5e-3", "--threads", "2"}, passive);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<double> loss = logged_losses(work + "/lora/metrics.jsonl");
    ASSERT_EQ(loss.size(), 12u);
    EXPECT_LT(loss.back(), loss.front() - 0.5) << r.out;

    r = pt::spawn_peft({"train", "--base_model", gguf, "--adapter", "full", "--datasets", work + "/one.jsonl",
                        "--output_dir", work + "/full", "--max_steps", "1"}, passive);
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("is Q4_K: full fine-tuning writes every weight"), std::string::npos) << r.out;

    r = pt::spawn_peft({"merge", "--model", gguf, "--adapter", work + "/lora", "--out", work + "/merged"}, passive);
    ASSERT_EQ(r.code, 0) << r.out;
    peft::safetensors_file merged;
    ASSERT_TRUE(peft::safetensors_open(work + "/merged/model.safetensors", merged).ok());
    EXPECT_EQ(merged.find("model.layers.0.self_attn.q_proj.weight")->type, peft::PEFT_DTYPE_F32);
    EXPECT_EQ(merged.find("model.embed_tokens.weight")->type, peft::PEFT_DTYPE_F32);
    peft::llama_model mq, mm;
    peft::adapter_set set;
    ASSERT_TRUE(peft::llama_load(mq, gguf, false).ok());
    ASSERT_TRUE(peft::adapter_load(work + "/lora", mq, set).ok());
    status st = peft::llama_load(mm, work + "/merged", false);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::vector<int32_t> tok = some_tokens(mq.hp.n_vocab);
    const std::vector<float> got = pt::forward_logits(mm, tok), want = pt::forward_logits(mq, tok);
    EXPECT_LT(pt::rel_error(got.data(), want.data(), (int64_t) want.size()), 1e-5);
}

#if PEFT_LLAMA_ORACLE

// ggml quantizes (its reference quantize_chunk), then both dequantize: same floats, bit for bit.
TEST(gguf_import, dequantization_matches_libggml_bit_for_bit) {
    const int64_t rows = 3, n = 512;
    std::vector<float> x = pt::fixed_vector(rows * n, 41, 2.0f);
    for (int64_t i = 0; i < n; i += 37) x[(size_t) i] = 0.0f;   // some zeros and a zero-ish block
    for (int64_t i = 64; i < 96; i++) x[(size_t) i] = 1e-8f;
    for (auto [gt, pt_type] : {std::pair<ggml_type, uint32_t>{GGML_TYPE_Q8_0, peft::GGUF_TENSOR_Q8_0}, {GGML_TYPE_Q4_0, peft::GGUF_TENSOR_Q4_0},
                               {GGML_TYPE_Q4_K, peft::GGUF_TENSOR_Q4_K}}) {
        SCOPED_TRACE(ggml_type_name(gt));
        std::vector<uint8_t> q(ggml_row_size(gt, n) * rows);
        ggml_quantize_chunk(gt, x.data(), q.data(), 0, rows, n, nullptr);
        std::vector<float> want((size_t) (rows * n)), got((size_t) (rows * n), -1.0f);
        ggml_get_type_traits(gt)->to_float(q.data(), want.data(), rows * n);
        peft::ggml_dequantizer(pt_type)(q.data(), got.data(), rows * n);
        EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * 4), 0);
        EXPECT_LT(pt::rel_error(got.data(), x.data(), rows * n), gt == GGML_TYPE_Q8_0 ? 0.01 : 0.15);
        // our quantizers: Q8_0 and Q4_0 write ggml's bytes; our Q4_K bytes decode the same in ggml
        std::vector<uint8_t> ours(q.size());
        (gt == GGML_TYPE_Q8_0 ? peft::ggml_quantize_row_q8_0 : gt == GGML_TYPE_Q4_0 ? peft::ggml_quantize_row_q4_0
                                                                                    : peft::ggml_quantize_row_q4_K)(x.data(), ours.data(), rows * n);
        if (gt != GGML_TYPE_Q4_K) {
            EXPECT_EQ(ours, q);
        }
        ggml_get_type_traits(gt)->to_float(ours.data(), want.data(), rows * n);
        peft::ggml_dequantizer(pt_type)(ours.data(), got.data(), rows * n);
        EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * 4), 0);
        EXPECT_LT(pt::rel_error(got.data(), x.data(), rows * n), gt == GGML_TYPE_Q8_0 ? 0.01 : 0.15);
    }
}

TEST(gguf_import, type_table_matches_ggml) {
    for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++) {
        if (!peft::gguf_tensor_type_known(t)) continue;
        const auto * tr = ggml_get_type_traits((ggml_type) t);
        EXPECT_EQ(peft::gguf_tensor_type_block((peft::gguf_tensor_type) t), tr->blck_size) << t;
        EXPECT_EQ(peft::gguf_tensor_type_block_bytes((peft::gguf_tensor_type) t), tr->type_size) << t;
        EXPECT_STRCASEEQ(peft::gguf_tensor_type_name((peft::gguf_tensor_type) t), ggml_type_name((ggml_type) t)) << t;
    }
}

#endif

// peft merge of the GGUF base with the GGUF LoRA writes the checkpoint peft merge writes from
// the directory and the PEFT adapter: the same tensors (bf16 matrices, merged ones rounded back), and a
// config.json and tokenizer that load to the same model and ids.
TEST(gguf_import, merge_of_gguf_base_and_gguf_lora_equals_merge_of_the_directories) {
    const std::string dir = pt::source_path("models/tiny-llama");
    const std::string base = export_model(dir, "bf16", "merge_base");
    const std::string adapter = gguf_test_adapter(dir, "import_merge", "");
    const std::string work = pt::temp_dir("gguf_import_merge");
    pt::child_result r = pt::spawn_peft({"export", "gguf-lora", "--model", dir, "--adapter", adapter, "--out", work + "/lora.gguf"});
    ASSERT_EQ(r.code, 0) << r.out;
    r = pt::spawn_peft({"merge", "--model", base, "--adapter", work + "/lora.gguf", "--out", work + "/from_gguf"});
    ASSERT_EQ(r.code, 0) << r.out;
    r = pt::spawn_peft({"merge", "--model", dir, "--adapter", adapter, "--out", work + "/from_dir"});
    ASSERT_EQ(r.code, 0) << r.out;
    // GGUF keeps vectors F32 (export writes them so): those are the bf16 values widened
    expect_same_tensors(work + "/from_dir/model.safetensors", work + "/from_gguf/model.safetensors");
    peft::llama_hparams a, b;
    ASSERT_TRUE(peft::llama_hparams_load(dir + "/config.json", a).ok());
    status st = peft::llama_hparams_load(work + "/from_gguf/config.json", b);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(peft::llama_hparams_config_json(a, "x"), peft::llama_hparams_config_json(b, "x"));
    std::unique_ptr<peft::tokenizer> ta, tb;
    ASSERT_TRUE(peft::tokenizer::load(dir, ta).ok());
    st = peft::tokenizer::load(work + "/from_gguf", tb);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::string text = "<|begin_of_text|>Which book of the Bible is this verse from? Jesus wept.";
    EXPECT_EQ(ta->encode(text, true), tb->encode(text, true));
    EXPECT_EQ(ta->chat_template(), tb->chat_template());
    EXPECT_EQ(ta->eos_id(), tb->eos_id());
}

// peft train over the bf16 GGUF of tiny-llama trains what it trains over the directory: the same
// adapter file byte for byte; a full fine-tune writes a checkpoint (config.json and tokenizer
// made from the GGUF) with the same weights.
TEST(gguf_import, training_over_the_gguf_equals_training_over_the_directory) {
    const std::string dir = pt::source_path("models/tiny-llama");
    const std::string gguf = export_model(dir, "bf16", "train_base");
    const std::string work = pt::temp_dir("gguf_import_train");
    pt::spawn_options passive;
    passive.passive_omp = true;
    for (const char * method_c : {"lora", "full"}) {
        const std::string method = method_c;
        for (const std::string & base : {dir, gguf}) {
            const std::string out = work + "/" + method + (base == dir ? "_dir" : "_gguf");
            const pt::child_result r = pt::spawn_peft({"train", "--base_model", base, "--adapter", method, "--datasets",
                                                       pt::source_path("data/demo/train.jsonl"), "--output_dir", out, "--max_steps", "2",
                                                       "--sequence_len", "64", "--threads", "2"}, passive);
            ASSERT_EQ(r.code, 0) << r.out;
        }
        const std::string file = method == "lora" ? "/adapter_model.safetensors" : "/model.safetensors";
        expect_same_tensors(work + "/" + method + "_dir" + file, work + "/" + method + "_gguf" + file);
    }
    peft::llama_model m;
    status st = peft::llama_load(m, work + "/full_gguf", false);
    EXPECT_TRUE(st.ok()) << st.message;
    std::unique_ptr<peft::tokenizer> tok;
    st = peft::tokenizer::load(work + "/full_gguf", tok);
    EXPECT_TRUE(st.ok()) << st.message;
}
