// test_data.cpp: the data pipeline (train/data.h) on a tiny synthetic byte-level tokenizer with
// Llama 3 and ChatML marker tokens: sample shapes, prompt masking, templates, packing with
// segment/position ids, padding, shuffling, held-out split, truncation and bad input.
#include <fstream>

#include "io/json.h"
#include "testing.h"
#include "tokenizer/chat.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

using namespace peft;

namespace {


// A tokenizer directory: 256 byte tokens, no merges, the Llama 3 markers as special tokens.
std::string make_tokenizer_dir(const std::string & name, const std::string & chat_template) {
    const std::string dir = peft::testing::temp_dir(name);
    peft::testing::write_byte_tokenizer(dir, peft::testing::LLAMA3_MARKERS, /*bos_template=*/true);
    std::ofstream(dir + "/tokenizer_config.json") << "{\"bos_token\":\"<|begin_of_text|>\",\"eos_token\":\"<|end_of_text|>\",\"chat_template\":"
                                                  << json_quote(chat_template) << "}";
    return dir;
}

std::unique_ptr<tokenizer> load_tok(const std::string & chat_template = "") {
    std::unique_ptr<tokenizer> t;
    const status st = tokenizer::load(make_tokenizer_dir("data_tok", chat_template), t);
    EXPECT_TRUE(st.ok()) << st.message;
    return t;
}

std::string write_file(const std::string & name, const std::string & body) {
    const std::string path = peft::testing::temp_dir("data_files") + "/" + name;
    std::ofstream(path, std::ios::binary) << body;
    return path;
}

// The labelled tokens of row r, decoded.
std::string labelled_text(const tokenizer & tok, const data_rows & rows, int64_t r) {
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < rows.T; ++t) {
        const int32_t l = rows.labels[(size_t) (r * rows.T + t)];
        if (l != -100) ids.push_back(l);
    }
    return tok.decode(ids);
}

std::string row_text(const tokenizer & tok, const data_rows & rows, int64_t r) {
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < rows.T; ++t) {
        if (rows.segment_ids[(size_t) (r * rows.T + t)] != 0) ids.push_back(rows.input_ids[(size_t) (r * rows.T + t)]);
    }
    return tok.decode(ids);
}

data_options no_shuffle(int64_t T, bool pack = false) {
    data_options o;
    o.max_len = T;
    o.pack = pack;
    o.shuffle = false;
    return o;
}

} // namespace

TEST(data, chat_llama3_masks_the_prompt) {
    auto tok = load_tok();
    const std::string path = write_file("chat.jsonl",
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"}]}\n");
    dataset ds;
    const status st = dataset_load(path, *tok, no_shuffle(128), ds);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(ds.template_name, "llama3");  // auto: the tokenizer has the Llama 3 header tokens
    ASSERT_EQ(ds.train.n_rows, 1);
    EXPECT_EQ(row_text(*tok, ds.train, 0),
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>");
    EXPECT_EQ(labelled_text(*tok, ds.train, 0), "Hello!<|eot_id|>");
    // Unshifted labels: where labelled, labels == input_ids.
    for (size_t i = 0; i < ds.train.labels.size(); ++i) {
        if (ds.train.labels[i] != -100) { EXPECT_EQ(ds.train.labels[i], ds.train.input_ids[i]); }
    }

    data_options all = no_shuffle(128);
    all.train_on_inputs = true;
    ASSERT_TRUE(dataset_load(path, *tok, all, ds).ok());
    // Everything but the first token is trained.
    EXPECT_EQ(ds.n_label_tokens, ds.n_tokens - 1);
}

TEST(data, alpaca_text_and_pretokenized_shapes) {
    auto tok = load_tok();
    const std::string path = write_file("mixed.jsonl",
        "{\"instruction\":\"Add\",\"input\":\"2+2\",\"output\":\"4\"}\n"
        "\n"
        "{\"text\":\"plain words\"}\n"
        "{\"input_ids\":[10,11,12,13],\"labels\":[-100,-100,12,13]}\n");
    data_options o = no_shuffle(512);
    o.chat_template = "alpaca";
    dataset ds;
    const status st = dataset_load(path, *tok, o, ds);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(ds.train.n_rows, 3);
    EXPECT_EQ(row_text(*tok, ds.train, 0),
              "<|begin_of_text|>Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd\n\n### Input:\n2+2\n\n### Response:\n4<|end_of_text|>");
    EXPECT_EQ(labelled_text(*tok, ds.train, 0), "4<|end_of_text|>");
    EXPECT_EQ(row_text(*tok, ds.train, 1), "<|begin_of_text|>plain words<|end_of_text|>");
    EXPECT_EQ(labelled_text(*tok, ds.train, 1), "plain words<|end_of_text|>");
    const int64_t T = ds.train.T;
    EXPECT_EQ(ds.train.labels[(size_t) (2 * T + 1)], -100);
    EXPECT_EQ(ds.train.labels[(size_t) (2 * T + 2)], 12);
    EXPECT_EQ(ds.train.input_ids[(size_t) (2 * T + 4)], tok->eos_id());  // padding = EOS (no pad token)
    EXPECT_EQ(ds.train.segment_ids[(size_t) (2 * T + 4)], 0);
}

TEST(data, packing_restarts_positions_and_numbers_segments) {
    auto tok = load_tok();
    std::string body;
    for (int i = 0; i < 10; ++i) body += "{\"text\":\"sample " + std::to_string(i) + "\"}\n";  // 10 tokens each with BOS/EOS
    const std::string path = write_file("pack.jsonl", body);
    dataset ds;
    ASSERT_TRUE(dataset_load(path, *tok, no_shuffle(32, true), ds).ok());
    // 3 samples of 10 fit a row of 32: 4 rows.
    ASSERT_EQ(ds.train.n_rows, 4);
    const data_rows & r = ds.train;
    for (int64_t row = 0; row < r.n_rows; ++row) {
        int32_t prev_seg = 0;
        for (int64_t t = 0; t < r.T; ++t) {
            const size_t i = (size_t) (row * r.T + t);
            const int32_t seg = r.segment_ids[i];
            if (seg == 0) { EXPECT_EQ(r.labels[i], -100); continue; }
            if (seg != prev_seg) {
                EXPECT_EQ(seg, prev_seg + 1);
                EXPECT_EQ(r.position_ids[i], 0);
                EXPECT_EQ(r.labels[i], -100);  // first token of a sample is never a target
                EXPECT_EQ(r.input_ids[i], tok->bos_id());
            } else {
                EXPECT_EQ(r.position_ids[i], r.position_ids[i - 1] + 1);
            }
            prev_seg = seg;
        }
    }
    EXPECT_EQ(ds.n_tokens, 100);
    // Padding mode: one sample per row.
    ASSERT_TRUE(dataset_load(path, *tok, no_shuffle(32, false), ds).ok());
    EXPECT_EQ(ds.train.n_rows, 10);
}

TEST(data, shuffle_is_deterministic_and_held_out_split) {
    auto tok = load_tok();
    std::string body;
    for (int i = 0; i < 20; ++i) body += "{\"text\":\"s" + std::to_string(i) + "\"}\n";
    const std::string path = write_file("shuf.jsonl", body);
    data_options o;
    o.max_len = 16;
    o.pack = false;
    o.seed = 7;
    dataset a, b, c;
    ASSERT_TRUE(dataset_load(path, *tok, o, a).ok());
    ASSERT_TRUE(dataset_load(path, *tok, o, b).ok());
    o.seed = 8;
    ASSERT_TRUE(dataset_load(path, *tok, o, c).ok());
    EXPECT_EQ(a.train.input_ids, b.train.input_ids);
    EXPECT_NE(a.train.input_ids, c.train.input_ids);
    o.held_out_fraction = 0.25;
    ASSERT_TRUE(dataset_load(path, *tok, o, a).ok());
    EXPECT_EQ(a.n_held_out_samples, 5);
    EXPECT_EQ(a.held_out.n_rows, 5);
    EXPECT_EQ(a.train.n_rows, 15);
}

TEST(data, long_samples_are_truncated_with_a_count) {
    auto tok = load_tok();
    const std::string path = write_file("long.jsonl", "{\"text\":\"" + std::string(100, 'x') + "\"}\n{\"text\":\"ok\"}\n");
    dataset ds;
    ASSERT_TRUE(dataset_load(path, *tok, no_shuffle(16), ds).ok());
    EXPECT_EQ(ds.n_truncated, 1);
    ASSERT_EQ(ds.warnings.size(), 1u);
    EXPECT_NE(ds.warnings[0].find("truncated"), std::string::npos);
}

TEST(data, txt_file_is_cut_into_rows) {
    auto tok = load_tok();
    const std::string path = write_file("corpus.txt", std::string(70, 'y'));
    dataset ds;
    ASSERT_TRUE(dataset_load(path, *tok, no_shuffle(32, true), ds).ok());
    EXPECT_EQ(ds.n_truncated, 0);
    EXPECT_EQ(ds.n_tokens, 72);  // BOS + 70 + EOS
}

TEST(data, template_picked_from_tokenizer_config) {
    auto tok = load_tok("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}");
    int tmpl = -1;
    std::string why;
    ASSERT_TRUE(data_pick_template(*tok, data_options{}, tmpl, why).ok());
    EXPECT_EQ(tmpl, PEFT_CHAT_CHATML);
    // ChatML needs <|im_start|>, which this tokenizer lacks: a clear error, not a crash.
    const std::string path = write_file("c.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\n");
    dataset ds;
    const status st = dataset_load(path, *tok, no_shuffle(64), ds);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.message.find("<|im_start|>"), std::string::npos) << st.message;
}

TEST(data, bad_input_names_file_and_line) {
    auto tok = load_tok();
    struct bad_case { const char * body; const char * needle; };
    const bad_case cases[] = {
        {"{\"text\":\"ok\"}\n{\"text\": oops}\n", ":2"},
        {"{\"messages\":[{\"role\":\"user\"}]}\n", "content"},
        {"{\"text\":42}\n", "\"text\""},
        {"{\"messages\":\"hi\"}\n", "messages"},
        {"{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"y\"}]}\n", "robot"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n", "assistant"},
        {"{\"input_ids\":[1,2,99999]}\n", "input_ids[2]"},
        {"{\"input_ids\":[1,2],\"labels\":[1]}\n", "labels"},
        {"{\"foo\":1}\n", "no known fields"},
        {"[1,2]\n", "object"},
        {"{\"text\":\"bad \xff byte\"}\n", "UTF-8"},
        {"", "no scored tokens"},
        {"\n\n", "no scored tokens"},
    };
    for (const bad_case & c : cases) {
        const std::string path = write_file("bad.jsonl", c.body);
        dataset ds;
        const status st = dataset_load(path, *tok, no_shuffle(64), ds);
        EXPECT_FALSE(st.ok()) << c.body;
        EXPECT_NE(st.message.find("bad.jsonl"), std::string::npos) << st.message;
        EXPECT_NE(st.message.find(c.needle), std::string::npos) << "want \"" << c.needle << "\" in: " << st.message;
    }
    // Unknown template and unreadable file.
    data_options o = no_shuffle(64);
    o.chat_template = "vicuna";
    dataset ds;
    status st = dataset_load(write_file("ok.jsonl", "{\"text\":\"a b\"}\n"), *tok, o, ds);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.message.find("vicuna"), std::string::npos);
    st = dataset_load("/nonexistent/data.jsonl", *tok, no_shuffle(64), ds);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    EXPECT_NE(st.message.find("/nonexistent/data.jsonl"), std::string::npos);
}

TEST(data, skip_bad_lines_counts_them) {
    auto tok = load_tok();
    const std::string path = write_file("skip.jsonl", "{\"text\":\"good one\"}\nnot json\n{\"text\":3}\n{\"text\":\"good two\"}\n");
    data_options o = no_shuffle(64);
    o.skip_bad_lines = true;
    dataset ds;
    const status st = dataset_load(path, *tok, o, ds);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(ds.n_skipped_lines, 2);
    EXPECT_EQ(ds.n_samples, 2);
    ASSERT_FALSE(ds.warnings.empty());
    EXPECT_NE(ds.warnings[0].find("2 bad lines"), std::string::npos);
    // All bad: still an error, with the count.
    const status st2 = dataset_load(write_file("allbad.jsonl", "x\ny\n"), *tok, o, ds);
    EXPECT_FALSE(st2.ok());
    EXPECT_NE(st2.message.find("2 bad lines"), std::string::npos) << st2.message;
}

TEST(data, chat_templates_render_known_text) {
    const std::vector<chat_message> conv = {{"system", "S", ""}, {"user", "U", ""}, {"assistant", "A", ""}};
    auto flat = [](const std::vector<chat_segment> & segs, bool train_only) {
        std::string s;
        for (const chat_segment & g : segs) if (!train_only || g.trainable) s += g.text;
        return s;
    };
    std::vector<chat_segment> segs;
    ASSERT_TRUE(chat_render(PEFT_CHAT_CHATML, conv, "", "", "t", segs).ok());
    EXPECT_EQ(flat(segs, false), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
    EXPECT_EQ(flat(segs, true), "A<|im_end|>");
    ASSERT_TRUE(chat_render(PEFT_CHAT_LLAMA2, conv, "<s>", "</s>", "t", segs).ok());
    EXPECT_EQ(flat(segs, false), "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A </s>");
    EXPECT_EQ(flat(segs, true), " A </s>");
    chat_template_kind k;
    EXPECT_FALSE(chat_template_from_name("nope", k).ok());
    EXPECT_TRUE(chat_template_detect("{{ '[INST] ' + m + ' [/INST]' }}", k));
    EXPECT_EQ(k, PEFT_CHAT_LLAMA2);
}

// prompt_mask (read by prompt-routed adapters): the tokens before a sample's first trained
// segment, whatever train_on_inputs says; the leading -100 labels of pre-tokenized samples;
// nothing for text. Packed samples keep their own masks.
TEST(data, prompt_mask_marks_each_samples_prompt) {
    auto tok = load_tok();
    const std::string path = write_file("prompt.jsonl",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Yo\"}]}\n"
        "{\"input_ids\":[10,11,12,13],\"labels\":[-100,-100,12,13]}\n"
        "{\"text\":\"ab\"}\n");
    for (bool train_inputs : {false, true}) {
        data_options o = no_shuffle(128, true);
        o.train_on_inputs = train_inputs;
        dataset ds;
        ASSERT_TRUE(dataset_load(path, *tok, o, ds).ok());
        ASSERT_EQ(ds.train.n_rows, 1);
        const data_rows & r = ds.train;
        ASSERT_EQ(r.prompt_mask.size(), r.input_ids.size());
        std::vector<int32_t> prompt_ids[4];
        for (size_t i = 0; i < r.input_ids.size(); ++i) {
            if (r.prompt_mask[i]) prompt_ids[r.segment_ids[i]].push_back(r.input_ids[i]);
        }
        EXPECT_EQ(tok->decode(prompt_ids[1]), "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                                              "<|start_header_id|>assistant<|end_header_id|>\n\n") << train_inputs;
        EXPECT_EQ(prompt_ids[2], (std::vector<int32_t>{10, 11}));
        EXPECT_TRUE(prompt_ids[3].empty());
        for (size_t i = 0; i < r.input_ids.size(); ++i) {
            if (r.segment_ids[i] == 0) EXPECT_EQ(r.prompt_mask[i], 0);
        }
    }
}
