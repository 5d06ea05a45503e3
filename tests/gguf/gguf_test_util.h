// gguf_test_util.h: what the GGUF tests share: a PEFT adapter with a visible effect.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "adapters/adapter_set.h"
#include "io/json.h"
#include "model/llama.h"
#include "testing.h"

// A LoRA (or, by cfg_extra, another method) with non-zero B (init_lora_weights false) on every
// projection of the model in model_dir, saved as PEFT writes it; returns its directory.
// cfg_extra adds keys (",\"use_rslora\":true"); peft_type overrides LORA.
inline std::string gguf_test_adapter(const std::string & model_dir, const std::string & name, const std::string & cfg_extra,
                                     const std::string & peft_type = "LORA") {
    peft::llama_model m;
    EXPECT_TRUE(peft::llama_load(m, model_dir, false).ok());
    const std::string cfg = "{\"peft_type\":\"" + peft_type + "\",\"r\":4" +
                            (peft_type == "LORA" ? ",\"lora_alpha\":8,\"init_lora_weights\":false" : "") +
                            ",\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]" +
                            cfg_extra + "}";
    peft::json_document doc;
    EXPECT_TRUE(doc.parse(cfg.data(), cfg.size(), "test adapter config").ok());
    peft::adapter_set set;
    peft::status st = peft::adapters_attach(m, doc.root(), 7, set);
    EXPECT_TRUE(st.ok()) << st.message;
    const std::string dir = peft::testing::temp_dir("gguf_adapter_" + name) + "/adapter";
    st = peft::adapter_save(dir, set, "test");
    EXPECT_TRUE(st.ok()) << st.message;
    return dir;
}
