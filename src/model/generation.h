// generation.h: what `peft generate` and `peft serve` share around the decoder: the tokens of a
// chat prompt up to the assistant's reply, the end-of-sequence ids a model directory declares,
// and the UTF-8 boundary that streamed text is held back to.
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

} // namespace peft
