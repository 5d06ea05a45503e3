// generation.h: what `peft generate` and `peft serve` share around the decoder: the tokens of a
// chat prompt up to the assistant's reply, the end-of-sequence ids a model directory declares,
// and the UTF-8 boundary that streamed text is held back to. Also the held-out accuracy of
// `peft eval --accuracy` (and `peft compare`): greedy answers to a data file's prompts against
// the file's own answers.
// Not here: the forward (llama_infer.h), sampling (sample.h), templates themselves (chat.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/chat.h"

namespace peft {

struct tokenizer;
struct llama_model;

// Tokens of a conversation ending where the assistant's reply starts (HF's
// add_generation_prompt=True): msgs are rendered with an empty assistant turn appended and cut
// before its first reply segment. tmpl_name: a chat.h name or "auto" (from the tokenizer);
// `where` names the input in errors. end_of_turn receives the token that ends the reply (-1 when
// the tokenizer lacks it); used: the template picked and why.
status chat_prompt(const tokenizer & tok, std::vector<chat_message> msgs, const std::string & tmpl_name, const std::string & where,
                   std::vector<int32_t> & ids, int32_t & end_of_turn, std::string & used);

// Appends eos_token_id of model_dir/generation_config.json (an int or a list), when the file exists.
void generation_config_eos(const std::string & model_dir, std::vector<int32_t> & out);

// Length of the longest prefix of s that does not end inside a UTF-8 sequence, so a streamed
// token that cuts a character is held back until the rest arrives.
size_t complete_utf8_prefix(const std::string & s);

// One question with a known answer: the prompt as `peft generate --chat` builds it (the chat
// template up to the assistant's reply) and the reply's tokens as training would score them.
struct answer_example {
    std::vector<int32_t> prompt;     // up to and including the assistant header
    std::vector<int32_t> expected;   // the reply, its end-of-turn / EOS token excluded
};

// The first reply of every alpaca / messages line of a JSONL file, rendered with the chat
// template (chat_template: a chat.h name, "" or "auto"), in file order; lines without a prompt
// or a reply ({"text"}, pre-tokenized without a masked prompt) are counted into *n_skipped.
// stops receives the end-of-turn and EOS ids that end an answer. Errors name "file:line";
// a file with no question at all is an error.
status answer_examples_load(const std::string & path, const tokenizer & tok, const std::string & chat_template, int64_t vocab_size,
                            int64_t max_len, std::vector<answer_example> & out, std::vector<int32_t> & stops, int64_t * n_skipped);

// Greedy (argmax) answers of the model as it is (m.adapters applied, unmerged), n_parallel
// sequences per batched forward (llama_infer_eval_multi). Answer i stops at any of stops (not
// included) or after expected.size() + extra_tokens tokens: an answer that runs on past its
// expected length without stopping is wrong however it starts.
status greedy_answers(const llama_model & m, const std::vector<answer_example> & ex, const std::vector<int32_t> & stops,
                      int64_t n_parallel, std::vector<std::vector<int32_t>> & answers, int64_t extra_tokens = 4);

// Accuracy's comparison: the answer's text equals the expected text, both decoded without
// special tokens and trimmed of leading and trailing white space (so "Paris" == " Paris\n",
// and a different tokenization of the same text still counts).
bool answer_matches(const tokenizer & tok, const std::vector<int32_t> & answer, const std::vector<int32_t> & expected);

struct accuracy_result {
    int64_t n = 0, n_correct = 0;
    std::vector<std::vector<int32_t>> answers;   // [n] greedy answers, for display
    std::vector<uint8_t> correct;                // [n]
    double accuracy() const { return n > 0 ? (double) n_correct / (double) n : 0.0; }
};

// greedy_answers + answer_matches over every example.
status accuracy_evaluate(const llama_model & m, const tokenizer & tok, const std::vector<answer_example> & ex,
                         const std::vector<int32_t> & stops, int64_t n_parallel, accuracy_result & out);

} // namespace peft
