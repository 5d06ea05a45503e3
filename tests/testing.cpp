#include "testing.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "byte_tokenizer.h"
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

std::string source_path(const std::string & rel) { return std::string(PEFT_SOURCE_DIR) + "/" + rel; }

std::string temp_dir(const std::string & name) {
    std::string dir = "/tmp/peft_test_" + std::to_string(getpid()) + "_" + name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

} // namespace peft::testing
