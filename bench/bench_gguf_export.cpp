// bench_gguf_export.cpp: GGUF export throughput (model/gguf_export.h) at a named model shape:
// random bf16 weights (as `peft bench` makes them) written to F16 or Q8_0 in a temp directory,
// bytes of the written file per wall-clock second, fsync included (what `peft export gguf`
// does after loading). Run: bench_kernels --benchmark_filter=gguf
#include <cstdio>
#include <filesystem>
#include <string>

#include <benchmark/benchmark.h>

#include "model/gguf_export.h"
#include "model/llama.h"

using namespace peft;

namespace {

void BM_gguf_export_1b(benchmark::State & state) {
    llama_hparams hp;
    llama_hparams_named_shape("1b", hp);
    llama_model m;
    if (!llama_init_random(m, hp, false, 1, PEFT_DTYPE_BF16).ok()) {
        state.SkipWithError("llama_init_random failed");
        return;
    }
    const std::string dir = (std::filesystem::temp_directory_path() / "peft_bench_gguf").string();
    std::filesystem::create_directories(dir);   // no tokenizer.json: written as "none"
    const std::string out = dir + "/model.gguf";
    gguf_export_options o;
    o.type = state.range(0) == 0 ? GGUF_TENSOR_F16 : GGUF_TENSOR_Q8_0;
    o.name = "bench";
    uint64_t bytes = 0;
    for (auto _ : state) {
        std::string note;
        if (!gguf_export_model(m, dir, o, out, note).ok()) {
            state.SkipWithError("export failed");
            break;
        }
        bytes += std::filesystem::file_size(out);
    }
    state.SetBytesProcessed((int64_t) bytes);
    std::filesystem::remove_all(dir);
}

} // namespace

BENCHMARK(BM_gguf_export_1b)->ArgName("q8_0")->Arg(0)->Arg(1)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();
