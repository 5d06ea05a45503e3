// test_trainer_util.h: fixtures shared by the trainer and `peft train` CLI tests: a copy of the
// tiny llama_gqa model (vocab 64) with a synthetic byte-level tokenizer.json next to it, and
// pre-tokenized JSONL data whose next token is a fixed function of the previous one (so a
// few steps visibly lower the loss).
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/json.h"
#include "testing.h"
#include "tokenizer/normalize.h"

namespace peft::testing {

// A model directory: llama_gqa's config.json + model.safetensors + a 256-token byte-level
// tokenizer.json (no special tokens; pad falls back to id 0).
inline std::string make_model_dir(const std::string & name) {
    const std::string dir = temp_dir(name);
    const std::string src = source_path("tests/fixtures/llama_gqa");
    std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
    std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors");
    write_byte_tokenizer(dir, {}, /*bos_template=*/false);
    return dir;
}

// n samples of pre-tokenized ids in [3, 64): x[t+1] = (5 x[t] + 7) mod 61 + 3, lengths 6..17.
inline std::string make_data_file(const std::string & dir, const std::string & name, int n, uint64_t seed) {
    const std::string path = dir + "/" + name;
    std::ofstream f(path);
    uint64_t s = seed * 2654435761u + 17;
    for (int i = 0; i < n; ++i) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const int len = 6 + (int) ((s >> 33) % 12);
        int x = 3 + (int) ((s >> 40) % 61);
        f << "{\"input_ids\": [";
        for (int t = 0; t < len; ++t) {
            f << (t ? ", " : "") << x;
            x = (5 * x + 7) % 61 + 3;
        }
        f << "]}\n";
    }
    return path;
}

inline std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline std::vector<std::string> read_lines(const std::string & path) {
    std::ifstream f(path);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(f, line)) {
        if (!line.empty()) out.push_back(line);
    }
    return out;
}

} // namespace peft::testing
