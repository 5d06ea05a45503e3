// testing.h: the shared test harness (ARCHITECTURE §8): closeness checks that print the first
// mismatches, NMSE, central finite differences in double, sentinel-guarded buffers, fixture paths.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/dtype.h"

namespace peft {
struct llama_model;
}

namespace peft::testing {

// Fails (with the first 5 offending pairs printed) unless |a-b| <= atol + rtol*|b| everywhere.
::testing::AssertionResult check_close(const float * got, const float * want, int64_t n,
                                       double rtol, double atol, const char * what = "");
// ||a-b||^2 / ||b||^2
double nmse(const float * got, const float * want, int64_t n);
double rel_error(const float * got, const float * want, int64_t n);  // ||a-b|| / ||b||

// Central finite difference of a scalar function f(params) with respect to x[0..n), in double:
// grad[i] = (f(x+h e_i) - f(x-h e_i)) / 2h.
std::vector<double> finite_diff(std::vector<double> & x, const std::function<double(const std::vector<double> &)> & f,
                                double h = 1e-5);

// check_close of an analytic float gradient against a double reference (finite differences).
::testing::AssertionResult check_grad(const float * got, const std::vector<double> & want, double rtol, double atol,
                                      const char * what = "");
std::vector<double> to_double(const float * x, int64_t n);

// Deterministic fill in [-scale, scale] (not random-quality, just varied and reproducible).
void fixed_fill(float * x, int64_t n, uint64_t seed, float scale = 1.0f);
std::vector<float> fixed_vector(int64_t n, uint64_t seed, float scale = 1.0f);

// A float buffer with sentinel pads on both sides; intact() checks nothing wrote past the ends.
struct guarded {
    explicit guarded(int64_t n, float fill = 0.0f);
    float * data() { return buf.data() + PAD; }
    const float * data() const { return buf.data() + PAD; }
    bool intact() const;
    static constexpr int64_t PAD = 16;
    std::vector<float> buf;
    int64_t n;
};

// Writes dir/tokenizer.json: a byte-level BPE with the 256 byte tokens (ids 0..255), no merges,
// and `specials` as special added tokens with ids 256, 257, ...; when bos_template, a
// post-processor that prepends specials[0].
void write_byte_tokenizer(const std::string & dir, const std::vector<std::string> & specials, bool bos_template);
// The Llama 3 chat markers, in the order tests give them ids 256..260.
extern const std::vector<std::string> LLAMA3_MARKERS;

// Logits [T, V] of one row of tokens through llama_forward (no gradients).
std::vector<float> forward_logits(llama_model & m, const std::vector<int32_t> & tokens);

// A shell command line (sh -c), its stdout and stderr together, and its exit code (128 + signal).
struct shell_result {
    int         code = -1;
    std::string out;
};
shell_result run_shell(const std::string & command);

// The `peft` binary run as a user runs it, in a child process.
struct child_result {
    int         code = -1;   // exit status, or 128 + signal
    std::string out;         // stdout + stderr
    int         pid = 0;
};
struct spawn_options {
    long fsize_limit = 0;        // > 0: RLIMIT_FSIZE, so writes past it fail (a full disk)
    bool passive_omp = false;    // OMP_WAIT_POLICY=PASSIVE (spinning threads crawl on a loaded box)
    std::vector<std::pair<std::string, std::string>> env;   // more environment variables
    // sees the output so far; may signal the child; returns true once it has done its part
    std::function<bool(int pid, const std::string & out)> on_output;
};
child_result spawn_peft(const std::vector<std::string> & args, const spawn_options & o = {});
// One tensor of a test checkpoint, as f32 values whatever its stored dtype.
struct test_tensor {
    std::string          name;
    std::vector<int64_t> shape;
    std::vector<float>   values;
};
// Reads every tensor of the safetensors file at `path` (float dtypes) as f32, lets `edit`
// change, add or remove entries, and writes the file back with every tensor stored as `type`
// and metadata {"format": "pt"}.
void rewrite_safetensors(const std::string & path, const std::function<void(std::vector<test_tensor> &)> & edit,
                         dtype type = PEFT_DTYPE_F32);

std::string source_path(const std::string & rel);   // PEFT_SOURCE_DIR + "/" + rel
std::string temp_dir(const std::string & name);      // fresh empty directory under /tmp

// The tokenizer text suite, tests/fixtures/tokenizer/cases.json, in order (its `hex` cases as
// raw, possibly invalid UTF-8 bytes).
std::vector<std::string> tokenizer_cases();

} // namespace peft::testing
