// The calibration runner (train/calibrate.h): every row observed once per target with the batch
// geometry (padding rows and tokens visible), inputs as the model computes them (q, k and v of
// one layer share theirs), the model's adapters and outputs untouched afterwards.
#include <map>

#include "adapters/adapter_test_util.h"
#include "train/calibrate.h"
#include "train/data.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

struct recorder : calibration_observer {
    std::map<int64_t, int64_t> calls, tokens;       // per target index
    std::map<int64_t, std::vector<float>> first_x;  // the first batch's valid tokens, per target
    int64_t IC0 = 0;
    std::vector<target_info> targets;
    status observe(int64_t index, const float * x, const int32_t * seg, int64_t rows, int64_t T) override {
        calls[index]++;
        const int64_t IC = targets[(size_t) index].in_features;
        for (int64_t i = 0; i < rows * T; i++) {
            if (seg[i] == 0) continue;
            tokens[index]++;
            if (calls[index] == 1) first_x[index].insert(first_x[index].end(), x + i * IC, x + (i + 1) * IC);
        }
        return {};
    }
};

// 5 rows of 8 tokens, row r holding 3 + r real tokens (then padding)
data_rows make_rows() {
    data_rows d;
    d.T = 8;
    d.n_rows = 5;
    for (int64_t r = 0; r < 5; r++) {
        for (int64_t t = 0; t < 8; t++) {
            const bool real = t < 3 + r;
            d.input_ids.push_back(real ? (int32_t) ((r * 7 + t * 3) % 60 + 2) : 0);
            d.labels.push_back(-100);
            d.position_ids.push_back(real ? (int32_t) t : 0);
            d.segment_ids.push_back(real ? 1 : 0);
        }
    }
    return d;
}

} // namespace

TEST(calibrate, every_row_once_with_its_geometry_and_the_model_untouched) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\",\"down_proj\"]}", s).ok());
    const batch_data d = make_batch(m->hp.n_vocab);
    std::vector<float> before, after;
    forward_logits(*m, d, before);
    const std::vector<adapter_module *> hooks = m->adapters;

    const data_rows rows = make_rows();
    recorder rec;
    rec.targets = s.targets;
    // 4 of the 5 rows, batches of 3: two forwards, the second with 2 empty padding rows
    ASSERT_TRUE(calibrate_rows(*m, rows, 4, 3, s.targets.data(), (int64_t) s.targets.size(), rec).ok());
    ASSERT_EQ(rec.calls.size(), s.targets.size());
    for (const auto & kv : rec.calls) EXPECT_EQ(kv.second, 2) << "target " << kv.first;
    for (const auto & kv : rec.tokens) EXPECT_EQ(kv.second, 3 + 4 + 5 + 6) << "target " << kv.first;   // rows 0..3
    // q, k, v of layer 0 (targets 0, 1, 2) see the same normed input; down_proj its own width
    EXPECT_EQ(rec.first_x[0], rec.first_x[1]);
    EXPECT_EQ(rec.first_x[0], rec.first_x[2]);
    EXPECT_EQ((int64_t) rec.first_x[3].size(), (3 + 4 + 5) * m->hp.n_ff);
    EXPECT_EQ(m->adapters, hooks);
    forward_logits(*m, d, after);
    EXPECT_EQ(after, before);

    // an observer error stops the pass and comes back
    struct failing : calibration_observer {
        status observe(int64_t, const float *, const int32_t *, int64_t, int64_t) override {
            return make_error(PEFT_STATUS_NUMERIC, "observer", "NaN in the input");
        }
    } bad;
    const status st = calibrate_rows(*m, rows, 5, 2, s.targets.data(), (int64_t) s.targets.size(), bad);
    EXPECT_EQ(st.code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(m->adapters, hooks);
}
