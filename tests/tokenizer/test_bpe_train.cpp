// test_bpe_train.cpp: the byte-level BPE trainer (tokenizer/bpe_train.h): its files load with
// tokenizer::load and round-trip any text, merges shorten encodings, training is deterministic
// and equal to a naive recount-every-merge reference, bad input gives clear statuses.
// Moby Dick (scripts/fetch_assets.sh) adds a speed check when present; skipped otherwise.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "testing.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/chat.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"

using namespace peft;

namespace {

// A small varied corpus: English sentences, numbers, punctuation, whitespace runs, non-ASCII.
std::string corpus(int reps) {
    const char * lines[] = {
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,",
        "and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.",
        "In the beginning God created the heaven and the earth. And the earth was without form, and void;",
        "The hacker's cruft was crufty: 1234 lines, 56.7% comments, and   three   spaces.\n\n",
        "Don't panic! It's 42, isn't it? We'll see; they'd know, you're right, I've seen, I'm sure.",
        "Caf\xC3\xA9 cr\xC3\xA8me br\xC3\xBBl\xC3\xA9" "e, na\xC3\xAFve fa\xC3\xA7" "ade \xE2\x80\x94 \xE2\x80\x9Cquoted\xE2\x80\x9D text.",
        "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xF0\x9F\x98\x80 emoji\ttab\r\nline",
    };
    std::string s;
    for (int r = 0; r < reps; ++r) {
        for (const char * l : lines) {
            s += l;
            s += (r % 3 == 0) ? "\n" : " ";
        }
        s += "Verse " + std::to_string(r) + ": the whale, the sea, the ship.\n";
    }
    return s;
}

std::string read_all(const std::string & p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string write_text(const std::string & dir, const std::string & name, const std::string & text) {
    const std::string p = dir + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
}

std::unique_ptr<tokenizer> train_and_load(const std::vector<std::string> & texts, const bpe_train_options & opt,
                                          const std::string & dir, bpe_train_result & r) {
    EXPECT_TRUE(bpe_train_texts(texts, opt, r).ok());
    const status st = bpe_write_dir(dir, r, opt);
    EXPECT_TRUE(st.ok()) << st.message;
    std::unique_ptr<tokenizer> tok;
    const status ls = tokenizer::load(dir, tok);
    EXPECT_TRUE(ls.ok()) << ls.message;
    return tok;
}

} // namespace

TEST(bpe_train, loads_and_round_trips) {
    bpe_train_options opt;
    opt.vocab_size = 500;  // the corpus runs out of pairs at 562
    bpe_train_result r;
    const std::string dir = peft::testing::temp_dir("bpe_train_rt");
    auto tok = train_and_load({corpus(40)}, opt, dir, r);
    ASSERT_TRUE(tok);
    EXPECT_EQ(tok->kind(), PEFT_TOKENIZER_BPE_BYTE_LEVEL);
    EXPECT_TRUE(tok->lossless());
    EXPECT_EQ((size_t) tok->n_vocab(), r.vocab.size());
    EXPECT_EQ(tok->n_vocab(), 500);
    const std::vector<std::string> cases = {
        "",
        "Hello world!",
        "Call me Ishmael.",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\r\n\n\nend",
        "numbers 1234567890 and 3.14159",
        "Unicode: \xC3\xA9\xC3\xA8\xC3\xAA \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
        "never seen: Zyzzyva qoph \xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xD8\xB3\xD9\x84\xD8\xA7\xD9\x85",
        "control \x01\x02\x7f bytes",
        "<|eot_id|> is special, <|eot_id is not",
    };
    for (const std::string & s : cases) {
        const std::vector<int32_t> ids = tok->encode(s, false, false);
        EXPECT_EQ(tok->decode(ids), s) << "case: " << s;
        for (int32_t id : ids) EXPECT_FALSE(tok->is_special(id)) << s;
    }
    // Every byte alone is a token.
    for (int b = 1; b < 256; ++b) {
        if (b >= 0x80) continue;  // lone high bytes are not valid UTF-8 text
        const std::string s(1, (char) b);
        const std::vector<int32_t> ids = tok->encode(s, false, false);
        ASSERT_EQ(ids.size(), 1u) << b;
        EXPECT_EQ(tok->decode(ids), s);
    }
}

TEST(bpe_train, special_tokens_and_template) {
    bpe_train_options opt;
    opt.vocab_size = 400;
    opt.extra_special = {"<|tool|>"};
    bpe_train_result r;
    const std::string dir = peft::testing::temp_dir("bpe_train_special");
    auto tok = train_and_load({corpus(10)}, opt, dir, r);
    ASSERT_TRUE(tok);
    EXPECT_EQ(r.n_special, 7);
    EXPECT_EQ(tok->n_vocab(), 400);
    EXPECT_EQ(tok->bos_id(), tok->token_to_id("<|begin_of_text|>"));
    EXPECT_EQ(tok->eos_id(), tok->token_to_id("<|end_of_text|>"));
    EXPECT_EQ(tok->pad_id(), tok->token_to_id("<|finetune_right_pad_id|>"));
    EXPECT_EQ(tok->bos_id(), r.bos_id);
    EXPECT_GE(tok->bos_id(), 400 - 7);
    for (const char * s : {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|tool|>"}) {
        const int32_t id = tok->token_to_id(s);
        ASSERT_GE(id, 0) << s;
        EXPECT_TRUE(tok->is_special(id)) << s;
        EXPECT_EQ(tok->encode(s, false, true), std::vector<int32_t>{id}) << s;
    }
    // BOS from the post-processor.
    const std::vector<int32_t> with_bos = tok->encode("the whale", true);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], tok->bos_id());
    EXPECT_EQ(tok->decode(with_bos, true), "the whale");
    // The chat template is the one the data loader recognises.
    chat_template_kind k = PEFT_CHAT_COUNT;
    ASSERT_TRUE(chat_template_detect(tok->chat_template(), k));
    EXPECT_EQ(k, PEFT_CHAT_LLAMA3);

    bpe_train_options copt;
    copt.vocab_size = 400;
    copt.family = PEFT_BPE_FAMILY_CHATML;
    bpe_train_result cr;
    const std::string cdir = peft::testing::temp_dir("bpe_train_chatml");
    auto ctok = train_and_load({corpus(10)}, copt, cdir, cr);
    ASSERT_TRUE(ctok);
    ASSERT_TRUE(chat_template_detect(ctok->chat_template(), k));
    EXPECT_EQ(k, PEFT_CHAT_CHATML);
    EXPECT_EQ(ctok->bos_id(), -1);
    EXPECT_EQ(ctok->eos_id(), ctok->token_to_id("<|endoftext|>"));
    EXPECT_EQ(ctok->encode("hi", true), ctok->encode("hi", false));  // no BOS
}

TEST(bpe_train, merges_shorten_encodings) {
    bpe_train_options opt;
    opt.vocab_size = 540;
    bpe_train_result r;
    const std::string text = corpus(60);
    const std::string dir = peft::testing::temp_dir("bpe_train_short");
    auto tok = train_and_load({text}, opt, dir, r);
    ASSERT_TRUE(tok);
    const std::vector<int32_t> ids = tok->encode(text, false, false);
    EXPECT_LT(ids.size() * 3, text.size()) << "tokens " << ids.size() << " bytes " << text.size();
    // The most common words of the corpus became single tokens.
    for (const char * w : {" the", " whale", " Ishmael"}) EXPECT_EQ(tok->encode(w, false, false).size(), 1u) << w;
    // Merged tokens are the concatenation of their parts.
    for (size_t i = 0; i < r.merge_left.size(); ++i) {
        EXPECT_EQ(r.vocab[256 + i], r.vocab[(size_t) r.merge_left[i]] + r.vocab[(size_t) r.merge_right[i]]);
    }
}

TEST(bpe_train, deterministic_bytes) {
    bpe_train_options opt;
    opt.vocab_size = 700;
    const std::string text = corpus(30);
    std::string files[2][3];
    for (int run = 0; run < 2; ++run) {
        bpe_train_result r;
        ASSERT_TRUE(bpe_train_texts({text, "second document"}, opt, r).ok());
        files[run][0] = bpe_tokenizer_json(r, opt);
        files[run][1] = bpe_tokenizer_config_json(r, opt);
        files[run][2] = bpe_special_tokens_map_json(r);
    }
    for (int f = 0; f < 3; ++f) EXPECT_EQ(files[0][f], files[1][f]) << f;
    // Also through the files on disk.
    const std::string d1 = peft::testing::temp_dir("bpe_train_det1"), d2 = peft::testing::temp_dir("bpe_train_det2");
    const std::string in = write_text(d1, "in.txt", text);
    for (const std::string & d : {d1, d2}) {
        bpe_train_result r;
        ASSERT_TRUE(bpe_train_files({in}, opt, r).ok());
        ASSERT_TRUE(bpe_write_dir(d + "/tok", r, opt).ok());
    }
    for (const char * f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
        EXPECT_EQ(read_all(d1 + "/tok/" + f), read_all(d2 + "/tok/" + f)) << f;
    }
}

// The incremental trainer must learn exactly the merges a naive trainer (recount every pair of
// every word before each merge, same tie rule) learns.
TEST(bpe_train, equals_naive_reference) {
    bpe_train_options opt;
    opt.vocab_size = 256 + 6 + 150;
    // Runs of one symbol and repeats (overlapping pairs: "aaaa" holds aa three times) test the
    // count updates around adjacent merges.
    const std::string text = corpus(7) + "aaaaaaa aaaa aa aaa ==========  =====\n\n\n\n ----- abab ababab aaabaaab";
    bpe_train_result r;
    ASSERT_TRUE(bpe_train_texts({text}, opt, r).ok());

    int32_t byte_id[256];
    for (int i = 0; i < 256; ++i) byte_id[(unsigned char) r.vocab[(size_t) i][0]] = i;
    std::shared_ptr<pretok_regex> re;
    ASSERT_TRUE(pretok_regex_compile(BPE_LLAMA3_PATTERN, false, "test", re).ok());
    std::vector<size_t> bounds;
    pretok_split_ranges(*re, text, bounds);
    std::vector<std::vector<int32_t>> words;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
        std::vector<int32_t> w;
        for (size_t k = bounds[i]; k < bounds[i + 1]; ++k) w.push_back(byte_id[(unsigned char) text[k]]);
        if (!w.empty()) words.push_back(w);
    }
    std::vector<std::pair<int32_t, int32_t>> naive;
    int32_t next = 256;
    while ((int) naive.size() < 150) {
        std::map<std::pair<int32_t, int32_t>, int64_t> cnt;
        for (const auto & w : words) for (size_t i = 0; i + 1 < w.size(); ++i) ++cnt[{w[i], w[i + 1]}];
        std::pair<int32_t, int32_t> best{-1, -1};
        int64_t bc = 0;
        for (const auto & [p, c] : cnt) if (c > bc) { bc = c; best = p; }  // map order: smallest pair wins ties
        if (bc < 2) break;
        naive.push_back(best);
        for (auto & w : words) {
            std::vector<int32_t> o;
            for (size_t i = 0; i < w.size();) {
                if (i + 1 < w.size() && w[i] == best.first && w[i + 1] == best.second) { o.push_back(next); i += 2; }
                else o.push_back(w[i++]);
            }
            w.swap(o);
        }
        ++next;
    }
    ASSERT_EQ(naive.size(), r.merge_left.size());
    for (size_t i = 0; i < naive.size(); ++i) {
        EXPECT_EQ(naive[i].first, r.merge_left[i]) << "merge " << i;
        EXPECT_EQ(naive[i].second, r.merge_right[i]) << "merge " << i;
    }
}

TEST(bpe_train, bad_input) {
    bpe_train_options opt;
    bpe_train_result r;
    status st = bpe_train_files({"/nonexistent/dir/corpus.txt"}, opt, r);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    EXPECT_NE(st.message.find("/nonexistent/dir/corpus.txt"), std::string::npos) << st.message;

    st = bpe_train_files({}, opt, r);
    EXPECT_EQ(st.code, PEFT_STATUS_ARGUMENT);

    opt.vocab_size = 256 + 5;  // one short of the 6 llama3 special tokens
    st = bpe_train_texts({"some text"}, opt, r);
    EXPECT_EQ(st.code, PEFT_STATUS_ARGUMENT);
    EXPECT_NE(st.message.find("vocab_size"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("262"), std::string::npos) << st.message;

    opt.vocab_size = 300;
    const std::string dir = peft::testing::temp_dir("bpe_train_bad");
    const std::string empty = write_text(dir, "empty.txt", "");
    st = bpe_train_files({empty}, opt, r);
    EXPECT_EQ(st.code, PEFT_STATUS_ARGUMENT);
    EXPECT_NE(st.message.find("empty"), std::string::npos) << st.message;

    opt.extra_special = {""};
    st = bpe_train_texts({"text"}, opt, r);
    EXPECT_EQ(st.code, PEFT_STATUS_ARGUMENT);

    bpe_train_family f;
    EXPECT_EQ(bpe_train_family_from_name("llama2", f).code, PEFT_STATUS_ARGUMENT);

    // Invalid UTF-8 is repaired and counted, not fatal; a tiny corpus stops early with a reason.
    bpe_train_options o2;
    o2.vocab_size = 5000;
    ASSERT_TRUE(bpe_train_texts({std::string("ab\xFF" "ab\xC3", 6)}, o2, r).ok());
    EXPECT_EQ(r.n_replaced_chars, 2);
    EXPECT_LT((int) r.vocab.size(), 5000);
    EXPECT_FALSE(r.stop_reason.empty());
}

TEST(bpe_train, moby_dick_speed) {
    const char * env = std::getenv("PEFT_ASSET_DIR");
    const char * home = std::getenv("HOME");
    const std::string path = (env ? std::string(env) : std::string(home ? home : "") + "/.cache/peft-assets") + "/moby_dick.txt";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " missing (run scripts/fetch_assets.sh)";
    bpe_train_options opt;
    opt.vocab_size = 4096;
    bpe_train_result r;
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(bpe_train_files({path}, opt, r).ok());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.vocab.size(), 4096u);
    // ~1.2 MB: a few seconds at most even in a Debug build on a shared machine.
    EXPECT_LT(s, 30.0);
    std::printf("moby dick: %lld bytes, %lld unique words, count %.3f s, merges %.3f s\n", (long long) r.n_bytes,
                (long long) r.n_unique_words, r.seconds_count, r.seconds_merge);
}
