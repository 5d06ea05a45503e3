// cmd_tokenize.cpp: `peft tokenize`: shows how a model's tokenizer splits a text (ids and
// pieces), as a table or one JSON object; `--bench` times single-thread encoding instead.
// Not here: tokenization itself (tokenizer/tokenizer.h).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "io/json.h"
#include "tokenizer/tokenizer.h"

namespace peft {

// Printable form of a piece for the table: control bytes escaped.
static std::string show_piece(const std::string & s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '\r') out += "\\r";
        else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof(b), "\\x%02x", c); out += b; }
        else out.push_back((char) c);
    }
    return out;
}

int cmd_tokenize(int argc, char ** argv) {
    CLI::App app{"Encodes a text with a model's tokenizer and prints the token ids and pieces.\n\n"
                 "examples:\n"
                 "  peft tokenize --tokenizer ~/models/Llama-3.2-1B --text 'Hello world!'\n"
                 "  peft tokenize --tokenizer ~/models/TinyLlama/tokenizer.json --file prompt.txt --json\n"
                 "  peft tokenize --tokenizer ~/.cache/peft-assets/llama3 --file ~/.cache/peft-assets/moby_dick.txt --bench",
                 "peft tokenize"};
    std::string tok_path, text, file;
    bool as_json = false, bench = false, no_special = false, raw_special = false;
    int repeat = 3;
    app.add_option("--tokenizer", tok_path, "model directory or tokenizer.json / tokenizer.model / encoder.json")->required();
    auto * o_text = app.add_option("--text", text, "text to encode");
    auto * o_file = app.add_option("--file", file, "file whose whole content is encoded")->check(CLI::ExistingFile);
    o_text->excludes(o_file);
    app.add_flag("--json", as_json, "print one JSON object {ids, pieces, text} instead of a table");
    app.add_flag("--no-special", no_special, "do not add the post-processor's BOS/EOS");
    app.add_flag("--raw-special", raw_special, "encode special-token text such as <|eot_id|> as plain text");
    app.add_flag("--bench", bench, "time single-thread encoding of the input and print MB/s (JSON line)");
    app.add_option("--repeat", repeat, "--bench: timed passes (the first is cold: empty word cache)")->check(CLI::Range(1, 100));
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    if (o_text->count() == 0 && o_file->count() == 0) {
        std::fprintf(stderr, "peft tokenize: give --text S or --file F\n");
        return 2;
    }
    if (o_file->count()) {
        std::ifstream f(file, std::ios::binary);
        if (!f) return cli_fail("tokenize", make_error(PEFT_STATUS_IO, file, "cannot open for reading"));
        std::ostringstream ss;
        ss << f.rdbuf();
        if (f.bad()) return cli_fail("tokenize", make_error(PEFT_STATUS_IO, file, "read error"));
        text = ss.str();
    }
    std::unique_ptr<tokenizer> tok;
    const auto t_load = std::chrono::steady_clock::now();
    const status st = tokenizer::load(tok_path, tok);
    if (!st.ok()) return cli_fail("tokenize", st);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    if (bench) {
        double first = 0, best = 1e30;
        size_t n_tokens = 0;
        for (int r = 0; r < repeat; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            n_tokens = tok->encode(text, !no_special, !raw_special).size();
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (r == 0) first = s;
            best = std::min(best, s);
        }
        std::printf("{\"tokenizer\":%s,\"kind\":\"%s\",\"bytes\":%zu,\"tokens\":%zu,\"load_s\":%.3f,\"cold_s\":%.4f,"
                    "\"cold_mb_per_s\":%.2f,\"best_s\":%.4f,\"best_mb_per_s\":%.2f,\"threads\":1}\n",
                    json_quote(tok->source()).c_str(), tokenizer_kind_name(tok->kind()), text.size(), n_tokens, load_s, first,
                    (double) text.size() / first / 1e6, best, (double) text.size() / best / 1e6);
        return 0;
    }

    const std::vector<int32_t> ids = tok->encode(text, !no_special, !raw_special);
    if (as_json) {
        std::string out = "{\"tokenizer\":" + json_quote(tok->source()) + ",\"n_tokens\":" + std::to_string(ids.size()) + ",\"ids\":[";
        for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
        out += "],\"pieces\":[";
        for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + json_quote(tok->token_to_piece(ids[i]));
        out += "],\"decoded\":" + json_quote(tok->decode(ids)) + "}";
        std::printf("%s\n", out.c_str());
        return 0;
    }
    std::printf("%zu tokens (%s, %s)\n", ids.size(), tokenizer_kind_name(tok->kind()), tok->source().c_str());
    for (size_t i = 0; i < ids.size(); ++i) {
        const int32_t id = ids[i];
        std::printf("%8d  %-24s %s\n", id, ("'" + show_piece(tok->token_to_piece(id)) + "'").c_str(),
                    tok->is_special(id) ? "special" : ("'" + show_piece(tok->decode(&id, 1)) + "'").c_str());
    }
    return 0;
}

} // namespace peft
