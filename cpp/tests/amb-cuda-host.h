// Runs CUDA kernels on the host, for machines without a GPU: each block's threads become fibers
// (ucontext) that one host thread switches between at every __syncthreads(). Included before a
// kernel source (cpp/src/cuda/amb-kernels.cuh) compiled as plain C++.
//
// What it checks: the kernel's algorithm, indexing and barrier placement, as written. Every barrier
// must be reached by all threads of the block, or the run aborts (a divergent __syncthreads() is
// undefined behaviour on a GPU). Between barriers the threads run one after another, in ascending
// order in one phase and descending in the next, so a value read before the barrier that publishes
// it is read stale in one of the two orders.
// What it cannot check: nvcc's code generation, warp scheduling, the GPU's memory model and speed.
// Supported: threadIdx.x / blockIdx.x / gridDim.x, __syncthreads, shared memory at namespace scope,
// atomicAdd / atomicOr on int (fibers never interleave within a phase, so plain updates are atomic).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#include <ucontext.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::isinf;
using std::isnan;

namespace cuda_host {

struct dim3 {
    uint32_t x = 0, y = 0, z = 0;
};

inline int atomic_add(int * address, int value) {
    const int old = *address;
    *address += value;
    return old;
}

inline int atomic_or(int * address, int value) {
    const int old = *address;
    *address |= value;
    return old;
}

// One block at a time: n fibers running `body`, switched at each barrier.
class block_runner {
public:
    explicit block_runner(uint32_t n_threads, size_t stack_bytes = 256 * 1024)
        : fibers_(n_threads), stacks_(n_threads), status_(n_threads), stack_bytes_(stack_bytes) {
        for (auto & stack : stacks_) {
            stack.reset(new char[stack_bytes]);
        }
    }

    // Runs body() on every thread of the block, thread_index(i) telling each which one it is.
    void run(const std::function<void()> & body, const std::function<void(uint32_t)> & thread_index) {
        body_ = &body;
        active_ = this;
        const uint32_t n = (uint32_t) fibers_.size();
        for (uint32_t i = 0; i < n; ++i) {
            getcontext(&fibers_[i]);
            fibers_[i].uc_stack.ss_sp = stacks_[i].get();
            fibers_[i].uc_stack.ss_size = stack_bytes_;
            fibers_[i].uc_link = &scheduler_;
            makecontext(&fibers_[i], &block_runner::fiber_main, 0);
            status_[i] = READY;
        }
        for (bool ascending = true;; ascending = !ascending) {
            for (uint32_t k = 0; k < n; ++k) {
                current_ = ascending ? k : n - 1 - k;
                thread_index(current_);
                status_[current_] = RUNNING;
                swapcontext(&scheduler_, &fibers_[current_]);
            }
            uint32_t done = 0;
            for (uint32_t i = 0; i < n; ++i) {
                done += status_[i] == DONE ? 1 : 0;
            }
            if (done == n) {
                return;
            }
            if (done != 0) {
                fprintf(stderr, "cuda_host: __syncthreads() reached by %u of %u threads (divergent barrier)\n", n - done, n);
                abort();
            }
            for (auto & s : status_) {
                s = READY;
            }
        }
    }

    // __syncthreads(): back to the scheduler until every thread of the block is here.
    static void barrier() {
        block_runner * r = active_;
        r->status_[r->current_] = AT_BARRIER;
        swapcontext(&r->fibers_[r->current_], &r->scheduler_);
    }

private:
    enum status { READY, RUNNING, AT_BARRIER, DONE };

    static void fiber_main() {
        block_runner * r = active_;
        (*r->body_)();
        r->status_[r->current_] = DONE; // then uc_link returns to the scheduler
    }

    std::vector<ucontext_t> fibers_;
    std::vector<std::unique_ptr<char[]>> stacks_;
    std::vector<status> status_;
    size_t stack_bytes_ = 0;
    ucontext_t scheduler_{};
    uint32_t current_ = 0;
    const std::function<void()> * body_ = nullptr;
    static inline block_runner * active_ = nullptr;
};

} // namespace cuda_host

inline cuda_host::dim3 threadIdx, blockIdx, gridDim;

inline void __syncthreads() { cuda_host::block_runner::barrier(); }
inline int atomicAdd(int * address, int value) { return cuda_host::atomic_add(address, value); }
inline int atomicOr(int * address, int value) { return cuda_host::atomic_or(address, value); }

namespace cuda_host {

// kernel<<<grid, block>>>(args), block after block on this host thread.
template <typename Args>
void launch(void (*kernel)(Args), uint32_t grid, block_runner & block, const Args & args) {
    gridDim.x = grid;
    const std::function<void()> body = [&] { kernel(args); };
    const std::function<void(uint32_t)> index = [](uint32_t i) { threadIdx.x = i; };
    for (uint32_t b = 0; b < grid; ++b) {
        blockIdx.x = b;
        block.run(body, index);
    }
}

} // namespace cuda_host
