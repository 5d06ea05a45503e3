// engine.cpp: the batched multi-adapter decode loop of `peft serve` (engine.h). One thread owns
// the model: each step gathers every active slot (a prompt to prefill, or the last sampled token),
// runs them through one llama_infer_eval_multi, then samples per slot and releases the text that
// can no longer change (whole UTF-8 characters, not a possible start of a stop string).
#include "serve/engine.h"

#include <future>

#include <algorithm>
#include <filesystem>

#include "core/threads.h"
#include "model/generation.h"
#include "model/llama_infer.h"

namespace peft {

struct serve_engine::slot {
    llama_infer_state          is;
    sampler                    smp;
    std::shared_ptr<serve_job> job;
    std::vector<int32_t>       pending;   // tokens the next step appends (the prompt, then one)
    std::vector<int32_t>       history;   // prompt + generated (repetition penalty)
    std::vector<int32_t>       gen;       // generated tokens
    std::vector<float>         logits;    // [V]
    std::string                released;  // text handed to the job so far
};

namespace {

void finish(serve_job & job, const std::string & reason, const std::string & error) {
    std::lock_guard<std::mutex> lk(job.mu);
    job.finish_reason = reason;
    job.error = error;
    job.done = true;
    job.cv.notify_all();
}

// Characters at the end of text that could start one of the stop strings (held back until the
// next token decides).
size_t stop_holdback(const std::string & text, const std::vector<std::string> & stops) {
    size_t hold = 0;
    for (const std::string & s : stops) {
        for (size_t k = std::min(s.size() - 1, text.size()); k > hold; k--) {
            if (text.compare(text.size() - k, k, s, 0, k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}

} // namespace

status serve_parse_adapter_arg(const std::string & arg, std::string & name, std::string & dir) {
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) {
        dir = arg;
        name = std::filesystem::path(arg).filename().string();
        if (name.empty()) name = std::filesystem::path(arg).parent_path().filename().string();
    } else {
        name = arg.substr(0, eq);
        dir = arg.substr(eq + 1);
    }
    if (name.empty() || dir.empty()) {
        status st = make_error(PEFT_STATUS_ARGUMENT, "--adapter", "\"" + arg + "\" names no adapter");
        st.hint = "give --adapter NAME=DIR (NAME is the request's \"model\")";
        return st;
    }
    return status::success();
}

serve_engine::serve_engine() = default;
serve_engine::~serve_engine() { shutdown(); }

status serve_engine::init(const std::string & model_dir, const std::vector<std::pair<std::string, std::string>> & adapters,
                          const serve_options & o) {
    opt_ = o;
    const int threads = threads_get();
    std::promise<status> loaded;
    std::future<status> done = loaded.get_future();
    // The decode thread loads the model as well. OpenMP keeps a pool of workers per thread that
    // opened a parallel region; a second pool (the caller's, idle after loading) makes libgomp
    // throttle the decode team's spin-wait into a futex sleep and wake at every region, which
    // measured ten times slower at 2 threads on 2 cores (serve-bench, tiny model: 152 tok/s).
    thread_ = std::thread([this, &model_dir, &adapters, &loaded, threads] {
        threads_set(threads);
        const status st = load(model_dir, adapters);
        const bool ok = st.ok();
        loaded.set_value(st);   // model_dir and adapters are not used past this point
        if (ok) loop();
    });
    const status st = done.get();
    if (!st.ok()) thread_.join();
    return st;
}

status serve_engine::load(const std::string & model_dir, const std::vector<std::pair<std::string, std::string>> & adapters) {
    if (opt_.parallel < 1 || opt_.queue < 0) return make_error(PEFT_STATUS_ARGUMENT, "--parallel", "at least one slot is needed");
    PEFT_TRY(tokenizer::load(opt_.tokenizer.empty() ? model_dir : opt_.tokenizer, tok_));
    PEFT_TRY(llama_load(model_, model_dir, false));
    base_name_ = std::filesystem::path(model_dir).filename().string();
    if (base_name_.empty()) base_name_ = std::filesystem::path(model_dir).parent_path().filename().string();
    for (const auto & [name, dir] : adapters) {
        if (name == base_name_ || find_adapter(name) >= 0) {
            status st = make_error(PEFT_STATUS_ARGUMENT, "--adapter " + name + "=" + dir, "the name \"" + name + "\" is taken");
            st.hint = "give every adapter its own NAME (the base model is \"" + base_name_ + "\")";
            return st;
        }
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec)) {
            status st = make_error(PEFT_STATUS_IO, dir, "adapter directory not found");
            st.hint = "--adapter takes NAME=DIR with a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)";
            return st;
        }
        if (!std::filesystem::exists(dir + "/adapter_config.json", ec) && std::filesystem::exists(dir + "/config.json", ec)) {
            status st = make_error(PEFT_STATUS_CONFIG, dir, "a whole model (full fine-tuning), not an adapter of the shared base");
            st.hint = "serve it as the base: peft serve --model " + dir;
            return st;
        }
        auto a = std::make_unique<serve_adapter>();
        a->name = name;
        a->dir = dir;
        const size_t replaced = model_.replaced_weights.size();
        model_.adapters.clear();
        PEFT_TRY(adapter_load(dir, model_, a->set));
        if (a->set.method->residual_init() || model_.replaced_weights.size() != replaced) {
            status st = make_error(PEFT_STATUS_CONFIG, dir, "this adapter applies to a residual base it rewrote, not to the shared base");
            st.hint = "serve it alone on its residual model, or save it on the original base (save_residual_model: false)";
            return st;
        }
        a->table = model_.adapters;
        a->hook = model_.layer_hook;
        adapters_.push_back(std::move(a));
    }
    model_.adapters.clear();   // rows pick their table (and hook) per step; the model itself stays the base
    model_.layer_hook = nullptr;
    for (int32_t id : {tok_->eos_id(), (int32_t) model_.hp.eos_id}) {
        if (id >= 0) eos_.push_back(id);
    }
    generation_config_eos(model_dir, eos_);
    ctx_ = opt_.ctx > 0 ? std::min(opt_.ctx, model_.hp.max_position) : std::min<int64_t>(model_.hp.max_position, 4096);
    for (int64_t i = 0; i < opt_.parallel; i++) {
        auto s = std::make_unique<slot>();
        PEFT_TRY(llama_infer_init(s->is, model_, ctx_, 1));   // its cache; rows run in the shared batch scratch
        s->logits.resize((size_t) model_.hp.n_vocab);
        slots_.push_back(std::move(s));
    }
    auto b = std::make_shared<llama_infer_batch>();
    // a hook that routes from whole prompts needs a prompt in one chunk (llama_infer_eval_multi)
    const bool whole = std::any_of(adapters_.begin(), adapters_.end(), [](const auto & a) { return a->hook && a->hook->whole_prompt(); });
    PEFT_TRY(llama_infer_batch_init(*b, model_, whole ? std::max<int64_t>(128, ctx_) : 128, ctx_));
    batch_ = b;
    return status::success();
}

int serve_engine::find_adapter(const std::string & name) const {
    if (name == base_name_) return -1;
    for (size_t i = 0; i < adapters_.size(); i++) {
        if (adapters_[i]->name == name) return (int) i;
    }
    return -2;
}

status serve_engine::check_job(const serve_job & job) const {
    if (job.adapter < -1 || job.adapter >= (int) adapters_.size()) {
        return make_error(PEFT_STATUS_ARGUMENT, "model", "unknown adapter index " + std::to_string(job.adapter));
    }
    if (job.prompt.empty()) return make_error(PEFT_STATUS_ARGUMENT, "prompt", "the prompt encodes to no tokens");
    if ((int64_t) job.prompt.size() >= ctx_) {
        status st = make_error(PEFT_STATUS_ARGUMENT, "prompt", "the prompt is " + std::to_string(job.prompt.size()) +
                               " tokens, which leaves no room in the context of " + std::to_string(ctx_) + " positions");
        st.hint = "shorten the prompt (peft serve --ctx sets the context, up to max_position_embeddings)";
        return st;
    }
    for (int32_t id : job.prompt) {
        if (id < 0 || id >= model_.hp.n_vocab) {
            return make_mismatch(PEFT_STATUS_ARGUMENT, "prompt", "token id", "below vocab_size " + std::to_string(model_.hp.n_vocab),
                                 std::to_string(id));
        }
    }
    if (job.max_tokens < 1) return make_error(PEFT_STATUS_ARGUMENT, "max_tokens", "must be at least 1");
    return status::success();
}

bool serve_engine::submit(const std::shared_ptr<serve_job> & job) {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_ || (int64_t) queue_.size() + n_active_.load() >= opt_.queue + opt_.parallel) return false;
    queue_.push_back(job);
    cv_.notify_all();
    return true;
}

void serve_engine::shutdown() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stopping_ = true;
        cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
}

void serve_engine::loop() {
    threads_set(threads_get());   // OpenMP's thread count is per thread: this one forwards
    std::vector<slot *> active;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !active.empty(); });
            if (stopping_) break;
            for (auto & s : slots_) {
                if (queue_.empty()) break;
                if (std::find(active.begin(), active.end(), s.get()) != active.end()) continue;
                slot & sl = *s;
                sl.job = queue_.front();
                queue_.pop_front();
                llama_infer_reset(sl.is);
                status st = sampler_init(sl.smp, sl.job->sampling);
                if (!st.ok()) {
                    finish(*sl.job, "", st.message);
                    sl.job.reset();
                    continue;
                }
                sl.pending = sl.job->prompt;
                sl.history = sl.job->prompt;
                sl.gen.clear();
                sl.released.clear();
                active.push_back(&sl);
            }
            n_active_ = (int64_t) active.size();
        }
        // a client that went away frees its slot before the next forward
        active.erase(std::remove_if(active.begin(), active.end(), [](slot * s) {
                         if (!s->job->cancelled.load()) return false;
                         finish(*s->job, "", "cancelled");
                         s->job.reset();
                         return true;
                     }), active.end());
        if (!active.empty()) step(active);
        n_active_ = (int64_t) active.size();
    }
    std::lock_guard<std::mutex> lk(mu_);
    for (slot * s : active) finish(*s->job, "", "the server is shutting down");
    for (auto & j : queue_) finish(*j, "", "the server is shutting down");
    queue_.clear();
}

void serve_engine::step(std::vector<slot *> & active) {
    const int64_t V = model_.hp.n_vocab;
    std::vector<llama_infer_seq> seqs(active.size());
    for (size_t i = 0; i < active.size(); i++) {
        slot & s = *active[i];
        const int a = s.job->adapter;
        const serve_adapter * ad = a >= 0 ? adapters_[(size_t) a].get() : nullptr;
        seqs[i] = {&s.is, s.pending.data(), (int64_t) s.pending.size(), ad ? ad->table.data() : nullptr, s.logits.data(),
                   ad ? ad->hook : nullptr};
    }
    status st = llama_infer_eval_multi(model_, *std::static_pointer_cast<llama_infer_batch>(batch_), seqs.data(),
                                       (int64_t) seqs.size());
    steps_++;
    rows_ += (int64_t) seqs.size();
    std::vector<slot *> still;
    for (slot * sp : active) {
        slot & s = *sp;
        serve_job & job = *s.job;
        if (!st.ok()) {
            finish(job, "", st.message);
            s.job.reset();
            continue;
        }
        const int32_t t = sampler_sample(s.smp, s.logits.data(), V, s.history.data(), (int64_t) s.history.size());
        std::string reason;
        if (std::find(job.stop_ids.begin(), job.stop_ids.end(), t) != job.stop_ids.end()) {
            reason = "stop";
        } else {
            s.gen.push_back(t);
            s.history.push_back(t);
        }
        std::string text = tok_->decode(s.gen, true);
        size_t cut = std::string::npos;
        for (const std::string & stop : job.stop) cut = std::min(cut, text.find(stop));
        if (cut != std::string::npos) {
            text.resize(cut);
            reason = "stop";
        }
        if (reason.empty() && ((int64_t) s.gen.size() >= job.max_tokens || s.is.n_past >= s.is.max_ctx)) reason = "length";
        size_t upto = text.size();
        if (reason.empty()) {
            upto = std::min(complete_utf8_prefix(text), text.size() - stop_holdback(text, job.stop));
        }
        {
            std::lock_guard<std::mutex> lk(job.mu);
            // the decoder may rewrite earlier text (rare); released text never changes
            if (upto > s.released.size() && text.compare(0, s.released.size(), s.released) == 0) {
                job.text.append(text, s.released.size(), upto - s.released.size());
                s.released.assign(text, 0, upto);
            }
            job.tokens = s.gen;
            job.cv.notify_all();
        }
        if (!reason.empty()) {
            finish(job, reason, "");
            s.job.reset();
            continue;
        }
        s.pending.assign(1, t);
        still.push_back(sp);
    }
    active.swap(still);
}

} // namespace peft
