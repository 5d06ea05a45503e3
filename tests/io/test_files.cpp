// test_files.cpp: mapped_file (mmap.h) and atomic writes (atomic_file.h): error cases name the
// path, zero-length files, temp files never left behind, a failed write keeps the old file.
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/mmap.h"
#include "io/safetensors.h"
#include "testing.h"

using namespace peft;

namespace {
std::string read_all(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}
int count_entries(const std::string & dir) {
    int n = 0;
    for (const auto & e : std::filesystem::directory_iterator(dir)) { (void) e; n++; }
    return n;
}
} // namespace

TEST(mmap, maps_contents_and_moves) {
    std::string dir = peft::testing::temp_dir("mmap_ok");
    ASSERT_TRUE(write_file_atomic(dir + "/f.bin", "hello mmap").ok());
    mapped_file m;
    ASSERT_TRUE(m.open(dir + "/f.bin").ok());
    ASSERT_TRUE(m.is_open());
    EXPECT_EQ(std::string((const char *) m.data, m.size), "hello mmap");
    mapped_file n = std::move(m);
    EXPECT_FALSE(m.is_open());
    EXPECT_EQ(n.size, 10u);
    EXPECT_EQ(n.data[0], 'h');
    n.close();
    EXPECT_FALSE(n.is_open());
    std::filesystem::remove_all(dir);
}

TEST(mmap, empty_file_is_not_mapped_but_valid) {
    std::string dir = peft::testing::temp_dir("mmap_empty");
    ASSERT_TRUE(write_file_atomic(dir + "/e.bin", "").ok());
    mapped_file m;
    status s = m.open(dir + "/e.bin");
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(m.size, 0u);
    EXPECT_NE(m.data, nullptr);
    std::filesystem::remove_all(dir);
}

TEST(mmap, errors) {
    std::string dir = peft::testing::temp_dir("mmap_err");
    mapped_file m;
    status s = m.open(dir + "/missing.bin");
    EXPECT_EQ(s.code, PEFT_STATUS_IO);
    EXPECT_EQ(s.message, dir + "/missing.bin: file not found");
    s = m.open(dir);
    EXPECT_EQ(s.message, dir + ": is a directory, expected a file");
    s = m.open("/dev/null");
    EXPECT_EQ(s.message, "/dev/null: not a regular file");
    ASSERT_TRUE(write_file_atomic(dir + "/secret.bin", "x").ok());
    ASSERT_EQ(chmod((dir + "/secret.bin").c_str(), 0), 0);
    s = m.open(dir + "/secret.bin");
    if (geteuid() != 0) {  // root reads anything
        EXPECT_FALSE(s.ok());
        EXPECT_NE(s.message.find("cannot open file for reading: Permission denied"), std::string::npos) << s.message;
    }
    EXPECT_FALSE(m.is_open() && !s.ok());
    std::filesystem::remove_all(dir);
}

TEST(atomic_file, writes_and_replaces_without_leftovers) {
    std::string dir = peft::testing::temp_dir("atomic_ok");
    std::string path = dir + "/config.json";
    ASSERT_TRUE(write_file_atomic(path, "{\"v\":1}").ok());
    EXPECT_EQ(read_all(path), "{\"v\":1}");
    ASSERT_TRUE(write_file_atomic(path, "{\"v\":2}").ok());
    EXPECT_EQ(read_all(path), "{\"v\":2}");
    EXPECT_EQ(count_entries(dir), 1);

    // streaming form; an uncommitted file is removed and the old content stays
    {
        atomic_file f;
        ASSERT_TRUE(f.open(path).ok());
        ASSERT_TRUE(f.write("partial", 7).ok());
        EXPECT_TRUE(std::filesystem::exists(f.temp_path()));
        EXPECT_NE(f.temp_path().find(".tmp." + std::to_string(getpid())), std::string::npos);
    }
    EXPECT_EQ(read_all(path), "{\"v\":2}");
    EXPECT_EQ(count_entries(dir), 1);
    std::filesystem::remove_all(dir);
}

TEST(atomic_file, failures_return_errors) {
    std::string dir = peft::testing::temp_dir("atomic_err");
    status s = write_file_atomic(dir + "/no/such/dir/x.json", "{}");
    EXPECT_EQ(s.code, PEFT_STATUS_IO);
    EXPECT_NE(s.message.find("no/such/dir/x.json: cannot create temporary file"), std::string::npos) << s.message;
    s = write_file_atomic("/proc/peft_cannot_write_here", "x");
    EXPECT_FALSE(s.ok());
    // the destination is a directory: rename fails, temp removed
    std::filesystem::create_directories(dir + "/sub");
    s = write_file_atomic(dir + "/sub", "x");
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message.find("cannot rename"), std::string::npos) << s.message;
    EXPECT_EQ(count_entries(dir), 1);
    float v[2] = {1, 2};
    s = safetensors_write(dir + "/missing/x.safetensors", {{"a", PEFT_DTYPE_F32, {2}, v, ""}}, {});
    EXPECT_FALSE(s.ok());
    std::filesystem::remove_all(dir);
}

// "Disk full": a file-size limit makes write() fail with EFBIG part way through. Runs in a
// child process so the limit cannot affect the test runner itself.
TEST(atomic_file, failed_write_keeps_old_file_and_removes_temp) {
    std::string dir = peft::testing::temp_dir("atomic_full");
    std::string path = dir + "/model.safetensors";
    std::vector<float> small = {1, 2, 3};
    ASSERT_TRUE(safetensors_write(path, {{"w", PEFT_DTYPE_F32, {3}, small.data(), ""}}, {}).ok());
    const std::string before = read_all(path);

    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);  // get EFBIG instead of being killed
        struct rlimit rl = {64 * 1024, 64 * 1024};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(10);
        std::vector<float> big(1 << 20, 0.5f);  // 4 MiB > limit
        status s = safetensors_write(path, {{"w", PEFT_DTYPE_F32, {1 << 20}, big.data(), ""}}, {});
        if (s.ok()) _exit(11);
        if (s.message.find("write failed: File too large") == std::string::npos) _exit(12);
        status t = write_file_atomic(dir + "/cfg.json", std::string(100000, 'x'));
        if (t.ok()) _exit(13);
        _exit(0);
    }
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFEXITED(wstatus));
    EXPECT_EQ(WEXITSTATUS(wstatus), 0);
    EXPECT_EQ(read_all(path), before);  // old file untouched
    EXPECT_EQ(count_entries(dir), 1);   // no temp files, no cfg.json
    std::filesystem::remove_all(dir);
}
