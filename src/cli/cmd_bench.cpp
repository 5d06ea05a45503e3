// cmd_bench.cpp: `peft bench`: N timed training steps of a model (HF directory or named shape
// with random weights), one JSON line out. Method `full` = full fine-tuning with AdamW;
// `frozen` = frozen base, forward + input-gradient backward (the floor every adapter pays).
// `milora_moe` = decode tokens/s of the MiLoRA mixture with its per-prompt routing cached,
// against one LoRA and against the same mixture routed per token (bench_milora_moe).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <memory>
#include <cstdio>
#include <ctime>
#include <sys/resource.h>
#include <vector>

#include "adapters/adapter_set.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/json.h"
#include "kernels/kernels.h"
#include "model/gguf_export.h"
#include "model/llama.h"
#include "model/llama_infer.h"
#include "model/sample.h"
#include "train/calibrate.h"
#include "train/data.h"
#include "train/trainer.h"

namespace peft {

// cmd_generate.cpp: the --method generate mode (decode tokens/s of base, unmerged, merged)
int bench_generate(const std::string & model_dir, const std::string & shape, bool bf16, uint64_t seed, const std::string & adapter_dir,
                   const std::string & adapter_cfg, int64_t prompt_tokens, int64_t gen_tokens, int64_t rounds, const quant_options * quant);

// Bits per parameter of the frozen projection weights (q/k/v/o/gate/up/down): per block for a
// quantized weight (scales and double-quant state included), per element otherwise.
static double frozen_linear_bits_per_param(const llama_model & m) {
    double bits = 0, n = 0;
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
            const linear_weight & w = m.proj_weight(l, (llama_proj) p);
            const double numel = (double) (w.OC * w.IC);
            bits += w.q ? 8.0 * (double) w.q->bytes() : 8.0 * (double) dtype_size(w.type) * numel;
            n += numel;
        }
    }
    return n > 0 ? bits / n : 0.0;
}

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of the calling thread (all of a step's work with --threads 1), immune to preemption.
static double thread_cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static double peak_rss_mib() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double) ru.ru_maxrss / 1024.0;
}

// GFLOP/s of a large square x W^T, best of 3 after a warm-up: ours (f32, or bf16 weights with
// bf16 compute) or OpenBLAS, so --peak can set them side by side in one process.
enum peak_kernel { PEAK_OWN_F32, PEAK_OWN_BF16, PEAK_BLAS_F32 };
static double gemm_peak_gflops(peak_kernel k) {
    const int64_t n = 1536;
    std::vector<float> a((size_t) (n * n), 0.5f), b((size_t) (n * n), 0.25f), c((size_t) (n * n));
    std::vector<uint16_t> bh((size_t) (n * n), f32_to_bf16(0.25f));
    double best = 0.0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now_s();
        if (k == PEAK_BLAS_F32) gemm_blas(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
        else if (k == PEAK_OWN_F32) gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
        else gemm_own(false, true, n, n, n, 1.0f, a.data(), n, PEFT_DTYPE_BF16, bh.data(), n, 0.0f, c.data(), n, true);
        double dt = now_s() - t0;
        if (rep > 0) best = std::max(best, 2.0 * n * n * n / dt / 1e9);
    }
    return best;
}

// --peak: the raw register-loop peaks and the GEMM peaks, interleaved (round-robin, best of
// each) so a busy machine skews them alike. Keys: raw_f32, raw_bf16 (vdpbf16ps), raw_amx (AMX
// TDPBF16PS), own_f32, own_bf16, blas_f32.
struct peaks { double raw_f32 = 0, raw_bf16 = 0, raw_amx = 0, own_f32 = 0, own_bf16 = 0, blas_f32 = 0; };
static peaks measure_peaks() {
    peaks p;
    for (int round = 0; round < 2; round++) {
        p.raw_f32 = std::max(p.raw_f32, raw_peak_gflops(RAW_PEAK_F32));
        p.own_f32 = std::max(p.own_f32, gemm_peak_gflops(PEAK_OWN_F32));
        p.blas_f32 = std::max(p.blas_f32, gemm_peak_gflops(PEAK_BLAS_F32));
        p.raw_bf16 = std::max(p.raw_bf16, raw_peak_gflops(RAW_PEAK_BF16_DOT));
        p.raw_amx = std::max(p.raw_amx, raw_peak_gflops(RAW_PEAK_AMX_BF16));
        p.own_bf16 = std::max(p.own_bf16, gemm_peak_gflops(PEAK_OWN_BF16));
    }
    return p;
}

// The adapter config `--method` names, at rank r (false: not an adapter method). Every one is
// on all 7 projections, as the PyTorch baseline's LoRA.
static bool bench_adapter_config(const std::string & method, int64_t r, float alpha, std::string & cfg, int64_t total_step = 3) {
    const std::string lora = "{\"r\": " + std::to_string(r) + ", \"lora_alpha\": " + std::to_string(alpha) +
                             ", \"target_modules\": \"all-linear\"";
    const bool init = method == "pissa" || method == "milora" || method == "olora" || method.rfind("pissa_niter_", 0) == 0;
    if (method == "lora") cfg = lora + "}";
    else if (method == "dora") cfg = lora + ", \"use_dora\": true}";
    else if (method == "lora_fa") cfg = lora + ", \"lora_fa\": true}";
    else if (init) cfg = lora + ", \"init_lora_weights\": \"" + method + "\"}";
    // AdaLoRA at init_r = r, pruned towards r/2 over the run: total_step = warmup + timed steps
    // (at least 3, so that tinit 1 and tfinal 1 leave a budget phase)
    else if (method == "adalora") cfg = "{\"adapter\": \"adalora\", \"init_r\": " + std::to_string(r) + ", \"target_r\": " +
                                        std::to_string(std::max<int64_t>(1, r / 2)) + ", \"lora_alpha\": " + std::to_string(alpha) +
                                        ", \"total_step\": " + std::to_string(std::max<int64_t>(total_step, 3)) +
                                        ", \"tinit\": 1, \"tfinal\": 1, \"target_modules\": \"all-linear\"}";
    else if (method != "full" && method != "frozen" && method != "generate") {
        // another registered method (vera, deep_lora, rosa, ...) at rank r on the same projections
        bool known = false;
        for (const std::string & m : adapter_method_names()) known = known || (m == method && m != "lora");
        if (!known) return false;
        cfg = "{\"adapter\": \"" + method + "\", \"r\": " + std::to_string(r) + ", \"target_modules\": \"all-linear\"}";
    } else return false;
    return true;
}

// `peft bench --method milora_moe`: decode tokens/s of four adapters on one model, decoding in
// lockstep (one step each in turn, median step time, as bench_generate): none (the base), a LoRA
// of rank r on all 7 projections, the MiLoRA mixture of the same experts with top-K routing
// decided once per prompt and cached, and the same mixture routed per token (routing: token).
// Every trainable tensor is moved by N(0, 0.02) so that the experts and routers matter.
static int bench_milora_moe(llama_model & m, uint64_t seed, int64_t r, int64_t top_k, int64_t prompt_tokens, int64_t gen_tokens,
                            int64_t rounds) {
    const std::string lora = "\"r\": " + std::to_string(r) + ", \"lora_alpha\": " + std::to_string(2 * r) + ", \"target_modules\": \"all-linear\"";
    const std::string moe = "{\"adapter\": \"milora_moe\", " + lora + ", \"router_top_k\": " + std::to_string(top_k);
    const std::string cfgs[] = {"", "{" + lora + "}", moe + "}", moe + ", \"routing\": \"token\"}"};
    const char * names[] = {"base", "lora", "milora_moe", "milora_moe_token"};
    constexpr int P = 4;
    struct phase {
        adapter_set                   set;
        std::vector<adapter_module *> mods;
        llama_layer_hook *            hook = nullptr;
        llama_infer_state             is;
        std::vector<float>            logits;
        std::vector<double>           step_s, step_cpu_s;   // wall clock; this thread's CPU time
    } ph[P];
    const int64_t max_ctx = std::min(prompt_tokens + gen_tokens, m.hp.max_position);
    if (prompt_tokens >= max_ctx) {
        return cli_fail("bench", make_error(PEFT_STATUS_ARGUMENT, "--seq", "the prompt must be shorter than the context (" +
                                                                               std::to_string(m.hp.max_position) + ")"));
    }
    rng noise(seed + 2);
    for (int i = 1; i < P; i++) {
        json_document doc;
        status st = doc.parse(cfgs[i].data(), cfgs[i].size(), "bench milora_moe config");
        if (st.ok()) st = adapters_attach(m, doc.root(), seed + 1, ph[i].set);
        if (!st.ok()) return cli_fail("bench", st);
        for (param_ref & p : adapter_set_params(ph[i].set)) {
            int64_t n = 1;
            for (int64_t d : p.shape) n *= d;
            for (int64_t j = 0; p.trainable && j < n; j++) p.value[j] += noise.normal(0.0f, 0.02f);
        }
        adapters_set_training(ph[i].set, false);
        ph[i].mods = m.adapters;
        ph[i].hook = m.layer_hook;
    }
    auto select = [&](phase & p) {
        m.adapters = p.mods;
        m.layer_hook = p.hook;
    };
    for (phase & p : ph) {
        select(p);
        status st = llama_infer_init(p.is, m, max_ctx);
        if (!st.ok()) return cli_fail("bench", st);
        p.logits.resize((size_t) m.hp.n_vocab);
    }
    std::vector<int32_t> prompt((size_t) prompt_tokens);
    rng tr(seed + 3);
    for (int32_t & t : prompt) t = (int32_t) (tr.next_u32() % (uint32_t) m.hp.n_vocab);
    for (int64_t round = 0; round < rounds + 1; round++) {   // round 0 warms caches, untimed
        for (phase & p : ph) {
            select(p);
            llama_infer_reset(p.is);
            status st = llama_infer_eval(m, p.is, prompt.data(), prompt_tokens, p.logits.data());
            if (!st.ok()) return cli_fail("bench", st);
        }
        for (int64_t i = 0; i + 1 < gen_tokens; i++) {
            for (phase & p : ph) {
                select(p);
                const int32_t t = sample_argmax(p.logits.data(), m.hp.n_vocab);
                const double t0 = now_s(), c0 = thread_cpu_s();
                status st = llama_infer_eval(m, p.is, &t, 1, p.logits.data());
                if (!st.ok()) return cli_fail("bench", st);
                if (round > 0) {
                    p.step_s.push_back(now_s() - t0);
                    p.step_cpu_s.push_back(thread_cpu_s() - c0);
                }
            }
        }
    }
    auto median_rate = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v.empty() || v[v.size() / 2] <= 0 ? 0.0 : 1.0 / v[v.size() / 2];
    };
    double tps[P], cps[P];
    for (int i = 0; i < P; i++) {
        tps[i] = median_rate(ph[i].step_s);
        cps[i] = median_rate(ph[i].step_cpu_s);
    }
    select(ph[0]);
    std::string line = "{\"method\": \"milora_moe\", \"r\": " + std::to_string(r) + ", \"router_top_k\": " + std::to_string(top_k) +
                       ", \"experts_per_layer\": 7, \"prompt_tokens\": " + std::to_string(prompt_tokens) + ", \"gen_tokens\": " +
                       std::to_string(gen_tokens) + ", \"rounds\": " + std::to_string(rounds) + ", \"threads\": " + std::to_string(threads_get());
    char b[160];
    for (int i = 0; i < P; i++) {
        std::snprintf(b, sizeof b, ", \"%s_decode_tokens_per_s\": %.2f, \"%s_decode_tokens_per_cpu_s\": %.2f", names[i], tps[i], names[i], cps[i]);
        line += b;
    }
    // per CPU second: what a step costs on a machine other processes share (exact with --threads 1)
    std::snprintf(b, sizeof b, ", \"cached_over_lora\": %.4f, \"cached_over_token_routing\": %.4f, \"cached_over_lora_cpu\": %.4f, "
                  "\"cached_over_token_routing_cpu\": %.4f}", tps[1] > 0 ? tps[2] / tps[1] : 0.0, tps[3] > 0 ? tps[2] / tps[3] : 0.0,
                  cps[1] > 0 ? cps[2] / cps[1] : 0.0, cps[3] > 0 ? cps[2] / cps[3] : 0.0);
    std::printf("%s%s\n", line.c_str(), b);
    return 0;
}

// Calibration for methods that ask for it (Deep LoRA's gradient, CorDA's covariances): rows of
// random tokens, every one scored, as the timed batches.
struct bench_calibration : calibration_source {
    llama_model & m;
    int64_t       T;
    uint64_t      seed;
    bench_calibration(llama_model & mm, int64_t t, uint64_t s) : m(mm), T(t), seed(s) {}
    data_rows rows(int64_t n_samples) const {
        data_rows d;
        d.T = T;
        d.n_rows = std::max<int64_t>(1, std::min<int64_t>(n_samples, 64));
        rng r(seed);
        for (int64_t i = 0; i < d.n_rows * T; i++) {
            const int32_t tok = (int32_t) (r.next_u32() % (uint32_t) m.hp.n_vocab);
            d.input_ids.push_back(tok);
            d.labels.push_back(tok);
            d.position_ids.push_back((int32_t) (i % T));
            d.segment_ids.push_back(1);
        }
        return d;
    }
    status run(const std::string &, int64_t n_samples, const target_info * targets, int64_t n, calibration_observer & obs) override {
        const data_rows d = rows(n_samples);
        return calibrate_rows(m, d, d.n_rows, 4, targets, n, obs);
    }
    // LoRA-drop's stage 1: a fraction of 64 such rows, AdamW at its defaults
    status train_probe(double fraction, int64_t steps, adapter_module * const * mods, const target_info * targets, int64_t n,
                       calibration_observer & obs) override {
        return calibrate_train_rows(m, rows(64), fraction, 4, steps, train_config{}, mods, targets, n, obs);
    }
};

int cmd_bench(int argc, char ** argv) {
    CLI::App app{"Times training steps and prints one JSON line (tokens/s, ms/step, peak RSS, FLOPs).\n\n"
                 "example:\n  peft bench --shape small --method full --batch 4 --seq 256 --steps 10 --threads 2\n"
                 "  peft bench --shape small --method lora --lora-r 16 --batch 4 --seq 256 --steps 10 --threads 2\n"
                 "  peft bench --shape small --method galore --galore-rank 32 --batch 4 --seq 256 --steps 10 --threads 2\n"
                 "  peft bench --shape small --method lora --lora-r 16 --batch 4 --seq 256 --steps 5 --bf16 --peak\n"
                 "  peft bench --model ~/models/TinyLlama-1.1B --method frozen --batch 1 --seq 512 --steps 3\n"
                 "  peft bench --shape small --method generate --seq 128 --gen-tokens 64 --lora-r 16 --threads 2\n"
                 "  peft bench --shape small --method generate --adapter-method dora --seq 64 --gen-tokens 32 --threads 2\n"
                 "  peft bench --model models/tiny-llama --method milora_moe --lora-r 16 --router-top-k 2 --seq 64 --gen-tokens 64",
                 "peft bench"};
    std::string model_dir, shape, method = "full", storage = "f32";
    int64_t batch = 4, seq = 256, steps = 10, warmup = 2;
    int threads = 0;
    uint64_t seed = 0;
    bool recompute = false, peak = false, same_batch = false;
    float lr = 1e-4f;
    app.add_option("--model", model_dir, "Hugging Face model directory (config.json + safetensors)");
    app.add_option("--shape", shape, "named shape with random weights: tiny, small, 1b")
        ->check(CLI::IsMember({"tiny", "small", "1b"}));
    app.add_option("--method", method, "full (all weights trained, AdamW), galore (all weights trained, GaLore's AdamW on "
                   "the --galore-targets weights at --galore-rank), frozen (input gradients only), an adapter "
                   "on all 7 projections of rank --lora-r: lora, dora, lora_fa, any registered method (vera, deep_lora, rosa, ...), or a LoRA init "
                   "(pissa, pissa_niter_N, milora, olora); or generate (decode tokens/s: base, adapter unmerged, adapter "
                   "merged; --seq is the prompt length); milora_moe: decode tokens/s of the mixture with cached routing vs "
                   "one LoRA vs token-level routing (--seq is the prompt length)")
        ->check([](const std::string & v) {
            std::string cfg;
            return v == "full" || v == "galore" || v == "frozen" || v == "generate" || bench_adapter_config(v, 8, 8.0f, cfg)
                       ? std::string()
                       : "--method: full, galore, frozen, generate, lora, dora, lora_fa, a registered adapter method (vera, "
                         "deep_lora, rosa, ...), or a LoRA init (pissa, pissa_niter_N, milora, olora), not " + v;
        });
    bool init_only = false;
    app.add_flag("--init-only", init_only, "lora or a LoRA init: time attaching the adapter (the init) and print init_s");
    std::string gen_adapter;
    int64_t gen_lora_r = 16, gen_tokens = 64, gen_rounds = 3;
    app.add_option("--adapter", gen_adapter, "generate: PEFT adapter directory (default: a random adapter of rank --lora-r)");
    std::string gen_method = "lora";
    app.add_option("--adapter-method", gen_method, "generate: the random adapter's method (lora, dora, lora_fa, vera, ...)");
    float lora_alpha = 16.0f;
    app.add_option("--lora-alpha", lora_alpha, "lora: lora_alpha");
    app.add_option("--lora-r", gen_lora_r, "lora, generate: rank of the LoRA on all 7 projections")->check(CLI::Range((int64_t) 1, (int64_t) 4096));
    app.add_option("--gen-tokens", gen_tokens, "generate: tokens decoded per round")->check(CLI::Range((int64_t) 1, (int64_t) 1 << 20));
    app.add_option("--rounds", gen_rounds, "generate: timed rounds (median reported)")->check(CLI::Range((int64_t) 1, (int64_t) 1000));
    app.add_option("--batch", batch, "sequences per step")->check(CLI::Range((int64_t) 1, (int64_t) 4096));
    app.add_option("--seq", seq, "tokens per sequence")->check(CLI::Range((int64_t) 2, (int64_t) 1 << 20));
    app.add_option("--steps", steps, "timed steps")->check(CLI::Range((int64_t) 1, (int64_t) 1000000));
    app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range((int64_t) 0, (int64_t) 1000));
    app.add_option("--threads", threads, "threads (default: the physical cores)")->check(CLI::Range(0, THREADS_MAX));
    app.add_option("--seed", seed, "seed for random weights and tokens");
    std::string save_gguf;
    app.add_option("--save-gguf", save_gguf, "write the --shape model's random weights (--seed) as a GGUF file in --dtype and exit "
                   "(bench/compare_llamacpp.sh runs llama.cpp on it)");
    app.add_option("--dtype", storage, "storage of frozen random weights: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
    app.add_flag("--recompute", recompute, "recompute activations per layer in backward (less memory)");
    app.add_option("--lr", lr, "AdamW learning rate (full, galore)");
    galore_config gc;
    gc.rank = 0;   // unset: hidden / 4, GaLore's paper setting for its 60M and 130M LLaMA (r 128 of 512, 256 of 768 is 1/3)
    app.add_option("--galore-rank", gc.rank, "galore: projection rank (default: hidden size / 4)")->check(CLI::Range((int64_t) 1, (int64_t) 1 << 20));
    bool galore_per_layer = false;
    app.add_flag("--galore-per-layer", galore_per_layer, "galore: update each weight inside backward and free its gradient (galore_per_layer)");
    std::string galore_svd = "randomized";
    app.add_option("--galore-svd", galore_svd, "galore: projector refresh by the exact or the randomized SVD")->check(CLI::IsMember({"exact", "randomized"}));
    // every 2-D weight: on small shapes the embedding and lm_head hold a third of the parameters,
    // whose plain AdamW state alone would be 0.37x of full fine-tuning's on `small`
    std::string galore_targets = "attn,mlp,embed_tokens,lm_head";
    app.add_option("--galore-targets", galore_targets, "galore: name parts of the projected 2-D weights (default: all of them; "
                   "attn,mlp projects only those, as the reference and peft train's galore_target_modules default)");
    app.add_flag("--same-batch", same_batch, "train on one batch every step (the loss must fall: a smoke test)");
    app.add_flag("--peak", peak, "also measure the raw FMA/bf16-dot register-loop peaks and the GEMM peaks (ours, "
                 "OpenBLAS) and report peak_fraction = achieved / raw peak (bf16 peak with --bf16)");
    bool bf16 = false;
    app.add_flag("--bf16", bf16, "bf16 compute for the frozen base's GEMMs (train config bf16: true)");
    std::string gemm_isa_name;
    app.add_option("--gemm-isa", gemm_isa_name, "force the GEMM micro-kernels (avx512-amx, avx512-bf16, avx512, avx2, scalar; "
                   "at most what the CPU has) to time them side by side");
    std::vector<int64_t> layers;
    app.add_option("--layers-to-transform", layers, "an adapter method: adapt these layers only (PEFT layers_to_transform), "
                   "e.g. --layers-to-transform 6,7,8,9,10,11: backward stops at the lowest")
        ->delimiter(',')->check(CLI::NonNegativeNumber);
    int64_t top_k = 2;
    app.add_option("--router-top-k", top_k, "milora_moe: experts active per layer (of 7)")->check(CLI::Range((int64_t) 1, (int64_t) 7));
    cli_quant_flags qf;   // QLoRA: --load-in-4bit [--bnb-4bit-use-double-quant]
    cli_add_quant_flags(app, qf);
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    const quant_options * quant = nullptr;
    if (status qs = cli_quant(qf, &quant); !qs.ok()) return cli_fail("bench", qs);
    if (model_dir.empty() == shape.empty()) {
        std::fprintf(stderr, "peft bench: give exactly one of --model DIR or --shape NAME\n");
        return 2;
    }
    if (!gemm_isa_name.empty() && !gemm_force_isa(gemm_isa_name.c_str())) {
        std::fprintf(stderr, "peft bench: --gemm-isa %s is not available on this CPU (detected: %s)\n", gemm_isa_name.c_str(),
                     gemm_isa());
        return 2;
    }
    threads_set(threads);
    linear_set_bf16_compute(bf16);
    if (!save_gguf.empty()) {   // the same random model bench_generate makes (seed, shape, storage)
        llama_hparams hp;
        llama_model m;
        status st = llama_hparams_named_shape(shape, hp) ? status::success()
                                                         : make_error(PEFT_STATUS_ARGUMENT, "--shape", "unknown shape " + shape);
        if (st.ok() && std::fopen(save_gguf.c_str(), "rb")) {   // never replaces a file (the handle dies with the process)
            st = make_error(PEFT_STATUS_IO, save_gguf, "output file exists");
        }
        if (st.ok()) st = llama_init_random(m, hp, false, seed, storage == "bf16" ? PEFT_DTYPE_BF16 : PEFT_DTYPE_F32);
        gguf_export_options o;
        o.type = storage == "bf16" ? GGUF_TENSOR_BF16 : GGUF_TENSOR_F32;
        o.name = "random " + shape;
        std::string note;
        if (st.ok()) st = gguf_export_model(m, "", o, save_gguf, note);
        if (!st.ok()) return cli_fail("bench", st);
        std::fprintf(stderr, "peft bench: wrote %s (random %s, %s)\n", save_gguf.c_str(), shape.c_str(), storage.c_str());
        return 0;
    }
    if (method == "generate") {
        std::string cfg_text;
        if (!bench_adapter_config(gen_method, gen_lora_r, 2.0f * (float) gen_lora_r, cfg_text)) {
            std::fprintf(stderr, "peft bench: --adapter-method: lora, dora, lora_fa, vera or a LoRA init, not %s\n", gen_method.c_str());
            return 2;
        }
        return bench_generate(model_dir, shape, storage == "bf16", seed, gen_adapter, cfg_text, seq, gen_tokens, gen_rounds, quant);
    }
    const bool trainable = method == "full" || method == "galore";
    if (quant && trainable) {
        status qs = make_error(PEFT_STATUS_ARGUMENT, "--load-in-4bit", "full fine-tuning writes every weight; a 4-bit weight cannot take an update");
        qs.hint = "bench an adapter method over the 4-bit base (--method lora)";
        return cli_fail("bench", qs);
    }

    llama_model m;
    status st = model_dir.empty()
                    ? [&] {
                          llama_hparams hp;
                          llama_hparams_named_shape(shape, hp);
                          status r = llama_init_random(m, hp, trainable, seed, storage == "bf16" ? PEFT_DTYPE_BF16 : PEFT_DTYPE_F32);
                          if (r.ok() && quant) r = llama_quantize_frozen(m, *quant);
                          return r;
                      }()
                    : llama_load(m, model_dir, trainable, quant);
    if (st.ok() && bf16) llama_frozen_to_bf16(m);
    if (!st.ok()) {
        std::fprintf(stderr, "peft bench: %s\n", st.message.c_str());
        if (!st.hint.empty()) std::fprintf(stderr, "---> HINT: %s\n", st.hint.c_str());
        return 1;
    }
    if (method == "milora_moe") return bench_milora_moe(m, seed, gen_lora_r, top_k, seq, gen_tokens, gen_rounds);
    std::unique_ptr<optimizer> opt;
    train_config cfg;
    cfg.opt.lr = lr;
    cfg.schedule = PEFT_SCHEDULE_CONSTANT;
    cfg.max_grad_norm = 0.0f;  // as the PyTorch baseline: plain AdamW, no clipping
    cfg.per_layer_update = method == "galore" && galore_per_layer;
    // the adapter on q,k,v,o,gate,up,down, as the PyTorch baseline's LoRA (PEFT's default init, B = 0)
    adapter_set lora;
    std::vector<optim_param> train_params;
    std::string cfg_text;
    const bool is_lora = bench_adapter_config(method, gen_lora_r, lora_alpha, cfg_text, warmup + steps);
    if (!layers.empty()) {
        if (!is_lora) {
            std::fprintf(stderr, "peft bench: --layers-to-transform needs an adapter method (lora, dora, vera, ...), not %s\n", method.c_str());
            return 2;
        }
        std::string list;
        for (int64_t l : layers) list += (list.empty() ? "" : ",") + std::to_string(l);
        cfg_text.insert(cfg_text.size() - 1, ", \"layers_to_transform\": [" + list + "]");
    }
    if (init_only && !is_lora) {
        std::fprintf(stderr, "peft bench: --init-only times attaching an adapter: give --method lora, dora, ... or an init such as pissa_niter_4\n");
        return 2;
    }
    if (is_lora) {
        json_document doc;
        st = doc.parse(cfg_text.data(), cfg_text.size(), "bench LoRA config");
        const double t0 = now_s();
        bench_calibration calib(m, seq, seed + 3);
        if (st.ok()) st = adapters_attach(m, doc.root(), seed + 1, lora, false, &calib);
        const double init_s = now_s() - t0;
        if (!st.ok()) {
            std::fprintf(stderr, "peft bench: %s\n", st.message.c_str());
            return 1;
        }
        if (init_only) {
            std::printf("{\"model\": \"%s\", \"method\": \"%s\", \"lora_r\": %lld, \"modules\": %zu, \"threads\": %d, \"init_s\": %.3f, "
                        "\"peak_rss_mib\": %.1f}\n",
                        (model_dir.empty() ? shape : model_dir).c_str(), method.c_str(), (long long) gen_lora_r, lora.modules.size(),
                        threads_get(), init_s, peak_rss_mib());
            return 0;
        }
        train_params = adapter_optim_params(lora);
    } else if (trainable) {
        train_params = llama_optim_params(m);
    }
    // planned after attaching: the adapters decide which projection inputs backward keeps
    llama_state s;
    st = llama_state_init(s, m, batch, seq, recompute);
    if (!st.ok()) {
        std::fprintf(stderr, "peft bench: %s\n", st.message.c_str());
        return 1;
    }
    if (!train_params.empty()) {
        if (method == "galore") {
            auto g = std::make_unique<galore_adamw>();
            gc.targets = galore_split_targets(galore_targets);
            if (gc.rank == 0) gc.rank = m.hp.n_embd / 4;
            if (galore_per_layer) release_gradients(train_params);
            (void) galore_svd_from_name(galore_svd, &gc.svd);   // checked by the option
            st = g->init(train_params, cfg.opt, gc);
            opt = std::move(g);
        } else {
            auto a = std::make_unique<adamw>();
            st = a->init(train_params, cfg.opt);
            opt = std::move(a);
        }
        if (!st.ok()) {
            std::fprintf(stderr, "peft bench: %s\n", st.message.c_str());
            if (!st.hint.empty()) std::fprintf(stderr, "---> HINT: %s\n", st.hint.c_str());
            return 1;
        }
    }

    const int64_t N = batch * seq;
    std::vector<int32_t> tokens((size_t) N), targets((size_t) N);
    rng r(seed + 2);
    std::vector<double> times;
    float first_loss = 0, last_loss = 0;
    for (int64_t i = 0; i < warmup + steps; i++) {
        if (i == 0 || !same_batch) {
            for (int32_t & t : tokens) t = (int32_t) (r.next_u32() % (uint32_t) m.hp.n_vocab);
        }
        llama_shift_labels(targets.data(), tokens.data(), batch, seq);
        llama_batch b{tokens.data(), targets.data(), nullptr, nullptr, batch, seq};
        double t0 = now_s();
        float loss;
        if (!train_params.empty()) {
            step_result res;
            st = train_step(m, s, *opt, cfg, &b, 1, i, res, is_lora ? &lora : nullptr);
            if (!st.ok()) {
                std::fprintf(stderr, "peft bench: %s\n", st.message.c_str());
                return 1;
            }
            loss = res.loss;
        } else {
            loss = llama_forward(m, s, b, 1.0f);
            llama_backward(m, s, b);
        }
        double dt = now_s() - t0;
        if (i == 0) first_loss = loss;
        last_loss = loss;
        if (i >= warmup) times.push_back(dt);
    }
    double sum = 0;
    for (double t : times) sum += t;
    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    const double tps = (double) N * (double) times.size() / sum;
    double fpt = llama_flops_per_token(m.hp, seq, trainable, llama_backward_first_layer(m));
    for (const target_info & t : lora.targets) {
        // forward, input gradient and weight gradients of the two factors: 6 r (in + out)
        fpt += 6.0 * (double) gen_lora_r * (double) (t.in_features + t.out_features);
    }
    const double gflops = fpt * tps / 1e9;

    std::string line = "{";
    auto add = [&](const char * k, const std::string & v) { line += (line.size() > 1 ? ", \"" : "\"") + std::string(k) + "\": " + v; };
    auto num = [](double v, int prec) { char b[64]; std::snprintf(b, sizeof b, "%.*f", prec, v); return std::string(b); };
    add("model", "\"" + (model_dir.empty() ? shape : model_dir) + "\"");
    add("method", "\"" + method + "\"");
    add("batch", std::to_string(batch));
    add("seq", std::to_string(seq));
    add("steps", std::to_string(steps));
    add("threads", std::to_string(threads_get()));
    add("recompute", recompute ? "true" : "false");
    add("tokens_per_s", num(tps, 2));
    add("ms_per_step", num(1e3 * sum / (double) times.size(), 2));
    add("ms_per_step_median", num(1e3 * median, 2));
    add("peak_rss_mib", num(peak_rss_mib(), 1));
    // the planned activations of one step (LoRA-FA keeps no projection inputs for backward)
    add("activation_mib", num((double) s.act_arena.capacity / (1 << 20), 1));
    int64_t n_trainable = 0;
    for (const optim_param & p : train_params) n_trainable += p.n;
    add("trainable_params", std::to_string(n_trainable));
    // the optimizer's state tensors (AdamW: m and v; GaLore: projected moments and projectors)
    add("optimizer_state_bytes", std::to_string(opt ? opt->state_bytes() : 0));
    if (method == "galore") {
        add("galore_rank", std::to_string(gc.rank));
        add("galore_per_layer", galore_per_layer ? "true" : "false");
    }
    add("model_flops_per_token", num(fpt, 0));
    add("achieved_gflops", num(gflops, 2));
    if (quant) {
        add("load_in_4bit", "true");
        add("double_quant", quant->double_quant ? "true" : "false");
    }
    add("bits_per_param", num(frozen_linear_bits_per_param(m), 3));
    add("loss_first", num(first_loss, 5));
    add("loss_final", num(last_loss, 5));
    add("bf16", bf16 ? "true" : "false");
    if (peak) {
        const peaks pk = measure_peaks();
        add("gemm_isa", std::string("\"") + gemm_isa() + "\"");
        add("raw_peak_f32_gflops", num(pk.raw_f32, 2));
        add("raw_peak_bf16_gflops", num(pk.raw_bf16, 2));
        add("raw_peak_amx_bf16_gflops", num(pk.raw_amx, 2));
        add("gemm_peak_f32_gflops", num(pk.own_f32, 2));
        add("gemm_peak_bf16_gflops", num(pk.own_bf16, 2));
        add("openblas_peak_f32_gflops", num(pk.blas_f32, 2));
        // bf16 against the faster of the two bf16 loops: the hardware's bf16 rate, whichever kernel runs
        const double raw = bf16 ? std::max(pk.raw_bf16, pk.raw_amx) : pk.raw_f32;
        add("peak_fraction", num(raw > 0 ? gflops / raw : 0.0, 3));
        add("gemm_peak_fraction", num(raw > 0 ? (bf16 ? pk.own_bf16 : pk.own_f32) / raw : 0.0, 3));
    }
    std::printf("%s}\n", line.c_str());
    return 0;
}

} // namespace peft
