// cmd_generate.cpp: `peft generate`: text generation from a base model, optionally with a PEFT
// adapter applied unmerged (default: every adapted projection runs base + adapter) or merged
// into the weights first (--merge). Streams decoded text to stdout as tokens arrive; timings go
// to stderr. Also `bench_generate`, the `peft bench --method generate` mode that times decoding
// of base, unmerged and merged side by side.
// Not here: the KV-cached forward (model/llama_infer), sampling (model/sample), templates
// (tokenizer/chat).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <vector>

#include "adapters/adapter_set.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/json.h"
#include "model/llama.h"
#include "model/generation.h"
#include "model/llama_infer.h"
#include "model/sample.h"
#include "tokenizer/tokenizer.h"

namespace peft {

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Prints the text of the generated tokens as it grows. The whole generated sequence is decoded
// each time (as transformers' TextStreamer does) because decoders are not token-local
// (SentencePiece strips the first space, byte-level tokens can split a character).
struct text_stream {
    const tokenizer & tok;
    std::FILE * out;
    std::string printed;

    void update(const std::vector<int32_t> & ids, bool final) {
        std::string text = tok.decode(ids, true);
        const size_t upto = final ? text.size() : complete_utf8_prefix(text);
        if (upto <= printed.size()) return;
        if (text.compare(0, printed.size(), printed) != 0) {
            // the decoder rewrote earlier text (rare); keep going from where we are
            printed = text.substr(0, std::min(printed.size(), upto));
            return;
        }
        std::fwrite(text.data() + printed.size(), 1, upto - printed.size(), out);
        std::fflush(out);
        printed.assign(text, 0, upto);
    }
};

struct gen_stats {
    int64_t n_prompt = 0, n_gen = 0, n_decode = 0;   // n_decode: single-token forwards
    double  t_prompt = 0, t_decode = 0;
    bool    context_full = false;
    bool    stopped = false;   // a stop token ended generation
};

// Prefill + sample/decode loop. on_token sees every generated token (stop tokens excluded).
status generate(const llama_model & m, llama_infer_state & st, sampler & smp, const std::vector<int32_t> & prompt,
                int64_t max_new, const std::vector<int32_t> & stops, const std::function<void(const std::vector<int32_t> &)> & on_token,
                std::vector<float> & logits, std::vector<int32_t> & history, gen_stats & gs) {
    const int64_t V = m.hp.n_vocab;
    logits.resize((size_t) V);
    history.assign(prompt.begin(), prompt.end());
    history.reserve(prompt.size() + (size_t) max_new);
    llama_infer_reset(st);
    double t0 = now_s();
    PEFT_TRY(llama_infer_eval(m, st, prompt.data(), (int64_t) prompt.size(), logits.data()));
    gs.t_prompt = now_s() - t0;
    gs.n_prompt = (int64_t) prompt.size();
    std::vector<int32_t> gen;
    gen.reserve((size_t) max_new);
    t0 = now_s();
    for (int64_t i = 0; i < max_new; i++) {
        const int32_t t = sampler_sample(smp, logits.data(), V, history.data(), (int64_t) history.size());
        if (std::find(stops.begin(), stops.end(), t) != stops.end()) {
            gs.stopped = true;
            break;
        }
        gen.push_back(t);
        history.push_back(t);
        gs.n_gen++;
        if (on_token) on_token(gen);
        if (i + 1 == max_new) break;
        if (st.n_past >= st.max_ctx) {
            gs.context_full = true;
            break;
        }
        PEFT_TRY(llama_infer_eval(m, st, &t, 1, logits.data()));
        gs.n_decode++;
    }
    gs.t_decode = now_s() - t0;
    return status::success();
}

// Loads the adapter dir (with an existence check that names the flag) and merges it if asked.
status load_adapter(llama_model & m, const std::string & dir, bool merge, adapter_set & set) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
        status st = make_error(PEFT_STATUS_IO, dir, "adapter directory not found");
        st.hint = "--adapter takes a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)";
        return st;
    }
    PEFT_TRY(adapter_load(dir, m, set));
    if (merge) PEFT_TRY(adapters_merge(m, set));
    return status::success();
}

} // namespace

int cmd_generate(int argc, char ** argv) {
    CLI::App app{"Generates text with a base model, optionally with a PEFT adapter (unmerged by default, or merged with --merge).\n"
                 "Text streams to stdout; prompt and generation speed go to stderr. Greedy unless --temperature > 0.\n\n"
                 "examples:\n"
                 "  peft generate --model ~/models/TinyLlama-1.1B-Chat-v1.0 --chat \"Write a haiku about CPUs.\"\n"
                 "  peft generate --model ~/models/Llama-3.2-1B-Instruct --adapter out/lora --chat \"Hi!\" --system \"Be brief.\"\n"
                 "  peft generate --model ~/models/Qwen2.5-0.5B-Instruct --adapter out/lora --merge --chat \"2+2?\" --max-new-tokens 32\n"
                 "  peft generate --model ~/models/SmolLM2-135M --prompt \"Once upon a time\" --temperature 0.8 --top-p 0.95 --seed 1\n"
                 "  peft generate --model tiny.gguf --adapter lora.gguf --chat \"Hi!\"   (llama.cpp files)",
                 "peft generate"};
    std::string model_dir, adapter_dir, prompt, chat, system, tmpl = "auto", tok_path;
    bool merge = false, ignore_eos = false, show_prompt = false;
    int64_t max_new = 128, ctx = 0, top_k = 0;
    float temperature = 0.0f, top_p = 1.0f, rep = 1.0f;
    uint64_t seed = 0;
    int threads = 0;
    app.add_option("--model", model_dir, "Hugging Face model directory (config.json + safetensors + tokenizer) or .gguf file")->required();
    app.add_option("--adapter", adapter_dir, "PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or GGUF LoRA");
    app.add_flag("--merge", merge, "merge the adapter into the weights before generating (default: applied unmerged)");
    auto * p_opt = app.add_option("--prompt", prompt, "raw prompt text (BOS added as the tokenizer's post-processor says)");
    auto * c_opt = app.add_option("--chat", chat, "a user message, wrapped in the chat template");
    p_opt->excludes(c_opt);
    app.add_option("--system", system, "system message for --chat");
    app.add_option("--template", tmpl, "chat template: auto (from tokenizer_config.json), llama3, chatml, llama2, alpaca, plain");
    app.add_option("--tokenizer", tok_path, "tokenizer directory or file (default: the model directory)");
    app.add_option("--max-new-tokens", max_new, "most tokens to generate")->check(CLI::Range((int64_t) 1, (int64_t) 1 << 24));
    app.add_option("--ctx", ctx, "context size (default: prompt + max-new-tokens, capped at max_position_embeddings)")
        ->check(CLI::Range((int64_t) 1, (int64_t) 1 << 24));
    app.add_option("--temperature", temperature, "sampling temperature; 0 = greedy (deterministic)");
    app.add_option("--top-k", top_k, "keep the k most likely tokens (0 = off)");
    app.add_option("--top-p", top_p, "nucleus sampling mass (1 = off)");
    app.add_option("--repetition-penalty", rep, "HF repetition penalty on seen tokens (1 = off)");
    app.add_option("--seed", seed, "sampling seed");
    app.add_flag("--ignore-eos", ignore_eos, "do not stop at end-of-sequence tokens");
    app.add_flag("--show-prompt", show_prompt, "print the prompt as the model sees it (special tokens included) to stderr");
    app.add_option("--threads", threads, "threads (default: all cores)")->check(CLI::Range(0, THREADS_MAX));
    cli_quant_flags qf;
    cli_add_quant_flags(app, qf);
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    const quant_options * quant = nullptr;
    if (status qs = cli_quant(qf, &quant); !qs.ok()) return cli_fail("generate", qs);
    if (quant && merge) {
        status qs = make_error(PEFT_STATUS_ARGUMENT, "--merge", "cannot merge an adapter into a 4-bit base: the sum is not 4-bit, "
                                                                "and re-quantizing it would lose the adapter's update");
        qs.hint = "drop --merge (the adapter is applied unmerged over the 4-bit base), or write a merged bf16 model with "
                  "peft merge --load-in-4bit and generate from that";
        return cli_fail("generate", qs);
    }
    if (prompt.empty() == chat.empty()) {
        std::fprintf(stderr, "peft generate: give exactly one of --prompt TEXT or --chat TEXT (non-empty)\n");
        return 2;
    }
    if (merge && adapter_dir.empty()) {
        std::fprintf(stderr, "peft generate: --merge needs --adapter DIR\n");
        return 2;
    }
    threads_set(threads);
    sampler smp;
    status st = sampler_init(smp, sampler_config{temperature, top_k, top_p, rep, seed});
    if (!st.ok()) return cli_fail("generate", st);

    // tokenizer and prompt first: cheap, and most bad input shows up here
    std::unique_ptr<tokenizer> tok;
    st = tokenizer::load(tok_path.empty() ? model_dir : tok_path, tok);
    if (!st.ok()) return cli_fail("generate", st);
    std::vector<int32_t> ids;
    std::vector<int32_t> stops;
    if (!chat.empty()) {
        int32_t eot = -1;
        std::string used;
        std::vector<chat_message> msgs;
        if (!system.empty()) msgs.push_back({"system", system, ""});
        msgs.push_back({"user", chat, ""});
        st = chat_prompt(*tok, msgs, tmpl, "--chat", ids, eot, used);
        if (!st.ok()) return cli_fail("generate", st);
        std::fprintf(stderr, "peft generate: chat template %s\n", used.c_str());
        if (eot >= 0) stops.push_back(eot);
    } else {
        if (!system.empty() || tmpl != "auto") {
            std::fprintf(stderr, "peft generate: --system and --template apply to --chat only\n");
            return 2;
        }
        ids = tok->encode(prompt, true, true);
    }
    if (ids.empty()) {
        std::fprintf(stderr, "peft generate: the prompt encodes to no tokens\n");
        return 1;
    }
    if (show_prompt) {
        const std::string text = tok->decode(ids, false);
        std::fprintf(stderr, "peft generate: prompt (%zu tokens):\n%s\n---\n", ids.size(), text.c_str());
    }

    llama_model m;
    st = llama_load(m, model_dir, false, quant);
    if (!st.ok()) return cli_fail("generate", st);
    if (tok->n_vocab() > m.hp.n_vocab) {
        // ids past the embedding table would be out of range; catch the mismatch by name
        for (int32_t id : ids) {
            if (id >= m.hp.n_vocab) {
                status e = make_mismatch(PEFT_STATUS_CONFIG, model_dir, "tokenizer vocabulary", "ids below vocab_size " +
                                         std::to_string(m.hp.n_vocab), "token id " + std::to_string(id));
                e.hint = "the tokenizer does not belong to this model; pass the right one with --tokenizer";
                return cli_fail("generate", e);
            }
        }
    }
    if (!ignore_eos) {
        if (tok->eos_id() >= 0) stops.push_back(tok->eos_id());
        if (m.hp.eos_id >= 0) stops.push_back((int32_t) m.hp.eos_id);
        generation_config_eos(model_dir, stops);
    } else {
        stops.clear();
    }

    adapter_set set;
    if (!adapter_dir.empty()) {
        st = load_adapter(m, adapter_dir, merge, set);
        if (!st.ok()) return cli_fail("generate", st);
        std::fprintf(stderr, "peft generate: adapter %s (%zu modules, %s)\n", adapter_dir.c_str(), set.modules.size(),
                     merge ? "merged" : "unmerged");
    }

    const int64_t n_prompt = (int64_t) ids.size();
    if (n_prompt >= m.hp.max_position || (ctx > 0 && n_prompt >= ctx)) {
        const int64_t limit = ctx > 0 ? std::min(ctx, m.hp.max_position) : m.hp.max_position;
        status e = make_error(PEFT_STATUS_ARGUMENT, "--prompt", "the prompt is " + std::to_string(n_prompt) +
                              " tokens, which leaves no room in the context of " + std::to_string(limit) + " positions");
        e.hint = "shorten the prompt (max_position_embeddings in config.json, or --ctx, sets the context)";
        return cli_fail("generate", e);
    }
    int64_t max_ctx = std::min(n_prompt + max_new, m.hp.max_position);
    if (ctx > 0) max_ctx = std::min(ctx, m.hp.max_position);
    llama_infer_state is;
    st = llama_infer_init(is, m, max_ctx);
    if (!st.ok()) return cli_fail("generate", st);

    text_stream ts{*tok, stdout, {}};
    std::vector<float> logits;
    std::vector<int32_t> history;
    gen_stats gs;
    std::vector<int32_t> last;
    st = generate(m, is, smp, ids, max_new, stops,
                  [&](const std::vector<int32_t> & gen) { ts.update(gen, false); last = gen; }, logits, history, gs);
    if (!st.ok()) return cli_fail("generate", st);
    ts.update(last, true);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "peft generate: prompt %lld tokens in %.3f s (%.1f tokens/s); generated %lld tokens in %.3f s "
                 "(%.2f tokens/s)%s\n",
                 (long long) gs.n_prompt, gs.t_prompt, gs.t_prompt > 0 ? gs.n_prompt / gs.t_prompt : 0.0, (long long) gs.n_gen,
                 gs.t_decode, gs.t_decode > 0 ? gs.n_gen / gs.t_decode : 0.0,
                 gs.stopped ? ", stopped at end of sequence" : gs.context_full ? ", context full" : "");
    return 0;
}

// `peft bench --method generate`: decoding speed of the base model, the model with an adapter
// applied unmerged, and a second copy with the adapter merged, decoding in lockstep so the
// three see the same machine state. The adapter is --adapter DIR or a random adapter of the
// config `adapter_cfg` (every trainable tensor moved by N(0, 0.02), so merged and unmerged do
// differ from the base and must agree with each other).
int bench_generate(const std::string & model_dir, const std::string & shape, bool bf16, uint64_t seed, const std::string & adapter_dir,
                   const std::string & adapter_cfg, int64_t prompt_tokens, int64_t gen_tokens, int64_t rounds, const quant_options * quant) {
    auto load = [&](llama_model & m) -> status {
        if (!model_dir.empty()) return llama_load(m, model_dir, false, quant);
        llama_hparams hp;
        if (!llama_hparams_named_shape(shape, hp)) return make_error(PEFT_STATUS_ARGUMENT, "--shape", "unknown shape " + shape);
        hp.max_position = std::max<int64_t>(hp.max_position, prompt_tokens + gen_tokens);
        PEFT_TRY(llama_init_random(m, hp, false, seed, bf16 ? PEFT_DTYPE_BF16 : PEFT_DTYPE_F32));
        return quant ? llama_quantize_frozen(m, *quant) : status{};
    };
    auto attach = [&](llama_model & m, adapter_set & set) -> status {
        if (!adapter_dir.empty()) return adapter_load(adapter_dir, m, set);
        json_document doc;
        PEFT_TRY(doc.parse(adapter_cfg.data(), adapter_cfg.size(), "bench adapter config"));
        PEFT_TRY(adapters_attach(m, doc.root(), seed + 1, set));
        rng r(seed + 2);
        std::vector<float> noise;
        for (param_ref & p : adapter_set_params(set)) {
            if (!p.trainable) continue;
            int64_t n = 1;
            for (int64_t d : p.shape) n *= d;
            noise.resize((size_t) n);
            r.fill_normal(noise.data(), n, 0.0f, 0.02f);
            for (int64_t i = 0; i < n; i++) p.value[i] += noise[(size_t) i];
        }
        adapters_set_training(set, false);   // after the values: inference state (DoRA's norms) from them
        return status::success();
    };
    llama_model mu, mm;   // unmerged (also the base, with its adapters detached) and merged
    adapter_set su, sm;
    // mu first: the model allocated first decodes a few % slower here (page placement; seen with
    // r = 1 too), so this order errs against the unmerged adapter
    status st = load(mu);
    if (st.ok()) st = load(mm);
    if (st.ok()) st = attach(mu, su);
    if (st.ok()) st = attach(mm, sm);
    if (st.ok()) st = adapters_merge(mm, sm);
    if (!st.ok()) return cli_fail("bench", st);
    const int64_t max_ctx = std::min(prompt_tokens + gen_tokens, mu.hp.max_position);
    if (prompt_tokens < 1 || prompt_tokens >= max_ctx) {
        return cli_fail("bench", make_error(PEFT_STATUS_ARGUMENT, "--seq", "the prompt must be shorter than the context (" +
                                        std::to_string(mu.hp.max_position) + ")"));
    }
    rng r(seed + 3);
    std::vector<int32_t> prompt((size_t) prompt_tokens);
    for (int32_t & t : prompt) t = (int32_t) (r.next_u32() % (uint32_t) mu.hp.n_vocab);
    const std::vector<adapter_module *> attached = mu.adapters;
    // The three run in lockstep, one decode step each in turn, so a change in machine load
    // (other processes, frequency) hits all three alike; each step is timed on its own and the
    // median step time is reported, which ignores the odd preempted step.
    struct phase {
        llama_model *       m;
        bool                adapters;
        llama_infer_state   is;
        std::vector<float>  logits;
        std::vector<double> step_s, prefill_s;
    };
    phase phases[3] = {{&mu, false, {}, {}, {}, {}}, {&mu, true, {}, {}, {}, {}}, {&mm, true, {}, {}, {}, {}}};
    for (phase & ph : phases) {
        st = llama_infer_init(ph.is, *ph.m, max_ctx);
        if (!st.ok()) return cli_fail("bench", st);
        ph.logits.resize((size_t) mu.hp.n_vocab);
    }
    auto select = [&](phase & ph) {
        if (ph.m == &mu) mu.adapters = ph.adapters ? attached : std::vector<adapter_module *>();
    };
    for (int64_t round = 0; round < rounds + 1; round++) {   // round 0 warms caches, untimed
        for (phase & ph : phases) {
            select(ph);
            llama_infer_reset(ph.is);
            const double t0 = now_s();
            st = llama_infer_eval(*ph.m, ph.is, prompt.data(), prompt_tokens, ph.logits.data());
            if (!st.ok()) return cli_fail("bench", st);
            if (round > 0) ph.prefill_s.push_back(now_s() - t0);
        }
        for (int64_t i = 0; i + 1 < gen_tokens; i++) {
            for (phase & ph : phases) {
                select(ph);
                const int32_t t = sample_argmax(ph.logits.data(), mu.hp.n_vocab);
                const double t0 = now_s();
                st = llama_infer_eval(*ph.m, ph.is, &t, 1, ph.logits.data());
                if (!st.ok()) return cli_fail("bench", st);
                if (round > 0) ph.step_s.push_back(now_s() - t0);
            }
        }
    }
    mu.adapters = attached;
    auto median = [](std::vector<double> v) {
        if (v.empty()) return 0.0;
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    auto tps = [&](const std::vector<double> & v, double per) { const double m = median(v); return m > 0 ? per / m : 0.0; };
    // the last logits of unmerged and merged must agree (same greedy tokens unless a near tie
    // diverged them; the relative difference is reported, not judged)
    double num = 0, den = 0;
    for (size_t i = 0; i < phases[1].logits.size(); i++) {
        const double d = (double) phases[1].logits[i] - phases[2].logits[i];
        num += d * d;
        den += (double) phases[2].logits[i] * phases[2].logits[i];
    }
    auto fmt = [](double v, int prec) { char b[64]; std::snprintf(b, sizeof b, "%.*f", prec, v); return std::string(b); };
    const double tb = tps(phases[0].step_s, 1.0), tu = tps(phases[1].step_s, 1.0), tm = tps(phases[2].step_s, 1.0);
    std::string adapter = adapter_dir.empty() ? "random " + adapter_cfg : adapter_dir;
    std::printf("{\"model\": %s, \"method\": \"generate\", \"adapter\": %s, \"adapter_modules\": %zu, \"prompt_tokens\": %lld, "
                "\"gen_tokens\": %lld, \"rounds\": %lld, \"threads\": %d, \"base_prefill_tokens_per_s\": %s, "
                "\"unmerged_prefill_tokens_per_s\": %s, \"merged_prefill_tokens_per_s\": %s, "
                "\"base_decode_tokens_per_s\": %s, \"unmerged_decode_tokens_per_s\": %s, \"merged_decode_tokens_per_s\": %s, "
                "\"unmerged_over_merged\": %s, \"unmerged_vs_merged_logits_rel_diff\": %s}\n",
                json_quote(model_dir.empty() ? shape : model_dir).c_str(), json_quote(adapter).c_str(), su.modules.size(),
                (long long) prompt_tokens, (long long) gen_tokens, (long long) rounds, threads_get(),
                fmt(tps(phases[0].prefill_s, (double) prompt_tokens), 2).c_str(), fmt(tps(phases[1].prefill_s, (double) prompt_tokens), 2).c_str(),
                fmt(tps(phases[2].prefill_s, (double) prompt_tokens), 2).c_str(), fmt(tb, 2).c_str(), fmt(tu, 2).c_str(), fmt(tm, 2).c_str(),
                fmt(tm > 0 ? tu / tm : 0.0, 4).c_str(), fmt(den > 0 ? std::sqrt(num / den) : 0.0, 8).c_str());
    return 0;
}

} // namespace peft
