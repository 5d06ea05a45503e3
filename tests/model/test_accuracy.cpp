// test_accuracy.cpp: held-out accuracy (model/generation.h) on the bundled tiny model with a
// random LoRA applied. The reference is the single-sequence greedy path of `peft generate
// --chat` (chat_prompt + llama_infer_eval + sample_argmax, one sequence at a time), written
// here independently of greedy_answers' batched loop; expected answers are the reference's own
// outputs (must count as correct) or those plus one token (must count as wrong).
#include <algorithm>
#include <fstream>

#include "adapters/adapter_set.h"
#include "core/rng.h"
#include "io/json.h"
#include "model/generation.h"
#include "model/llama.h"
#include "model/llama_infer.h"
#include "model/sample.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace peft;

namespace {

const char * const k_questions[] = {
    "Which book of the Bible is this verse from?\nJesus wept.",
    "Reverse the words: the quick brown fox",
    "What is 12 plus 30?",
    "Name a colour.",
    "In the beginning God created the heaven and the earth.",
    "Spell the word house backwards.",
    "Who wrote the Psalms?",
    "Count from one to five.",
    "Translate to French: good morning",
    "And the LORD spake unto Moses, saying,",
};
constexpr int k_n_questions = (int) (sizeof k_questions / sizeof k_questions[0]);

struct tiny_fixture {
    llama_model m;
    adapter_set aset;
    std::unique_ptr<tokenizer> tok;
};

void load_tiny(tiny_fixture & f) {
    const std::string dir = peft::testing::source_path("models/tiny-llama");
    status st = llama_load(f.m, dir, false);
    ASSERT_TRUE(st.ok()) << st.message;
    st = tokenizer::load(dir, f.tok);
    ASSERT_TRUE(st.ok()) << st.message;
    // a random LoRA so the adapter path is the one exercised and the answers vary
    const std::string cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}";
    json_document doc;
    ASSERT_TRUE(doc.parse(cfg.data(), cfg.size(), "test lora").ok());
    ASSERT_TRUE(adapters_attach(f.m, doc.root(), 7, f.aset).ok());
    adapters_set_training(f.aset, false);
    rng r(11);
    for (param_ref & p : adapter_set_params(f.aset)) {
        if (p.name.find("lora_B") == std::string::npos) continue;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        r.fill_normal(p.value, n, 0.0f, 0.05f);
    }
}

// Greedy tokens of one prompt, no stop, one sequence (the `peft generate` loop).
std::vector<int32_t> reference_greedy(const llama_model & m, const std::vector<int32_t> & prompt, int64_t n_new) {
    const int64_t V = m.hp.n_vocab;
    llama_infer_state s;
    EXPECT_TRUE(llama_infer_init(s, m, (int64_t) prompt.size() + n_new).ok());
    std::vector<float> logits((size_t) V);
    EXPECT_TRUE(llama_infer_eval(m, s, prompt.data(), (int64_t) prompt.size(), logits.data()).ok());
    std::vector<int32_t> out;
    for (int64_t i = 0; i < n_new; i++) {
        const int32_t t = sample_argmax(logits.data(), V);
        out.push_back(t);
        if (i + 1 < n_new) {
            EXPECT_TRUE(llama_infer_eval(m, s, &t, 1, logits.data()).ok());
        }
    }
    return out;
}

std::vector<int32_t> chat_tokens(const tokenizer & tok, const std::string & q) {
    std::vector<int32_t> ids;
    int32_t eot = -1;
    std::string used;
    EXPECT_TRUE(chat_prompt(tok, {{"user", q, ""}}, "auto", "test", ids, eot, used).ok());
    return ids;
}

} // namespace

TEST(accuracy, examples_are_the_chat_prompt_and_the_reply) {
    tiny_fixture f;
    load_tiny(f);
    const std::string dir = peft::testing::temp_dir("accuracy_load");
    const std::string path = dir + "/q.jsonl";
    {
        std::ofstream o(path);
        o << "{\"instruction\": \"Reverse the words: a b c\", \"output\": \"c b a\"}\n"
          << "{\"text\": \"plain text is not a question\"}\n"
          << "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a colour.\"}, {\"role\": \"assistant\", \"content\": \"red\"},"
             " {\"role\": \"user\", \"content\": \"Another?\"}, {\"role\": \"assistant\", \"content\": \"blue\"}]}\n";
    }
    std::vector<answer_example> ex;
    std::vector<int32_t> stops;
    int64_t skipped = -1;
    status st = answer_examples_load(path, *f.tok, "", f.m.hp.n_vocab, 512, ex, stops, &skipped);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(ex.size(), 2u);
    EXPECT_EQ(skipped, 1);
    EXPECT_EQ(ex[0].prompt, chat_tokens(*f.tok, "Reverse the words: a b c"));
    EXPECT_EQ(f.tok->decode(ex[0].expected, false), "c b a");   // no end-of-turn in the answer
    EXPECT_EQ(ex[1].prompt, chat_tokens(*f.tok, "Name a colour."));
    EXPECT_EQ(f.tok->decode(ex[1].expected, false), "red");     // the first reply only
    EXPECT_NE(std::find(stops.begin(), stops.end(), f.tok->token_to_id("<|eot_id|>")), stops.end());

    std::ofstream(path) << "{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
    st = answer_examples_load(path, *f.tok, "", f.m.hp.n_vocab, 512, ex, stops, &skipped);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("no question"), std::string::npos) << st.message;
}

TEST(accuracy, matching_trims_white_space_and_nothing_else) {
    tiny_fixture f;
    load_tiny(f);
    auto enc = [&](const std::string & s) { return f.tok->encode(s, false, false); };
    EXPECT_TRUE(answer_matches(*f.tok, enc(" Psalms\n"), enc("Psalms")));
    EXPECT_TRUE(answer_matches(*f.tok, enc("c b a"), enc(" c b a ")));
    EXPECT_FALSE(answer_matches(*f.tok, enc("psalms"), enc("Psalms")));
    EXPECT_FALSE(answer_matches(*f.tok, enc("c  b a"), enc("c b a")));
    EXPECT_FALSE(answer_matches(*f.tok, enc("Psalms."), enc("Psalms")));
    // a different tokenization of the same text is the same answer
    std::vector<int32_t> split;
    for (char c : std::string("Psalms")) {
        const std::vector<int32_t> one = enc(std::string(1, c));
        split.insert(split.end(), one.begin(), one.end());
    }
    ASSERT_NE(split, enc("Psalms"));
    EXPECT_TRUE(answer_matches(*f.tok, split, enc("Psalms")));
}

TEST(accuracy, batched_greedy_equals_one_at_a_time_and_scores_exactly) {
    tiny_fixture f;
    load_tiny(f);
    const int64_t n_ref = 24;
    std::vector<std::vector<int32_t>> prompts, refs;
    for (int i = 0; i < k_n_questions; i++) {
        prompts.push_back(chat_tokens(*f.tok, k_questions[i]));
        refs.push_back(reference_greedy(f.m, prompts.back(), n_ref));
    }
    // Stop tokens: per question, the first token of its reference that did not occur before
    // position 2..8; every answer then ends at the first stop token of its reference.
    std::vector<int32_t> stops;
    for (const std::vector<int32_t> & r : refs) {
        for (int k = 2; k <= 8; k++) {
            if (std::find(r.begin(), r.begin() + k, r[(size_t) k]) == r.begin() + k) {
                if (std::find(stops.begin(), stops.end(), r[(size_t) k]) == stops.end()) stops.push_back(r[(size_t) k]);
                break;
            }
        }
    }
    ASSERT_GE(stops.size(), 3u);
    std::vector<answer_example> ex;
    std::vector<uint8_t> want_correct;
    const int32_t extra = f.tok->encode("zz", false, false)[0];
    int n_stopped = 0;
    for (int i = 0; i < k_n_questions; i++) {
        const std::vector<int32_t> & r = refs[(size_t) i];
        const auto stop_at = std::find_first_of(r.begin(), r.end(), stops.begin(), stops.end());
        ASSERT_LT(stop_at - r.begin(), n_ref - 4) << "question " << i << " must stop inside the reference";
        n_stopped += stop_at != r.end();
        answer_example e;
        e.prompt = prompts[(size_t) i];
        e.expected.assign(r.begin(), stop_at);
        if (i % 2) e.expected.push_back(extra);   // one token more: a wrong expected answer
        want_correct.push_back(i % 2 == 0);
        ex.push_back(std::move(e));
    }
    ASSERT_EQ(n_stopped, k_n_questions);
    for (int64_t parallel : {1, 3, 16}) {
        accuracy_result ar;
        status st = accuracy_evaluate(f.m, *f.tok, ex, stops, parallel, ar);
        ASSERT_TRUE(st.ok()) << st.message;
        EXPECT_EQ(ar.n, k_n_questions);
        EXPECT_EQ(ar.n_correct, (k_n_questions + 1) / 2) << "parallel " << parallel;
        EXPECT_EQ(ar.correct, want_correct) << "parallel " << parallel;
        for (int i = 0; i < k_n_questions; i++) {
            const std::vector<int32_t> & r = refs[(size_t) i];
            const std::vector<int32_t> want(r.begin(), std::find_first_of(r.begin(), r.end(), stops.begin(), stops.end()));
            EXPECT_EQ(ar.answers[(size_t) i], want) << "question " << i << " parallel " << parallel;
        }
    }
    // without stops an answer runs to expected + 4 tokens: the reference's prefix, and wrong
    std::vector<std::vector<int32_t>> answers;
    ASSERT_TRUE(greedy_answers(f.m, ex, {}, 4, answers).ok());
    for (int i = 0; i < k_n_questions; i++) {
        const std::vector<int32_t> & r = refs[(size_t) i];
        ASSERT_EQ(answers[(size_t) i].size(), ex[(size_t) i].expected.size() + 4);
        EXPECT_TRUE(std::equal(answers[(size_t) i].begin(), answers[(size_t) i].end(), r.begin())) << "question " << i;
    }
}
