#include "core/threads.h"

#include <omp.h>
#include <sched.h>

extern "C" void openblas_set_num_threads(int);

namespace peft {

static int g_threads = 0;

int threads_default() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    return omp_get_num_procs();
}

void threads_set(int n) {
    if (n <= 0) n = threads_default();
    g_threads = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int threads_get() { return g_threads > 0 ? g_threads : threads_default(); }

} // namespace peft
