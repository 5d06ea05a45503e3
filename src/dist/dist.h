// dist.h: data-parallel training across processes (`mpirun -np N peft train CONFIG`), over MPI
// when built with -DPEFT_MPI=ON. The trainer sees only this: which rank it is, a sum of buffers
// that leaves the same bits on every rank, and checks that every rank runs the same job. A
// build without MPI is a world of one rank, and refuses to start under an MPI launcher rather
// than run N unrelated copies that would all write the same output_dir.
// Not here: what is summed (train/trainer.cpp: gradients, token counts), which rows a rank
// reads (train/train_loop.cpp).
#pragma once
#include <cstdint>
#include <string>

#include "core/status.h"

namespace peft {

struct dist_comm {
    int rank = 0, size = 1;
    bool active() const { return size > 1; }
    bool writer() const { return rank == 0; }   // the one rank that writes files and logs
};

// Starts the world: MPI_Init when built with MPI (a single rank when not launched by mpirun).
// Without MPI support, a launch by mpirun/srun is an error saying how to build with it.
status dist_init(int * argc, char *** argv, dist_comm & out);
void   dist_finalize();
// Ends every rank of the job with `code` (MPI_Abort): a failed rank must not leave the others
// waiting in a collective. A world of one just exits.
[[noreturn]] void dist_abort(int code);

// x[n] <- the sum of x over all ranks, identical to the bit on every rank (reduced on rank 0 in
// MPI's fixed order, then broadcast), so the optimizer steps of all ranks stay the same.
void dist_sum(const dist_comm & c, float * x, int64_t n);
void dist_sum(const dist_comm & c, double * x, int64_t n);
// An error on the ranks whose `text` differs from rank 0's, naming `what` and the first line that
// differs (a configuration, a data fingerprint). Every rank calls it.
status dist_check_same(const dist_comm & c, const std::string & what, const std::string & text);

} // namespace peft
