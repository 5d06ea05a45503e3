// http.h: the OpenAI-style HTTP front of `peft serve` over a serve_engine, and the HTTP load
// client of `peft serve-bench`. cpp-httplib is included by http.cpp only.
//   POST /v1/completions        {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed",
//                                "stop", "ignore_eos", "stream"}
//   POST /v1/chat/completions   the same with "messages": [{"role", "content"}] (the model's chat template)
//   GET  /v1/models             the base and every adapter;  GET /health
// "model" names an adapter or the base (missing: the base). stream: true answers with server-sent
// events (data: {chunk}\n\n ... data: [DONE]). Errors are {"error": {"message", "type", "code"}}
// with 400 (bad JSON or fields, prompt beyond the context), 404 (unknown model), 503 (queue full).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

class serve_engine;

struct serve_http {
    serve_http();
    ~serve_http();
    // Binds host:port (port 0: a free port, see port()); threads: connection threads.
    status bind(serve_engine & e, const std::string & host, int port, int threads);
    int port() const { return port_; }
    void run();    // serves until stop()
    void stop();
    struct impl;
    impl * p = nullptr;
    int port_ = 0;
};

struct serve_load_result {
    int64_t requests = 0, failed = 0, tokens = 0;
    double  seconds = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;   // latency of whole requests, s
    std::string first_error;
};

// `clients` threads, each sending completions (model models[i % n], greedy, max_tokens) one after
// another to host:port until `seconds` have passed.
serve_load_result serve_load(const std::string & host, int port, int clients, double seconds,
                             const std::vector<std::string> & models, const std::string & prompt, int64_t max_tokens);

} // namespace peft
