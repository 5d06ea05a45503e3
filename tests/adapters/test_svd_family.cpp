// The SVD-family inits as LoRA initialisations on a model (METHODS §3 PiSSA, §4 MiLoRA, §6
// OLoRA): the base becomes the residual and the output is the base's at step 0 (fp32 and bf16
// bases); the adapter file is by default a plain rank-2r LoRA on the ORIGINAL model that
// reproduces the trained residual model; save_residual_model keeps the rank-r file; bad ranks
// are refused naming the module. The factor math itself: test_svd_init.cpp.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "adapter_test_util.h"
#include "adapters/lora.h"
#include "testing.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

std::string read_all(const std::string & path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

const char * const INITS[] = {"pissa", "pissa_niter_2", "milora", "olora"};

} // namespace

class svd_family : public ::testing::TestWithParam<const char *> {};

TEST_P(svd_family, base_becomes_the_residual_and_the_output_is_kept_at_init) {
    for (dtype storage : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
        auto m = tiny_model(7, storage);
        const batch_data d = make_batch(m->hp.n_vocab);
        std::vector<float> base, adapted;
        forward_logits(*m, d, base);
        const linear_weight before = m->proj_weight(0, LLAMA_PROJ_Q);
        adapter_set s;
        const std::string cfg = std::string("{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"init_lora_weights\":\"") +
                                GetParam() + "\"}";
        ASSERT_TRUE(attach(*m, cfg, s).ok());
        const linear_weight & after = m->proj_weight(0, LLAMA_PROJ_Q);
        EXPECT_NE(after.data, before.data) << "the base was not replaced by the residual";
        EXPECT_EQ(after.type, storage) << "the residual keeps the base's dtype";
        forward_logits(*m, d, adapted);
        // METHODS §0: fp-exact is 1e-5 in fp32, 1e-2 in bf16 (the residual is rounded to bf16)
        EXPECT_LT(rel_diff(adapted, base), storage == PEFT_DTYPE_F32 ? 1e-5 : 1e-2) << GetParam() << " " << dtype_name(storage);
        // the factors are not zero: the adapter holds W's components, unlike LoRA's B = 0
        auto * lm = dynamic_cast<lora_module *>(s.modules[0].get());
        double bnorm = 0;
        for (float v : lm->B) bnorm += (double) v * v;
        EXPECT_GT(bnorm, 0.0);
    }
}

// The saved file is a plain rank-2r LoRA config on the original model (the method table checks
// that it reproduces the trained model), and merging the loaded one gives that model too.
TEST_P(svd_family, saved_config_is_a_rank_2r_lora_and_merges) {
    auto m = tiny_model(7);
    const batch_data d = make_batch(m->hp.n_vocab);
    adapter_set s;
    const std::string cfg = std::string("{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"init_lora_weights\":\"") +
                            GetParam() + "\"}";
    ASSERT_TRUE(attach(*m, cfg, s).ok());
    randomize(adapter_set_params(s), 5, 0.05f, true);   // stands in for training
    std::vector<float> trained, merged;
    forward_logits(*m, d, trained);
    const std::string dir = peft::testing::temp_dir(std::string("svd_family_") + GetParam());
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    const std::string saved = read_all(dir + "/adapter_config.json");
    EXPECT_NE(saved.find("\"init_lora_weights\": true"), std::string::npos) << saved;
    EXPECT_NE(saved.find("\"r\": 8"), std::string::npos) << saved;
    EXPECT_NE(saved.find("\"lora_alpha\": 16"), std::string::npos) << saved;
    auto original = tiny_model(7);
    adapter_set loaded;
    status st = adapter_load(dir, *original, loaded);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_TRUE(adapters_merge(*original, loaded).ok());
    forward_logits(*original, d, merged);
    EXPECT_LT(rel_diff(merged, trained), 1e-5) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(inits, svd_family, ::testing::ValuesIn(INITS),
                         [](const ::testing::TestParamInfo<const char *> & i) { return std::string(i.param); });

TEST(svd_family_config, residual_form_rank_and_rslora_rules) {
    // save_residual_model keeps the rank-r adapter and the init name (it needs its residual base)
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],\"init_lora_weights\":\"pissa\","
                           "\"save_residual_model\":true}", s).ok());
    EXPECT_STREQ(s.method->residual_init(), "pissa");
    const std::string dir = peft::testing::temp_dir("svd_family_residual");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    const std::string saved = read_all(dir + "/adapter_config.json");
    EXPECT_NE(saved.find("\"init_lora_weights\": \"pissa\""), std::string::npos) << saved;
    EXPECT_NE(saved.find("\"r\": 4"), std::string::npos) << saved;
    // rsLoRA: alpha * sqrt(2) keeps alpha / sqrt(r) at rank 2r
    auto m2 = tiny_model(7);
    adapter_set s2;
    ASSERT_TRUE(attach(*m2, "{\"r\":4,\"lora_alpha\":8,\"use_rslora\":true,\"target_modules\":[\"q_proj\"],\"init_lora_weights\":\"olora\"}", s2).ok());
    const std::string dir2 = peft::testing::temp_dir("svd_family_rslora");
    ASSERT_TRUE(adapter_save(dir2, s2, "").ok());
    EXPECT_NE(read_all(dir2 + "/adapter_config.json").find("\"lora_alpha\": 11.31370849898476"), std::string::npos)
        << read_all(dir2 + "/adapter_config.json");
    // PEFT refuses rsLoRA + patterns for the conversion, and so do we
    auto m3 = tiny_model(7);
    adapter_set s3;
    status st = attach(*m3, "{\"r\":4,\"use_rslora\":true,\"rank_pattern\":{\"q_proj\":2},\"init_lora_weights\":\"pissa\"}", s3);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.hint.find("save_residual_model"), std::string::npos) << st.hint;
    // a rank above min(in, out) names the module
    auto m4 = tiny_model(7);
    adapter_set s4;
    st = attach(*m4, "{\"r\":40,\"target_modules\":[\"k_proj\"],\"init_lora_weights\":\"milora\"}", s4);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("k_proj"), std::string::npos) << st.message;
    // unknown init names list the known ones
    st = attach(*m4, "{\"r\":4,\"init_lora_weights\":\"pissa_niter_x\"}", s4);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("pissa_niter_N"), std::string::npos) << st.message;
}
