#include "core/threads.h"

#include <omp.h>
#include <sched.h>

#include <cstdio>
#include <set>
#include <utility>

extern "C" void openblas_set_num_threads(int);

namespace peft {

static int g_threads = 0;

// (package, core) of a logical CPU from sysfs; false where the kernel does not say
static bool cpu_core_of(int cpu, std::pair<int, int> & out) {
    char path[128];
    int v[2];
    const char * names[2] = {"physical_package_id", "core_id"};
    for (int i = 0; i < 2; i++) {
        std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, names[i]);
        FILE * f = std::fopen(path, "r");
        if (!f) return false;
        const bool ok = std::fscanf(f, "%d", &v[i]) == 1;
        std::fclose(f);
        if (!ok) return false;
    }
    out = {v[0], v[1]};
    return true;
}

// Physical cores among the CPUs this process may run on: SMT siblings share one core's FMA
// units, so a second thread on a sibling adds contention, not GEMM throughput.
int threads_default() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return omp_get_num_procs();
    std::set<std::pair<int, int>> cores;
    int logical = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        logical++;
        std::pair<int, int> c;
        if (!cpu_core_of(cpu, c)) return CPU_COUNT(&set);   // no topology: every logical CPU
        cores.insert(c);
    }
    return logical > 0 ? (int) cores.size() : omp_get_num_procs();
}

void threads_set(int n) {
    if (n <= 0) n = threads_default();
    g_threads = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int threads_get() { return g_threads > 0 ? g_threads : threads_default(); }

} // namespace peft
