#include "adapters/adapter.h"

#include <vector>

namespace peft {

void adapter_module::merge(float * W, int64_t OC, int64_t IC) const {
    std::vector<float> delta((size_t) (OC * IC));
    delta_weight(delta.data());
    for (size_t i = 0; i < delta.size(); i++) W[i] += delta[i];
}

void adapter_module::unmerge(float * W, int64_t OC, int64_t IC) const {
    std::vector<float> delta((size_t) (OC * IC));
    delta_weight(delta.data());
    for (size_t i = 0; i < delta.size(); i++) W[i] -= delta[i];
}

void adapter_module::exported(std::vector<param_ref> & out) {
    std::vector<param_ref> all;
    params(all);
    for (const param_ref & p : all) {
        if (p.saved) out.push_back(p);
    }
}

} // namespace peft
