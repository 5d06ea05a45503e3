// cmd_train.cpp: `peft train [CONFIG.yaml|.json] [--key value ...]`: the config keys as a
// file and/or flags (flags win; `--learning-rate` and `--learning_rate` are the same key).
// Flags are parsed here by hand rather than with CLI11 because every config key is a flag:
// the key table in train/config.cpp is the single source of names, types and help.
// Exit codes: 0 done, 1 error, 2 usage, 130 interrupted (checkpoint written).
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/cli_common.h"
#include "adapters/adapter_set.h"
#include "cli/commands.h"
#include "train/config.h"
#include "train/train_loop.h"

namespace peft {

static const char * TRAIN_USAGE =
    "usage: peft train [CONFIG.yaml|CONFIG.json] [--key value ...]\n"
    "\n"
    "Fine-tunes a Llama-family Hugging Face checkpoint with LoRA (or every weight: adapter: full)\n"
    "and writes the adapter, checkpoints, metrics.jsonl and report.html into output_dir.\n"
    "Every config key is also a flag (--key value or --key=value; dashes or underscores);\n"
    "flags override the file. Lists: comma-separated (--target_modules q_proj,v_proj) or JSON.\n"
    "\n"
    "examples:\n"
    "  peft train lora.yaml\n"
    "  peft train --base_model ~/models/SmolLM2-135M --datasets train.jsonl --output_dir out \\\n"
    "             --r 16 --lora_alpha 32 --target_modules all-linear --learning-rate 2e-4 --num_epochs 2\n"
    "  peft train lora.yaml --base_model ~/models/Llama-3.2-1B --micro_batch_size 4 --sequence_len 512 \\\n"
    "             --gradient_accumulation_steps 4 --val_set_size 0.05 --eval_steps 50 --save_steps 100\n"
    "  peft train lora.yaml --base_model ~/models/Qwen2.5-0.5B --chat_template chatml --resume_from_checkpoint latest\n"
    "  peft train --base_model ~/models/TinyLlama-1.1B --datasets chat.jsonl --adapter full --learning_rate 1e-5\n"
    "  peft train --base_model ~/models/TinyLlama-1.1B --datasets chat.jsonl --adapter full --optimizer galore_adamw \\\n"
    "             --galore_rank 128 --galore_update_proj_gap 200 --galore_scale 0.25   # GaLore: low-rank Adam state\n"
    "  mpirun -np 4 --hostfile hosts peft train lora.yaml   # data parallel (a build with -DPEFT_MPI=ON):\n"
    "             # each rank takes micro_batch_size rows of every batch, rank 0 writes output_dir\n"
    "\n"
    "lora.yaml:\n"
    "  base_model: ~/models/TinyLlama-1.1B\n"
    "  datasets:\n"
    "    - path: data/alpaca.jsonl\n"
    "  output_dir: out/tinyllama-lora\n"
    "  adapter: lora\n"
    "  r: 16\n"
    "  lora_alpha: 32\n"
    "  target_modules: [q_proj, k_proj, v_proj, o_proj]\n"
    "  learning_rate: 2e-4\n"
    "  micro_batch_size: 2\n"
    "  sequence_len: 1024\n"
    "  num_epochs: 1\n"
    "\n"
    "other flags: --print_config (print the resolved options as JSON and exit), --list-methods (the\n"
    "adapter methods this build registers and full, one a line, for scripts), --help\n"
    "\n"
    "keys:\n";

static bool is_bool_word(const char * s) {
    for (const char * w : {"true", "false", "1", "0", "yes", "no", "on", "off"}) {
        if (!std::strcmp(s, w)) return true;
    }
    return false;
}

static int train_main(int argc, char ** argv, const dist_comm & comm) {
    config_entries entries;
    std::string config_path;
    bool print_config = false;
    // First pass: help and the config file, so that flags override it whatever their order.
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            std::printf("%s%s", TRAIN_USAGE, config_help().c_str());
            return 0;
        }
        if (a == "--list-methods" || a == "--list_methods") {
            for (const std::string & n : adapter_method_names()) std::printf("%s\n", n.c_str());
            std::printf("full\n");
            return 0;
        }
    }
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a.rfind("--", 0) == 0) {
            if (a.find('=') != std::string::npos || a == "--print_config" || a == "--print-config") continue;
            if (config_flag_is_bool(a.substr(2))) {
                if (i + 1 < argc && is_bool_word(argv[i + 1])) i++;
            } else {
                i++;
            }
            continue;
        }
        if (!config_path.empty()) {
            std::fprintf(stderr, "peft train: more than one config file ('%s' and '%s')\n%s", config_path.c_str(), a.c_str(), TRAIN_USAGE);
            return 2;
        }
        config_path = a;
    }
    if (!config_path.empty()) {
        status st = config_load_file(config_path, entries);
        if (!st.ok()) return cli_fail("train", st);
    }
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a.rfind("--", 0) != 0) continue;
        std::string name = a.substr(2), value;
        if (name == "print_config" || name == "print-config") {
            print_config = true;
            continue;
        }
        const size_t eq = name.find('=');
        if (eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
        } else if (config_flag_is_bool(name)) {
            // a bare boolean flag means true; an explicit word after it is its value
            value = "true";
            if (i + 1 < argc && is_bool_word(argv[i + 1])) value = argv[++i];
        } else {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "peft train: --%s needs a value\n", name.c_str());
                return 2;
            }
            value = argv[++i];
        }
        status st = config_set_flag(entries, name, value);
        if (!st.ok()) return cli_fail("train", st);
    }
    if (argc < 2) {
        std::fprintf(stderr, "%s%s", TRAIN_USAGE, config_help().c_str());
        return 2;
    }
    train_options o;
    status st = config_build(entries, o);
    if (!st.ok()) return cli_fail("train", st);
    if (print_config) {
        std::printf("%s\n", config_to_json(o).c_str());
        return 0;
    }
    train_summary sum;
    st = train_run(o, sum, comm);
    if (!st.ok()) return cli_fail(comm.rank == 0 ? "train" : ("train (rank " + std::to_string(comm.rank) + ")").c_str(), st);
    return 0;
}

int cmd_train(int argc, char ** argv) {
    dist_comm comm;
    status st = dist_init(&argc, &argv, comm);
    if (!st.ok()) return cli_fail("train", st);
    const int rc = train_main(argc, argv, comm);
    // A failed rank ends the job: the others may be waiting for it in a collective. An
    // interruption stops every rank after the same step (rank 0 saved the checkpoint), so
    // that one ends normally.
    if (rc != 0 && rc != 130 && comm.active()) dist_abort(rc);
    dist_finalize();
    return rc;
}

} // namespace peft
