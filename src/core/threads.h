// threads.h: the thread-count policy. One OpenMP runtime is shared by our loops and OpenBLAS
// (the OpenMP build of OpenBLAS), set once; GEMMs are called from serial code only.
#pragma once

namespace peft {

int  threads_default();          // physical cores (not SMT siblings) available to this process
void threads_set(int n);         // n <= 0 means threads_default()
int  threads_get();

} // namespace peft
