#include "testing.h"

#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "byte_tokenizer.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/llama.h"

namespace peft::testing {

::testing::AssertionResult check_close(const float * got, const float * want, int64_t n, double rtol,
                                       double atol, const char * what) {
    int64_t bad = 0;
    std::string first;
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double a = got[i], b = want[i];
        double err = std::fabs(a - b);
        bool ok = err <= atol + rtol * std::fabs(b) && std::isfinite(a) == std::isfinite(b);
        if (!ok) {
            if (bad < 5) {
                char line[160];
                std::snprintf(line, sizeof(line), "\n  [%lld] got %.9g want %.9g (diff %.3g)", (long long) i, a, b, err);
                first += line;
            }
            bad++;
        }
        if (std::isfinite(err)) worst = std::max(worst, err);
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << n << " elements differ (rtol " << rtol
                                         << ", atol " << atol << ", max abs diff " << worst << ")" << first;
}

double nmse(const float * got, const float * want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double) got[i] - want[i];
        num += d * d;
        den += (double) want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}

double rel_error(const float * got, const float * want, int64_t n) { return std::sqrt(nmse(got, want, n)); }

std::vector<double> finite_diff(std::vector<double> & x, const std::function<double(const std::vector<double> &)> & f,
                                double h) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        double keep = x[i];
        x[i] = keep + h;
        double fp = f(x);
        x[i] = keep - h;
        double fm = f(x);
        x[i] = keep;
        g[i] = (fp - fm) / (2 * h);
    }
    return g;
}

::testing::AssertionResult check_grad(const float * got, const std::vector<double> & want, double rtol, double atol,
                                      const char * what) {
    std::vector<float> w(want.begin(), want.end());
    return check_close(got, w.data(), (int64_t) w.size(), rtol, atol, what);
}

std::vector<double> to_double(const float * x, int64_t n) { return std::vector<double>(x, x + n); }

void fixed_fill(float * x, int64_t n, uint64_t seed, float scale) {
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double) (s >> 11) / 9007199254740992.0;  // [0,1)
        x[i] = (float) ((2.0 * u - 1.0) * scale);
    }
}

std::vector<float> fixed_vector(int64_t n, uint64_t seed, float scale) {
    std::vector<float> v((size_t) n);
    fixed_fill(v.data(), n, seed, scale);
    return v;
}

static constexpr float SENTINEL = -1234567.0f;

guarded::guarded(int64_t n_, float fill) : buf((size_t) (n_ + 2 * PAD), SENTINEL), n(n_) {
    for (int64_t i = 0; i < n; i++) buf[PAD + i] = fill;
}

bool guarded::intact() const {
    for (int64_t i = 0; i < PAD; i++) {
        if (buf[i] != SENTINEL || buf[PAD + n + i] != SENTINEL) return false;
    }
    return true;
}

const std::vector<std::string> LLAMA3_MARKERS = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                                  "<|end_header_id|>", "<|eot_id|>"};

void write_byte_tokenizer(const std::string & dir, const std::vector<std::string> & specials, bool bos_template) {
    std::ofstream(dir + "/tokenizer.json") << byte_tokenizer_json(specials, bos_template);
}

std::vector<float> forward_logits(llama_model & m, const std::vector<int32_t> & tok) {
    const int64_t T = (int64_t) tok.size();
    std::vector<int32_t> tgt((size_t) T);
    llama_shift_labels(tgt.data(), tok.data(), 1, T);
    llama_state s;
    EXPECT_TRUE(llama_state_init(s, m, 1, T, false).ok());
    std::vector<float> logits((size_t) (T * m.hp.n_vocab));
    llama_batch b{tok.data(), tgt.data(), nullptr, nullptr, 1, T};
    llama_forward(m, s, b, 0.0f, logits.data());
    return logits;
}

void rewrite_safetensors(const std::string & path, const std::function<void(std::vector<test_tensor> &)> & edit, dtype type) {
    std::vector<test_tensor> tensors;
    {
        safetensors_file f;   // closed (unmapped) before the file is replaced
        status st = safetensors_open(path, f);
        ASSERT_TRUE(st.ok()) << st.message;
        for (const tensor_info & t : f.tensors) {
            tensors.push_back({t.name, t.shape, std::vector<float>((size_t) t.n_elements)});
            ASSERT_TRUE(read_f32(t, tensors.back().values.data()).ok()) << t.name;
        }
    }
    edit(tensors);
    std::vector<std::vector<uint8_t>> stored;
    std::vector<safetensors_tensor_to_write> out;
    for (const test_tensor & t : tensors) {
        stored.emplace_back(t.values.size() * dtype_size(type));
        convert_from_f32(type, t.values.data(), stored.back().data(), t.values.size());
        out.push_back({t.name, type, t.shape, stored.back().data(), ""});
    }
    status st = safetensors_write(path, out, {{"format", "pt"}});
    ASSERT_TRUE(st.ok()) << st.message;
}

std::string source_path(const std::string & rel) { return std::string(PEFT_SOURCE_DIR) + "/" + rel; }

shell_result run_shell(const std::string & command) {
    shell_result r;
    FILE * p = popen((command + " 2>&1").c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int st = pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return r;
}

child_result spawn_peft(const std::vector<std::string> & args, const spawn_options & o) {
    child_result r;
    int fds[2];
    if (pipe(fds) != 0) return r;
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        if (o.passive_omp) setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        for (const auto & kv : o.env) setenv(kv.first.c_str(), kv.second.c_str(), 1);
        if (o.fsize_limit > 0) {
            signal(SIGXFSZ, SIG_IGN);   // writes past the limit fail with EFBIG instead
            struct rlimit rl = {(rlim_t) o.fsize_limit, (rlim_t) o.fsize_limit};
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        std::vector<char *> argv;
        std::string bin = PEFT_BIN;
        argv.push_back(bin.data());
        std::vector<std::string> copy = args;
        for (std::string & a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(bin.c_str(), argv.data());
        _exit(127);
    }
    r.pid = pid;
    close(fds[1]);
    char buf[4096];
    bool done = false;
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) {
        r.out.append(buf, (size_t) n);
        if (o.on_output && !done) done = o.on_output(pid, r.out);
    }
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

std::string temp_dir(const std::string & name) {
    std::string dir = "/tmp/peft_test_" + std::to_string(getpid()) + "_" + name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

std::vector<std::string> tokenizer_cases() {
    json_document doc;
    const status st = doc.parse_file(source_path("tests/fixtures/tokenizer/cases.json"));
    EXPECT_TRUE(st.ok()) << st.message;
    std::vector<std::string> out;
    const json_value cases = doc.root().get("cases");
    for (size_t i = 0; i < cases.size(); ++i) {
        const json_value c = cases.at(i);
        if (!c.get("hex").valid()) {
            out.push_back(c.get("text").as_string());
            continue;
        }
        const std::string h = c.get("hex").as_string();
        std::string bytes;
        for (size_t k = 0; k + 1 < h.size(); k += 2) bytes.push_back((char) std::stoi(h.substr(k, 2), nullptr, 16));
        out.push_back(bytes);
    }
    return out;
}

} // namespace peft::testing
