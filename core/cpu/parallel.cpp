#include "parallel.h"

#include <unistd.h>

#include <atomic>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "dcn/cpu.h"

#if defined(DCN_OPENMP)
#include <omp.h>
#endif

namespace dcn::cpu {
namespace {

std::atomic<int> g_requested_threads{0};  // 0: hardware concurrency
thread_local bool t_inside_parallel = false;

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

// One parallel_for call. Workers hold it through a shared_ptr, so one that
// wakes late (after the job ended) only finds no task left and never calls
// fn. The caller waits for tasks to be *finished*, not for every worker to
// check in: a worker the OS has not scheduled yet costs nothing.
struct Job {
  const std::function<void(int64_t)>* fn;
  int64_t n_tasks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
};

class Pool {
 public:
  // Returns false (and runs nothing) when another job holds the pool.
  bool try_run(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n_tasks = n_tasks;
    {
      std::lock_guard<std::mutex> lock(m_);
      ensure_workers(n_threads - 1);
      job_ = job;
      participants_ = n_threads - 1;
      ++generation_;
    }
    cv_work_.notify_all();
    drain(*job);
    std::unique_lock<std::mutex> lock(m_);
    cv_done_.wait(lock, [&] { return job->finished.load() == n_tasks; });
    job_.reset();
    return true;
  }

 private:
  void drain(Job& job) {
    t_inside_parallel = true;
    int64_t done = 0;
    for (int64_t t = job.next.fetch_add(1); t < job.n_tasks; t = job.next.fetch_add(1)) {
      (*job.fn)(t);
      ++done;
    }
    t_inside_parallel = false;
    if (done > 0 && job.finished.fetch_add(done) + done == job.n_tasks) {
      std::lock_guard<std::mutex> lock(m_);
      cv_done_.notify_all();
    }
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
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_work_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= participants_ || !job_) continue;
        job = job_;
      }
      drain(*job);
    }
  }

  std::mutex run_mutex_;
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  std::shared_ptr<Job> job_;
  int participants_ = 0;
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
#if defined(DCN_OPENMP)
  // Built for a host that runs OpenMP itself (PyTorch on Linux ships
  // libgomp.so.1, and the loader hands this module that same, already loaded
  // runtime): run on its thread team. Its threads are the ones torch just
  // used for a GEMM and are still spinning, so they start at once, and there
  // is never a second set of threads competing with them for the cores.
  if (threads > 1 && !omp_in_parallel()) {
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
    {
      for (int64_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) fn(t);
    }
    return;
  }
#else
  if (threads > 1 && !t_inside_parallel && pool().try_run(n_tasks, threads, fn)) return;
#endif
  for (int64_t t = 0; t < n_tasks; ++t) fn(t);
}

}  // namespace dcn::cpu
