#include "parallel.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "dcn/cpu.h"

namespace dcn::cpu {
namespace {

std::atomic<int> g_requested_threads{0};  // 0: hardware concurrency
thread_local bool t_inside_parallel = false;

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

// Workers sleep on a condition variable between jobs; the calling thread
// always takes part, so a job of T threads wakes T-1 workers.
class Pool {
 public:
  // Returns false (and runs nothing) when another job holds the pool.
  bool try_run(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    ensure_workers(n_threads - 1);
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0);
      participants_ = n_threads - 1;
      running_ = n_threads - 1;
      ++generation_;
    }
    cv_work_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(m_);
    cv_done_.wait(lock, [&] { return running_ == 0; });
    fn_ = nullptr;
    return true;
  }

 private:
  void drain() {
    t_inside_parallel = true;
    for (int64_t t = next_.fetch_add(1); t < n_tasks_; t = next_.fetch_add(1)) (*fn_)(t);
    t_inside_parallel = false;
  }

  void ensure_workers(int n) {
    while (int(workers_.size()) < n) {
      const int id = int(workers_.size());
      workers_.emplace_back([this, id] { worker_loop(id); });
      workers_.back().detach();  // the pool lives until the process ends
    }
  }

  void worker_loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_work_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= participants_) continue;
      }
      drain();
      std::lock_guard<std::mutex> lock(m_);
      if (--running_ == 0) cv_done_.notify_one();
    }
  }

  std::mutex run_mutex_;
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int participants_ = 0;
  int running_ = 0;
  uint64_t generation_ = 0;
};

// After fork() the child has none of the parent's threads: give it a fresh
// pool (the parent's object is abandoned, never used again).
Pool& pool() {
  static std::mutex mu;
  static Pool* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  const pid_t me = getpid();
  if (p == nullptr || owner != me) {
    p = new Pool();
    owner = me;
  }
  return *p;
}

}  // namespace

void set_num_threads(int n) { g_requested_threads.store(n < 0 ? 0 : n); }

int get_num_threads() {
  const int n = g_requested_threads.load();
  return n > 0 ? n : hardware_threads();
}

void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  int threads = get_num_threads();
  if (int64_t(threads) > n_tasks) threads = int(n_tasks);
  if (threads > 1 && !t_inside_parallel && pool().try_run(n_tasks, threads, fn)) return;
  for (int64_t t = 0; t < n_tasks; ++t) fn(t);
}

}  // namespace dcn::cpu
