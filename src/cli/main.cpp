// main.cpp: the `peft` command: a table of subcommands (git / llama-* style).
#include <cstdio>
#include <cstring>

#include "cli/commands.h"

namespace {

struct subcommand {
    const char * name;
    int (*run)(int argc, char ** argv);
    const char * summary;
};

const subcommand SUBCOMMANDS[] = {
    {"bench", peft::cmd_bench, "training-step throughput of a model or named shape, as one JSON line"},
    {"tokenize", peft::cmd_tokenize, "token ids and pieces of a text under a model's tokenizer"},
    {"train-tokenizer", peft::cmd_train_tokenizer, "learn a byte-level BPE tokenizer from text files (writes tokenizer.json)"},
    {"train", peft::cmd_train, "fine-tune a model with LoRA (or fully) from a YAML/JSON config and/or flags"},
    {"eval", peft::cmd_eval, "loss and perplexity of a model (+ adapter) on a data file"},
    {"generate", peft::cmd_generate, "generate text with a model, optionally with an adapter (unmerged or merged)"},
    {"merge", peft::cmd_merge, "merge an adapter into its base model and write a full HF checkpoint"},
    {"export", peft::cmd_export, "write a model (+ merged adapter) or a LoRA as GGUF for llama.cpp"},
    {"convert", peft::cmd_convert, "a llama.cpp GGUF LoRA as a PEFT adapter directory"},
    {"serve", peft::cmd_serve, "OpenAI-style HTTP server for a model and many adapters, batched across adapters"},
    {"serve-bench", peft::cmd_serve_bench, "serving throughput (batched vs one at a time) and an HTTP load test"},
};

void print_usage() {
    std::printf("peft: parameter-efficient fine-tuning of Llama-family models on the CPU\n\n"
                "usage: peft <command> [options]   (peft <command> --help for details)\n\ncommands:\n");
    for (const subcommand & c : SUBCOMMANDS) std::printf("  %-16s %s\n", c.name, c.summary);
}

} // namespace

int main(int argc, char ** argv) {
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
        print_usage();
        return argc < 2 ? 2 : 0;
    }
    for (const subcommand & c : SUBCOMMANDS) {
        if (!std::strcmp(argv[1], c.name)) return c.run(argc - 1, argv + 1);
    }
    std::fprintf(stderr, "peft: unknown command '%s'\n", argv[1]);
    print_usage();
    return 2;
}
