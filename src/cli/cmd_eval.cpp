// cmd_eval.cpp: `peft eval`: loss and perplexity of a base model, or base + adapter, on a data
// file. The loss is the mean cross-entropy over every predicted token (as Hugging Face
// computes it); the file is read like training data (same shapes, templates, masking and
// packing) but not shuffled. With the same --sequence_len and --batch as training (micro_batch_size)
// it reproduces the eval loss `peft train` logged for that file (test_datasets) bit for bit.
// --accuracy adds the greedy held-out accuracy (model/generation.h: answer_examples_load,
// accuracy_evaluate).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>

#include "adapters/adapter_set.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/threads.h"
#include "model/generation.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"
#include "train/trainer.h"

namespace peft {

int cmd_eval(int argc, char ** argv) {
    CLI::App app{"Loss (mean cross-entropy over every predicted token) and perplexity of a model, optionally with an\n"
                 "adapter, on a JSONL or .txt data file.\n\n"
                 "examples:\n"
                 "  peft eval --model ~/models/SmolLM2-135M --data heldout.jsonl\n"
                 "  peft eval --model ~/models/Llama-3.2-1B --adapter out/llama-lora --data heldout.jsonl --json\n"
                 "  peft eval --model ~/models/Qwen2.5-0.5B --adapter out/qwen-lora --data chat.jsonl --chat_template chatml \\\n"
                 "            --sequence_len 512 --batch 4\n"
                 "  peft eval --model tiny.gguf --adapter lora.gguf --data heldout.jsonl   (llama.cpp files)\n"
                 "  peft eval --model models/tiny-llama --adapter out/demo/adapter --data data/demo/held_out.jsonl --accuracy\n\n"
                 "--accuracy: for every alpaca / messages line, the prompt is rendered by the chat template as\n"
                 "`peft generate --chat` renders it (up to the assistant's reply) and answered greedily (argmax),\n"
                 "stopping at the template's end-of-turn token or EOS, or after the expected answer's token count + 4.\n"
                 "An answer is correct when its text equals the line's expected reply (output, or the first assistant\n"
                 "message), both decoded without special tokens and trimmed of white space at both ends; nothing else\n"
                 "is normalised (case, punctuation and inner spaces count). accuracy = correct / all such lines;\n"
                 "{\"text\"} lines are not questions and are left out (counted in accuracy_skipped).",
                 "peft eval"};
    std::string model_dir, adapter_dir, data_path, tok_path, chat_template;
    bool as_json = false, no_packing = false, train_on_inputs = false, skip_bad_lines = false, accuracy = false;
    int64_t seq = 0, batch = 1, parallel = 16;
    int threads = 0;
    app.add_option("--model", model_dir, "Hugging Face model directory or .gguf file")->required();
    app.add_option("--adapter", adapter_dir, "PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or GGUF LoRA");
    app.add_option("--data", data_path, "JSONL (text / alpaca / messages / input_ids lines) or .txt")->required();
    app.add_flag("--json", as_json, "print one JSON object {loss, perplexity, tokens, ...} (with --accuracy: accuracy, accuracy_n, ...)");
    app.add_flag("--accuracy", accuracy, "also the greedy accuracy: answer == expected answer over every question of --data (see below)");
    app.add_option("--parallel", parallel, "questions decoded together in one batched forward by --accuracy")
        ->check(CLI::Range((int64_t) 1, (int64_t) 1024));
    app.add_option("--sequence_len,--sequence-len", seq, "tokens per row (default min(2048, max_position_embeddings), as peft train)")
        ->check(CLI::Range((int64_t) 2, (int64_t) 1 << 20));
    app.add_option("--batch", batch, "rows per forward pass (use training's micro_batch_size to reproduce its eval loss)")
        ->check(CLI::Range((int64_t) 1, (int64_t) 4096));
    app.add_option("--threads", threads, "threads (default: all cores)")->check(CLI::Range(0, THREADS_MAX));
    app.add_option("--tokenizer", tok_path, "tokenizer directory or file (default: --model)");
    app.add_option("--chat_template,--chat-template", chat_template, "llama3, chatml, llama2, alpaca or plain (default: auto)");
    app.add_flag("--no-packing,--no_packing", no_packing, "one sample per row (sample_packing: false)");
    app.add_flag("--train-on-inputs,--train_on_inputs", train_on_inputs, "count prompt tokens too (train_on_inputs: true)");
    app.add_flag("--skip-bad-lines,--skip_bad_lines", skip_bad_lines, "count and skip malformed data lines instead of stopping");
    cli_quant_flags qf;
    cli_add_quant_flags(app, qf);
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    threads_set(threads);
    const quant_options * quant = nullptr;
    status st = cli_quant(qf, &quant);
    if (!st.ok()) return cli_fail("eval", st);
    llama_model m;
    st = llama_load(m, model_dir, false, quant);
    if (!st.ok()) return cli_fail("eval", st);
    adapter_set aset;
    if (!adapter_dir.empty()) {
        st = adapter_load(adapter_dir, m, aset);
        if (!st.ok()) return cli_fail("eval", st);
        adapters_set_training(aset, false);
    }
    std::unique_ptr<tokenizer> tok;
    st = tokenizer::load(tok_path.empty() ? model_dir : tok_path, tok);
    if (!st.ok()) {
        if (st.hint.empty()) st.hint = "pass --tokenizer DIR when the model directory has no tokenizer files";
        return cli_fail("eval", st);
    }
    const int64_t T = seq > 0 ? seq : std::min<int64_t>(2048, m.hp.max_position);
    data_options dopt;
    dopt.max_len = T;
    dopt.pack = !no_packing;
    dopt.train_on_inputs = train_on_inputs;
    dopt.chat_template = chat_template;
    dopt.shuffle = false;
    dopt.held_out_fraction = 0.0;
    dopt.skip_bad_lines = skip_bad_lines;
    dopt.vocab_size = m.hp.n_vocab;
    dataset d;
    st = dataset_load(data_path, *tok, dopt, d);
    if (!st.ok()) return cli_fail("eval", st);
    for (const std::string & w : d.warnings) std::fprintf(stderr, "peft eval: warning: %s\n", w.c_str());
    st = check_token_ids(d.train, m.hp.n_vocab, data_path);
    if (!st.ok()) return cli_fail("eval", st);
    // Always `batch` rows per pass, the last batch padded with empty rows, as the trainer does:
    // GEMM shapes (and so the float sums) depend on it.
    llama_state s;
    st = llama_state_init(s, m, batch, T, false);
    if (!st.ok()) return cli_fail("eval", st);
    eval_result er;
    st = evaluate_rows(m, s, d.train, er);
    if (!st.ok()) return cli_fail("eval", st);
    if (er.n_tokens == 0) return cli_fail("eval", make_error(PEFT_STATUS_FORMAT, data_path, "no scored tokens: nothing to evaluate"));
    accuracy_result ar;
    int64_t n_skipped = 0;
    if (accuracy) {
        // prompts are never cut: the model's whole context, not --sequence_len
        std::vector<answer_example> ex;
        std::vector<int32_t> stops;
        st = answer_examples_load(data_path, *tok, chat_template, m.hp.n_vocab, m.hp.max_position, ex, stops, &n_skipped);
        if (!st.ok()) return cli_fail("eval", st);
        if (m.hp.eos_id >= 0) stops.push_back((int32_t) m.hp.eos_id);
        generation_config_eos(model_dir, stops);
        st = accuracy_evaluate(m, *tok, ex, stops, parallel, ar);
        if (!st.ok()) return cli_fail("eval", st);
    }
    if (as_json) {
        std::printf("{\"loss\": %.17g, \"perplexity\": %.17g, \"tokens\": %lld, \"rows\": %lld, \"sequence_len\": %lld, \"batch\": %lld",
                    er.loss(), er.perplexity(), (long long) er.n_tokens, (long long) d.train.n_rows, (long long) T, (long long) batch);
        if (accuracy) {
            std::printf(", \"accuracy\": %.17g, \"accuracy_n\": %lld, \"accuracy_correct\": %lld, \"accuracy_skipped\": %lld", ar.accuracy(),
                        (long long) ar.n, (long long) ar.n_correct, (long long) n_skipped);
        }
        std::printf("}\n");
    } else {
        std::printf("loss %.6f  perplexity %.4f  tokens %lld  rows %lld x %lld%s\n", er.loss(), er.perplexity(), (long long) er.n_tokens,
                    (long long) d.train.n_rows, (long long) T, adapter_dir.empty() ? "" : ("  adapter " + adapter_dir).c_str());
        if (accuracy) {
            std::printf("accuracy %.2f%%  (%lld of %lld greedy answers equal the expected answer%s)\n", 100.0 * ar.accuracy(),
                        (long long) ar.n_correct, (long long) ar.n,
                        n_skipped > 0 ? (", " + std::to_string(n_skipped) + " lines without a question left out").c_str() : "");
        }
    }
    return 0;
}

} // namespace peft
