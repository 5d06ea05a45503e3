// cmd_serve.cpp: `peft serve`, an OpenAI-style HTTP server for one base model with many
// adapters (serve/engine.h batches the requests, serve/http.h speaks HTTP), and
// `peft serve-bench`: total decode throughput of the same requests batched vs one at a time,
// then a bounded HTTP load test (N clients for T seconds, latency percentiles), as one JSON line.
#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/threads.h"
#include "io/json.h"
#include "serve/engine.h"
#include "serve/http.h"

namespace peft {

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop = true; }

status parse_adapters(const std::vector<std::string> & args, std::vector<std::pair<std::string, std::string>> & out) {
    for (const std::string & a : args) {
        std::string name, dir;
        PEFT_TRY(serve_parse_adapter_arg(a, name, dir));
        out.emplace_back(name, dir);
    }
    return status::success();
}

void add_engine_options(CLI::App & app, std::string & model_dir, std::vector<std::string> & adapters, serve_options & o, int & threads) {
    app.add_option("--model", model_dir, "Hugging Face model directory (config.json + safetensors + tokenizer) or GGUF file")->required();
    app.add_option("--tokenizer", o.tokenizer, "tokenizer directory or file (default: --model)");
    app.add_option("--adapter", adapters, "NAME=DIR: a PEFT adapter, asked for as \"model\": \"NAME\" (repeatable)");
    app.add_option("--parallel", o.parallel, "requests decoded together (slots, one KV cache each)")->check(CLI::Range((int64_t) 1, (int64_t) 256));
    app.add_option("--ctx", o.ctx, "positions per slot (default: max_position_embeddings, at most 4096)")->check(CLI::Range((int64_t) 0, (int64_t) 1 << 20));
    app.add_option("--threads", threads, "threads of the forward (default: all cores)")->check(CLI::Range(0, THREADS_MAX));
}

// Completion requests (greedy, ignore_eos) over `models` in turn, through the engine without HTTP:
// all submitted at once, or each awaited before the next. Returns generated tokens per second.
double engine_round(serve_engine & e, const std::vector<int> & models, const std::vector<int32_t> & prompt, int64_t max_tokens,
                    bool together, int64_t & tokens) {
    std::vector<std::shared_ptr<serve_job>> jobs;
    auto make = [&](int a) {
        auto j = std::make_shared<serve_job>();
        j->adapter = a;
        j->prompt = prompt;
        j->max_tokens = max_tokens;
        return j;
    };
    auto wait = [](serve_job & j) {
        std::unique_lock<std::mutex> lk(j.mu);
        j.cv.wait(lk, [&] { return j.done; });
    };
    const auto t0 = std::chrono::steady_clock::now();
    for (int a : models) {
        jobs.push_back(make(a));
        while (!e.submit(jobs.back())) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (!together) wait(*jobs.back());
    }
    tokens = 0;
    for (auto & j : jobs) {
        wait(*j);
        tokens += (int64_t) j->tokens.size();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s > 0 ? (double) tokens / s : 0.0;
}

} // namespace

int cmd_serve(int argc, char ** argv) {
    CLI::App app{"Serves a base model and its adapters over an OpenAI-style HTTP API: POST /v1/completions,\n"
                 "POST /v1/chat/completions (stream: true for server-sent events), GET /v1/models, GET /health.\n"
                 "A request's \"model\" names an adapter (or the base); concurrent requests run in one batched forward\n"
                 "per step, each row with its own adapter, unmerged.\n\n"
                 "examples:\n"
                 "  peft serve --model ~/models/Llama-3.2-1B-Instruct --adapter sql=out/sql --adapter chat=out/chat --port 8080\n"
                 "  curl http://127.0.0.1:8080/v1/chat/completions -d '{\"model\": \"sql\", \"messages\": [{\"role\": \"user\", "
                 "\"content\": \"List users\"}]}'",
                 "peft serve"};
    std::string model_dir, host = "127.0.0.1";
    std::vector<std::string> adapter_args;
    serve_options o;
    int threads = 0, port = 8080, http_threads = 0;
    add_engine_options(app, model_dir, adapter_args, o, threads);
    app.add_option("--host", host, "address to listen on");
    app.add_option("--port", port, "port (0 = any free port, printed at start)")->check(CLI::Range(0, 65535));
    app.add_option("--queue", o.queue, "requests waiting for a slot; more get 503")->check(CLI::Range((int64_t) 0, (int64_t) 1 << 16));
    app.add_option("--http-threads", http_threads, "connection threads (default: parallel + queue + 4)")->check(CLI::Range(0, 4096));
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    threads_set(threads);
    std::vector<std::pair<std::string, std::string>> adapters;
    status st = parse_adapters(adapter_args, adapters);
    serve_engine e;
    if (st.ok()) st = e.init(model_dir, adapters, o);
    serve_http http;
    if (st.ok()) st = http.bind(e, host, port, http_threads > 0 ? http_threads : (int) (o.parallel + o.queue + 4));
    if (!st.ok()) return cli_fail("serve", st);
    std::signal(SIGPIPE, SIG_IGN);   // a client gone mid-stream is a failed write, not a dead server
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::string names;
    for (const auto & a : e.adapters()) names += (names.empty() ? "" : ", ") + a->name;
    std::fprintf(stderr, "peft serve: listening on http://%s:%d (base \"%s\", adapters: %s; %lld slots of %lld positions)\n",
                 host.c_str(), http.port(), e.base_name().c_str(), names.empty() ? "none" : names.c_str(), (long long) o.parallel,
                 (long long) e.ctx());
    std::fflush(stderr);
    std::thread watcher([&] {
        while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        http.stop();
    });
    http.run();
    g_stop = true;
    watcher.join();
    e.shutdown();
    std::fprintf(stderr, "peft serve: stopped after %lld decode steps (mean batch %.2f)\n", (long long) e.steps(),
                 e.steps() ? (double) e.rows() / (double) e.steps() : 0.0);
    return 0;
}

int cmd_serve_bench(int argc, char ** argv) {
    CLI::App app{"Benchmarks peft serve on this machine, as one JSON line: (1) the same completion requests, one per\n"
                 "adapter in turn, decoded together (--parallel slots) vs one at a time: total generated tokens/s and\n"
                 "their ratio; (2) an HTTP load test: --clients clients for --seconds seconds against an in-process\n"
                 "server on a free loopback port (failed requests, latency percentiles). Exits 1 if a request failed.\n\n"
                 "example:\n"
                 "  peft serve-bench --model models/tiny-llama --adapter a=out/a --adapter b=out/b --adapter c=out/c "
                 "--adapter d=out/d --parallel 4",
                 "peft serve-bench"};
    std::string model_dir, prompt = "Once upon a time";
    std::vector<std::string> adapter_args;
    serve_options o;
    int threads = 0, clients = 8;
    int64_t max_tokens = 64, rounds = 3;
    double seconds = 5.0;
    add_engine_options(app, model_dir, adapter_args, o, threads);
    app.add_option("--prompt", prompt, "prompt of every request");
    app.add_option("--max-tokens", max_tokens, "tokens generated per request (EOS ignored)")->check(CLI::Range((int64_t) 1, (int64_t) 1 << 16));
    app.add_option("--rounds", rounds, "throughput rounds (batched and one at a time alternate; the best of each)")
        ->check(CLI::Range((int64_t) 1, (int64_t) 100));
    app.add_option("--clients", clients, "load test: concurrent clients (0 = skip the load test)")->check(CLI::Range(0, 1024));
    app.add_option("--seconds", seconds, "load test: duration")->check(CLI::Range(0.1, 3600.0));
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    threads_set(threads);
    std::vector<std::pair<std::string, std::string>> adapters;
    status st = parse_adapters(adapter_args, adapters);
    o.queue = std::max<int64_t>(o.queue, clients);
    serve_engine e;
    if (st.ok()) st = e.init(model_dir, adapters, o);
    if (!st.ok()) return cli_fail("serve-bench", st);
    std::vector<int> models;   // one request per adapter (the base without adapters), `parallel` in all
    for (int64_t i = 0; i < o.parallel; i++) models.push_back(adapters.empty() ? -1 : (int) (i % (int64_t) adapters.size()));
    const std::vector<int32_t> ids = e.tok().encode(prompt, true, true);
    double best_b = 0, best_s = 0;
    int64_t tokens = 0;
    for (int64_t r = 0; r < rounds; r++) {
        best_s = std::max(best_s, engine_round(e, models, ids, max_tokens, false, tokens));
        best_b = std::max(best_b, engine_round(e, models, ids, max_tokens, true, tokens));
    }
    serve_load_result lr;
    std::string names;
    for (const auto & a : e.adapters()) names += (names.empty() ? "" : ",") + a->name;
    if (clients > 0) {
        serve_http http;
        st = http.bind(e, "127.0.0.1", 0, clients + 4);
        if (!st.ok()) return cli_fail("serve-bench", st);
        std::thread server([&] { http.run(); });
        std::vector<std::string> load_models;
        for (const auto & a : e.adapters()) load_models.push_back(a->name);
        if (load_models.empty()) load_models.push_back(e.base_name());
        lr = serve_load("127.0.0.1", http.port(), clients, seconds, load_models, prompt, max_tokens);
        http.stop();
        server.join();
    }
    std::printf("{\"model\": %s, \"adapters\": %s, \"parallel\": %lld, \"requests_per_round\": %zu, \"max_tokens\": %lld, "
                "\"threads\": %d, \"one_at_a_time_tokens_per_s\": %.2f, \"batched_tokens_per_s\": %.2f, \"batched_over_one_at_a_time\": %.3f, "
                "\"load_clients\": %d, \"load_seconds\": %.2f, \"load_requests\": %lld, \"load_failed\": %lld, \"load_tokens_per_s\": %.2f, "
                "\"latency_p50_s\": %.4f, \"latency_p90_s\": %.4f, \"latency_p99_s\": %.4f, \"latency_max_s\": %.4f, \"first_error\": %s}\n",
                json_quote(model_dir).c_str(), json_quote(names).c_str(), (long long) o.parallel, models.size(), (long long) max_tokens,
                threads_get(), best_s, best_b, best_s > 0 ? best_b / best_s : 0.0, clients, lr.seconds, (long long) lr.requests,
                (long long) lr.failed, lr.seconds > 0 ? (double) lr.tokens / lr.seconds : 0.0, lr.p50, lr.p90, lr.p99, lr.max,
                json_quote(lr.first_error).c_str());
    return lr.failed > 0 ? 1 : 0;
}

} // namespace peft
