// data.h: training data -> fixed-length token rows for the trainer.
// Input: JSONL with one sample per line, in any of these shapes (mixing them is allowed):
//   {"text": "..."}                                      all tokens trained
//   {"instruction": "...", "input": "...", "output": "..."}   alpaca; input optional
//   {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}   chat
//   {"input_ids": [...], "labels": [...]}                pre-tokenized; labels optional
// or a plain .txt file (one document, cut into consecutive rows).
// Chat and alpaca samples are rendered by a named template (tokenizer/chat.h): `chat_template`
// if set, else the one tokenizer_config.json's chat_template matches, else by the tokenizer's
// special tokens. Prompts are masked (labels -100) unless train_on_inputs.
//
// LABELS ARE NOT SHIFTED (Hugging Face convention): labels[t] is the target for the token AT
// position t, i.e. labels[t] == input_ids[t] or -100. The trainer predicts labels[t+1] from the
// logits at t. The first token of every packed sample has label -100, so a shift never makes a
// sample's first token the target of the previous sample's last token.
//
// Rows: `n_rows` rows of T tokens, row-major [n_rows, T] in each array.
//   segment_ids: 1, 2, 3 ... per sample within a row; 0 = padding. Attention must stay within
//                equal segment ids (packed samples do not see each other).
//   position_ids: restart at 0 for each sample; 0 on padding.
//   prompt_mask: 1 on a sample's prompt (the tokens before its first trained segment: system,
//                user and template tokens up to the reply; with labels given, the leading -100
//                run), whatever train_on_inputs says; 0 elsewhere. Prompt-routed adapters
//                (milora_moe) route each sample from these tokens. {"text"} samples have none.
// Padding uses pad_id (the tokenizer's pad, else its EOS, else 0) with labels -100.
// Not here: batching and label shifting (trainer), tokenization itself (tokenizer/).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct tokenizer;

struct data_options {
    int64_t max_len = 2048;          // T
    bool pack = true;                // false: one sample per row, padded to T
    bool train_on_inputs = false;    // true: prompt tokens are trained too
    std::string chat_template;       // "" = auto; else llama3|chatml|llama2|alpaca|plain
    bool add_eos_to_text = true;     // {"text"} and .txt samples end with EOS
    bool shuffle = true;
    uint64_t seed = 42;
    double held_out_fraction = 0.0;  // of samples, taken after shuffling; at least one when > 0
    bool skip_bad_lines = false;     // count and skip malformed lines instead of failing
    int64_t vocab_size = 0;          // pre-tokenized ids must be below it: the model's vocab_size,
                                     // which may exceed the tokenizer's size (padded vocabularies);
                                     // 0 = the tokenizer's size
    int64_t max_bytes = (int64_t) 1 << 32;  // refuse larger input files
};

// Tokens of one sample before packing; labels unshifted, -100 = masked.
struct data_sample {
    std::vector<int32_t> input_ids;
    std::vector<int32_t> labels;
    int64_t              prompt_len = 0;   // leading prompt tokens (see prompt_mask above)
};

struct data_rows {
    int64_t T = 0;
    int64_t n_rows = 0;
    std::vector<int32_t> input_ids;     // [n_rows, T]
    std::vector<int32_t> labels;        // [n_rows, T], -100 = no loss
    std::vector<int32_t> position_ids;  // [n_rows, T]
    std::vector<int32_t> segment_ids;   // [n_rows, T], 0 = padding
    std::vector<uint8_t> prompt_mask;   // [n_rows, T], or empty (rows made without one: no prompt marked)
};

struct dataset {
    data_rows train;
    data_rows held_out;
    std::string template_name;          // the chat template used ("" when none was needed)
    int64_t n_samples = 0;              // accepted samples (train + held out)
    int64_t n_held_out_samples = 0;
    int64_t n_skipped_lines = 0;        // with skip_bad_lines
    int64_t n_truncated = 0;            // samples cut to max_len
    int64_t n_tokens = 0;               // non-padding tokens in all rows
    int64_t n_label_tokens = 0;         // tokens with a label
    std::vector<std::string> warnings;  // one line each, e.g. "12 samples longer than 2048 tokens were truncated"
};

// Loads a .jsonl/.json-lines or .txt file. Errors name "file:line" and the field.
status dataset_load(const std::string & path, const tokenizer & tok, const data_options & opt, dataset & out);

// Parses one JSONL line into a sample (the fuzzable unit). `where` is "file:line".
// tmpl is the chat template kind (tokenizer/chat.h) for chat and alpaca lines.
status data_parse_line(const std::string & line, const std::string & where, const tokenizer & tok,
                       const data_options & opt, int tmpl, data_sample & out);

// Packs (or pads) samples into rows of opt.max_len; counts truncations into *n_truncated.
void data_build_rows(const std::vector<data_sample> & samples, const data_options & opt, int32_t pad_id,
                     data_rows & out, int64_t * n_truncated);

// The chat template for this tokenizer and options (see the file comment); status on unknown name.
status data_pick_template(const tokenizer & tok, const data_options & opt, int & tmpl, std::string & why);

} // namespace peft
