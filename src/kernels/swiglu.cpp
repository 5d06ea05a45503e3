// swiglu.cpp: the Llama MLP gate, out = silu(gate) * up (HF: act_fn(gate_proj(x)) * up_proj(x)).
#include "kernels/kernels.h"
#include "kernels/vmath.h"

namespace peft {

// out[n] = silu(gate[n]) * up[n], silu(g) = g * sigmoid(g)
void swiglu_forward(float * out, const float * gate, const float * up, int64_t n) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        const float sig = vmath::sigmoid(g);  // inline, so the loop vectorises
        out[i] = g * sig * up[i];
    }
}

// d silu(g)/dg = sig + g sig (1 - sig) = sig (1 + g (1 - sig))
// dgate[n] (+)= dout * up * silu'(gate), dup[n] (+)= dout * silu(gate); Acc selects += or =.
template <bool Acc>
static void swiglu_backward_impl(float * dgate, float * dup, const float * dout, const float * gate, const float * up,
                                 int64_t n) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        const float sig = vmath::sigmoid(g);  // inline, so the loop vectorises
        const float dg = dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        const float du = dout[i] * g * sig;
        if constexpr (Acc) {
            dgate[i] += dg;
            dup[i] += du;
        } else {
            dgate[i] = dg;
            dup[i] = du;
        }
    }
}

void swiglu_backward(float * dgate, float * dup, const float * dout, const float * gate, const float * up, int64_t n) {
    swiglu_backward_impl<true>(dgate, dup, dout, gate, up, n);
}

// The model's MLP backward zeroed dgate/dup only to accumulate into them once: writing saves the
// memset and the read of two N x F buffers per layer.
void swiglu_backward_set(float * dgate, float * dup, const float * dout, const float * gate, const float * up,
                         int64_t n) {
    swiglu_backward_impl<false>(dgate, dup, dout, gate, up, n);
}

} // namespace peft
