// checkpoint.cpp: trainer_state.safetensors and atomic checkpoint directories (checkpoint.h).
#include "train/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "train/optim.h"

namespace peft {

namespace fs = std::filesystem;

static const char * STATE_FORMAT = "peft.cpp trainer_state v1";

status trainer_state_save(const std::string & path, const trainer_state & st, const adamw & opt,
                          const std::vector<named_f32> & params) {
    std::vector<safetensors_tensor_to_write> ts;
    for (size_t i = 0; i < opt.params.size(); i++) {
        const optim_param & p = opt.params[i];
        ts.push_back({"optimizer.m." + p.name, PEFT_DTYPE_F32, {p.n}, opt.m[i], ""});
        ts.push_back({"optimizer.v." + p.name, PEFT_DTYPE_F32, {p.n}, opt.v[i], ""});
    }
    for (const named_f32 & p : params) ts.push_back({"param." + p.name, PEFT_DTYPE_F32, p.shape, p.data, ""});
    ts.push_back({"data.epoch_order", PEFT_DTYPE_F32, {(int64_t) st.epoch_order.size()}, st.epoch_order.data(), "I32"});
    std::vector<std::pair<std::string, std::string>> meta = {
        {"format", STATE_FORMAT},
        {"step", std::to_string(st.step)},
        {"epoch", std::to_string(st.epoch)},
        {"micro_in_epoch", std::to_string(st.micro_in_epoch)},
        {"total_steps", std::to_string(st.total_steps)},
        {"optimizer_step_count", std::to_string(opt.step_count)},
        {"rng", st.rng_state},
        {"data_fingerprint", st.data_fingerprint},
        {"module_count", std::to_string(st.module_states.size())},
    };
    for (size_t i = 0; i < st.module_states.size(); i++) meta.push_back({"module_state." + std::to_string(i), st.module_states[i]});
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

status trainer_state_load(const std::string & path, trainer_state & st, adamw & opt, const std::vector<named_f32> & params) {
    safetensors_file f;
    PEFT_TRY(safetensors_open(path, f));
    return trainer_state_read(f, st, opt, params);
}

status trainer_state_read(const safetensors_file & f, trainer_state & st, adamw & opt, const std::vector<named_f32> & params) {
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
    for (size_t i = 0; i < opt.params.size(); i++) {
        PEFT_TRY(read_into(f, "optimizer.m." + opt.params[i].name, opt.m[i], opt.params[i].n));
        PEFT_TRY(read_into(f, "optimizer.v." + opt.params[i].name, opt.v[i], opt.params[i].n));
    }
    opt.step_count = count;
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

// ---- directories -------------------------------------------------------------------------

static void fsync_dir(const std::string & dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void) ::fsync(fd);
        ::close(fd);
    }
}

atomic_dir::~atomic_dir() { abort(); }

status atomic_dir::begin(const std::string & dir) {
    abort();
    dst = dir;
    while (!dst.empty() && dst.back() == '/') dst.pop_back();
    tmp = dst + ".tmp";
    std::error_code ec;
    fs::remove_all(tmp, ec);   // a leftover of a crashed save
    if (!fs::create_directories(tmp, ec) || ec) {
        return make_error(PEFT_STATUS_IO, tmp, "cannot create directory: " + (ec ? ec.message() : std::string("already exists")));
    }
    open = true;
    return {};
}

status atomic_dir::commit() {
    if (!open) return make_error(PEFT_STATUS_IO, dst, "commit without begin");
    std::error_code ec;
    fsync_dir(tmp);
    // An existing directory cannot be renamed over: move it aside first, then drop it.
    const std::string old = dst + ".old";
    bool had_old = false;
    if (fs::exists(dst, ec)) {
        fs::remove_all(old, ec);
        fs::rename(dst, old, ec);
        if (ec) {
            status st = make_error(PEFT_STATUS_IO, dst, "cannot move the previous directory aside: " + ec.message());
            abort();
            return st;
        }
        had_old = true;
    }
    fs::rename(tmp, dst, ec);
    if (ec) {
        status st = make_error(PEFT_STATUS_IO, dst, "cannot rename " + tmp + " into place: " + ec.message());
        if (had_old) fs::rename(old, dst, ec);
        abort();
        return st;
    }
    open = false;
    fsync_dir(fs::path(dst).parent_path().empty() ? "." : fs::path(dst).parent_path().string());
    if (had_old) fs::remove_all(old, ec);
    return {};
}

void atomic_dir::abort() {
    if (!open) return;
    std::error_code ec;
    fs::remove_all(tmp, ec);
    open = false;
}

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
