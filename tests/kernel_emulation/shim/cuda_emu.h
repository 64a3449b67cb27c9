// The CUDA execution model on the host, for kernels/*.cu compiled as C++ (see driver.cpp's header for what is and
// is not modelled).
//
// Every GPU thread of a block is a fiber (its own stack, switched in user space); the block's fibers take turns on
// one OS thread and switch only at a synchronisation point: __syncthreads, a warp shuffle, a wmma mma_sync. That
// makes a launch cheap (no OS thread per GPU thread) and deterministic within a block, and it gives
// `__shared__` a natural meaning: it is `thread_local`, i.e. one copy per OS thread, and an OS thread runs one
// block at a time. Blocks are spread over a few OS threads (workers), so blocks really do run concurrently, as
// the coreset's "last block done" reduction assumes.
#pragma once

#include <math.h>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__) || defined(__CET__)
#include <ucontext.h>  // the portable fiber switch, see emu::Context
#endif

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <source_location>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy per OS thread = per running block. `extern __shared__` (dynamic shared memory) becomes an
// `extern thread_local` array, which the driver defines with the launch's capacity.
#define __shared__ thread_local

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct __align__(16) uint4 {
    unsigned x, y, z, w;
};
struct __align__(16) float4 {
    float x, y, z, w;
};

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// CUDA's overloaded min/max for the integer widths the kernels mix (never two different types at once).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

// The _rn intrinsics are IEEE single operations; the driver is built with -ffp-contract=off, so the host
// compiler never fuses them either.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __int2float_rn(int a) { return static_cast<float>(a); }
inline int __float2int_rz(float a) { return static_cast<int>(a); }
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
// Bit casts between a float or double and an integer of its width (coreset.cu's keys and bounds).
inline unsigned __float_as_uint(float f) {
    unsigned i;
    memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline long long __double_as_longlong(double d) {
    long long i;
    memcpy(&i, &d, 8);
    return i;
}
inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, 8);
    return d;
}

namespace emu {

[[noreturn]] inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("emulation error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    _exit(3);
}

}  // namespace emu

// A misaligned vector access faults on the GPU; here it would silently work, so it is checked.
template <class T>
inline T __ldg(const T* p) {
    if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
        emu::fail("__ldg of a %zu-byte type from misaligned address %p", sizeof(T), static_cast<const void*>(p));
    }
    return *p;
}

// A load that bypasses L1: another block wrote the value, so read it as an atomic.
template <class T>
inline T __ldcg(const T* p) {
    T v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    unsigned long long old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

namespace emu {

// A suspended fiber or scheduler: what a stack switch saves and resumes. On x86-64 a hand-written switch (a few
// nanoseconds); elsewhere, and when built with -fcf-protection (the default of some distributions' g++, whose
// shadow stack would reject the hand-written switch's return into a fresh stack), glibc's ucontext, which is
// slower (a system call per switch for the signal mask) but portable and shadow-stack aware.
#if !defined(__x86_64__) || defined(__CET__)
struct Context {
    ucontext_t uc;
};

inline void switch_to(Context& save, Context& next) { swapcontext(&save.uc, &next.uc); }

inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#else
struct Context {
    void* sp;
};

// Saves the callee-saved registers on the current stack and its pointer in *save, then resumes the stack
// `next` (one that emu_switch saved, or a fresh one that make_context built).
extern "C" void emu_switch(void** save, void* next);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

inline void switch_to(Context& save, Context& next) { emu_switch(&save.sp, next.sp); }

inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    // The frame emu_switch pops: six callee-saved registers, then `entry` as the return address, then a dummy
    // return address for `entry`, which leaves rsp = 8 (mod 16) at its first instruction, as after a call.
    void** sp = reinterpret_cast<void**>(stack + bytes) - 8;
    for (int i = 0; i < 6; ++i) {
        sp[i] = nullptr;
    }
    sp[6] = reinterpret_cast<void*>(entry);
    sp[7] = nullptr;
    c.sp = sp;
}
#endif

}  // namespace emu

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 gridDim;
inline dim3 blockDim;

namespace emu {

constexpr unsigned MAX_THREADS = 1024;
constexpr unsigned MAX_WARPS = MAX_THREADS / 32;
constexpr size_t STACK_BYTES = 256 * 1024;
// wmma scratch per warp and parity: A, B and C of one 16 x 16 x 16 product.
constexpr int MMA_TILE = 256;

enum class Wait { None, Block, Warp, Done };

struct Fiber {
    Context context;
    char* stack = nullptr;  // STACK_BYTES above a PROT_NONE guard page: an overflow faults
    unsigned tid = 0;
    Wait wait = Wait::None;
    unsigned gen = 0;  // the barrier generation it waits to see pass
};

// One block in flight on one OS thread.
struct Block {
    unsigned nthreads = 0;
    Fiber fibers[MAX_THREADS];
    Fiber* cur = nullptr;
    Context scheduler;
    const std::function<void()>* body = nullptr;
    unsigned exited = 0;
    unsigned bar_arrived = 0, bar_gen = 0;
    std::source_location bar_site;  // where the first thread of the pending barrier called it
    unsigned warp_lanes[MAX_WARPS], warp_arrived[MAX_WARPS], warp_gen[MAX_WARPS], warp_exited[MAX_WARPS];
    std::source_location warp_site[MAX_WARPS];  // where the first lane of the pending collective called it
    // Exchange slots of warp collectives, double-buffered by barrier parity: a lane can run at most one
    // collective ahead of the slowest lane of its warp, so the other parity is never still being read.
    uint64_t shfl[MAX_WARPS][2][32];
    float mma[MAX_WARPS][2][3][MMA_TILE];
};

inline thread_local Block* g_block = nullptr;

inline bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && a.column() == b.column() && strcmp(a.file_name(), b.file_name()) == 0;
}

[[noreturn]] inline void fiber_main() {
    Block& b = *g_block;
    (*b.body)();
    Fiber& f = *b.cur;
    const unsigned w = f.tid / 32;
    if (b.bar_arrived != 0) {
        fail("thread %u exited while %u threads of its block wait at __syncthreads", f.tid, b.bar_arrived);
    }
    if (b.warp_arrived[w] != 0) {
        fail("thread %u exited while %u lanes of its warp wait in a warp collective", f.tid, b.warp_arrived[w]);
    }
    ++b.exited;
    ++b.warp_exited[w];
    f.wait = Wait::Done;
    switch_to(f.context, b.scheduler);
    __builtin_unreachable();
}

inline void start(Fiber& f) {
    if (f.stack == nullptr) {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        void* m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0) {
            fail("cannot map a fiber stack");
        }
        f.stack = static_cast<char*>(m) + page;
    }
    make_context(f.context, f.stack, STACK_BYTES, fiber_main);
    f.wait = Wait::None;
}

inline void yield() {
    Block& b = *g_block;
    switch_to(b.cur->context, b.scheduler);
}

inline bool runnable(const Block& b, const Fiber& f) {
    switch (f.wait) {
        case Wait::None:
            return true;
        case Wait::Block:
            return b.bar_gen != f.gen;
        case Wait::Warp:
            return b.warp_gen[f.tid / 32] != f.gen;
        case Wait::Done:
            return false;
    }
    return false;
}

// Runs every thread of block `b` to completion, switching at synchronisation points, round-robin.
inline void run_block(Block& b) {
    const unsigned nwarps = (b.nthreads + 31) / 32;
    b.exited = b.bar_arrived = b.bar_gen = 0;
    for (unsigned w = 0; w < nwarps; ++w) {
        b.warp_lanes[w] = std::min(32u, b.nthreads - 32 * w);
        b.warp_arrived[w] = b.warp_gen[w] = b.warp_exited[w] = 0;
    }
    for (unsigned t = 0; t < b.nthreads; ++t) {
        start(b.fibers[t]);
    }
    while (b.exited < b.nthreads) {
        bool progress = false;
        for (unsigned t = 0; t < b.nthreads; ++t) {
            Fiber& f = b.fibers[t];
            if (!runnable(b, f)) {
                continue;
            }
            f.wait = Wait::None;
            b.cur = &f;
            threadIdx = dim3{f.tid % blockDim.x, f.tid / blockDim.x % blockDim.y, f.tid / (blockDim.x * blockDim.y)};
            switch_to(b.scheduler, f.context);
            progress = true;
        }
        if (!progress) {
            unsigned at_bar = 0, at_warp = 0;
            for (unsigned t = 0; t < b.nthreads; ++t) {
                at_bar += b.fibers[t].wait == Wait::Block;
                at_warp += b.fibers[t].wait == Wait::Warp;
            }
            fail("deadlock in block (%u,%u,%u): %u threads wait at __syncthreads, %u in a warp collective, %u exited "
                 "(a barrier or collective that not every thread reaches)",
                 blockIdx.x, blockIdx.y, blockIdx.z, at_bar, at_warp, b.exited);
        }
    }
}

}  // namespace emu

inline void __syncthreads(const std::source_location& site = std::source_location::current()) {
    emu::Block& b = *emu::g_block;
    if (b.exited != 0) {
        emu::fail("__syncthreads after %u threads of the block exited", b.exited);
    }
    // The GPU's barrier counts arrivals wherever they come from, but a kernel whose threads meet at different
    // __syncthreads has divergent barriers, which CUDA leaves undefined.
    if (b.bar_arrived == 0) {
        b.bar_site = site;
    } else if (!emu::same_site(b.bar_site, site)) {
        emu::fail("threads of the block wait at different __syncthreads, at %s:%u and %s:%u", b.bar_site.file_name(),
                  b.bar_site.line(), site.file_name(), site.line());
    }
    const unsigned gen = b.bar_gen;
    if (++b.bar_arrived == b.nthreads) {
        b.bar_arrived = 0;
        ++b.bar_gen;
        return;
    }
    b.cur->wait = emu::Wait::Block;
    b.cur->gen = gen;
    emu::yield();
}

namespace emu {

// Waits until every lane of the calling thread's warp has arrived at the same collective (`site`, the kernel's
// call): the GPU requires every lane named in the mask to execute the same one.
inline void warp_sync(unsigned mask, const std::source_location& site) {
    Block& b = *g_block;
    const unsigned w = b.cur->tid / 32;
    const unsigned full = b.warp_lanes[w] == 32 ? 0xFFFFFFFFu : (1u << b.warp_lanes[w]) - 1;
    if ((mask & full) != full) {
        fail("warp collective with mask %08x: only full-warp masks are modelled", mask);
    }
    if (b.warp_exited[w] != 0) {
        fail("warp collective after %u lanes of warp %u exited", b.warp_exited[w], w);
    }
    if (b.warp_arrived[w] == 0) {
        b.warp_site[w] = site;
    } else if (!same_site(b.warp_site[w], site)) {
        fail("lanes of warp %u are in different collectives, at %s:%u and %s:%u", w, b.warp_site[w].file_name(),
             b.warp_site[w].line(), site.file_name(), site.line());
    }
    const unsigned gen = b.warp_gen[w];
    if (++b.warp_arrived[w] == b.warp_lanes[w]) {
        b.warp_arrived[w] = 0;
        ++b.warp_gen[w];
    } else {
        b.cur->wait = Wait::Warp;
        b.cur->gen = gen;
        yield();
    }
}

// shfl.sync: every lane publishes v, then reads lane src(lane); a source outside the lane's width-wide segment
// (or past the warp's last lane) returns the lane's own value, as on the GPU.
template <class T, class Src>
inline T shuffle(unsigned mask, T v, int width, Src src, const std::source_location& site) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "one slot per lane");
    Block& b = *g_block;
    const unsigned lane = b.cur->tid % 32, w = b.cur->tid / 32;
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
        fail("shuffle width %d is not a power of two <= 32", width);
    }
    const unsigned parity = b.warp_gen[w] & 1;
    memcpy(&b.shfl[w][parity][lane], &v, sizeof(T));
    warp_sync(mask, site);
    const unsigned seg = lane & ~unsigned(width - 1);
    const unsigned s = src(lane);
    if (s < seg || s >= seg + unsigned(width) || s >= b.warp_lanes[w]) {
        return v;
    }
    T r;
    memcpy(&r, &b.shfl[w][parity][s], sizeof(T));
    return r;
}

}  // namespace emu

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          const std::source_location& site = std::source_location::current()) {
    return emu::shuffle(mask, v, width, [&](unsigned lane) { return lane + delta; }, site);
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const std::source_location& site = std::source_location::current()) {
    return emu::shuffle(mask, v, width, [&](unsigned lane) { return lane ^ unsigned(lane_mask); }, site);
}

namespace emu {

// What a launch may do before and after each block on its worker: the driver poisons the dynamic shared
// memory and checks its canary there.
struct BlockHooks {
    std::function<void()> before, after;
};

// kernel<<<grid, block>>>(...), `body` being the call with its arguments bound; returns when every block has
// finished, like a launch followed by a synchronize.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body, const BlockHooks& hooks) {
    const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
    const unsigned nthreads = block.x * block.y * block.z;
    if (nblocks == 0 || nthreads == 0 || nthreads > MAX_THREADS || grid.y > 65535 || grid.z > 65535) {
        fail("invalid launch: grid (%u,%u,%u), block (%u,%u,%u)", grid.x, grid.y, grid.z, block.x, block.y, block.z);
    }
    gridDim = grid;
    blockDim = block;
    const unsigned workers =
        static_cast<unsigned>(std::min<unsigned long long>(std::max(1u, std::thread::hardware_concurrency()), nblocks));
    // One block context (fibers and their stacks) per worker, kept across launches: a stack is mapped once.
    static std::vector<std::unique_ptr<Block>> pool;
    while (pool.size() < workers) {
        pool.push_back(std::make_unique<Block>());
        for (unsigned t = 0; t < MAX_THREADS; ++t) {
            pool.back()->fibers[t].tid = t;
        }
    }
    std::atomic<unsigned long long> next{0};
    auto work = [&](unsigned worker) {
        Block& b = *pool[worker];
        b.nthreads = nthreads;
        b.body = &body;
        g_block = &b;
        for (unsigned long long i; (i = next.fetch_add(1)) < nblocks;) {
            blockIdx = dim3{unsigned(i % grid.x), unsigned(i / grid.x % grid.y), unsigned(i / grid.x / grid.y)};
            if (hooks.before) {
                hooks.before();
            }
            run_block(b);
            if (hooks.after) {
                hooks.after();
            }
        }
        g_block = nullptr;
    };
    std::vector<std::thread> threads;
    for (unsigned w = 1; w < workers; ++w) {
        threads.emplace_back(work, w);
    }
    work(0);
    for (auto& t : threads) {
        t.join();
    }
}

}  // namespace emu
