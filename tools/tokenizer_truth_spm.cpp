// tokenizer_truth_spm.cpp: ground-truth ids for the Llama 2 tokenizer.model, computed by
// libsentencepiece itself (the reference implementation), for tools/tokenizer_truth.mjs.
// Not part of the build: the node script compiles it with
//   g++ -O1 -std=c++17 tools/tokenizer_truth_spm.cpp -lsentencepiece
// Input on stdin: one case per line as hex bytes (raw, possibly invalid UTF-8).
// Output: one line per case, the ids separated by spaces (no BOS; the caller adds it).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

int main(int argc, char ** argv) {
    if (argc != 2) { std::fprintf(stderr, "usage: %s tokenizer.model < hex-lines\n", argv[0]); return 2; }
    sentencepiece::SentencePieceProcessor sp;
    const auto st = sp.Load(argv[1]);
    if (!st.ok()) { std::fprintf(stderr, "%s: %s\n", argv[1], st.ToString().c_str()); return 1; }
    std::string line;
    while (std::getline(std::cin, line)) {
        std::string bytes;
        for (size_t i = 0; i + 1 < line.size(); i += 2) bytes.push_back((char) std::stoi(line.substr(i, 2), nullptr, 16));
        std::vector<int> ids;
        if (!sp.Encode(bytes, &ids).ok()) return 1;
        for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
        std::printf("\n");
    }
    return 0;
}
