// rosa.h: ROSA, random subspace adaptation, as an adapter method (METHODS §17; reference
// rosa-paper/rosa peftnet/peft_module/_peftlinear.py factorize / merge / _select_k_from_n).
//
// Orientation. The reference stores Wbar = W^T [IC,OC] and trains a [IC,r], b [r,OC] with
// y = x Wbar_fixed + (x a) b. In ours that is the LoRA-shaped pair A = a^T [r,IC], B = b^T [OC,r],
// y = x W_fixed^T + (x A^T) B^T, ΔW = B A, no alpha (scaling 1). With the thin SVD
// W = U diag(S) Vh of the weight in PyTorch orientation [OC,IC], the reference's
// a_all = U' diag(S) (U' of Wbar = our Vh^T) and b_all = V'^T (= our U^T) become
//   A = diag(S[w]) Vh[w, :]   (the singular values all on the input side, as in svd_equal)
//   B = U[:, w]
// for the window w = [j, j + r), and the frozen base becomes W_fixed = W - B A (one GEMM, so
// W_fixed + B A equals W to fp32 rounding; the reference builds it from the other components,
// equal up to the SVD's error), written in the base's own dtype.
//
// Every rosa_resample_steps optimizer steps (on_step_end): W_merged = W_fixed + B A, a new SVD,
// a new window, the split again, and the AdamW moments of A and B zeroed.
// Not here: the LoRA forward / backward (lora_module), target selection (target.h), files.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "core/quant.h"
#include "core/option.h"

namespace peft {

enum rosa_sample {
    ROSA_SAMPLE_RANDOM = 0,   // [QUIRK] a contiguous window [j, j+r), j uniform in {0, ..., k-r-1}
    ROSA_SAMPLE_TOP,          // [0, r): the largest components (the reference takes [0, min(r, k-r)),
                              // shorter than r when r > k/2; here the window is always r wide)
    ROSA_SAMPLE_BOTTOM,       // [k-r, k): the smallest
};

// The first index of the window of `period` (0 = the init), a pure function of the module's seed
// and the period so that a resumed run draws the same windows. Needs 1 <= r < k.
int64_t rosa_window(rosa_sample how, int64_t k, int64_t r, uint64_t seed, int64_t period);

// W [OC,IC] f32 -> A [r,IC], B [OC,r] from the components [j, j+r) of its thin SVD (see the top),
// W_fixed [OC,IC] = W - B A. W_fixed may alias W.
status rosa_split(float * A, float * B, float * W_fixed, const float * W, int64_t OC, int64_t IC, int64_t r, int64_t j);

// The best rank-q factors of D [OC,IC] (its thin SVD): A [q,IC] = diag(S_q) Vh_q, B [OC,q] = U_q,
// so B A == D when rank(D) <= q (to the SVD's fp32 error). q <= min(OC, IC).
status rosa_factor(float * A, float * B, const float * D, int64_t OC, int64_t IC, int64_t q);

// A LoRA module (scaling 1, no dropout) whose base is re-split every K steps.
struct rosa_module : lora_module {
    rosa_module(const target_info & t, int64_t r, uint64_t window_seed, rng & rg, std::shared_ptr<lora_scratch> scratch);

    // The factors of the change from the original weight: D = W_fixed + B A - W0 [OC,IC] as a
    // rank-q LoRA (q = min(2 r periods, k): each period adds B_end A_end - B_start A_start).
    void exported(std::vector<param_ref> & out) override;
    // rosa_base [OC,IC]: the current frozen base in f32 (exactly its values, whatever its dtype;
    // for a quantized base the values it was quantized from), which restore() writes back: a
    // resumed run continues bit for bit after any number of re-factorisations without replaying them.
    void state_tensors(std::vector<param_ref> & out) override;
    // "periods=N": re-factorisations done + 1 (the exported rank follows it)
    std::string state() const override;
    bool set_state(const std::string & s) override;

    // merge B A into the base, SVD, the window of the next period, the split; the base is
    // replaced through t.writer. On failure nothing changes.
    status resplit();
    // W_fixed + B A - W0 [OC,IC]
    void accumulated_change(float * D) const;
    int64_t k() const { return t.in_features < t.out_features ? t.in_features : t.out_features; }
    int64_t export_rank() const;

    rosa_sample        how = ROSA_SAMPLE_RANDOM;
    uint64_t           window_seed = 0;
    int64_t            periods = 1;
    int64_t            window = 0;        // first index of the current window (tests)
    linear_weight      original;          // W0: the weight the model was loaded with
    std::vector<float> base_f32;          // [OC,IC] the current W_fixed as f32
    // A block-quantized base is re-quantized in place (QLoRA, GGUF): W0's own blocks, and the
    // f32 weight the last re-quantization was given, which rosa_base then carries (quantizing
    // those values again reproduces the blocks; quantizing the dequantized blocks would not).
    std::unique_ptr<qtensor> original_q;
    std::vector<float>       quantized_from;

    // replace the base with W [OC,IC] and refresh base_f32 from what it now holds
    void set_base(const float * W);
};

struct rosa_method : adapter_method {
    const char * name() const override { return "rosa"; }
    status configure(const json_value & cfg) override;
    // the file form: a plain PEFT LoRA of the accumulated change (rank_pattern where a layer's
    // k caps it), lora_alpha = r so that the scaling is 1
    std::string config_json() const override;
    status check(const target_info & t) const override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    status restore(const target_info & t, adapter_module & mod) override;
    void on_step_end(const step_info & s, adapter_module * const * mods, int64_t n_mods, optimizer_view & opt) override;
    rosa_method();
    ~rosa_method() override;

    int64_t     r = 8;
    int64_t     resample_steps = 100;     // rosa_resample_steps (K >= 1)
    rosa_sample how = ROSA_SAMPLE_RANDOM;
    target_echo echo;                      // the module selection, saved back as given
    // the modules, for config_json's ranks (the set owns them; create() records each)
    std::vector<const rosa_module *> mods;

private:
    std::shared_ptr<lora_scratch> scratch;
};

std::unique_ptr<adapter_method> rosa_method_make();
const std::vector<option_def> & rosa_method_options();

} // namespace peft
