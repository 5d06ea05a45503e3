// http.cpp: the OpenAI-style routes of `peft serve` and the load client of `peft serve-bench`
// (http.h), over cpp-httplib (Debian's libcpp-httplib, included here only). A request is parsed
// and checked in its connection thread, queued on the engine, then either awaited whole or
// streamed as server-sent events while the engine fills it. A client that is gone (a failed
// stream write, or a hung-up socket while a whole answer is awaited) cancels its job, which
// frees the slot at the engine's next step.
#include "serve/http.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <cstdlib>

#include "io/json.h"
#include "model/generation.h"
#include "serve/engine.h"

namespace peft {

struct serve_http::impl {
    httplib::Server  svr;
    serve_engine *   e = nullptr;
    std::atomic<int64_t> next_id{1};
};

namespace {

struct http_error {
    int         code = 0;   // 0 = none
    std::string message, type, param;
};

std::string error_body(const http_error & e) {
    return "{\"error\": {\"message\": " + json_quote(e.message) + ", \"type\": " + json_quote(e.type) + ", \"param\": " +
           (e.param.empty() ? std::string("null") : json_quote(e.param)) + ", \"code\": " + std::to_string(e.code) + "}}";
}

void send_error(httplib::Response & res, const http_error & e) {
    res.status = e.code;
    res.set_content(error_body(e), "application/json");
}

http_error bad(const std::string & param, const std::string & message) {
    return {400, message, "invalid_request_error", param};
}

std::string status_text(const status & st) { return st.message + (st.hint.empty() ? "" : " (" + st.hint + ")"); }

// A finite number field in [lo, hi], or the fallback when absent.
http_error number_field(const json_value & root, const char * key, double lo, double hi, double & out) {
    json_value v = root.get(key);
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_number() || !std::isfinite(v.as_double()) || v.as_double() < lo || v.as_double() > hi) {
        return bad(key, std::string("\"") + key + "\" must be a number in [" +
                   std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    out = v.as_double();
    return {};
}

http_error int_field(const json_value & root, const char * key, int64_t lo, int64_t hi, int64_t & out) {
    json_value v = root.get(key);
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_integer() || v.as_int() < lo || v.as_int() > hi) {
        return bad(key, std::string("\"") + key + "\" must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    out = v.as_int();
    return {};
}

// The request body as a job: model, prompt (completions) or messages (chat), sampling fields.
http_error parse_request(serve_engine & e, const std::string & body, bool chat, serve_job & job, std::string & model,
                         bool & stream) {
    json_document doc;
    status st = doc.parse(body.data(), body.size(), "request body", (size_t) 8 << 20);
    if (!st.ok()) return bad("", "the body is not valid JSON: " + st.message);
    const json_value root = doc.root();
    if (!root.is_object()) return bad("", "the body must be a JSON object");
    json_value mv = root.get("model");
    model = e.base_name();
    if (mv.valid() && !mv.is_null()) {
        if (!mv.is_string()) return bad("model", "\"model\" must be a string");
        model = mv.as_string();
    }
    job.adapter = e.find_adapter(model);
    if (job.adapter == -2) {
        std::string known = "\"" + e.base_name() + "\"";
        for (const auto & a : e.adapters()) known += ", \"" + a->name + "\"";
        return {404, "the model \"" + model + "\" does not exist; this server has " + known, "invalid_request_error", "model"};
    }
    if (chat) {
        json_value msgs = root.get("messages");
        if (!msgs.is_array() || msgs.size() == 0) return bad("messages", "\"messages\" must be a non-empty array");
        std::vector<chat_message> cm;
        for (size_t i = 0; i < msgs.size(); i++) {
            json_value m = msgs.at(i);
            if (!m.is_object() || !m.get("role").is_string() || !m.get("content").is_string()) {
                return bad("messages", "messages[" + std::to_string(i) + "] must be {\"role\": string, \"content\": string}");
            }
            cm.push_back({m.get("role").as_string(), m.get("content").as_string(), ""});
        }
        int32_t eot = -1;
        std::string used;
        st = chat_prompt(e.tok(), cm, "auto", "messages", job.prompt, eot, used);
        if (!st.ok()) return bad("messages", status_text(st));
        if (eot >= 0) job.stop_ids.push_back(eot);
    } else {
        json_value pv = root.get("prompt");
        if (pv.is_array() && pv.size() == 1) pv = pv.at(0);
        if (!pv.is_string()) return bad("prompt", "\"prompt\" must be a string");
        job.prompt = e.tok().encode(pv.as_string(), true, true);
    }
    // OpenAI's defaults: 16 tokens for completions, the rest of the context for chat; temperature 1
    job.max_tokens = chat ? e.ctx() : 16;
    double temp = 1.0, top_p = 1.0;
    int64_t top_k = 0, seed = 0, max_tokens = job.max_tokens;
    for (http_error er : {int_field(root, "max_tokens", 1, (int64_t) 1 << 24, max_tokens), number_field(root, "temperature", 0.0, 100.0, temp),
                          number_field(root, "top_p", 1e-6, 1.0, top_p), int_field(root, "top_k", 0, (int64_t) 1 << 30, top_k),
                          int_field(root, "seed", INT64_MIN, INT64_MAX, seed)}) {
        if (er.code) return er;
    }
    job.max_tokens = max_tokens;
    job.sampling = sampler_config{(float) temp, top_k, (float) top_p, 1.0f, (uint64_t) seed};
    json_value sv = root.get("stop");
    if (sv.is_string()) {
        job.stop.push_back(sv.as_string());
    } else if (sv.is_array()) {
        for (size_t i = 0; i < sv.size(); i++) {
            if (!sv.at(i).is_string()) return bad("stop", "\"stop\" must be a string or an array of strings");
            job.stop.push_back(sv.at(i).as_string());
        }
    } else if (sv.valid() && !sv.is_null()) {
        return bad("stop", "\"stop\" must be a string or an array of strings");
    }
    if (std::any_of(job.stop.begin(), job.stop.end(), [](const std::string & s) { return s.empty(); })) {
        return bad("stop", "stop strings must not be empty");
    }
    for (const char * k : {"ignore_eos", "stream"}) {
        json_value b = root.get(k);
        if (b.valid() && !b.is_null() && !b.is_bool()) return bad(k, std::string("\"") + k + "\" must be true or false");
    }
    if (!root.get("ignore_eos").as_bool(false)) job.stop_ids.insert(job.stop_ids.end(), e.eos_ids().begin(), e.eos_ids().end());
    else job.stop_ids.clear();
    stream = root.get("stream").as_bool(false);
    st = e.check_job(job);
    if (!st.ok()) return bad(st.message.rfind("max_tokens", 0) == 0 ? "max_tokens" : "prompt", status_text(st));
    return {};
}

struct reply_meta {
    std::string id, model;
    int64_t     created = 0;
    bool        chat = false;
};

std::string usage_json(const serve_job & job) {
    const size_t n = job.tokens.size();
    return "{\"prompt_tokens\": " + std::to_string(job.prompt.size()) + ", \"completion_tokens\": " + std::to_string(n) +
           ", \"total_tokens\": " + std::to_string(job.prompt.size() + n) + "}";
}

std::string head_json(const reply_meta & m, const char * object) {
    return "{\"id\": " + json_quote(m.id) + ", \"object\": \"" + object + "\", \"created\": " + std::to_string(m.created) +
           ", \"model\": " + json_quote(m.model) + ", ";
}

std::string finish_json(const std::string & reason) { return reason.empty() ? "null" : json_quote(reason); }

// The socket of this request's connection, found by its address pair (-1 when none matches).
// cpp-httplib 0.11 gives handlers no socket and reports a closed peer as writable, so a client
// that gives up on a whole (non-streamed) answer would keep its slot decoding to max_tokens.
int connection_socket(const httplib::Request & req) {
    DIR * d = opendir("/proc/self/fd");
    if (!d) return -1;
    int found = -1;
    while (dirent * ent = readdir(d)) {
        char * end = nullptr;
        const long fd = std::strtol(ent->d_name, &end, 10);
        if (end == ent->d_name || *end) continue;
        sockaddr_storage peer{}, self{};
        socklen_t pl = sizeof peer, sl = sizeof self;
        if (getpeername((int) fd, (sockaddr *) &peer, &pl) != 0 || getsockname((int) fd, (sockaddr *) &self, &sl) != 0) continue;
        auto port = [](const sockaddr_storage & a) {
            if (a.ss_family == AF_INET) return (int) ntohs(((const sockaddr_in &) a).sin_port);
            if (a.ss_family == AF_INET6) return (int) ntohs(((const sockaddr_in6 &) a).sin6_port);
            return -1;
        };
        if (port(peer) == req.remote_port && port(self) == req.local_port) {
            found = (int) fd;
            break;
        }
    }
    closedir(d);
    return found;
}

// The peer closed (or reset) the connection: POLLRDHUP is its FIN, not a pipelined request.
bool peer_hung_up(int fd) {
    pollfd p{fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

// The whole answer (stream: false).
std::string full_json(const reply_meta & m, const serve_job & job) {
    std::string choice = m.chat ? "\"message\": {\"role\": \"assistant\", \"content\": " + json_quote(job.text) + "}"
                                : "\"text\": " + json_quote(job.text) + ", \"logprobs\": null";
    return head_json(m, m.chat ? "chat.completion" : "text_completion") + "\"choices\": [{\"index\": 0, " + choice +
           ", \"finish_reason\": " + finish_json(job.finish_reason) + "}], \"usage\": " + usage_json(job) + "}";
}

// One server-sent event of a stream: a text delta, or (reason set) the last chunk.
std::string chunk_event(const reply_meta & m, const std::string & delta, bool first, const std::string & reason) {
    std::string choice;
    if (m.chat) {
        choice = "\"delta\": {" + std::string(first ? "\"role\": \"assistant\", " : "") + "\"content\": " + json_quote(delta) + "}";
    } else {
        choice = "\"text\": " + json_quote(delta) + ", \"logprobs\": null";
    }
    return "data: " + head_json(m, m.chat ? "chat.completion.chunk" : "text_completion") + "\"choices\": [{\"index\": 0, " + choice +
           ", \"finish_reason\": " + finish_json(reason) + "}]}\n\n";
}

void handle_generate(serve_http::impl & p, const httplib::Request & req, httplib::Response & res, bool chat) {
    auto job = std::make_shared<serve_job>();
    reply_meta meta;
    bool stream = false;
    http_error er = parse_request(*p.e, req.body, chat, *job, meta.model, stream);
    if (er.code) return send_error(res, er);
    meta.chat = chat;
    meta.id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(p.next_id++);
    meta.created = (int64_t) std::time(nullptr);
    if (!p.e->submit(job)) {
        res.set_header("Retry-After", "1");
        return send_error(res, {503, "the server is busy: every slot and queue place is taken", "server_busy", ""});
    }
    if (!stream) {
        std::unique_lock<std::mutex> lk(job->mu);
        int fd = -2;   // looked up once the answer takes longer than one wait
        while (!job->cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return job->done; })) {
            if (fd == -2) fd = connection_socket(req);
            if (fd >= 0 && peer_hung_up(fd)) job->cancelled = true;   // the engine then finishes it
        }
        if (!job->error.empty()) return send_error(res, {500, job->error, "server_error", ""});
        res.set_content(full_json(meta, *job), "application/json");
        return;
    }
    auto sent = std::make_shared<size_t>(0);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [job, meta, sent](size_t, httplib::DataSink & sink) {
            std::string delta, reason, error;
            bool done = false;
            {
                std::unique_lock<std::mutex> lk(job->mu);
                job->cv.wait_for(lk, std::chrono::milliseconds(200), [&] { return job->done || job->text.size() > *sent; });
                delta = job->text.substr(*sent);
                done = job->done;
                reason = job->finish_reason;
                error = job->error;
            }
            std::string out;
            if (!delta.empty()) out += chunk_event(meta, delta, *sent == 0, "");
            *sent += delta.size();
            if (done) {
                out += error.empty() ? chunk_event(meta, "", *sent == 0 && meta.chat, reason)
                                     : "data: " + error_body({500, error, "server_error", ""}) + "\n\n";
                out += "data: [DONE]\n\n";
            }
            if (out.empty()) return sink.is_writable();   // a heartbeat check while the job waits
            if (!sink.write(out.data(), out.size())) return false;
            if (done) sink.done();
            return true;
        },
        [job](bool) { job->cancelled = true; });   // no-op once done; frees the slot otherwise
}

std::string models_json(const serve_engine & e) {
    auto one = [](const std::string & id, const std::string & kind) {
        return "{\"id\": " + json_quote(id) + ", \"object\": \"model\", \"created\": 0, \"owned_by\": \"peft.cpp\", \"kind\": \"" +
               kind + "\"}";
    };
    std::string s = "{\"object\": \"list\", \"data\": [" + one(e.base_name(), "base");
    for (const auto & a : e.adapters()) s += ", " + one(a->name, "adapter");
    return s + "]}";
}

} // namespace

serve_http::serve_http() : p(new impl) {}
serve_http::~serve_http() { delete p; }

status serve_http::bind(serve_engine & e, const std::string & host, int port, int threads) {
    p->e = &e;
    impl * ip = p;
    p->svr.new_task_queue = [threads] { return new httplib::ThreadPool((size_t) std::max(1, threads)); };
    p->svr.Post("/v1/completions", [ip](const httplib::Request & q, httplib::Response & r) { handle_generate(*ip, q, r, false); });
    p->svr.Post("/v1/chat/completions", [ip](const httplib::Request & q, httplib::Response & r) { handle_generate(*ip, q, r, true); });
    p->svr.Get("/v1/models", [ip](const httplib::Request &, httplib::Response & r) {
        r.set_content(models_json(*ip->e), "application/json");
    });
    p->svr.Get("/health", [](const httplib::Request &, httplib::Response & r) { r.set_content("{\"status\": \"ok\"}", "application/json"); });
    const int got = port == 0 ? p->svr.bind_to_any_port(host) : (p->svr.bind_to_port(host, port) ? port : -1);
    if (got <= 0) {
        status st = make_error(PEFT_STATUS_IO, host + ":" + std::to_string(port), "cannot listen on this address");
        st.hint = "pick another --port (0 = any free port) or --host";
        return st;
    }
    port_ = got;
    return status::success();
}

void serve_http::run() { p->svr.listen_after_bind(); }
void serve_http::stop() { p->svr.stop(); }

serve_load_result serve_load(const std::string & host, int port, int clients, double seconds,
                             const std::vector<std::string> & models, const std::string & prompt, int64_t max_tokens) {
    using clock = std::chrono::steady_clock;
    const auto t_end = clock::now() + std::chrono::duration<double>(seconds);
    const auto t0 = clock::now();
    std::vector<std::vector<double>> lat((size_t) clients);
    std::vector<int64_t> failed((size_t) clients, 0), toks((size_t) clients, 0);
    std::vector<std::string> err((size_t) clients);
    std::vector<std::thread> th;
    for (int c = 0; c < clients; c++) {
        th.emplace_back([&, c] {
            httplib::Client cli(host, port);
            cli.set_read_timeout(600, 0);
            const std::string model = models.empty() ? "" : models[(size_t) c % models.size()];
            const std::string body = "{\"model\": " + json_quote(model) + ", \"prompt\": " + json_quote(prompt) +
                                     ", \"max_tokens\": " + std::to_string(max_tokens) + ", \"temperature\": 0, \"ignore_eos\": true}";
            while (clock::now() < t_end) {
                const auto t1 = clock::now();
                auto r = cli.Post("/v1/completions", body, "application/json");
                const double dt = std::chrono::duration<double>(clock::now() - t1).count();
                if (!r || r->status != 200) {
                    failed[(size_t) c]++;
                    if (err[(size_t) c].empty()) err[(size_t) c] = r ? std::to_string(r->status) + " " + r->body : httplib::to_string(r.error());
                    continue;
                }
                lat[(size_t) c].push_back(dt);
                json_document d;
                if (d.parse(r->body.data(), r->body.size(), "response").ok()) {
                    toks[(size_t) c] += d.root().get("usage").get("completion_tokens").as_int(0);
                }
            }
        });
    }
    for (auto & t : th) t.join();
    serve_load_result out;
    out.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    std::vector<double> all;
    for (int c = 0; c < clients; c++) {
        all.insert(all.end(), lat[(size_t) c].begin(), lat[(size_t) c].end());
        out.failed += failed[(size_t) c];
        out.tokens += toks[(size_t) c];
        if (out.first_error.empty()) out.first_error = err[(size_t) c];
    }
    std::sort(all.begin(), all.end());
    out.requests = (int64_t) all.size() + out.failed;
    auto pct = [&](double q) { return all.empty() ? 0.0 : all[std::min(all.size() - 1, (size_t) (q * (double) all.size()))]; };
    out.p50 = pct(0.5);
    out.p90 = pct(0.9);
    out.p99 = pct(0.99);
    out.max = all.empty() ? 0.0 : all.back();
    return out;
}

} // namespace peft
