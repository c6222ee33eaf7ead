// TaskPool: see task_pool.h.
//
// Job state is one 64-bit word, (generation << 32) | next task index, so a claim is a single CAS that
// can only succeed for the job it was read from. Publishing a job first moves the state to the new
// generation with index kPublishing (no claim possible), then writes n and fn, then sets index 0: so a
// helper that read n after seeing a claimable state has that job's n, and a helper still holding the
// previous job's state fails its CAS. fn is read only after a successful claim, while the caller is
// still waiting for that task.
#include "task_pool.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>

namespace cpu_moe {
namespace {

// << a scheduler slice; longer than the gaps between two kernels of a step (the torch ops of a layer, 10-200 us):
// at 50 us the helper slept in most gaps and joined each kernel a wake-up late (decode steps 1.15x slower).
constexpr int64_t kSpinMicros = 300;

using Fn = std::function<void(int64_t)>;

inline uint32_t generation(uint64_t s) { return uint32_t(s >> 32); }
inline uint32_t task_index(uint64_t s) { return uint32_t(s); }
inline uint64_t job_state(uint32_t gen, uint32_t index) { return (uint64_t(gen) << 32) | index; }
constexpr uint32_t kPublishing = 0xFFFFFFFFu;   // task index while a job's arguments are being written

class TaskPool {
 public:
  void run(int64_t n, int threads, const Fn& fn) {
    const int helpers = int(std::min<int64_t>(threads - 1, n - 1));
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    // Inline when there is nothing to share, another thread's job is running, or n overflows the index.
    if (helpers <= 0 || !job.owns_lock() || n >= kPublishing) {
      for (int64_t i = 0; i < n; i++) fn(i);
      return;
    }
    start_helpers(helpers);
    const uint32_t gen = generation(state_.load()) + 1;
    state_.store(job_state(gen, kPublishing));
    done_.store(0);
    error_ = nullptr;
    n_.store(n);
    fn_.store(&fn);
    active_.store(helpers);
    state_.store(job_state(gen, 0));
    { std::lock_guard<std::mutex> lock(mutex_); }   // a helper between its check and its wait sees the new state
    work_cv_.notify_all();
    work(gen);
    wait_for(done_cv_, [&] { return done_.load() == n; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs tasks of job `gen` until none are left.
  void work(uint32_t gen) {
    for (;;) {
      uint64_t s = state_.load();
      if (generation(s) != gen) return;
      if (task_index(s) == kPublishing) {   // the caller is writing n and fn: a few stores away
        std::this_thread::yield();
        continue;
      }
      const int64_t n = n_.load();          // read after a claimable state: this job's n
      if (task_index(s) >= n) return;
      if (!state_.compare_exchange_weak(s, s + 1)) continue;
      try {
        (*fn_.load())(task_index(s));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_one();
      }
    }
  }

  // Waits until ready() holds: re-checks for kSpinMicros, yielding the core to any other runnable thread
  // (on a shared 2-core machine that may be the very helper being waited for), then sleeps on cv.
  template <class Ready> void wait_for(std::condition_variable& cv, const Ready& ready) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    while (!ready() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    if (ready()) return;
    std::unique_lock<std::mutex> lock(mutex_);
    cv.wait(lock, ready);
  }

  void start_helpers(int count) {
    while (int(helpers_) < count) {
      const int index = helpers_++;
      std::thread([this, index] { helper(index); }).detach();   // the pool lives as long as the process
    }
  }

  void helper(int index) {
    uint32_t seen = generation(state_.load());
    for (;;) {
      wait_for(work_cv_, [&] { return generation(state_.load()) != seen; });
      seen = generation(state_.load());
      if (index < active_.load()) work(seen);
    }
  }

  std::mutex job_mutex_;                // one job at a time
  std::mutex mutex_;                    // guards the two condition variables and error_
  std::condition_variable work_cv_, done_cv_;
  std::atomic<uint64_t> state_{0};      // (generation << 32) | next task index
  std::atomic<int64_t> n_{0}, done_{0};
  std::atomic<const Fn*> fn_{nullptr};
  std::atomic<int> active_{0};          // helpers taking part in the current job
  int helpers_ = 0;                     // helper threads started (only under job_mutex_)
  std::exception_ptr error_;
};

// Never destroyed: detached helpers may still be waiting at exit. A forked child gets a fresh pool, since
// the parent's helpers do not exist there and one of them may have held a lock at the fork.
TaskPool* g_pool = nullptr;
std::atomic<int> g_threads{0};   // 0: torch's intra-op thread count
void reset_after_fork() { g_pool = new TaskPool(); }

}  // namespace

void run_tasks(int64_t n, const Fn& fn) {
  static const bool ready = [] {
    g_pool = new TaskPool();
    return pthread_atfork(nullptr, nullptr, reset_after_fork) == 0;
  }();
  (void)ready;
  const int threads = g_threads.load();
  if (n > 0) g_pool->run(n, threads > 0 ? threads : at::get_num_threads(), fn);
}

int64_t check_task_pool(int64_t jobs) {
  int64_t bad = 0;
  std::vector<std::atomic<int>> hits(64);
  for (int64_t j = 0; j < jobs; j++) {
    const int64_t n = 1 + (j * 7919) % 61;   // consecutive jobs of different sizes
    for (auto& h : hits) h.store(0);
    run_tasks(n, [&](int64_t i) { hits[i].fetch_add(1); });
    for (int64_t i = 0; i < 64; i++) bad += hits[i].load() != (i < n ? 1 : 0);
  }
  return bad;
}

void set_num_threads(int threads) { g_threads.store(std::max(0, threads)); }
int get_num_threads() { const int t = g_threads.load(); return t > 0 ? t : at::get_num_threads(); }

}  // namespace cpu_moe
