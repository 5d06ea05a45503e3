// test_cli_accuracy.cpp: `peft eval --accuracy` end to end on the bundled tiny model: the JSON
// fields, the human line, and a file without questions refused. The metric itself is tested
// against a one-sequence reference in tests/model/test_accuracy.cpp.
#include <fstream>

#include "io/json.h"
#include "testing.h"

namespace {

peft::testing::shell_result run_peft(const std::string & args) {
    return peft::testing::run_shell(std::string(PEFT_BIN) + " " + args + " 2>&1");
}

} // namespace

TEST(cli_eval, accuracy_json_and_text) {
    const std::string dir = peft::testing::temp_dir("cli_accuracy");
    const std::string data = dir + "/q.jsonl", model = peft::testing::source_path("models/tiny-llama");
    std::ofstream(data) << "{\"instruction\": \"Reverse the words: a b c\", \"output\": \"c b a\"}\n"
                        << "{\"text\": \"not a question\"}\n"
                        << "{\"instruction\": \"Name a colour.\", \"output\": \"red\"}\n";
    peft::testing::shell_result r = run_peft("eval --model " + model + " --data " + data + " --accuracy --json --threads 2");
    ASSERT_EQ(r.code, 0) << r.out;
    peft::json_document doc;
    ASSERT_TRUE(doc.parse(r.out.data(), r.out.size(), "eval json").ok()) << r.out;
    EXPECT_EQ(doc.root().get("accuracy_n").as_int(-1), 2);
    EXPECT_EQ(doc.root().get("accuracy_skipped").as_int(-1), 1);
    const int64_t correct = doc.root().get("accuracy_correct").as_int(-1);
    EXPECT_TRUE(correct >= 0 && correct <= 2) << r.out;
    EXPECT_DOUBLE_EQ(doc.root().get("accuracy").as_double(-1), (double) correct / 2.0);

    r = run_peft("eval --model " + model + " --data " + data + " --accuracy --threads 2");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("greedy answers equal the expected answer, 1 lines without a question left out"), std::string::npos) << r.out;

    r = run_peft("eval --model " + model + " --data " + data + " --json --threads 2");   // no --accuracy: no accuracy fields
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("accuracy"), std::string::npos) << r.out;

    std::ofstream(data) << "{\"text\": \"a b c\"}\n";
    r = run_peft("eval --model " + model + " --data " + data + " --accuracy --threads 2");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("no question with an answer"), std::string::npos) << r.out;
}
