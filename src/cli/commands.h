// commands.h: one entry point per subcommand; argv[0] is the subcommand name.
#pragma once

namespace peft {
int cmd_bench(int argc, char ** argv);
int cmd_tokenize(int argc, char ** argv);
int cmd_train_tokenizer(int argc, char ** argv);
int cmd_train(int argc, char ** argv);
int cmd_eval(int argc, char ** argv);
int cmd_generate(int argc, char ** argv);
int cmd_merge(int argc, char ** argv);
int cmd_export(int argc, char ** argv);
int cmd_convert(int argc, char ** argv);
int cmd_serve(int argc, char ** argv);
int cmd_serve_bench(int argc, char ** argv);
}
