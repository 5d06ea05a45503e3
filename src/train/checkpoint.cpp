// checkpoint.cpp: trainer_state.safetensors and atomic checkpoint directories (checkpoint.h).
#include "train/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "core/hash.h"
#include "io/atomic_file.h"
#include "io/mmap.h"
#include "io/peft_format.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "train/optim.h"

namespace peft {

namespace fs = std::filesystem;

// v2: checksums of the state itself and of the other files of its directory.
static const char * STATE_FORMAT = "peft.cpp trainer_state v2";
static const char * STATE_NAME = "trainer_state.safetensors";
static const char * CHECKSUM_KEY = "checksum";
static const std::string FILE_KEY_PREFIX = "file.";

// ---- checksums -------------------------------------------------------------------------------

static std::string checksum_str(uint64_t h) { return "xxh64:" + xxh64_hex(h); }

// A tensor as the state checksum sees it, from the writer's list or from the parsed file.
struct hashed_tensor {
    const std::string *          name;
    const char *                 dtype;   // safetensors name: "F32", "I32"
    const std::vector<int64_t> * shape;
    const void *                 data;
    uint64_t                     n_bytes;
};

// The state file's own checksum: its metadata (by key, without the checksum entry) and every
// tensor's name, dtype, shape and bytes (by name). Covering exactly what the loader reads, in
// an order of its own, keeps it independent of how the writer lays the file out. Strings and
// arrays are length-prefixed so that no two different contents feed the same bytes.
static std::string state_checksum(std::vector<std::pair<std::string, std::string>> meta, std::vector<hashed_tensor> ts) {
    std::sort(meta.begin(), meta.end());
    std::sort(ts.begin(), ts.end(), [](const hashed_tensor & a, const hashed_tensor & b) { return *a.name < *b.name; });
    xxh64_stream h;
    auto put_u64 = [&](uint64_t v) { h.update(&v, sizeof v); };
    auto put_str = [&](const std::string & v) { put_u64(v.size()); h.update(v.data(), v.size()); };
    for (const auto & kv : meta) {
        if (kv.first == CHECKSUM_KEY) continue;
        put_str(kv.first);
        put_str(kv.second);
    }
    for (const hashed_tensor & t : ts) {
        put_str(*t.name);
        put_str(t.dtype);
        put_u64(t.shape->size());
        for (int64_t d : *t.shape) put_u64((uint64_t) d);
        put_u64(t.n_bytes);
        h.update(t.data, t.n_bytes);
    }
    return checksum_str(h.digest());
}

// Size and checksum of a whole file, read through a mapping (no copy of multi-GB files).
static status file_checksum(const std::string & path, uint64_t & size, std::string & sum) {
    mapped_file m;
    PEFT_TRY(m.open(path));
    size = m.size;
    sum = checksum_str(xxh64(m.data, m.size));
    return {};
}

// "file.<name>" entries for every regular file of dir but the state itself, sorted by name so
// the same files give the same state file.
static status file_manifest(const std::string & dir, std::vector<std::pair<std::string, std::string>> & meta) {
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name != STATE_NAME && it->symlink_status(ec).type() == fs::file_type::regular) names.push_back(name);
    }
    if (ec) return make_error(PEFT_STATUS_IO, dir, "cannot list the checkpoint directory: " + ec.message());
    std::sort(names.begin(), names.end());
    for (const std::string & name : names) {
        uint64_t size = 0;
        std::string sum;
        PEFT_TRY(file_checksum(dir + "/" + name, size, sum));
        meta.push_back({FILE_KEY_PREFIX + name, std::to_string(size) + " " + sum});
    }
    return {};
}

// The per-parameter step counts as "3,3,0,3" (parameter order).
static std::string steps_text(const std::vector<int64_t> & steps) {
    std::string s;
    for (size_t i = 0; i < steps.size(); i++) s += (i ? "," : "") + std::to_string(steps[i]);
    return s;
}

status trainer_state_save(const std::string & path, const trainer_state & st, optimizer & opt,
                          const std::vector<named_f32> & params) {
    std::vector<safetensors_tensor_to_write> ts;
    std::vector<optim_state_ref> state;
    opt.state_tensors(state);
    for (const optim_state_ref & t : state) ts.push_back({t.name, PEFT_DTYPE_F32, t.shape, t.data, ""});
    for (const named_f32 & p : params) ts.push_back({"param." + p.name, PEFT_DTYPE_F32, p.shape, p.data, ""});
    ts.push_back({"data.epoch_order", PEFT_DTYPE_F32, {(int64_t) st.epoch_order.size()}, st.epoch_order.data(), "I32"});
    std::vector<std::pair<std::string, std::string>> meta = {
        {"format", STATE_FORMAT},
        {"step", std::to_string(st.step)},
        {"epoch", std::to_string(st.epoch)},
        {"micro_in_epoch", std::to_string(st.micro_in_epoch)},
        {"total_steps", std::to_string(st.total_steps)},
        {"optimizer", opt.name()},
        {"optimizer_step_count", std::to_string(opt.step_count)},
        {"optimizer_param_steps", steps_text(opt.steps)},
        {"rng", st.rng_state},
        {"data_fingerprint", st.data_fingerprint},
        {"module_count", std::to_string(st.module_states.size())},
    };
    for (size_t i = 0; i < st.module_states.size(); i++) meta.push_back({"module_state." + std::to_string(i), st.module_states[i]});
    const fs::path parent = fs::path(path).parent_path();
    PEFT_TRY(file_manifest(parent.empty() ? "." : parent.string(), meta));
    std::vector<hashed_tensor> hashed;
    for (const safetensors_tensor_to_write & t : ts) {
        safetensors_dtype sd = safetensors_dtype_from_dtype(t.type);
        const bool known = t.raw_dtype.empty() || safetensors_dtype_from_name(t.raw_dtype, &sd);
        PEFT_ASSERT(known);
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        hashed.push_back({&t.name, safetensors_dtype_name(sd), &t.shape, t.data, (uint64_t) n * safetensors_dtype_bits(sd) / 8});
    }
    meta.push_back({CHECKSUM_KEY, state_checksum(meta, hashed)});
    return safetensors_write(path, ts, meta);
}

static status meta_int(const safetensors_file & f, const char * key, int64_t & out) {
    const std::string * v = f.metadata_get(key);
    if (!v) return make_error(PEFT_STATUS_FORMAT, f.path, std::string("metadata '") + key + "' is missing");
    errno = 0;
    char * end = nullptr;
    const long long x = std::strtoll(v->c_str(), &end, 10);
    if (errno || v->empty() || *end || x < 0) return make_mismatch(PEFT_STATUS_FORMAT, f.path, std::string("metadata '") + key + "'", "a non-negative integer", *v);
    out = x;
    return {};
}

static status read_into(const safetensors_file & f, const std::string & name, float * dst, int64_t n) {
    const tensor_info * t = f.find(name);
    if (!t) {
        status st = make_error(PEFT_STATUS_FORMAT, f.path, "tensor '" + name + "' is missing");
        st.hint = "the checkpoint was written for another model or adapter configuration";
        return st;
    }
    if ((int64_t) t->n_elements != n) {
        return make_mismatch(PEFT_STATUS_SHAPE, f.path, "tensor '" + name + "'", std::to_string(n) + " elements", std::to_string(t->n_elements));
    }
    PEFT_TRY(tensor_require_float(*t));
    return read_f32(*t, dst);
}

status trainer_state_load(const std::string & path, trainer_state & st, optimizer & opt, const std::vector<named_f32> & params) {
    safetensors_file f;
    PEFT_TRY(safetensors_open(path, f));
    return trainer_state_read(f, st, opt, params);
}

// The optimizer's name and per-parameter step counts; a checkpoint older than them was
// written by AdamW with one count for every parameter (`count`).
static status read_optimizer_meta(const safetensors_file & f, optimizer & opt, int64_t count, std::vector<int64_t> & steps) {
    const std::string * name = f.metadata_get("optimizer");
    const std::string saved = name ? *name : "adamw";
    if (saved != opt.name()) {
        status st = make_mismatch(PEFT_STATUS_CONFIG, f.path, "metadata 'optimizer'", opt.name(), saved);
        st.hint = "resume with the optimizer the checkpoint was trained with (key 'optimizer: " + saved + "')";
        return st;
    }
    steps.assign(opt.params.size(), count);
    const std::string * text = f.metadata_get("optimizer_param_steps");
    if (!text) return {};
    steps.clear();
    const char * c = text->c_str();
    while (*c) {
        errno = 0;
        char * end = nullptr;
        const long long x = std::strtoll(c, &end, 10);
        if (errno || end == c || x < 0 || x > count || (*end && *end != ',') || (*end == ',' && !end[1])) {
            return make_mismatch(PEFT_STATUS_FORMAT, f.path, "metadata 'optimizer_param_steps'",
                                 "comma-separated step counts, each at most optimizer_step_count", *text);
        }
        steps.push_back(x);
        c = *end ? end + 1 : end;
    }
    if (steps.size() != opt.params.size()) {
        return make_mismatch(PEFT_STATUS_FORMAT, f.path, "metadata 'optimizer_param_steps' entries", std::to_string(opt.params.size()),
                             std::to_string(steps.size()));
    }
    return {};
}

status trainer_state_read(const safetensors_file & f, trainer_state & st, optimizer & opt, const std::vector<named_f32> & params) {
    const std::string & path = f.path;
    const std::string * fmt = f.metadata_get("format");
    if (!fmt || *fmt != STATE_FORMAT) return make_mismatch(PEFT_STATUS_FORMAT, path, "metadata 'format'", STATE_FORMAT, fmt ? *fmt : "(none)");
    int64_t count = 0;
    PEFT_TRY(meta_int(f, "step", st.step));
    PEFT_TRY(meta_int(f, "epoch", st.epoch));
    PEFT_TRY(meta_int(f, "micro_in_epoch", st.micro_in_epoch));
    PEFT_TRY(meta_int(f, "total_steps", st.total_steps));
    PEFT_TRY(meta_int(f, "optimizer_step_count", count));
    const std::string * r = f.metadata_get("rng");
    const std::string * fp = f.metadata_get("data_fingerprint");
    if (!r || !fp) return make_error(PEFT_STATUS_FORMAT, path, "metadata 'rng' or 'data_fingerprint' is missing");
    st.rng_state = *r;
    st.data_fingerprint = *fp;
    int64_t n_modules = 0;
    PEFT_TRY(meta_int(f, "module_count", n_modules));
    if (n_modules > (int64_t) f.metadata.size()) return make_error(PEFT_STATUS_FORMAT, path, "metadata 'module_count' is larger than the metadata");
    st.module_states.assign((size_t) n_modules, "");
    for (int64_t i = 0; i < n_modules; i++) {
        const std::string * ms = f.metadata_get("module_state." + std::to_string(i));
        if (!ms) return make_error(PEFT_STATUS_FORMAT, path, "metadata 'module_state." + std::to_string(i) + "' is missing");
        st.module_states[(size_t) i] = *ms;
    }
    std::vector<int64_t> steps;
    PEFT_TRY(read_optimizer_meta(f, opt, count, steps));
    std::vector<optim_state_ref> state;
    opt.state_tensors(state);
    for (const optim_state_ref & t : state) PEFT_TRY(read_into(f, t.name, t.data, t.numel()));
    opt.step_count = count;
    opt.steps = steps;
    for (const named_f32 & p : params) PEFT_TRY(read_into(f, "param." + p.name, p.data, p.numel()));
    const tensor_info * eo = f.find("data.epoch_order");
    if (!eo || eo->st_dtype != SAFETENSORS_DTYPE_I32 || eo->shape.size() != 1) {
        return make_error(PEFT_STATUS_FORMAT, path, "tensor 'data.epoch_order' is missing or not a 1-D I32 tensor");
    }
    st.epoch_order.resize((size_t) eo->n_elements);
    if (eo->n_elements) std::memcpy(st.epoch_order.data(), eo->data, (size_t) eo->n_bytes);   // little-endian host
    return {};
}

status load_named_f32(const std::string & path, const std::vector<named_f32> & params) {
    safetensors_file f;
    PEFT_TRY(safetensors_open(path, f));
    for (const named_f32 & p : params) PEFT_TRY(read_into(f, p.name, p.data, p.numel()));
    return {};
}

// ---- verification ----------------------------------------------------------------------------

// The same hint for every kind of damage: what the user can do about it.
static status damaged(status st) {
    st.hint = "the checkpoint is damaged (disk error, an interrupted copy, or a file changed after it was written); "
              "resume from an earlier checkpoint-N, or use resume_from_checkpoint: latest to take the newest intact one";
    return st;
}

// One "file.<name>" entry: "<size> xxh64:<hex>".
static status verify_listed_file(const std::string & dir, const std::string & state_path, const std::string & name,
                                 const std::string & entry) {
    // a name from the file is untrusted: it must not lead outside the directory
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
        return make_error(PEFT_STATUS_FORMAT, state_path, "metadata '" + FILE_KEY_PREFIX + name + "' does not name a file");
    }
    const size_t sp = entry.find(' ');
    const std::string size_str = entry.substr(0, sp);
    if (sp == std::string::npos || size_str.empty() || size_str.size() > 19 || size_str.find_first_not_of("0123456789") != std::string::npos) {
        return make_mismatch(PEFT_STATUS_FORMAT, state_path, "metadata '" + FILE_KEY_PREFIX + name + "'", "\"<size> xxh64:<hex>\"", entry);
    }
    const uint64_t want_size = std::stoull(size_str);
    const std::string want_sum = entry.substr(sp + 1);
    const std::string path = dir + "/" + name;
    std::error_code ec;
    if (fs::symlink_status(path, ec).type() != fs::file_type::regular) {
        return damaged(make_error(PEFT_STATUS_IO, path, "missing (the checkpoint lists it, " + size_str + " bytes)"));
    }
    // size first: a truncated file is named as such without reading it
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return make_error(PEFT_STATUS_IO, path, "cannot read its size: " + ec.message());
    if (size != want_size) {
        return damaged(make_mismatch(PEFT_STATUS_FORMAT, path, "size mismatch (truncated or changed)", size_str + " bytes",
                                     std::to_string(size) + " bytes"));
    }
    uint64_t got_size = 0;
    std::string got_sum;
    PEFT_TRY(file_checksum(path, got_size, got_sum));
    if (got_sum != want_sum) return damaged(make_mismatch(PEFT_STATUS_FORMAT, path, "checksum mismatch", want_sum, got_sum));
    return {};
}

status checkpoint_verify(const std::string & dir) {
    const std::string path = dir + "/" + STATE_NAME;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return make_error(PEFT_STATUS_IO, dir, "not a checkpoint directory (it does not exist or is a file)");
    if (!fs::exists(path, ec)) {
        status st = make_error(PEFT_STATUS_IO, dir, std::string("incomplete checkpoint: no ") + STATE_NAME);
        st.hint = "a checkpoint is complete once trainer_state.safetensors is written; resume from another checkpoint-N";
        return st;
    }
    safetensors_file f;
    status st = safetensors_open(path, f);
    if (!st.ok()) return st.code == PEFT_STATUS_FORMAT ? damaged(st) : st;   // an unreadable file is not a damaged one
    const std::string * fmt = f.metadata_get("format");
    if (!fmt || *fmt != STATE_FORMAT) return make_mismatch(PEFT_STATUS_FORMAT, path, "metadata 'format'", STATE_FORMAT, fmt ? *fmt : "(none)");
    const std::string * want = f.metadata_get(CHECKSUM_KEY);
    if (!want) return damaged(make_error(PEFT_STATUS_FORMAT, path, "metadata 'checksum' is missing"));
    std::vector<hashed_tensor> hashed;
    for (const tensor_info & t : f.tensors) hashed.push_back({&t.name, safetensors_dtype_name(t.st_dtype), &t.shape, t.data, t.n_bytes});
    const std::string got = state_checksum(f.metadata, hashed);
    if (got != *want) return damaged(make_mismatch(PEFT_STATUS_FORMAT, path, "checksum mismatch", *want, got));
    // the list itself is now trusted: the state checksum covers the metadata
    for (const auto & kv : f.metadata) {
        if (kv.first.rfind(FILE_KEY_PREFIX, 0) == 0) PEFT_TRY(verify_listed_file(dir, path, kv.first.substr(FILE_KEY_PREFIX.size()), kv.second));
    }
    return {};
}

status checkpoint_find_latest(const std::string & output_dir, std::string & dir, std::vector<std::string> & warnings) {
    const auto list = checkpoint_list(output_dir);
    if (list.empty()) {
        status st = make_error(PEFT_STATUS_IO, output_dir, "resume_from_checkpoint: no checkpoint-N directory to resume from");
        st.hint = "give the checkpoint directory itself, or train with save_steps > 0";
        return st;
    }
    std::string reasons;
    for (auto it = list.rbegin(); it != list.rend(); ++it) {
        status st = checkpoint_verify(it->second);
        if (st.ok()) {
            dir = it->second;
            return {};
        }
        warnings.push_back("skipping an unusable checkpoint: " + st.message);
        reasons += (reasons.empty() ? "" : "; ") + st.message;
    }
    status st = make_error(PEFT_STATUS_FORMAT, output_dir, "resume_from_checkpoint: none of the " + std::to_string(list.size()) +
                                                               " checkpoint-N directories is usable (" + reasons + ")");
    st.hint = "resume from a checkpoint directory given by path once it is repaired, or train again without resume_from_checkpoint";
    return st;
}

// ---- directories -------------------------------------------------------------------------


std::vector<std::pair<int64_t, std::string>> checkpoint_list(const std::string & output_dir) {
    std::vector<std::pair<int64_t, std::string>> out;
    std::error_code ec;
    for (fs::directory_iterator it(output_dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.rfind("checkpoint-", 0) != 0 || !it->is_directory()) continue;
        const std::string num = name.substr(11);
        if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos || num.size() > 18) continue;
        out.emplace_back(std::stoll(num), it->path().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

// "<prefix><digits><suffix>" with at most 18 digits (an int64 step, as checkpoint_list reads it).
static bool is_numbered(const std::string & name, const std::string & prefix, const std::string & suffix) {
    if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 || !name.ends_with(suffix)) return false;
    const std::string num = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    return num.size() <= 18 && num.find_first_not_of("0123456789") == std::string::npos;
}

// The files save_checkpoint (train_loop.cpp) writes: the adapter directory or the HF model
// directory with the tokenizer files write_hf_model_dir copies, then the trainer state and
// config. A name missing here only makes the cleanup leave a directory in place.
static const char * CHECKPOINT_FILES[] = {PEFT_WEIGHTS_NAME, PEFT_CONFIG_NAME, "model.safetensors", "config.json", STATE_NAME,
                                          "train_config.json"};

// A checkpoint file, or the temporary "<file>.tmp.<pid>" of an atomic_file cut short by a crash.
static bool is_checkpoint_file(const std::string & name) {
    std::vector<std::string> files(std::begin(CHECKPOINT_FILES), std::end(CHECKPOINT_FILES));
    files.insert(files.end(), hf_companion_files().begin(), hf_companion_files().end());
    for (const std::string & f : files) {
        if (name == f || is_numbered(name, f + ".tmp.", "")) return true;
    }
    return false;
}

std::vector<std::string> checkpoint_remove_stale(const std::string & output_dir) {
    std::vector<fs::path> candidates;   // listed first: no removal while output_dir is being read
    std::error_code ec;
    for (fs::directory_iterator it(output_dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (is_numbered(it->path().filename().string(), "checkpoint-", ".tmp") && it->symlink_status(ec).type() == fs::file_type::directory) {
            candidates.push_back(it->path());
        }
    }
    std::vector<std::string> removed;
    for (const fs::path & dir : candidates) {
        std::vector<fs::path> files;
        bool only_ours = true;
        std::error_code dec;
        for (fs::directory_iterator f(dir, dec), end; !dec && f != end; f.increment(dec)) {
            files.push_back(f->path());
            only_ours = only_ours && f->symlink_status(dec).type() == fs::file_type::regular && is_checkpoint_file(f->path().filename().string());
        }
        if (dec || !only_ours) continue;
        // file by file, then the now empty directory: never a recursive removal
        for (const fs::path & f : files) fs::remove(f, dec);
        if (fs::remove(dir, dec)) removed.push_back(dir.string());
    }
    return removed;
}

void checkpoint_prune(const std::string & output_dir, int64_t keep) {
    if (keep <= 0) return;
    auto list = checkpoint_list(output_dir);
    std::error_code ec;
    for (size_t i = 0; i + (size_t) keep < list.size(); i++) fs::remove_all(list[i].second, ec);
}

status copy_file_atomic(const std::string & src, const std::string & dst) {
    std::ifstream f(src, std::ios::binary);
    if (!f) return make_error(PEFT_STATUS_IO, src, "cannot open for reading");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return make_error(PEFT_STATUS_IO, src, "read error");
    return write_file_atomic(dst, ss.str());
}

} // namespace peft
