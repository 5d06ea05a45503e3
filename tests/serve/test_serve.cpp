// test_serve.cpp: `peft serve` on the bundled tiny model with two random LoRA adapters.
// The batched multi-sequence forward against the single-sequence one (each adapter attached
// alone, the path `peft generate` runs); HTTP answers of two adapters asked concurrently against
// `peft generate` with each adapter alone (greedy text); streaming against non-streaming; bad
// requests (JSON, model, context, fields, a full queue) get a clear 4xx/503 and the server keeps
// serving; a client that leaves mid-stream, or gives up waiting for a whole answer, frees its
// slot; the binary itself (--port 0, SIGTERM) and a short serve-bench load run.
#include <httplib.h>

#include <csignal>
#include <cstdio>
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

// A LoRA (r 4, all projections, B ~ N(0, 0.05)) on the tiny model, saved as a PEFT directory.
std::string make_adapter(const std::string & name, uint64_t seed) {
    const std::string dir = peft::testing::temp_dir(name);
    llama_model m;
    status st = llama_load(m, model_dir(), false);
    EXPECT_TRUE(st.ok()) << st.message;
    const std::string cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}";
    json_document doc;
    EXPECT_TRUE(doc.parse(cfg.data(), cfg.size(), "cfg").ok());
    adapter_set set;
    st = adapters_attach(m, doc.root(), seed, set);
    EXPECT_TRUE(st.ok()) << st.message;
    rng r(seed + 100);
    for (param_ref & p : adapter_set_params(set)) {
        if (p.name.find("lora_B") == std::string::npos) continue;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        r.fill_normal(p.value, n, 0.0f, 0.05f);
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

std::string completion_body(const std::string & model, int max_tokens, bool stream = false) {
    return "{\"model\": \"" + model + "\", \"prompt\": " + json_quote(PROMPT) + ", \"max_tokens\": " + std::to_string(max_tokens) +
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

std::string generate_alone(const std::string & adapter_dir, int max_tokens) {
    const std::string cmd = "(" + std::string(PEFT_BIN) + " generate --model " + model_dir() + " --adapter " + adapter_dir +
                            " --prompt " + json_quote(PROMPT) + " --max-new-tokens " + std::to_string(max_tokens) +
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

// The batched forward runs no layer hooks: a prompt-routed mixture must be refused at start,
// naming the adapter, not answered with stale routing.
TEST(serve, a_prompt_routed_mixture_is_refused_naming_the_adapter) {
    const std::string dir = peft::testing::temp_dir("serve_moe");
    llama_model m;
    status st = llama_load(m, model_dir(), false);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::string cfg = "{\"adapter\": \"milora_moe\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}";
    json_document doc;
    ASSERT_TRUE(doc.parse(cfg.data(), cfg.size(), "cfg").ok());
    adapter_set set;
    st = adapters_attach(m, doc.root(), 5, set);
    ASSERT_TRUE(st.ok()) << st.message;
    st = adapter_save(dir, set, model_dir());
    ASSERT_TRUE(st.ok()) << st.message;
    serve_engine e;
    st = e.init(model_dir(), {{"moe", dir}}, serve_options{});
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("milora_moe"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find(dir), std::string::npos) << st.message;
}
