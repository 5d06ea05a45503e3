// dist.cpp: the MPI calls behind dist.h (compiled with PEFT_MPI=1 only when -DPEFT_MPI=ON, the
// one file that includes mpi.h), and the single-rank world otherwise.
#include "dist/dist.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <vector>

#ifdef PEFT_MPI
#include <mpi.h>
#endif

namespace peft {

#ifdef PEFT_MPI

namespace {

// Around the first byte where rank 0's text a and rank r's b differ: the field (between ", " or
// newlines) holding it in each, shown in the error.
std::string first_difference(const std::string & a, const std::string & b, int r) {
    size_t i = 0;
    while (i < a.size() && i < b.size() && a[i] == b[i]) i++;
    size_t s = 0;
    for (const char * sep : {", ", "\n", "{"}) {
        const size_t p = i == 0 ? std::string::npos : a.rfind(sep, i - 1);
        if (p != std::string::npos) s = std::max(s, p + std::strlen(sep));
    }
    auto field = [&](const std::string & t) {
        if (s >= t.size()) return std::string("(end)");
        size_t e = t.size();
        for (const char * sep : {", ", "\n", "}"}) e = std::min(e, t.find(sep, std::max(s, std::min(i, t.size()))));
        return t.substr(s, e - s);
    };
    return "rank 0 has " + field(a) + ", rank " + std::to_string(r) + " " + field(b);
}

} // namespace

status dist_init(int * argc, char *** argv, dist_comm & out) {
    int ok = 0;
    MPI_Initialized(&ok);
    if (!ok && MPI_Init(argc, argv) != MPI_SUCCESS) return make_error(PEFT_STATUS_IO, "MPI", "MPI_Init failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &out.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &out.size);
    return {};
}

void dist_finalize() {
    int ok = 0, done = 0;
    MPI_Initialized(&ok);
    MPI_Finalized(&done);
    if (ok && !done) MPI_Finalize();
}

void dist_abort(int code) {
    int ok = 0;
    MPI_Initialized(&ok);
    if (ok) MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
}

namespace {

// Large buffers go in pieces: MPI counts are int.
template <typename T>
void sum_impl(const dist_comm & c, T * x, int64_t n, MPI_Datatype type) {
    if (!c.active()) return;
    const int64_t chunk = (int64_t) 1 << 28;
    for (int64_t off = 0; off < n; off += chunk) {
        const int k = (int) (n - off < chunk ? n - off : chunk);
        if (c.rank == 0) MPI_Reduce(MPI_IN_PLACE, x + off, k, type, MPI_SUM, 0, MPI_COMM_WORLD);
        else MPI_Reduce(x + off, nullptr, k, type, MPI_SUM, 0, MPI_COMM_WORLD);
        MPI_Bcast(x + off, k, type, 0, MPI_COMM_WORLD);
    }
}

} // namespace

void dist_sum(const dist_comm & c, float * x, int64_t n) { sum_impl(c, x, n, MPI_FLOAT); }
void dist_sum(const dist_comm & c, double * x, int64_t n) { sum_impl(c, x, n, MPI_DOUBLE); }

status dist_check_same(const dist_comm & c, const std::string & what, const std::string & text) {
    if (!c.active()) return {};
    auto bcast_text = [&](const std::string & mine, int root) {
        long long len = (long long) mine.size();
        MPI_Bcast(&len, 1, MPI_LONG_LONG, root, MPI_COMM_WORLD);
        std::string out = c.rank == root ? mine : std::string((size_t) len, '\0');
        MPI_Bcast(out.data(), (int) len, MPI_CHAR, root, MPI_COMM_WORLD);
        return out;
    };
    const std::string root_text = bcast_text(text, 0);
    // the first rank that differs sends its text to all, so every rank (rank 0 included, which
    // may be the one whose message is seen before MPI_Abort ends the others) names the difference
    int first = root_text != text ? c.rank : c.size;
    int any = c.size;
    MPI_Allreduce(&first, &any, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (any == c.size) return {};
    const std::string other = bcast_text(text, any);
    status st = make_error(PEFT_STATUS_CONFIG, "data parallel",
                           "rank " + std::to_string(any) + "'s " + what + " differs from rank 0's: " + first_difference(root_text, other, any));
    st.hint = "every rank must run the same command on the same files (same config, data and peft build)";
    return st;
}

#else   // a world of one rank

namespace {

// Set by the launchers of OpenMPI, MPICH / Intel MPI (PMI) and Slurm for every rank.
const char * launched_by() {
    for (const char * v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"}) {
        const char * s = std::getenv(v);
        if (s && std::atoi(s) > 1) return v;
    }
    return nullptr;
}

} // namespace

status dist_init(int *, char ***, dist_comm & out) {
    out = dist_comm{};
    if (const char * v = launched_by()) {
        status st = make_error(PEFT_STATUS_CONFIG, "mpirun", std::string("started by an MPI launcher (") + v + " > 1), but this peft has no MPI support");
        st.hint = "rebuild with cmake -DPEFT_MPI=ON (needs libopenmpi-dev), or run peft train without mpirun";
        return st;
    }
    return {};
}

void dist_finalize() {}
void dist_abort(int code) { std::exit(code); }
void dist_sum(const dist_comm &, float *, int64_t) {}
void dist_sum(const dist_comm &, double *, int64_t) {}
status dist_check_same(const dist_comm &, const std::string &, const std::string &) { return {}; }

#endif

} // namespace peft
