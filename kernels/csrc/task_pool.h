// TaskPool: the extension's parallel loops. run(n, fn) calls fn(i) for every i in [0, n) on the calling
// thread and on up to at::get_num_threads() - 1 helper threads, which claim tasks from one shared counter.
//
// Why not at::parallel_for (OpenMP): its team joins at a barrier, so on a 2-core machine shared with
// tritonserver's frontend and the clients, one helper the OS has not scheduled yet stalls the whole call
// for a scheduler slice (milliseconds, every layer). Here the caller waits only for tasks a helper has
// already claimed; a helper that wakes late finds the counter exhausted and goes back to sleep, so a
// busy second core costs nothing and a free one is used.
//
// Waiting threads re-check for 300 us, yielding the core to any other runnable thread (the next kernel of a
// step follows after the layer's Python ops between two kernels, 10-200 us), then sleep on a condition
// variable: an idle server uses no CPU.
#pragma once
#include <cstdint>
#include <functional>

namespace cpu_moe {

// Runs fn(i) for i in [0, n); returns when all have run. Tasks must not call run() themselves (a nested
// or concurrent call runs its tasks inline on its own thread).
void run_tasks(int64_t n, const std::function<void(int64_t)>& fn);

// Runs `jobs` tiny jobs of varying sizes back to back; returns how many tasks ran other than once (tests).
int64_t check_task_pool(int64_t jobs);

// Threads run_tasks uses (the caller included); 0 = torch's intra-op thread count.
void set_num_threads(int threads);
int get_num_threads();

}  // namespace cpu_moe
