// spm.h: a SentencePiece `tokenizer.model` loaded through libsentencepiece, for models that ship
// no tokenizer.json, or a serialized ModelProto built in memory (a GGUF "llama" vocabulary,
// gguf_vocab.h). Only available when the build found the library (PEFT_HAVE_SENTENCEPIECE);
// otherwise the loaders return a status saying so. Not here: the tokenizer.json path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct spm_model;  // opaque: wraps sentencepiece::SentencePieceProcessor

status      spm_load(const std::string & path, std::shared_ptr<spm_model> & out);
// proto: a serialized sentencepiece ModelProto; where names its source in errors.
status      spm_load_proto(const std::string & proto, const std::string & where, std::shared_ptr<spm_model> & out);
// Encodes raw bytes exactly as libsentencepiece does (it repairs invalid UTF-8 itself).
void        spm_encode(spm_model & m, const std::string & text, std::vector<int32_t> & ids);
std::string spm_decode(spm_model & m, const int32_t * ids, size_t n);
int32_t     spm_vocab_size(const spm_model & m);
std::string spm_id_to_piece(const spm_model & m, int32_t id);
int32_t     spm_piece_to_id(const spm_model & m, const std::string & piece);   // -1 if absent
int32_t     spm_bos_id(const spm_model & m);
int32_t     spm_eos_id(const spm_model & m);
int32_t     spm_pad_id(const spm_model & m);
bool        spm_is_control(const spm_model & m, int32_t id);   // <s>, </s>, <unk> ...
float       spm_score(const spm_model & m, int32_t id);
// The piece's ModelProto.SentencePiece.Type: 1 normal, 2 unknown, 3 control, 4 user-defined,
// 5 unused, 6 byte (the same numbers as llama.cpp's token types).
int32_t     spm_piece_type(const spm_model & m, int32_t id);

} // namespace peft
