// engine.h: the scheduler behind `peft serve`: one base model, any number of named LoRA-family
// adapters loaded on it unmerged (with their layer hooks, each request routed by its own prompt), and a decode loop that runs every active request in one
// forward per step (llama_infer_eval_multi), each row through its own adapter. Requests wait in
// a bounded queue for one of `parallel` slots (each slot owns a KV cache); a request that is
// cancelled (its client went away) frees its slot at the next step.
// Not here: HTTP and the OpenAI JSON (serve/http.h), the forward itself (model/llama_infer.h).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "adapters/adapter_set.h"
#include "core/status.h"
#include "model/llama.h"
#include "model/sample.h"
#include "tokenizer/tokenizer.h"

namespace peft {

// One request as the engine sees it, shared between the HTTP thread that waits on it and the
// engine thread that fills it. Inputs are set before serve_engine::submit and not touched after.
struct serve_job {
    // inputs
    int                      adapter = -1;      // index into serve_engine::adapters(); -1 = the base
    std::vector<int32_t>     prompt;
    int64_t                  max_tokens = 16;
    sampler_config           sampling;
    std::vector<std::string> stop;              // stop strings (not part of the returned text)
    std::vector<int32_t>     stop_ids;          // stop tokens (EOS, end of turn); empty with ignore_eos
    // outputs, under mu; cv is notified on every change
    std::mutex               mu;
    std::condition_variable  cv;
    std::string              text;              // released text so far (never shrinks)
    std::vector<int32_t>     tokens;            // generated tokens (stop tokens excluded)
    std::string              finish_reason;     // "stop" | "length" once done
    std::string              error;             // non-empty: failed
    bool                     done = false;
    std::atomic<bool>        cancelled{false};  // set by the client side: stop and free the slot
};

struct serve_options {
    int64_t parallel = 4;    // slots: requests decoded together
    int64_t queue = 16;      // requests waiting for a slot; more are refused
    int64_t ctx = 0;         // positions per slot; 0 = min(max_position_embeddings, 4096)
    std::string tokenizer;   // tokenizer directory or file; empty = the model directory
};

struct serve_adapter {
    std::string                   name, dir;
    adapter_set                   set;
    std::vector<adapter_module *> table;   // [n_layer * LLAMA_PROJ_COUNT], as llama_model::adapters
    llama_layer_hook *            hook = nullptr;   // its method's layer hook (a prompt-routed mixture), as llama_model::layer_hook
};

class serve_engine {
public:
    serve_engine();
    ~serve_engine();
    serve_engine(const serve_engine &) = delete;
    serve_engine & operator=(const serve_engine &) = delete;

    // Loads the model, its tokenizer and each NAME=DIR adapter (names unique, not the base's),
    // plans the slots. The decode thread starts here and does the loading itself.
    status init(const std::string & model_dir, const std::vector<std::pair<std::string, std::string>> & adapters,
                const serve_options & o);
    // Queues a job; false (and nothing queued) when every slot is busy and `queue` jobs wait. Jobs must be checked
    // first (check_job).
    bool submit(const std::shared_ptr<serve_job> & job);
    // Context and adapter checks of a job before it is queued (a prompt beyond the context).
    status check_job(const serve_job & job) const;
    // Stops the decode thread; jobs still running end with an error.
    void shutdown();

    const tokenizer & tok() const { return *tok_; }
    const std::string & base_name() const { return base_name_; }
    const std::vector<std::unique_ptr<serve_adapter>> & adapters() const { return adapters_; }
    int find_adapter(const std::string & name) const;   // -1 base, -2 unknown
    const std::vector<int32_t> & eos_ids() const { return eos_; }
    int64_t ctx() const { return ctx_; }
    int64_t parallel() const { return opt_.parallel; }
    // Decode steps run and rows they carried (rows / steps = the mean batch).
    int64_t steps() const { return steps_; }
    int64_t rows() const { return rows_; }

private:
    struct slot;
    status load(const std::string & model_dir, const std::vector<std::pair<std::string, std::string>> & adapters);
    void loop();
    void step(std::vector<slot *> & active);

    serve_options                               opt_;
    llama_model                                 model_;
    std::unique_ptr<tokenizer>                  tok_;
    std::string                                 base_name_;
    std::vector<std::unique_ptr<serve_adapter>> adapters_;
    std::vector<int32_t>                        eos_;
    int64_t                                     ctx_ = 0;
    std::vector<std::unique_ptr<slot>>          slots_;
    std::shared_ptr<void>                       batch_;   // llama_infer_batch
    std::mutex                                  mu_;
    std::condition_variable                     cv_;
    std::deque<std::shared_ptr<serve_job>>      queue_;
    bool                                        stopping_ = false;
    std::thread                                 thread_;
    std::atomic<int64_t>                        steps_{0}, rows_{0};
    std::atomic<int64_t>                        n_active_{0};   // jobs in slots
};

// Parses NAME=DIR (a --adapter value); a bare DIR is named after its last path component.
status serve_parse_adapter_arg(const std::string & arg, std::string & name, std::string & dir);

} // namespace peft
