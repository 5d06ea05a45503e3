// test_serve.cpp: `peft serve` on the bundled tiny model with two random LoRA adapters.
// The batched multi-sequence forward against the single-sequence one (each adapter attached
// alone, the path `peft generate` runs); HTTP answers of two adapters asked concurrently against
// `peft generate` with each adapter alone (greedy text); streaming against non-streaming; bad
// requests (JSON, model, context, fields, a full queue) get a clear 4xx/503 and the server keeps
// serving; a client that leaves mid-stream, or gives up waiting for a whole answer, frees its
// slot; the binary itself (--port 0, SIGTERM) and a short serve-bench load run; a prompt-routed
// mixture beside a LoRA, and every registered method, answered as `peft generate` answers each alone.
#include <httplib.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "adapters/adapter_set.h"
#include "core/rng.h"
#include "io/json.h"
#include "model/llama.h"
#include "model/llama_infer.h"
#include "serve/engine.h"
#include "serve/http.h"
#include "testing.h"

using namespace peft;

namespace {

const std::string & model_dir() {
    static const std::string d = peft::testing::source_path("models/tiny-llama");
    return d;
}

// An adapter (default: a LoRA, r 4, all projections) on the tiny model with B ~ N(0, b_std) and,
// for a mixture, routers ~ N(0, 1) (so that prompts route apart), saved as a PEFT directory.
std::string make_adapter(const std::string & name, uint64_t seed,
                         const std::string & cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}",
                         float b_std = 0.05f) {
    const std::string dir = peft::testing::temp_dir(name);
    llama_model m;
    status st = llama_load(m, model_dir(), false);
    EXPECT_TRUE(st.ok()) << st.message;
    json_document doc;
    EXPECT_TRUE(doc.parse(cfg.data(), cfg.size(), "cfg").ok());
    adapter_set set;
    st = adapters_attach(m, doc.root(), seed, set);
    EXPECT_TRUE(st.ok()) << st.message;
    rng r(seed + 100);
    for (param_ref & p : adapter_set_params(set)) {
        const bool router = p.name.find("router") != std::string::npos;
        if (p.name.find("lora_B") == std::string::npos && !router) continue;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        r.fill_normal(p.value, n, 0.0f, router ? 1.0f : b_std);
    }
    st = adapter_save(dir, set, model_dir());
    EXPECT_TRUE(st.ok()) << st.message;
    return dir;
}

const std::vector<std::pair<std::string, std::string>> & adapters() {
    static const std::vector<std::pair<std::string, std::string>> a = {{"alpha", make_adapter("serve_alpha", 3)},
                                                                      {"beta", make_adapter("serve_beta", 4)}};
    return a;
}

// An engine + HTTP server in this process on a free loopback port.
struct server {
    serve_engine e;
    serve_http   http;
    std::thread  th;
    explicit server(serve_options o = {}) {
        status st = e.init(model_dir(), adapters(), o);
        EXPECT_TRUE(st.ok()) << st.message;
        st = http.bind(e, "127.0.0.1", 0, 16);
        EXPECT_TRUE(st.ok()) << st.message;
        th = std::thread([this] { http.run(); });
    }
    ~server() {
        http.stop();
        th.join();
        e.shutdown();
    }
    httplib::Client client() const {
        httplib::Client c("127.0.0.1", http.port());
        c.set_read_timeout(300, 0);
        return c;
    }
};

std::string post(const server & s, const std::string & path, const std::string & body, int * code = nullptr) {
    auto r = s.client().Post(path.c_str(), body, "application/json");
    if (code) *code = r ? r->status : -1;
    return r ? r->body : std::string();
}

struct parsed {
    json_document doc;
    json_value    root;
    explicit parsed(const std::string & text) {
        EXPECT_TRUE(doc.parse(text.data(), text.size(), "response").ok()) << text;
        root = doc.root();
    }
};

const char * PROMPT = "And God said, Let there be light";

std::string completion_body(const std::string & model, int max_tokens, bool stream = false, const char * prompt = PROMPT) {
    return "{\"model\": \"" + model + "\", \"prompt\": " + json_quote(prompt) + ", \"max_tokens\": " + std::to_string(max_tokens) +
           ", \"temperature\": 0, \"ignore_eos\": true" + (stream ? ", \"stream\": true" : "") + "}";
}

// The text of every SSE data event's choices[0] (text or delta.content), and the last finish_reason.
std::string sse_text(const std::string & body, std::string & finish, bool & saw_done) {
    std::string text;
    size_t pos = 0;
    while ((pos = body.find("data: ", pos)) != std::string::npos) {
        const size_t end = body.find("\n\n", pos);
        const std::string ev = body.substr(pos + 6, end - pos - 6);
        pos = end;
        if (ev == "[DONE]") {
            saw_done = true;
            continue;
        }
        parsed p(ev);
        json_value c = p.root.get("choices").at(0);
        text += c.get("delta").valid() ? c.get("delta").get("content").as_string() : c.get("text").as_string();
        if (c.get("finish_reason").is_string()) finish = c.get("finish_reason").as_string();
    }
    return text;
}

// `peft generate` greedy text (an empty adapter_dir: the base).
std::string generate_alone(const std::string & adapter_dir, int max_tokens, const char * prompt = PROMPT) {
    const std::string cmd = "(" + std::string(PEFT_BIN) + " generate --model " + model_dir() +
                            (adapter_dir.empty() ? "" : " --adapter " + adapter_dir) + " --prompt " + json_quote(prompt) + " --max-new-tokens " + std::to_string(max_tokens) +
                            " --ignore-eos 2>/dev/null)";
    peft::testing::shell_result r = peft::testing::run_shell(cmd);
    EXPECT_EQ(r.code, 0) << r.out;
    if (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
    return r.out;
}

} // namespace

TEST(serve, multi_sequence_forward_matches_each_sequence_alone) {
    llama_model m;
    ASSERT_TRUE(llama_load(m, model_dir(), false).ok());
    std::vector<adapter_set> sets(2);
    std::vector<std::vector<adapter_module *>> tables;
    for (size_t i = 0; i < 2; i++) {
        m.adapters.clear();
        ASSERT_TRUE(adapter_load(adapters()[i].second, m, sets[i]).ok());
        tables.push_back(m.adapters);
    }
    const int64_t V = m.hp.n_vocab;
    // three sequences: adapter 0, base, adapter 1; prompts of different lengths, then 3 decode steps
    const std::vector<std::vector<int32_t>> prompts = {{5, 9, 300, 7}, {11, 12}, {40, 41, 42, 43, 44, 45, 46}};
    std::vector<adapter_module * const *> tab = {tables[0].data(), nullptr, tables[1].data()};
    std::vector<llama_infer_state> ms(3), ss(3);
    llama_infer_batch b;
    ASSERT_TRUE(llama_infer_batch_init(b, m, 5, 64).ok());   // 5 rows: chunks split sequences
    std::vector<std::vector<float>> lm(3, std::vector<float>((size_t) V)), ls = lm;
    for (size_t i = 0; i < 3; i++) {
        ASSERT_TRUE(llama_infer_init(ms[i], m, 64, 1).ok());
        ASSERT_TRUE(llama_infer_init(ss[i], m, 64).ok());
    }
    std::vector<std::vector<int32_t>> feed = prompts;
    for (int step = 0; step < 4; step++) {
        std::vector<llama_infer_seq> seqs;
        for (size_t i = 0; i < 3; i++) seqs.push_back({&ms[i], feed[i].data(), (int64_t) feed[i].size(), tab[i], lm[i].data()});
        ASSERT_TRUE(llama_infer_eval_multi(m, b, seqs.data(), 3).ok());
        for (size_t i = 0; i < 3; i++) {
            m.adapters = tab[i] ? tables[i == 0 ? 0 : 1] : std::vector<adapter_module *>();
            ASSERT_TRUE(llama_infer_eval(m, ss[i], feed[i].data(), (int64_t) feed[i].size(), ls[i].data()).ok());
            EXPECT_TRUE(peft::testing::check_close(lm[i].data(), ls[i].data(), V, 1e-4, 1e-4, "multi vs single logits"))
                << "sequence " << i << " step " << step;
            feed[i] = {sample_argmax(ls[i].data(), V)};
        }
    }
    m.adapters.clear();
    // a sequence past its context fails before anything runs
    std::vector<int32_t> many(70, 5);
    llama_infer_seq bad{&ms[0], many.data(), (int64_t) many.size(), nullptr, nullptr};
    const int64_t before = ms[0].n_past;
    status st = llama_infer_eval_multi(m, b, &bad, 1);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("context full"), std::string::npos) << st.message;
    EXPECT_EQ(ms[0].n_past, before);
}

TEST(serve, two_adapters_asked_concurrently_answer_as_generate_with_each_alone) {
    const int N = 24;
    const std::string want_a = generate_alone(adapters()[0].second, N), want_b = generate_alone(adapters()[1].second, N);
    ASSERT_FALSE(want_a.empty());
    EXPECT_NE(want_a, want_b) << "the adapters should change the greedy text";
    server s;
    std::string got[4];
    std::vector<std::thread> th;
    const char * models[4] = {"alpha", "beta", "alpha", "beta"};
    for (int i = 0; i < 4; i++) th.emplace_back([&, i] { got[i] = post(s, "/v1/completions", completion_body(models[i], N)); });
    for (auto & t : th) t.join();
    for (int i = 0; i < 4; i++) {
        parsed p(got[i]);
        EXPECT_EQ(p.root.get("choices").at(0).get("text").as_string(), i % 2 == 0 ? want_a : want_b) << got[i];
        EXPECT_EQ(p.root.get("choices").at(0).get("finish_reason").as_string(), "length");
        EXPECT_EQ(p.root.get("usage").get("completion_tokens").as_int(), N);
        EXPECT_EQ(p.root.get("model").as_string(), models[i]);
    }
    EXPECT_GT(s.e.rows(), s.e.steps()) << "the requests should have shared forwards";
    parsed models_list(s.client().Get("/v1/models")->body);
    ASSERT_EQ(models_list.root.get("data").size(), 3u);
    EXPECT_EQ(models_list.root.get("data").at(0).get("id").as_string(), "tiny-llama");
    EXPECT_EQ(models_list.root.get("data").at(2).get("id").as_string(), "beta");
    EXPECT_EQ(s.client().Get("/health")->status, 200);
}

TEST(serve, streaming_and_non_streaming_agree) {
    server s;
    for (const char * path : {"/v1/completions", "/v1/chat/completions"}) {
        const bool chat = std::string(path).find("chat") != std::string::npos;
        const std::string body = chat ? "{\"model\": \"beta\", \"messages\": [{\"role\": \"user\", \"content\": \"Which book is this "
                                        "verse from? In the beginning God created the heaven.\"}], \"temperature\": 0, \"max_tokens\": 30"
                                      : completion_body("beta", 30).substr(0, completion_body("beta", 30).size() - 1);
        int code = 0;
        parsed whole(post(s, path, body + "}", &code));
        ASSERT_EQ(code, 200);
        json_value c = whole.root.get("choices").at(0);
        const std::string text = chat ? c.get("message").get("content").as_string() : c.get("text").as_string();
        std::string finish;
        bool done = false;
        const std::string streamed = post(s, path, body + ", \"stream\": true}", &code);
        ASSERT_EQ(code, 200);
        EXPECT_EQ(sse_text(streamed, finish, done), text) << path;
        EXPECT_EQ(finish, c.get("finish_reason").as_string());
        EXPECT_TRUE(done) << "the stream ends with data: [DONE]";
        EXPECT_FALSE(text.empty());
    }
}

TEST(serve, stop_strings_cut_the_text_and_the_stream_alike) {
    server s;
    parsed p(post(s, "/v1/completions", completion_body("alpha", 24)));
    const std::string full = p.root.get("choices").at(0).get("text").as_string();
    ASSERT_GT(full.size(), 8u);
    const std::string stop = full.substr(4, 3);   // cut inside the text
    const std::string want = full.substr(0, full.find(stop));
    std::string body = completion_body("alpha", 24);
    body.pop_back();
    body += ", \"stop\": [" + json_quote(stop) + "]";
    parsed q(post(s, "/v1/completions", body + "}"));
    EXPECT_EQ(q.root.get("choices").at(0).get("text").as_string(), want);
    EXPECT_EQ(q.root.get("choices").at(0).get("finish_reason").as_string(), "stop");
    std::string finish;
    bool done = false;
    EXPECT_EQ(sse_text(post(s, "/v1/completions", body + ", \"stream\": true}"), finish, done), want);
    EXPECT_EQ(finish, "stop");
}

TEST(serve, bad_requests_get_a_clear_4xx_and_the_server_keeps_serving) {
    serve_options o;
    o.ctx = 32;
    server s(o);
    struct bad_case {
        std::string path, body;
        int         code;
        std::string words;
    };
    const std::string long_prompt(400, 'x');
    const std::vector<bad_case> cases = {
        {"/v1/completions", "{\"model\": \"alpha\", \"prompt\": ", 400, "not valid JSON"},
        {"/v1/completions", "[1, 2]", 400, "JSON object"},
        {"/v1/completions", "{\"model\": \"gamma\", \"prompt\": \"hi\"}", 404, "gamma\\\" does not exist"},
        {"/v1/completions", "{\"model\": \"alpha\", \"prompt\": " + json_quote(long_prompt) + "}", 400, "context of 32"},
        {"/v1/completions", "{\"model\": \"alpha\", \"prompt\": \"hi\", \"temperature\": \"hot\"}", 400, "temperature"},
        {"/v1/completions", "{\"model\": \"alpha\", \"prompt\": \"hi\", \"max_tokens\": 0}", 400, "max_tokens"},
        {"/v1/completions", "{\"model\": \"alpha\"}", 400, "\"prompt\""},
        {"/v1/chat/completions", "{\"model\": \"alpha\", \"messages\": [{\"role\": \"user\"}]}", 400, "messages[0]"},
        {"/v1/completions", "{\"model\": \"alpha\", \"prompt\": \"hi\", \"stop\": [3]}", 400, "stop"},
    };
    for (const bad_case & c : cases) {
        int code = 0;
        const std::string out = post(s, c.path, c.body, &code);
        EXPECT_EQ(code, c.code) << c.body << " -> " << out;
        EXPECT_NE(out.find(c.words), std::string::npos) << out;
        parsed p(out);
        EXPECT_TRUE(p.root.get("error").get("message").is_string()) << out;
    }
    int code = 0;
    parsed ok(post(s, "/v1/completions", "{\"model\": \"alpha\", \"prompt\": \"In the\", \"max_tokens\": 4, \"temperature\": 0}", &code));
    EXPECT_EQ(code, 200);
    EXPECT_TRUE(ok.root.get("choices").at(0).get("text").is_string());
}

TEST(serve, a_full_queue_answers_503) {
    serve_options o;
    o.parallel = 1;
    o.queue = 1;
    server s(o);
    // one job in the slot, one waiting: every place is taken
    std::vector<std::shared_ptr<serve_job>> jobs;
    for (int i = 0; i < 2; i++) {
        auto j = std::make_shared<serve_job>();
        j->prompt = s.e.tok().encode(PROMPT, true, true);
        j->max_tokens = 400;
        ASSERT_TRUE(s.e.submit(j));
        jobs.push_back(j);
        if (i == 0) {
            std::unique_lock<std::mutex> lk(j->mu);
            j->cv.wait(lk, [&] { return !j->tokens.empty(); });   // in the slot
        }
    }
    int code = 0;
    const std::string out = post(s, "/v1/completions", completion_body("alpha", 4), &code);
    EXPECT_EQ(code, 503) << out;
    EXPECT_NE(out.find("busy"), std::string::npos) << out;
    for (auto & j : jobs) j->cancelled = true;
    for (auto & j : jobs) {
        std::unique_lock<std::mutex> lk(j->mu);
        j->cv.wait(lk, [&] { return j->done; });
    }
    EXPECT_EQ(post(s, "/v1/completions", completion_body("alpha", 4), &code).empty(), false);
    EXPECT_EQ(code, 200);
}

TEST(serve, a_client_leaving_mid_stream_frees_its_slot) {
    serve_options o;
    o.parallel = 1;
    o.queue = 1;
    server s(o);
    const int N = 450;   // far more steps than the rest of the test needs
    {
        httplib::Client c = s.client();
        httplib::Request req;
        req.method = "POST";
        req.path = "/v1/completions";
        req.headers = {{"Content-Type", "application/json"}};
        req.body = completion_body("alpha", N, true);
        int chunks = 0;
        req.content_receiver = [&](const char *, size_t, uint64_t, uint64_t) { return ++chunks < 3; };   // hang up
        httplib::Response res;
        httplib::Error err;
        c.send(req, res, err);
        EXPECT_EQ(chunks, 3);
    }
    // the only slot must come free long before the abandoned stream would have finished
    int code = 0;
    parsed p(post(s, "/v1/completions", completion_body("beta", 8), &code));
    EXPECT_EQ(code, 200);
    EXPECT_EQ(p.root.get("usage").get("completion_tokens").as_int(), 8);
    EXPECT_LT(s.e.steps(), N / 2) << "the abandoned request kept decoding";
}

TEST(serve, a_client_giving_up_on_a_whole_answer_frees_its_slot) {
    serve_options o;
    o.parallel = 1;
    o.queue = 1;
    server s(o);
    const int N = 450;
    {
        httplib::Client c = s.client();
        c.set_read_timeout(0, 50000);   // gives up and closes long before 450 tokens
        auto r = c.Post("/v1/completions", completion_body("alpha", N), "application/json");
        EXPECT_FALSE(r) << "the whole answer came back before the client gave up";
    }
    int code = 0;
    parsed p(post(s, "/v1/completions", completion_body("beta", 8), &code));
    EXPECT_EQ(code, 200);
    EXPECT_EQ(p.root.get("usage").get("completion_tokens").as_int(), 8);
    EXPECT_LT(s.e.steps(), N / 2) << "the abandoned request kept decoding";
}

TEST(serve, binary_listens_on_a_free_port_and_stops_on_sigterm) {
    peft::testing::shell_result help = peft::testing::run_shell(std::string(PEFT_BIN) + " serve --help");
    EXPECT_EQ(help.code, 0);
    EXPECT_NE(help.out.find("--adapter"), std::string::npos);
    EXPECT_NE(help.out.find("curl"), std::string::npos);
    bool healthy = false;
    peft::testing::spawn_options so;
    so.passive_omp = true;
    so.on_output = [&](int pid, const std::string & out) {
        const size_t at = out.find("listening on http://127.0.0.1:");
        if (at == std::string::npos) return false;
        const int port = std::atoi(out.c_str() + at + 30);
        httplib::Client c("127.0.0.1", port);
        auto r = c.Get("/health");
        healthy = r && r->status == 200;
        kill(pid, SIGTERM);
        return true;
    };
    peft::testing::child_result r = peft::testing::spawn_peft(
        {"serve", "--model", model_dir(), "--adapter", "alpha=" + adapters()[0].second, "--port", "0", "--threads", "1"}, so);
    EXPECT_TRUE(healthy) << r.out;
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("stopped after"), std::string::npos) << r.out;
    r = peft::testing::spawn_peft({"serve", "--model", model_dir(), "--adapter", "alpha=/nonexistent/adapter", "--port", "0"});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("/nonexistent/adapter"), std::string::npos) << r.out;
}

// A model directory without tokenizer files (a GGUF-less export, weights only) serves with
// --tokenizer pointing at the tokenizer; without it, the error names the directory.
TEST(serve, a_model_without_tokenizer_files_serves_with_tokenizer_from_elsewhere) {
    const std::string bare = peft::testing::temp_dir("serve_bare_model");
    for (const char * f : {"config.json", "model.safetensors"}) {
        std::filesystem::create_symlink(std::filesystem::absolute(model_dir() + "/" + f), bare + "/" + f);
    }
    {
        serve_engine e;
        const status st = e.init(bare, {}, serve_options{});
        EXPECT_FALSE(st.ok());
        EXPECT_NE(st.message.find(bare), std::string::npos) << st.message;
    }
    serve_options o;
    o.tokenizer = model_dir();
    serve_engine e;
    const status st = e.init(bare, {adapters()[0]}, o);
    ASSERT_TRUE(st.ok()) << st.message;
    std::unique_ptr<tokenizer> tok;
    ASSERT_TRUE(tokenizer::load(model_dir(), tok).ok());
    EXPECT_EQ(e.tok().encode(PROMPT, true, true), tok->encode(PROMPT, true, true));
    serve_http http;
    ASSERT_TRUE(http.bind(e, "127.0.0.1", 0, 4).ok());
    std::thread th([&] { http.run(); });
    httplib::Client c("127.0.0.1", http.port());
    c.set_read_timeout(300, 0);
    auto r = c.Post("/v1/completions", completion_body("alpha", 6), "application/json");
    http.stop();
    th.join();
    e.shutdown();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(parsed(r->body).root.get("choices").at(0).get("text").as_string(), generate_alone(adapters()[0].second, 6));
    peft::testing::shell_result help = peft::testing::run_shell(std::string(PEFT_BIN) + " serve-bench --help");
    EXPECT_NE(help.out.find("--tokenizer"), std::string::npos) << help.out;
}

TEST(serve, serve_bench_load_run_has_no_failed_request) {
    peft::testing::shell_result r = peft::testing::run_shell(
        "OMP_WAIT_POLICY=PASSIVE " + std::string(PEFT_BIN) + " serve-bench --model " + model_dir() + " --adapter alpha=" +
        adapters()[0].second + " --adapter beta=" + adapters()[1].second +
        " --parallel 2 --max-tokens 4 --rounds 1 --clients 3 --seconds 0.5 --threads 1 2>&1");
    EXPECT_EQ(r.code, 0) << r.out;
    const size_t brace = r.out.find('{');
    ASSERT_NE(brace, std::string::npos) << r.out;
    parsed p(r.out.substr(brace));
    EXPECT_EQ(p.root.get("load_failed").as_int(-1), 0) << r.out;
    EXPECT_GT(p.root.get("load_requests").as_int(0), 0) << r.out;
    EXPECT_GT(p.root.get("latency_p50_s").as_double(0), 0.0) << r.out;
    EXPECT_GT(p.root.get("batched_tokens_per_s").as_double(0), 0.0) << r.out;
}

// The text of a non-streaming completion answer.
std::string answer_text(const std::string & body) {
    parsed p(body);
    return p.root.get("choices").at(0).get("text").as_string();
}

// A prompt-routed mixture beside a LoRA: each request routes from its own prompt at prefill, keeps
// that routing while decoding, and a reused slot routes its next prompt afresh (2 slots, 6 requests).
TEST(serve, a_prompt_routed_mixture_and_a_lora_answer_concurrently_as_generate_with_each_alone) {
    const std::string moe = make_adapter("serve_moe", 5, "{\"adapter\": \"milora_moe\", \"r\": 4, \"lora_alpha\": 8, "
                                                         "\"target_modules\": \"all-linear\", \"router_top_k\": 2}",
                                        1.0f);   // gates split the delta: larger B so that it shows in the greedy text
    const char * prompts[2] = {PROMPT, "In the beginning God created the heaven and the earth"};
    const int N = 16;
    std::string want_moe[2], want_base[2];
    for (int i = 0; i < 2; i++) {
        want_moe[i] = generate_alone(moe, N, prompts[i]);
        want_base[i] = generate_alone("", N, prompts[i]);
        EXPECT_NE(want_moe[i], want_base[i]) << "the mixture should change the greedy text";
    }
    const std::string want_lora = generate_alone(adapters()[0].second, N);
    serve_options o;
    o.parallel = 2;
    serve_engine e;
    status st = e.init(model_dir(), {{"moe", moe}, adapters()[0]}, o);
    ASSERT_TRUE(st.ok()) << st.message;
    serve_http http;
    ASSERT_TRUE(http.bind(e, "127.0.0.1", 0, 16).ok());
    std::thread th([&] { http.run(); });
    struct ask {
        const char * model;
        int          prompt;
    };
    auto ask_all = [&](const std::vector<ask> & asks) {   // concurrently; each answer against generate's
        std::vector<std::string> got(asks.size());
        std::vector<std::thread> clients;
        for (size_t i = 0; i < asks.size(); i++) {
            clients.emplace_back([&, i] {
                httplib::Client c("127.0.0.1", http.port());
                c.set_read_timeout(300, 0);
                auto r = c.Post("/v1/completions", completion_body(asks[i].model, N, false, prompts[asks[i].prompt]), "application/json");
                got[i] = r ? r->body : std::string();
            });
        }
        for (auto & t : clients) t.join();
        for (size_t i = 0; i < asks.size(); i++) {
            const bool is_moe = std::string(asks[i].model) == "moe";
            EXPECT_EQ(answer_text(got[i]), is_moe ? want_moe[asks[i].prompt] : want_lora) << "request " << i << ": " << got[i];
        }
    };
    ask_all({{"moe", 0}});   // slot 0 routes prompt 0 ...
    ask_all({{"moe", 1}});   // ... and, reused, routes prompt 1 afresh
    ask_all({{"moe", 0}, {"moe", 1}, {"alpha", 0}, {"moe", 1}, {"moe", 0}, {"alpha", 0}});
    EXPECT_GT(e.rows(), e.steps()) << "the requests should have shared forwards";
    http.stop();
    th.join();
    e.shutdown();
}

// The batched forward with a hooked (prompt-routed) adapter: two mixture sequences beside a LoRA
// one, in chunks of 8 rows (the second prompt does not fit the first chunk's rest: it starts the
// next chunk whole), give each sequence's single-sequence logits, prefill and 3 decode steps.
TEST(serve, multi_sequence_forward_runs_each_sequence_hook_on_its_own_rows) {
    const std::string moe = make_adapter("serve_moe_rows", 6, "{\"adapter\": \"milora_moe\", \"r\": 4, \"lora_alpha\": 8, "
                                                              "\"target_modules\": \"all-linear\"}", 1.0f);
    llama_model m;
    ASSERT_TRUE(llama_load(m, model_dir(), false).ok());
    adapter_set lora, mix;
    ASSERT_TRUE(adapter_load(adapters()[0].second, m, lora).ok());
    const std::vector<adapter_module *> lora_tab = m.adapters;
    m.adapters.clear();
    ASSERT_TRUE(adapter_load(moe, m, mix).ok());
    const std::vector<adapter_module *> moe_tab = m.adapters;
    llama_layer_hook * hook = m.layer_hook;
    ASSERT_NE(hook, nullptr);
    const int64_t V = m.hp.n_vocab;
    const std::vector<std::vector<int32_t>> prompts = {{5, 9, 300, 7, 8}, {11, 12, 13, 14, 15, 16}, {40, 41, 42, 43}};
    const bool is_moe[3] = {false, true, true};
    std::vector<llama_infer_state> ms(3), ss(3);
    llama_infer_batch b;
    ASSERT_TRUE(llama_infer_batch_init(b, m, 8, 64).ok());
    for (size_t i = 0; i < 3; i++) {
        ASSERT_TRUE(llama_infer_init(ms[i], m, 64, 1).ok());
        ASSERT_TRUE(llama_infer_init(ss[i], m, 64).ok());
    }
    std::vector<std::vector<float>> lm(3, std::vector<float>((size_t) V)), ls = lm;
    std::vector<std::vector<int32_t>> feed = prompts;
    for (int step = 0; step < 4; step++) {
        std::vector<llama_infer_seq> seqs;
        for (size_t i = 0; i < 3; i++) {
            seqs.push_back({&ms[i], feed[i].data(), (int64_t) feed[i].size(), is_moe[i] ? moe_tab.data() : lora_tab.data(), lm[i].data(),
                            is_moe[i] ? hook : nullptr});
        }
        ASSERT_TRUE(llama_infer_eval_multi(m, b, seqs.data(), 3).ok());
        for (size_t i = 0; i < 3; i++) {
            m.adapters = is_moe[i] ? moe_tab : lora_tab;
            m.layer_hook = is_moe[i] ? hook : nullptr;
            ASSERT_TRUE(llama_infer_eval(m, ss[i], feed[i].data(), (int64_t) feed[i].size(), ls[i].data()).ok());
            EXPECT_TRUE(peft::testing::check_close(lm[i].data(), ls[i].data(), V, 1e-4, 1e-4, "multi vs single logits"))
                << "sequence " << i << " step " << step;
            feed[i] = {sample_argmax(ls[i].data(), V)};
        }
    }
    // a whole prompt longer than a chunk is refused before anything runs
    llama_infer_reset(ms[1]);
    std::vector<int32_t> nine(9, 5);
    llama_infer_seq big{&ms[1], nine.data(), 9, moe_tab.data(), nullptr, hook};
    status st = llama_infer_eval_multi(m, b, &big, 1);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("whole prompt"), std::string::npos) << st.message;
    m.adapters.clear();
    m.layer_hook = nullptr;
}

// Every registered method, trained for two steps by `peft train` (with its own init, calibration
// or stage-1 probes), served in one engine: all asked at once, each answers exactly as `peft
// generate` with it alone. A residual-base adapter and a full fine-tune are refused with a reason.
TEST(serve, every_method_is_served_as_generate_answers_it_alone) {
    const std::string dir = peft::testing::temp_dir("serve_methods");
    {
        std::ifstream in(peft::testing::source_path("data/demo/train.jsonl"));
        std::ofstream out(dir + "/train.jsonl");
        std::string line;
        for (int i = 0; i < 16 && std::getline(in, line); i++) out << line << "\n";
    }
    struct method_row {
        const char * name;
        const char * keys;   // adapter keys of peft train's config
    };
    const std::vector<method_row> rows = {
        {"lora", "\"r\": 4, \"lora_alpha\": 8"},
        {"dora", "\"r\": 4, \"lora_alpha\": 8, \"use_dora\": true"},
        {"pissa", "\"r\": 4, \"lora_alpha\": 8, \"init_lora_weights\": \"pissa\""},
        {"vera", "\"adapter\": \"vera\", \"r\": 4"},
        {"deep_lora", "\"adapter\": \"deep_lora\", \"r\": 4"},
        {"rosa", "\"adapter\": \"rosa\", \"r\": 4"},
        {"adalora", "\"adapter\": \"adalora\", \"init_r\": 4, \"target_r\": 2, \"total_step\": 5, \"tinit\": 1, \"tfinal\": 1"},
        {"milora_moe", "\"adapter\": \"milora_moe\", \"r\": 4, \"lora_alpha\": 8"},
        {"milora_moe_token", "\"adapter\": \"milora_moe\", \"r\": 4, \"lora_alpha\": 8, \"routing\": \"token\""},
        {"lora_drop", "\"adapter\": \"lora_drop\", \"r\": 4, \"lora_alpha\": 8, \"lora_drop_threshold\": 0.5, \"lora_drop_fraction\": 0.5"},
        {"pissa_residual", "\"r\": 4, \"lora_alpha\": 8, \"init_lora_weights\": \"pissa\", \"save_residual_model\": true"},
        {"full", "\"adapter\": \"full\""},
    };
    auto train = [&](const method_row & row) {
        const std::string out = dir + "/" + row.name, cfg = out + ".json";
        const bool full = std::string(row.name) == "full";
        std::ofstream(cfg) << "{\"base_model\": " << json_quote(model_dir()) << ", \"datasets\": [{\"path\": "
                           << json_quote(dir + "/train.jsonl") << "}], \"output_dir\": " << json_quote(out)
                           << (full ? "" : ", \"target_modules\": \"all-linear\"")
                           << ", \"max_steps\": 2, \"sequence_len\": 128, \"learning_rate\": 0.01, " << row.keys << "}";
        peft::testing::shell_result r = peft::testing::run_shell(std::string(PEFT_BIN) + " train " + cfg + " 2>&1");
        EXPECT_EQ(r.code, 0) << row.name << ": " << r.out;
        return out;
    };
    // every registered method has a row
    for (const std::string & name : adapter_method_names()) {
        EXPECT_TRUE(std::any_of(rows.begin(), rows.end(), [&](const method_row & r) { return name == r.name; }))
            << name << " has no row in this table";
    }
    const int N = 12;
    std::vector<std::pair<std::string, std::string>> served;
    std::vector<std::string> want;
    for (const method_row & row : rows) {
        const std::string out = train(row);
        const std::string name = row.name;
        if (name == "pissa_residual" || name == "full") {
            serve_engine e;
            status st = e.init(model_dir(), {{name, out}}, serve_options{});
            EXPECT_FALSE(st.ok()) << name << " should be refused";
            EXPECT_NE(st.message.find(out), std::string::npos) << st.message;
            EXPECT_NE((st.message + st.hint).find(name == "full" ? "--model" : "residual"), std::string::npos) << st.message << st.hint;
            continue;
        }
        served.emplace_back(name, out);
        want.push_back(generate_alone(out, N));
    }
    serve_options o;
    o.parallel = (int64_t) served.size();
    serve_engine e;
    status st = e.init(model_dir(), served, o);
    ASSERT_TRUE(st.ok()) << st.message;
    serve_http http;
    ASSERT_TRUE(http.bind(e, "127.0.0.1", 0, 32).ok());
    std::thread th([&] { http.run(); });
    std::vector<std::string> got(served.size());
    std::vector<std::thread> clients;
    for (size_t i = 0; i < served.size(); i++) {
        clients.emplace_back([&, i] {
            httplib::Client c("127.0.0.1", http.port());
            c.set_read_timeout(300, 0);
            auto r = c.Post("/v1/completions", completion_body(served[i].first, N), "application/json");
            got[i] = r ? r->body : std::string();
        });
    }
    for (auto & t : clients) t.join();
    for (size_t i = 0; i < served.size(); i++) EXPECT_EQ(answer_text(got[i]), want[i]) << served[i].first << ": " << got[i];
    EXPECT_GT(e.rows(), e.steps()) << "the requests should have shared forwards";
    http.stop();
    th.join();
    e.shutdown();
}
