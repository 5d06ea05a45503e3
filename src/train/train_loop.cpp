// train_loop.cpp: `peft train` end to end (train_loop.h).
//
// Data order: rows (already packed and sample-shuffled by the data loader) are visited in an
// epoch order drawn by the trainer's own generator at the start of every epoch; an optimizer
// step takes up to gradient_accumulation_steps micro-batches of micro_batch_size rows and never
// crosses an epoch boundary (the last step of an epoch may have fewer micro-batches, the last
// micro-batch fewer rows: padded with empty rows). Everything that decides the next step (step,
// epoch, position, epoch order, generator state, AdamW moments, trained tensors) is in the
// checkpoint, so a resumed run repeats the same arithmetic as an uninterrupted one.
#include "train/train_loop.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "adapters/adapter_set.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/atomic_file.h"
#include "io/gguf_read.h"
#include "io/json.h"
#include "io/output_guard.h"
#include "io/peft_format.h"
#include "io/safetensors.h"
#include "model/gguf_import.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/calibrate.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/data.h"
#include "train/report.h"
#include "train/trainer.h"

namespace peft {

namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_stop_signal(int) {
    g_stop = 1;
    static const char msg[] = "\npeft train: interrupted: finishing this step and writing a checkpoint (press Ctrl-C again to abort)\n";
    ssize_t r = ::write(2, msg, sizeof msg - 1);
    (void) r;
}

// Installs the handler for the duration of a run; a second signal gets the default action.
struct signal_guard {
    struct sigaction old_int {}, old_term {};
    signal_guard() {
        struct sigaction sa {};
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESETHAND;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
    }
    ~signal_guard() {
        sigaction(SIGINT, &old_int, nullptr);
        sigaction(SIGTERM, &old_term, nullptr);
    }
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::string fmt(const char * f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}
std::string f9(float v) { return fmt("%.9g", (double) v); }      // round-trips a float
std::string f17(double v) { return fmt("%.17g", v); }            // round-trips a double

std::string duration_text(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    if (s < 10) return fmt("%.1fs", s);
    const int64_t t = (int64_t) (s + 0.5);
    char b[32];
    if (t >= 3600) std::snprintf(b, sizeof b, "%lldh%02lldm", (long long) (t / 3600), (long long) (t % 3600 / 60));
    else if (t >= 60) std::snprintf(b, sizeof b, "%lldm%02llds", (long long) (t / 60), (long long) (t % 60));
    else std::snprintf(b, sizeof b, "%llds", (long long) t);
    return b;
}

bool g_quiet = false;   // ranks other than 0 of a data-parallel run: rank 0 speaks for all
void info(const std::string & s) {
    if (!g_quiet) std::fprintf(stderr, "peft train: %s\n", s.c_str());
}

std::string fingerprint(const data_rows & d) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](const void * p, size_t n) {
        const unsigned char * c = (const unsigned char *) p;
        for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    };
    mix(&d.T, sizeof d.T);
    mix(&d.n_rows, sizeof d.n_rows);
    mix(d.input_ids.data(), d.input_ids.size() * 4);
    mix(d.labels.data(), d.labels.size() * 4);
    mix(d.position_ids.data(), d.position_ids.size() * 4);
    mix(d.segment_ids.data(), d.segment_ids.size() * 4);
    char b[40];
    std::snprintf(b, sizeof b, "fnv1a64:%016llx", (unsigned long long) h);
    return b;
}

void append_rows(data_rows & dst, const data_rows & src) {
    if (dst.n_rows == 0) dst.T = src.T;
    dst.n_rows += src.n_rows;
    dst.input_ids.insert(dst.input_ids.end(), src.input_ids.begin(), src.input_ids.end());
    dst.labels.insert(dst.labels.end(), src.labels.begin(), src.labels.end());
    dst.position_ids.insert(dst.position_ids.end(), src.position_ids.begin(), src.position_ids.end());
    dst.segment_ids.insert(dst.segment_ids.end(), src.segment_ids.begin(), src.segment_ids.end());
    // a mask for every row or none (rows without one mark no prompt)
    dst.prompt_mask.resize((size_t) ((dst.n_rows - src.n_rows) * dst.T), 0);
    if (src.prompt_mask.empty()) dst.prompt_mask.resize((size_t) (dst.n_rows * dst.T), 0);
    else dst.prompt_mask.insert(dst.prompt_mask.end(), src.prompt_mask.begin(), src.prompt_mask.end());
}


// Appends JSON lines to output_dir/metrics.jsonl, flushing each (a crash loses nothing logged).
struct metrics_log {
    std::FILE * f = nullptr;
    std::string path;
    ~metrics_log() { if (f) std::fclose(f); }
    status open(const std::string & p, bool append) {
        path = p;
        f = std::fopen(p.c_str(), append ? "ab" : "wb");
        if (!f) return make_error(PEFT_STATUS_IO, p, std::string("cannot open for writing: ") + std::strerror(errno));
        return {};
    }
    status write(const std::string & line) {
        if (!f) return {};   // not the writing rank of a data-parallel run
        if (std::fputs((line + "\n").c_str(), f) < 0 || std::fflush(f) != 0) {
            return make_error(PEFT_STATUS_IO, path, std::string("write failed: ") + std::strerror(errno));
        }
        return {};
    }
};

// Progress on stderr: a bar redrawn in place on a terminal, plain lines every logging_steps
// otherwise (logs, CI, pipes).
struct progress_bar {
    bool enabled = true, tty = false;
    int64_t total = 0, first_step = 0;
    double t0 = 0, last_draw = 0;
    bool drawn = false;

    void start(bool on, int64_t tot, int64_t first) {
        enabled = on;
        tty = on && ::isatty(2);
        total = tot;
        first_step = first;
        t0 = now_s();
    }
    std::string line(int64_t step, float loss, float lr, float gnorm, double tps) const {
        const double el = now_s() - t0;
        const double eta = step > first_step ? el / (double) (step - first_step) * (double) (total - step) : NAN;
        char b[256];
        std::snprintf(b, sizeof b, "step %lld/%lld  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tok/s  elapsed %s  eta %s",
                      (long long) step, (long long) total, (double) loss, (double) lr, (double) gnorm, tps, duration_text(el).c_str(),
                      duration_text(eta).c_str());
        return b;
    }
    void update(int64_t step, float loss, float lr, float gnorm, double tps, bool log_step) {
        if (!enabled) return;
        if (tty) {
            const double t = now_s();
            if (t - last_draw < 0.1 && step != total) return;
            last_draw = t;
            const int width = 24;
            const int fill = total > 0 ? (int) ((double) width * (double) step / (double) total) : width;
            std::string bar = "[" + std::string((size_t) fill, '#') + std::string((size_t) (width - fill), '.') + "] ";
            std::fprintf(stderr, "\r%s%s\x1b[K", bar.c_str(), line(step, loss, lr, gnorm, tps).c_str());
            std::fflush(stderr);
            drawn = true;
        } else if (log_step) {
            std::fprintf(stderr, "%s\n", line(step, loss, lr, gnorm, tps).c_str());
        }
    }
    // A message between redraws: end the bar line first so it is not overwritten.
    void message(const std::string & s) {
        if (tty && drawn) std::fprintf(stderr, "\n");
        drawn = false;
        info(s);
    }
    void finish() {
        if (tty && drawn) std::fprintf(stderr, "\n");
        drawn = false;
    }
};

status check_output_dir(const std::string & dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir)) {
        status st = make_error(PEFT_STATUS_IO, dir, "cannot create output_dir" + (ec ? ": " + ec.message() : std::string()));
        st.hint = "choose a writable output_dir";
        return st;
    }
    const std::string probe = dir + "/.peft_write_probe";
    status st = write_file_atomic(probe, "probe\n");
    if (!st.ok()) {
        status e = make_error(PEFT_STATUS_IO, dir, "output_dir is not writable (" + st.message + ")");
        e.hint = "choose a writable output_dir, or fix its permissions / free some space";
        return e;
    }
    fs::remove(probe, ec);
    return {};
}

// Every name peft train writes into output_dir (output_guard.h rule 2).
std::vector<std::string> train_output_names() {
    std::vector<std::string> n = {"adapter_config.json", "adapter_model.safetensors", "model.safetensors", "config.json",
                                  "metrics.jsonl", "train_config.json", "report.html", "checkpoint-*", "residual_model"};
    for (const std::string & t : hf_companion_files()) n.push_back(t);
    // beside the adapter (adapter_save): a method's native form and its tables (<method>_*.tsv)
    n.push_back(ADAPTER_NATIVE_DIR);
    for (const std::string & m : adapter_method_names()) n.push_back(m + "_*");
    return n;
}

// output_dir must not overlap any input, nor hold files of the same names that another command
// (or the user) made; then it is locked for this run and marked as peft train's.
status claim_output_dir(const train_options & o, output_lock & lock) {
    std::vector<input_path> inputs = {{"base model", o.base_model}, {"tokenizer", o.tokenizer}};
    for (const dataset_spec & d : o.datasets) inputs.push_back({"data file", d.path});
    for (const dataset_spec & d : o.test_datasets) inputs.push_back({"test data file", d.path});
    const std::string & r = o.resume_from_checkpoint;
    // a checkpoint of another run is an input; one inside output_dir is this command's own
    if (!r.empty() && r != "latest" && !path_is_within(r, o.output_dir)) inputs.push_back({"checkpoint", r});
    PEFT_TRY(output_check_overlap(o.output_dir, "output_dir", inputs));
    PEFT_TRY(output_check_names(o.output_dir, "train", train_output_names()));
    PEFT_TRY(check_output_dir(o.output_dir));
    PEFT_TRY(lock.acquire(o.output_dir, "train"));
    return output_mark(o.output_dir, "train", train_output_names());
}

// The finished run must never be lost to a full disk or a vanished output_dir. When writing the
// final weights there fails, they go to a rescue directory beside output_dir (same disk, but a
// quota or a deleted directory may be the problem), then under $TMPDIR and /dev/shm (other
// disks, or memory), each with a resumable checkpoint; the error says where they are.
template <class write_fn, class checkpoint_fn>
status save_final_or_rescue(const std::string & output_dir, write_fn write_final, checkpoint_fn save_checkpoint_in) {
    status first = write_final(output_dir);
    if (first.ok()) return {};
    const std::string tag = "peft-rescue-" + std::to_string((long) getpid()) + "-" + std::to_string((long long) std::time(nullptr));
    const char * tmpdir = std::getenv("TMPDIR");
    fs::path out = fs::path(output_dir).lexically_normal();
    if (!out.has_filename()) out = out.parent_path();
    const std::vector<std::string> places = {out.string() + "." + tag, std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/" + tag,
                                             "/dev/shm/" + tag};
    std::string tried;
    for (const std::string & dir : places) {
        std::error_code ec;
        if (!fs::create_directory(dir, ec)) {   // only a directory made now is ours to fill and remove
            tried += "; " + dir + ": cannot create" + (ec ? ": " + ec.message() : std::string(" (exists)"));
            continue;
        }
        status st = write_final(dir);
        if (st.ok()) st = output_mark(dir, "train", train_output_names());
        if (st.ok()) st = save_checkpoint_in(dir);
        if (st.ok()) {
            status e = make_error(PEFT_STATUS_IO, output_dir, "writing the final weights failed (" + first.message + "); they were saved to " +
                                                                dir + " instead, with a resumable checkpoint");
            e.hint = "free space or fix " + output_dir + ", then move the files from " + dir + " into it";
            return e;
        }
        tried += "; " + dir + ": " + st.message;
        fs::remove_all(dir, ec);   // ours, created just now: a partial rescue is no rescue
    }
    status e = make_error(PEFT_STATUS_IO, output_dir, "writing the final weights failed (" + first.message + "), and so did every rescue location" + tried);
    e.hint = "free disk space; the newest checkpoint-N in output_dir (if save_steps > 0) is intact";
    return e;
}

} // namespace

void train_request_stop() { g_stop = 1; }

status write_hf_model_dir(const std::string & dir, const llama_model & m, const std::string & dtype_name, const std::string & config_dir,
                          const std::string & tokenizer_dir, const std::string & residual_init) {
    dtype out_t = PEFT_DTYPE_F32;
    const bool keep = dtype_name == "keep";
    if (dtype_name == "bf16") out_t = PEFT_DTYPE_BF16;
    else if (dtype_name == "f16") out_t = PEFT_DTYPE_F16;
    else if (dtype_name != "f32" && !keep) return make_mismatch(PEFT_STATUS_CONFIG, dir, "save_dtype", "f32, bf16 or f16", dtype_name);
    std::vector<safetensors_tensor_to_write> ts;
    std::vector<std::vector<uint8_t>> converted;
    converted.reserve(m.tensors.size());
    std::vector<float> f32;
    for (const llama_tensor & t : m.tensors) {
        // a 4-bit weight (a QPiSSA residual over load_in_4bit) is written dequantized, in bf16 for "keep"
        const dtype want = keep ? (t.q ? PEFT_DTYPE_BF16 : t.type) : out_t;
        if (want == t.type && !t.q) {
            ts.push_back({t.name, t.type, t.shape, t.data, ""});
            continue;
        }
        const size_t n = (size_t) t.numel();
        const float * src = (const float *) t.data;
        if (t.q) {
            f32.resize(n);
            qtensor_rows_f32(*t.q, 0, t.q->OC, f32.data());
            src = f32.data();
        } else if (t.type != PEFT_DTYPE_F32) {
            f32.resize(n);
            convert_to_f32(t.type, t.data, f32.data(), n);
            src = f32.data();
        }
        converted.emplace_back(n * dtype_size(want));
        convert_from_f32(want, src, converted.back().data(), n);
        ts.push_back({t.name, want, t.shape, converted.back().data(), ""});
    }
    PEFT_TRY(safetensors_write(dir + "/model.safetensors", ts, {{"format", "pt"}}));
    // a GGUF base has no config.json or tokenizer files: they are made from its metadata
    std::vector<std::pair<std::string, std::string>> made;
    std::string note, cfg_text;
    if (gguf_is_file(config_dir)) {
        const dtype shown = keep ? m.tensors[0].type : out_t;
        PEFT_TRY(gguf_hf_files(config_dir, m.hp, shown == PEFT_DTYPE_BF16 ? "bfloat16" : shown == PEFT_DTYPE_F16 ? "float16" : "float32",
                               made, note));
        if (!note.empty()) std::fprintf(stderr, "peft train: note: %s", note.c_str());
        cfg_text = made[0].second;
        made.erase(made.begin());
    }
    if (residual_init.empty() && cfg_text.empty()) {
        PEFT_TRY(copy_file_atomic(config_dir + "/config.json", dir + "/config.json"));
    } else if (residual_init.empty()) {
        PEFT_TRY(write_file_atomic(dir + "/config.json", cfg_text));
    } else {
        // transformers keeps unknown config keys as attributes; peft.cpp's loader reads this one
        // to accept the adapter saved beside it (io/peft_format.cpp check_residual_base)
        json_document cfg;
        if (cfg_text.empty()) PEFT_TRY(cfg.parse_file(config_dir + "/config.json"));
        else PEFT_TRY(cfg.parse(cfg_text.data(), cfg_text.size(), config_dir));
        json_document extra;
        const std::string extra_text = "{\"peft_residual_init\":" + json_quote(residual_init) + "}";
        PEFT_TRY(extra.parse(extra_text.data(), extra_text.size(), "peft_residual_init"));
        PEFT_TRY(write_file_atomic(dir + "/config.json",
                                   json_dump_python(cfg.root(), 2, {{"peft_residual_init", extra.root().get("peft_residual_init")}}) + "\n"));
    }
    std::error_code ec;
    if (gguf_is_file(tokenizer_dir)) {
        for (const auto & [name, text] : made) PEFT_TRY(write_file_atomic(dir + "/" + name, text));
        return {};
    }
    const std::string tdir = fs::is_directory(tokenizer_dir, ec) ? tokenizer_dir : fs::path(tokenizer_dir).parent_path().string();
    for (const std::string & name : hf_companion_files()) {
        const std::string src = tdir + "/" + name;
        if (fs::is_regular_file(src, ec)) PEFT_TRY(copy_file_atomic(src, dir + "/" + name));
    }
    return {};
}

namespace {

// One `peft train` run, phase by phase: open_inputs (output_dir, model, tokenizer, data),
// attach (adapter or full: what trains, the optimizer, the schedule), resume (a fresh state or a
// checkpoint), run (one optimizer step at a time, then the step callbacks: metrics and progress,
// eval, checkpoint) and finish (final eval, weights, report). The members are what passes from
// one phase to the next.
struct train_session {
    const train_options & o;
    train_summary &       out;
    const dist_comm &     comm;
    double                t_begin = now_s();
    output_lock           lock;
    llama_model           m;
    std::string           tok_path;
    std::unique_ptr<tokenizer> tok;
    int64_t               T = 0;
    data_rows             train, held;
    int64_t               n_samples = 0;
    adapter_set           aset;
    std::vector<optim_param> params;
    std::vector<named_f32> state_params;   // adapters: every tensor, saved in trainer_state
    std::vector<named_f32> model_params;   // full: the model's tensors, resumed from model.safetensors
    int64_t               n_trainable = 0, n_total = 0;
    int64_t               B = 0, GA = 0, n_micro_epoch = 0, steps_per_epoch = 0, total = 0;
    train_config          tc;
    std::unique_ptr<optimizer> opt;   // AdamW, or GaLore's (optimizer: galore_adamw)
    llama_state           s;
    trainer_state         ts;
    rng                   gen;   // the trainer's generator: epoch orders
    bool                  resumed = false;
    std::vector<report_point> train_pts, eval_pts;
    std::string           metrics_path;
    metrics_log           mlog;
    progress_bar          bar;
    // what the step callbacks saw of the last step
    bool                  evaluated_now = false, saved_now = false, stopped = false;

    train_session(const train_options & opt_, train_summary & out_, const dist_comm & c)
        : o(opt_), out(out_), comm(c), gen(opt_.seed ^ 0x7261696e6572ull) {}

    // Calibration data for inits that ask for it (CorDA): read with this run's tokenizer and
    // sequence_len, one sample per row, in file order. An empty path means the training rows
    // themselves, as loaded (Deep LoRA's default).
    struct calibration : calibration_source {
        train_session & t;
        explicit calibration(train_session & ts) : t(ts) {}
        status run(const std::string & path, int64_t n_samples, const target_info * targets, int64_t n, calibration_observer & obs) override {
            if (path.empty()) {
                info("calibration: " + std::to_string(std::min(n_samples, t.train.n_rows)) + " training rows through " +
                     std::to_string(n) + " target modules");
                return calibrate_rows(t.m, t.train, n_samples, t.o.micro_batch_size, targets, n, obs);
            }
            data_options d;
            d.max_len = t.T;
            d.pack = false;
            d.shuffle = false;
            d.train_on_inputs = true;   // every token of a calibration sample counts
            d.chat_template = t.o.chat_template;
            d.vocab_size = t.m.hp.n_vocab;
            dataset ds;
            PEFT_TRY(dataset_load(path, *t.tok, d, ds));
            PEFT_TRY(check_token_ids(ds.train, t.m.hp.n_vocab, path));
            info("calibration: " + std::to_string(std::min(n_samples, ds.train.n_rows)) + " samples of " + path + " through " +
                 std::to_string(n) + " target modules");
            return calibrate_rows(t.m, ds.train, n_samples, t.o.micro_batch_size, targets, n, obs);
        }
        status train_probe(double fraction, int64_t steps, adapter_module * const * mods, const target_info * targets, int64_t n,
                           calibration_observer & obs) override {
            info("probe training: LoRA on " + std::to_string(n) + " target modules, " + fmt("%.3g", fraction) + " of the training rows");
            train_config c;
            t.optimizer_settings(c);
            return calibrate_train_rows(t.m, t.train, fraction, t.o.micro_batch_size, steps, c, mods, targets, n, obs);
        }
    };

    status open_inputs();
    status attach();
    status resume();
    status run();
    status finish();

    void start_epoch(int64_t epoch);
    // the run's AdamW and clipping settings (the step loop's, and probe training's)
    void optimizer_settings(train_config & c) const;
    status run_eval(int64_t step);
    status save_checkpoint_in(const std::string & parent);
    status write_final(const std::string & dir);
    // step callbacks, in order, after each optimizer step
    status log_step(const step_result & r, int64_t step_tokens, double seconds);
    status maybe_eval();
    status maybe_checkpoint();
    // SIGINT on any rank stops every rank after the same step
    bool stop_requested() const;
};

status train_session::open_inputs() {
    if (comm.writer()) {
        PEFT_TRY(claim_output_dir(o, lock));   // from here on no other run writes into output_dir
        for (const std::string & d : checkpoint_remove_stale(o.output_dir)) info("removed " + d + ", left by an interrupted checkpoint save");
    }
    threads_set(o.threads);
    if (o.full() && o.random_init) {
        llama_hparams hp;
        PEFT_TRY(llama_hparams_load(o.base_model + "/config.json", hp));
        PEFT_TRY(llama_init_random(m, hp, true, o.seed));
    } else {
        // adapters train over a quantized GGUF base as it is stored; full fine-tuning would need
        // a dequantized f32 copy of it, which is what a quantized base is meant to avoid
        if (o.full() && gguf_is_file(o.base_model)) PEFT_TRY(gguf_require_unquantized(o.base_model, "full fine-tuning"));
        quant_options qo;
        PEFT_TRY(quant_options_parse(o.bnb_4bit_quant_type, o.bnb_4bit_compute_dtype, o.bnb_4bit_use_double_quant, "config", qo));
        PEFT_TRY(llama_load(m, o.base_model, o.full(), o.load_in_4bit ? &qo : nullptr));
    }
    linear_set_bf16_compute(o.bf16);
    if (o.bf16) llama_frozen_to_bf16(m);
    const llama_hparams & hp = m.hp;
    tok_path = o.tokenizer.empty() ? o.base_model : o.tokenizer;
    status st = tokenizer::load(tok_path, tok);
    if (!st.ok()) {
        if (st.hint.empty()) st.hint = "put tokenizer.json next to the model, or set tokenizer_config: DIR";
        return st;
    }
    T = o.sequence_len > 0 ? o.sequence_len : std::min<int64_t>(2048, hp.max_position);
    if (T > hp.max_position) {
        info("warning: sequence_len " + std::to_string(T) + " exceeds max_position_embeddings " + std::to_string(hp.max_position));
    }
    data_options dopt;
    dopt.max_len = T;
    dopt.pack = o.sample_packing;
    dopt.train_on_inputs = o.train_on_inputs;
    dopt.chat_template = o.chat_template;
    dopt.shuffle = true;
    dopt.seed = o.seed;
    dopt.held_out_fraction = o.val_set_size;
    dopt.skip_bad_lines = o.skip_bad_lines;
    dopt.vocab_size = hp.n_vocab;
    train.T = held.T = T;
    for (const dataset_spec & ds : o.datasets) {
        dataset d;
        PEFT_TRY(dataset_load(ds.path, *tok, dopt, d));
        for (const std::string & w : d.warnings) info("warning: " + w);
        PEFT_TRY(check_token_ids(d.train, hp.n_vocab, ds.path));
        PEFT_TRY(check_token_ids(d.held_out, hp.n_vocab, ds.path));
        append_rows(train, d.train);
        append_rows(held, d.held_out);
        n_samples += d.n_samples;
        if (!d.template_name.empty()) info(ds.path + ": chat template " + d.template_name);
    }
    for (const dataset_spec & ds : o.test_datasets) {
        data_options t = dopt;
        t.shuffle = false;
        t.held_out_fraction = 0.0;
        dataset d;
        PEFT_TRY(dataset_load(ds.path, *tok, t, d));
        PEFT_TRY(check_token_ids(d.train, hp.n_vocab, ds.path));
        append_rows(held, d.train);
    }
    if (train.n_rows == 0) return make_error(PEFT_STATUS_FORMAT, o.datasets[0].path, "no training rows");
    // data parallel: the same job on every rank, or none
    PEFT_TRY(dist_check_same(comm, "configuration", config_to_json(o)));
    PEFT_TRY(dist_check_same(comm, "training data", fingerprint(train) + " " + fingerprint(held)));
    if (comm.active()) info("data parallel: " + std::to_string(comm.size) + " ranks, each " + std::to_string(o.micro_batch_size) + " rows of every micro-batch");
    return {};
}

status train_session::attach() {
    for (const llama_tensor & t : m.tensors) n_total += t.numel();
    if (o.full()) {
        params = llama_optim_params(m);
        for (optim_param & p : params) {
            // As transformers' Trainer: no weight decay on norms and biases.
            p.decay = p.name.find("norm") == std::string::npos && !(p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0);
            n_trainable += p.n;
        }
        for (llama_tensor & t : m.tensors) model_params.push_back({t.name, (float *) t.data, t.shape});
    } else {
        json_document cfg;
        PEFT_TRY(cfg.parse(o.adapter_json.data(), o.adapter_json.size(), "adapter configuration"));
        // resuming: inits that derive from the base (PiSSA's SVD) are restored from the checkpoint
        calibration calib(*this);
        PEFT_TRY(adapters_attach(m, cfg.root(), o.seed, aset, !o.resume_from_checkpoint.empty(), &calib));
        for (param_ref & p : adapter_set_params(aset)) {
            named_f32 nf{p.name, p.value, p.shape};
            if (p.value) state_params.push_back(nf);
            n_total += nf.numel();
        }
        for (param_ref & p : adapter_set_state_tensors(aset)) state_params.push_back({p.name, p.value, p.shape});
        params = adapter_optim_params(aset);
        for (const optim_param & q : params) n_trainable += q.n;
        adapters_set_training(aset, true);
    }
    if (params.empty()) return make_error(PEFT_STATUS_CONFIG, "config", "nothing to train: the adapter has no trainable parameters");

    B = o.micro_batch_size;
    GA = o.gradient_accumulation_steps;
    // a micro-batch is B rows on each of the ranks
    n_micro_epoch = (train.n_rows + B * comm.size - 1) / (B * comm.size);
    steps_per_epoch = (n_micro_epoch + GA - 1) / GA;
    total = o.max_steps > 0 ? o.max_steps : o.num_epochs * steps_per_epoch;
    optimizer_settings(tc);
    if (!lr_schedule_from_name(o.lr_scheduler, &tc.schedule)) {
        return make_mismatch(PEFT_STATUS_CONFIG, "config", "key 'lr_scheduler'", "constant, linear or cosine", o.lr_scheduler);
    }
    tc.total_steps = total;
    tc.warmup_steps = o.warmup_steps > 0 ? o.warmup_steps : (int64_t) std::ceil(o.warmup_ratio * (double) total);
    tc.comm = &comm;
    tc.per_layer_update = o.galore_per_layer;   // only with galore_adamw (config_build)
    if (o.galore_per_layer) release_gradients(params);
    if (o.optimizer == "galore_adamw") {
        galore_config gc;
        gc.rank = o.galore_rank;
        gc.update_proj_gap = o.galore_update_proj_gap;
        gc.scale = (float) o.galore_scale;
        gc.targets = galore_split_targets(o.galore_target_modules);
        (void) galore_proj_from_name(o.galore_proj_type, &gc.proj_type);   // checked by config_build
        (void) galore_svd_from_name(o.galore_svd, &gc.svd);
        gc.svd_niter = (int) o.galore_svd_niter;
        auto g = std::make_unique<galore_adamw>();
        PEFT_TRY(g->init(params, tc.opt, gc));
        opt = std::move(g);
    } else {
        auto a = std::make_unique<adamw>();
        PEFT_TRY(a->init(params, tc.opt));
        opt = std::move(a);
    }
    return llama_state_init(s, m, B, T, o.gradient_checkpointing);
}

void train_session::optimizer_settings(train_config & c) const {
    c.opt.lr = (float) o.learning_rate;
    c.opt.beta1 = (float) o.adam_beta1;
    c.opt.beta2 = (float) o.adam_beta2;
    c.opt.eps = (float) o.adam_epsilon;
    c.opt.weight_decay = (float) o.weight_decay;
    c.max_grad_norm = (float) o.max_grad_norm;
}

void train_session::start_epoch(int64_t epoch) {
    ts.epoch = epoch;
    ts.micro_in_epoch = 0;
    ts.epoch_order.resize((size_t) train.n_rows);
    for (int64_t i = 0; i < train.n_rows; i++) ts.epoch_order[(size_t) i] = (int32_t) i;
    for (size_t i = ts.epoch_order.size() - 1; i > 0; --i) {
        const uint64_t r = ((uint64_t) gen.next_u32() << 32) | gen.next_u32();
        std::swap(ts.epoch_order[i], ts.epoch_order[(size_t) (r % (i + 1))]);
    }
}

status train_session::resume() {
    ts.total_steps = total;
    ts.data_fingerprint = fingerprint(train);
    metrics_path = o.output_dir + "/metrics.jsonl";
    if (!o.resume_from_checkpoint.empty()) {
        std::string dir = o.resume_from_checkpoint;
        if (dir == "latest") {
            std::vector<std::string> warnings;
            status st = checkpoint_find_latest(o.output_dir, dir, warnings);
            for (const std::string & w : warnings) info("warning: " + w);
            PEFT_TRY(st);
        } else {
            PEFT_TRY(checkpoint_verify(dir));
        }
        trainer_state loaded;
        PEFT_TRY(trainer_state_load(dir + "/trainer_state.safetensors", loaded, *opt, state_params));
        if (o.full()) PEFT_TRY(load_named_f32(dir + "/model.safetensors", model_params));
        if (loaded.data_fingerprint != ts.data_fingerprint) {
            status st = make_error(PEFT_STATUS_CONFIG, dir, "the training rows differ from the ones this checkpoint was trained on");
            st.hint = "resume with the same datasets, sequence_len, sample_packing, val_set_size and seed";
            return st;
        }
        if (loaded.epoch_order.size() != (size_t) train.n_rows) {
            return make_error(PEFT_STATUS_FORMAT, dir, "data.epoch_order does not match the number of training rows");
        }
        for (int32_t r : loaded.epoch_order) {
            if (r < 0 || r >= train.n_rows) return make_error(PEFT_STATUS_FORMAT, dir, "data.epoch_order holds a row index out of range");
        }
        if (!gen.load(loaded.rng_state)) return make_error(PEFT_STATUS_FORMAT, dir, "metadata 'rng' is not a generator state");
        if (loaded.module_states.size() != aset.modules.size()) {
            return make_mismatch(PEFT_STATUS_FORMAT, dir, "adapter module states", std::to_string(aset.modules.size()),
                                 std::to_string(loaded.module_states.size()));
        }
        for (size_t i = 0; i < aset.modules.size(); i++) {
            if (!aset.modules[i]->set_state(loaded.module_states[i])) {
                return make_error(PEFT_STATUS_FORMAT, dir, "module_state." + std::to_string(i) + " cannot be read by " + aset.targets[i].path);
            }
        }
        if (!o.full()) {
            PEFT_TRY(adapters_restore(m, aset));
            if (!adapter_set_state_tensors(aset).empty()) info("adapter state restored from the checkpoint (bases rebuilt from it: no SVD or calibration rerun)");
        }
        const int64_t total_here = ts.total_steps;
        ts = loaded;
        ts.total_steps = total_here;
        resumed = true;
        out.start_step = ts.step;
        info("resumed from " + dir + " at step " + std::to_string(ts.step));
        // Keep the metrics history up to the checkpoint (later lines belong to the lost future).
        std::ifstream mf(metrics_path);
        std::string line, kept;
        while (mf && std::getline(mf, line)) {
            json_document d;
            if (!d.parse(line.data(), line.size(), metrics_path).ok() || !d.root().is_object()) continue;
            const json_value r = d.root();
            const int64_t step = r.get("step").as_int(-1);
            if (step < 0 || step > ts.step) continue;
            kept += line + "\n";
            if (r.get("loss").is_number()) train_pts.push_back({(double) step, r.get("loss").as_double()});
            if (r.get("eval_loss").is_number()) eval_pts.push_back({(double) step, r.get("eval_loss").as_double()});
        }
        if (comm.writer()) PEFT_TRY(write_file_atomic(metrics_path, kept));
    } else {
        start_epoch(0);
        if (!checkpoint_list(o.output_dir).empty()) {
            info("warning: " + o.output_dir + " already holds checkpoints of an earlier run; those with the same step are replaced");
        }
    }
    if (comm.writer()) {
        PEFT_TRY(mlog.open(metrics_path, resumed));
        PEFT_TRY(write_file_atomic(o.output_dir + "/train_config.json", config_to_json(o) + "\n"));
    }
    info(std::string(o.full() ? "full fine-tuning" : "adapter " + o.adapter) + " | trainable params: " + std::to_string(n_trainable) +
         " || all params: " + std::to_string(n_total) + " || trainable%: " + fmt("%.4f", 100.0 * (double) n_trainable / (double) n_total));
    info("data: " + std::to_string(n_samples) + " samples -> " + std::to_string(train.n_rows) + " training rows of " + std::to_string(T) +
         " tokens, " + std::to_string(held.n_rows) + " held-out rows; " + std::to_string(steps_per_epoch) + " steps per epoch, " +
         std::to_string(total) + " steps, " + std::to_string(threads_get()) + " threads");
    return {};
}

status train_session::run_eval(int64_t step) {
    if (held.n_rows == 0) return {};
    if (!o.full()) adapters_set_training(aset, false);
    eval_result er;
    status st = evaluate_rows(m, s, held, er);
    if (!o.full()) adapters_set_training(aset, true);
    PEFT_TRY(st);
    if (er.n_tokens == 0) return make_error(PEFT_STATUS_FORMAT, "held-out data", "no scored tokens: nothing to evaluate");
    out.has_eval = true;
    out.eval_loss = er.loss();
    out.eval_perplexity = er.perplexity();
    out.eval_tokens = er.n_tokens;
    eval_pts.push_back({(double) step, er.loss()});
    return mlog.write("{\"step\": " + std::to_string(step) + ", \"eval_loss\": " + f17(er.loss()) + ", \"eval_perplexity\": " +
                      f17(er.perplexity()) + ", \"eval_tokens\": " + std::to_string(er.n_tokens) + "}");
}

// checkpoint-N in `parent` (output_dir, or a rescue directory when output_dir fails)
status train_session::save_checkpoint_in(const std::string & parent) {
    const std::string dir = parent + "/checkpoint-" + std::to_string(ts.step);
    ts.rng_state = gen.save();
    ts.module_states.clear();
    for (auto & mod : aset.modules) ts.module_states.push_back(mod->state());
    atomic_dir ad;
    PEFT_TRY(ad.begin(dir));
    if (o.full()) PEFT_TRY(write_hf_model_dir(ad.path(), m, "f32", o.base_model, tok_path));
    else PEFT_TRY(adapter_save(ad.path(), aset, o.base_model));
    PEFT_TRY(write_file_atomic(ad.path() + "/train_config.json", config_to_json(o) + "\n"));
    PEFT_TRY(trainer_state_save(ad.path() + "/trainer_state.safetensors", ts, *opt, state_params));   // last: checksums the rest
    PEFT_TRY(ad.commit());
    out.last_checkpoint = dir;
    if (parent == o.output_dir) checkpoint_prune(o.output_dir, o.save_total_limit);
    return {};
}

status train_session::write_final(const std::string & dir) {
    if (o.full()) return write_hf_model_dir(dir, m, o.save_dtype, o.base_model, tok_path);
    PEFT_TRY(adapter_save(dir, aset, o.base_model));
    // an adapter of the residual base (save_residual_model) travels with that base
    const char * res = aset.method->residual_init();
    if (!res) return {};
    const std::string rdir = dir + "/residual_model";
    std::error_code ec;
    fs::create_directories(rdir, ec);
    if (ec) return make_error(PEFT_STATUS_IO, rdir, "cannot create: " + ec.message());
    return write_hf_model_dir(rdir, m, "keep", o.base_model, tok_path, res);
}

status train_session::log_step(const step_result & r, int64_t step_tokens, double seconds) {
    const double tps = seconds > 0 ? (double) step_tokens / seconds : 0.0;
    out.losses.push_back(r.loss);
    out.grad_norms.push_back(r.grad_norm);
    out.tokens += step_tokens;
    out.steps_done = ts.step;
    train_pts.push_back({(double) ts.step, (double) r.loss});
    const bool logged = ts.step % o.logging_steps == 0 || ts.step == total;
    if (logged) {
        const double epoch_f = (double) ts.epoch + (double) ts.micro_in_epoch / (double) n_micro_epoch;
        PEFT_TRY(mlog.write("{\"step\": " + std::to_string(ts.step) + ", \"epoch\": " + fmt("%.4f", epoch_f) + ", \"loss\": " + f9(r.loss) +
                            ", \"lr\": " + f9(r.lr) + ", \"grad_norm\": " + f9(r.grad_norm) + ", \"tokens\": " + std::to_string(step_tokens) +
                            ", \"tokens_per_s\": " + fmt("%.1f", tps) + ", \"elapsed_s\": " + fmt("%.3f", now_s() - t_begin) + "}"));
    }
    bar.update(ts.step, r.loss, r.lr, r.grad_norm, tps, logged);
    return {};
}

status train_session::maybe_eval() {
    evaluated_now = false;
    if (o.eval_steps <= 0 || ts.step % o.eval_steps != 0) return {};
    PEFT_TRY(run_eval(ts.step));
    evaluated_now = out.has_eval;
    if (evaluated_now) {
        bar.message("eval at step " + std::to_string(ts.step) + ": loss " + fmt("%.4f", out.eval_loss) + ", perplexity " +
                    fmt("%.3f", out.eval_perplexity));
    }
    return {};
}

status train_session::maybe_checkpoint() {
    saved_now = false;
    if (o.save_steps <= 0 || ts.step % o.save_steps != 0 || !comm.writer()) return {};
    status st = save_checkpoint_in(o.output_dir);
    if (!st.ok()) {
        bar.finish();
        st.message = "saving checkpoint-" + std::to_string(ts.step) + " failed: " + st.message;
        if (st.hint.empty()) st.hint = "free disk space; earlier checkpoints in " + o.output_dir + " are intact";
        return st;
    }
    saved_now = true;
    return {};
}

bool train_session::stop_requested() const {
    if (!comm.active()) return g_stop != 0;
    double any = g_stop ? 1.0 : 0.0;
    dist_sum(comm, &any, 1);
    return any > 0;
}

status train_session::run() {
    bar.start(o.progress && comm.writer(), total, ts.step);
    signal_guard sig;
    std::vector<batch_buffers> bufs((size_t) GA);
    for (batch_buffers & b : bufs) b.init(B, T);
    std::vector<llama_batch> batches((size_t) GA);
    std::vector<int64_t> rows((size_t) B);
    if (!resumed && o.eval_steps > 0) {
        PEFT_TRY(run_eval(0));
        if (out.has_eval) bar.message("eval at step 0: loss " + fmt("%.4f", out.eval_loss) + ", perplexity " + fmt("%.3f", out.eval_perplexity));
    }
    while (ts.step < total && !(stopped = stop_requested())) {
        if (ts.micro_in_epoch >= n_micro_epoch) start_epoch(ts.epoch + 1);
        const int64_t n_mb = std::min(GA, n_micro_epoch - ts.micro_in_epoch);
        int64_t step_tokens = 0;
        for (int64_t k = 0; k < n_mb; k++) {
            // this rank's B rows of the micro-batch's B * ranks (fewer or none at the epoch's end)
            const int64_t first = ((ts.micro_in_epoch + k) * comm.size + comm.rank) * B;
            const int64_t n = std::max<int64_t>(0, std::min(B, train.n_rows - first));
            for (int64_t i = 0; i < n; i++) rows[(size_t) i] = ts.epoch_order[(size_t) (first + i)];
            bufs[(size_t) k].fill(train, rows.data(), n);
            batches[(size_t) k] = bufs[(size_t) k].batch();
            step_tokens += bufs[(size_t) k].n_tokens();
        }
        const double t0 = now_s();
        step_result r;
        status st = train_step(m, s, *opt, tc, batches.data(), n_mb, ts.step, r, o.full() ? nullptr : &aset);
        if (!st.ok()) {
            bar.finish();
            st.message += "; training stopped at step " + std::to_string(ts.step + 1) + " of " + std::to_string(total) +
                          (out.last_checkpoint.empty() ? "" : "; the last good checkpoint is " + out.last_checkpoint);
            return st;
        }
        ts.micro_in_epoch += n_mb;
        ts.step++;
        if (comm.active()) {   // tokens/s of the whole job
            double all = (double) step_tokens;
            dist_sum(comm, &all, 1);
            step_tokens = (int64_t) all;
        }
        PEFT_TRY(log_step(r, step_tokens, now_s() - t0));
        PEFT_TRY(maybe_eval());
        PEFT_TRY(maybe_checkpoint());
    }
    bar.finish();
    out.total_steps = total;
    out.steps_done = ts.step;
    if (!stopped || ts.step >= total) return {};
    // interrupted: a checkpoint to continue from, then a distinct status (exit 130)
    if (!saved_now && comm.writer()) {
        status st = save_checkpoint_in(o.output_dir);
        if (!st.ok()) {
            st.message = "interrupted, and saving checkpoint-" + std::to_string(ts.step) + " failed: " + st.message;
            return st;
        }
    }
    out.seconds = now_s() - t_begin;
    status st = make_error(PEFT_STATUS_INTERRUPTED, o.output_dir,
                           "interrupted at step " + std::to_string(ts.step) + " of " + std::to_string(total) + "; checkpoint saved to " +
                               out.last_checkpoint);
    st.hint = "continue with: peft train CONFIG --resume_from_checkpoint " + out.last_checkpoint;
    return st;
}

status train_session::finish() {
    if (!evaluated_now && held.n_rows > 0) {
        PEFT_TRY(run_eval(ts.step));
        info("eval at step " + std::to_string(ts.step) + ": loss " + fmt("%.4f", out.eval_loss) + ", perplexity " + fmt("%.3f", out.eval_perplexity));
    }
    if (!comm.writer()) return {};
    PEFT_TRY(save_final_or_rescue(
        o.output_dir, [&](const std::string & dir) { return write_final(dir); },
        [&](const std::string & parent) { return save_checkpoint_in(parent); }));
    out.seconds = now_s() - t_begin;

    report_data rep;
    rep.title = (o.full() ? std::string("Full fine-tuning") : "Adapter " + o.adapter) + " of " + o.base_model;
    rep.train_loss = train_pts;
    rep.eval_loss = eval_pts;
    rep.results.push_back({"steps", std::to_string(ts.step) + " / " + std::to_string(total)});
    if (!out.losses.empty()) rep.results.push_back({"final train loss", fmt("%.4f", out.losses.back())});
    if (out.has_eval) {
        rep.results.push_back({"final eval loss", fmt("%.4f", out.eval_loss)});
        rep.results.push_back({"final eval perplexity", fmt("%.3f", out.eval_perplexity)});
        rep.results.push_back({"eval tokens", std::to_string(out.eval_tokens)});
    }
    rep.results.push_back({"trainable parameters", std::to_string(n_trainable) + " of " + std::to_string(n_total)});
    rep.results.push_back({"training rows", std::to_string(train.n_rows) + " x " + std::to_string(T) + " tokens"});
    rep.results.push_back({"tokens trained (this run)", std::to_string(out.tokens)});
    rep.results.push_back({"wall time (this run)", duration_text(out.seconds)});
    if (out.seconds > 0) rep.results.push_back({"throughput", fmt("%.0f tokens/s", (double) out.tokens / out.seconds)});
    rep.results.push_back({"threads", std::to_string(threads_get())});
    rep.config_json = config_to_json(o);
    if (!o.full()) aset.method->tables(rep.tables);
    PEFT_TRY(report_write(o.output_dir + "/report.html", rep));
    info("done: " + std::to_string(ts.step) + " steps in " + duration_text(out.seconds) + "; " +
         (o.full() ? "model" : "adapter") + " in " + o.output_dir + ", report " + o.output_dir + "/report.html");
    return {};
}

} // namespace

status train_run(const train_options & o, train_summary & out, const dist_comm & comm) {
    out = train_summary{};
    g_stop = 0;
    g_quiet = !comm.writer();
    train_session t(o, out, comm);
    PEFT_TRY(t.open_inputs());   // everything that can fail on bad input comes before long work
    PEFT_TRY(t.attach());
    PEFT_TRY(t.resume());
    PEFT_TRY(t.run());
    return t.finish();
}

} // namespace peft
