// spm.cpp: thin wrapper over libsentencepiece (included here only, ARCHITECTURE §2).
#include "tokenizer/spm.h"

#ifdef PEFT_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace peft {

#ifdef PEFT_HAVE_SENTENCEPIECE

struct spm_model {
    sentencepiece::SentencePieceProcessor sp;
};

status spm_load(const std::string & path, std::shared_ptr<spm_model> & out) {
    auto m = std::make_shared<spm_model>();
    const auto st = m->sp.Load(path);
    if (!st.ok()) return make_error(PEFT_STATUS_FORMAT, path, "not a readable SentencePiece model: " + st.ToString());
    out = std::move(m);
    return status::success();
}

status spm_load_proto(const std::string & proto, const std::string & where, std::shared_ptr<spm_model> & out) {
    auto m = std::make_shared<spm_model>();
    const auto st = m->sp.LoadFromSerializedProto(proto);
    if (!st.ok()) return make_error(PEFT_STATUS_FORMAT, where, "not a vocabulary libsentencepiece accepts: " + st.ToString());
    out = std::move(m);
    return status::success();
}

void spm_encode(spm_model & m, const std::string & text, std::vector<int32_t> & ids) {
    std::vector<int> v;
    if (!m.sp.Encode(text, &v).ok()) return;
    ids.insert(ids.end(), v.begin(), v.end());
}

std::string spm_decode(spm_model & m, const int32_t * ids, size_t n) {
    std::vector<int> v(ids, ids + n);
    for (int & id : v) if (id < 0 || id >= m.sp.GetPieceSize()) id = m.sp.unk_id();
    std::string out;
    if (!m.sp.Decode(v, &out).ok()) return "";
    return out;
}

int32_t spm_vocab_size(const spm_model & m) { return m.sp.GetPieceSize(); }
std::string spm_id_to_piece(const spm_model & m, int32_t id) {
    return id >= 0 && id < m.sp.GetPieceSize() ? m.sp.IdToPiece(id) : std::string();
}
int32_t spm_piece_to_id(const spm_model & m, const std::string & piece) {
    const int id = m.sp.PieceToId(piece);
    // PieceToId answers unk_id for unknown pieces; tell that apart from the real <unk>.
    return id == m.sp.unk_id() && piece != m.sp.IdToPiece(id) ? -1 : id;
}
int32_t spm_bos_id(const spm_model & m) { return m.sp.bos_id(); }
int32_t spm_eos_id(const spm_model & m) { return m.sp.eos_id(); }
int32_t spm_pad_id(const spm_model & m) { return m.sp.pad_id(); }
bool spm_is_control(const spm_model & m, int32_t id) {
    return id >= 0 && id < m.sp.GetPieceSize() && (m.sp.IsControl(id) || m.sp.IsUnknown(id));
}
float spm_score(const spm_model & m, int32_t id) { return m.sp.GetScore(id); }
int32_t spm_piece_type(const spm_model & m, int32_t id) {
    if (m.sp.IsUnknown(id)) return 2;
    if (m.sp.IsControl(id)) return 3;
    if (m.sp.IsUnused(id)) return 5;
    if (m.sp.IsByte(id)) return 6;
    return 1;   // user-defined pieces are not told apart by the processor's API: normal to llama.cpp too
}

#else  // built without libsentencepiece

struct spm_model {};

status spm_load(const std::string & path, std::shared_ptr<spm_model> &) {
    status st = make_error(PEFT_STATUS_CONFIG, path, "SentencePiece tokenizer.model needs libsentencepiece, which this build lacks");
    st.hint = "install libsentencepiece-dev (scripts/setup.sh) and rebuild, or use the model's tokenizer.json";
    return st;
}
status spm_load_proto(const std::string &, const std::string & where, std::shared_ptr<spm_model> &) {
    status st = make_error(PEFT_STATUS_CONFIG, where, "a SentencePiece (\"llama\") vocabulary needs libsentencepiece, which this build lacks");
    st.hint = "install libsentencepiece-dev (scripts/setup.sh) and rebuild, or pass the model's tokenizer with --tokenizer DIR";
    return st;
}
void spm_encode(spm_model &, const std::string &, std::vector<int32_t> &) {}
std::string spm_decode(spm_model &, const int32_t *, size_t) { return ""; }
int32_t spm_vocab_size(const spm_model &) { return 0; }
std::string spm_id_to_piece(const spm_model &, int32_t) { return ""; }
int32_t spm_piece_to_id(const spm_model &, const std::string &) { return -1; }
int32_t spm_bos_id(const spm_model &) { return -1; }
int32_t spm_eos_id(const spm_model &) { return -1; }
int32_t spm_pad_id(const spm_model &) { return -1; }
bool spm_is_control(const spm_model &, int32_t) { return false; }
float spm_score(const spm_model &, int32_t) { return 0.0f; }
int32_t spm_piece_type(const spm_model &, int32_t) { return 1; }

#endif

} // namespace peft
