// Runs kernels/*.cu on the CPU: the kernel sources are compiled unchanged as C++ against the shim headers in
// shim/ (cuda_emu.h, cuda_fp16.h, mma.h), and launched from a script that the Rust test
// tests/kernel_emulation.rs writes with the host's own launch geometry (src/backend/cuda/launch.rs).
//
// Build: g++ -std=c++20 -O2 -pthread -ffp-contract=off -Ishim -I../../kernels -I$OUT_DIR driver.cpp -o driver
//        (OUT_DIR: where build.rs wrote geometry.cuh, the launch geometry the kernels include)
// Run:   driver SCRIPT, one command per line (tokens separated by spaces):
//   load NAME PATH             a device buffer holding the file's bytes (raw little-endian arrays)
//   alloc NAME BYTES FILL      a device buffer of BYTES bytes, each FILL (0..255): what an uninitialised
//                              allocation holds here, chosen by the test so that an unwritten output shows
//   launch KERNEL GX GY GZ BX BY BZ SHARED ARG...
//                              KERNEL<<<(GX,GY,GZ), (BX,BY,BZ), SHARED>>>(ARG...), run to completion; each
//                              ARG is typed as the parameter it binds, which is checked: buf:NAME or null for
//                              a pointer, i32:V, u32:V, i64:V, f32:V (any strtof syntax: 1.5, inf, 0x1p-3)
//   save NAME PATH             the buffer's bytes, written to the file
// Exit status 0 on success; otherwise a message on stderr ("emulation error: ..." for a kernel that broke a rule
// below, or a malformed script) and a non-zero status.
//
// What the emulation models
// - Every thread of a block runs the kernel's code as a fiber; the fibers of a block take turns on one OS thread
//   and switch only at __syncthreads, warp shuffles and wmma::mma_sync. Blocks run on a few OS threads at once
//   (as many as the machine has cores), so grid-level patterns (the coreset's atomic ticket and __threadfence)
//   see real concurrency.
// - __syncthreads is a block barrier; a barrier after some threads of the block have exited, a shuffle after a
//   lane exited, threads of a block at different __syncthreads or lanes of a warp in different collectives
//   (different call sites in the kernel source), and any barrier or collective that not every thread reaches
//   (a deadlock) are reported as errors.
// - Warp shuffles (down, xor, with width) exchange values between the lanes of a warp with the PTX rule for
//   out-of-segment sources (the lane keeps its own value). Only full-warp masks are modelled.
// - __shared__ variables are per block; the dynamic shared memory (extern __shared__) is poisoned with NaN before
//   every block, and bytes past the launch's SHARED size are checked to be untouched after it.
// - Arithmetic: __fadd_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn and the conversions are IEEE binary32 operations
//   (x86-64 SSE, no FMA contraction), fmaf is the C library's fused multiply-add, double is binary64, __half
//   conversions round to nearest even: all as the GPU defines them, so results are the GPU's bit for bit except
//   where noted next.
// - wmma (knn.cu's tf32 and f16 paths): fragments are spread over the warp's lanes, loads and stores check the
//   documented 256-bit pointer and 16-byte ldm alignment, tf32 operands must have been rounded with
//   __float_to_tf32, and a product accumulates exact a * b terms in k order (see shim/mma.h).
// - Device buffers are 256-byte aligned (like cudaMalloc) and end at an inaccessible page, so a read or write
//   past the end of the (256-byte rounded) buffer faults; __ldg of a vector type checks its alignment.
//
// What it does NOT model
// - The memory model beyond barriers and atomics. Within a block each thread runs alone from one
//   synchronisation point to the next, in thread order, so a race that a missing barrier leaves is caught only
//   when that one schedule reads a wrong value (it does for knn.cu's barriers around the distance tile); stale
//   L1 lines, reordered stores and the like do not exist here.
// - Real warp scheduling and independent thread scheduling: a warp's lanes are not in lockstep between
//   collectives, and a collective reached from the same call site through different control paths (e.g. two
//   iterations of a loop) is not told apart.
// - The tensor cores' internal accumulation order and rounding, and the real fragment layouts (the
//   documentation leaves them unspecified; kernels must not depend on them).
// - Performance, occupancy, register and shared-memory limits (ptxas checks those in build.rs), memory faults
//   before a buffer's start, and the contents of static shared memory at block start (here: the previous
//   block's).

#include "cuda_emu.h"
#include "cuda_fp16.h"
#include "mma.h"

#include <cerrno>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <tuple>

// The kernels' shared helpers and launch geometry, included once here so that each kernel file's own #include
// is a no-op inside the namespace it is wrapped in below.
#include "common.cuh"
#include "geometry.cuh"

// One namespace per kernel file: their file-local helpers stay apart, whatever they are called.
namespace embed_cu {
#include "embed.cu"
}  // namespace embed_cu

namespace blur_cu {
namespace {
// blur.cu's `extern __shared__ float taps_s[]`: the dynamic shared memory of a launch, up to the 48 KiB every GPU
// grants without opting in. Initialised by a call, i.e. dynamically, on purpose: g++ 12 compiles the kernel's
// block-scope `extern thread_local` redeclaration into a call to this file's __tls_init, which it only emits
// when some thread_local needs dynamic initialisation (otherwise the link fails).
constexpr size_t DYNAMIC_SHARED_BYTES = 48 * 1024;
float poison() { return __int_as_float(-1); }
__align__(16) thread_local float taps_s[DYNAMIC_SHARED_BYTES / sizeof(float)] = {poison()};
}  // namespace
#include "blur.cu"
}  // namespace blur_cu

namespace conv_cu {
#include "conv.cu"
}  // namespace conv_cu

namespace coreset_cu {
#include "coreset.cu"
}  // namespace coreset_cu

namespace knn_cu {
#include "knn.cu"
}  // namespace knn_cu

namespace preprocess_cu {
#include "preprocess.cu"
}  // namespace preprocess_cu

namespace score_cu {
#include "score.cu"
}  // namespace score_cu

namespace {

struct Buffer {
    unsigned char* data;
    size_t bytes;
};

// A device allocation: 256-byte aligned, ending (after rounding up to 256 bytes) at a PROT_NONE page.
Buffer allocate(size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    const size_t mapped = (rounded + page - 1) / page * page;
    void* m = mmap(nullptr, mapped + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        emu::fail("cannot allocate %zu bytes", bytes);
    }
    unsigned char* guard = static_cast<unsigned char*>(m) + mapped;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        emu::fail("cannot protect a guard page");
    }
    return Buffer{guard - rounded, bytes};
}

std::map<std::string, Buffer> buffers;
int line_no = 0;

[[noreturn]] void script_error(const std::string& what) { emu::fail("script line %d: %s", line_no, what.c_str()); }

Buffer& buffer(const std::string& name) {
    auto it = buffers.find(name);
    if (it == buffers.end()) {
        script_error("no buffer " + name);
    }
    return it->second;
}

// A launch's argument tokens, consumed in parameter order.
struct Args {
    std::vector<std::string> tokens;
    size_t next = 0;

    std::string take(const char* tag) {
        if (next == tokens.size()) {
            script_error(std::string("missing argument, expected ") + tag);
        }
        const std::string& t = tokens[next++];
        const std::string prefix = std::string(tag) + ":";
        if (t.rfind(prefix, 0) != 0) {
            script_error("argument " + std::to_string(next) + " is " + t + ", expected " + tag);
        }
        return t.substr(prefix.size());
    }

    template <class T>
    T integer(const char* tag) {
        const std::string v = take(tag);
        char* end = nullptr;
        errno = 0;
        const long long x = std::strtoll(v.c_str(), &end, 0);
        if (errno != 0 || *end != 0 || static_cast<long long>(static_cast<T>(x)) != x) {
            script_error(std::string("bad ") + tag + " value " + v);
        }
        return static_cast<T>(x);
    }
};

template <class T>
struct Read;

template <>
struct Read<int> {
    static int from(Args& a) { return a.integer<int>("i32"); }
};

template <>
struct Read<unsigned> {
    static unsigned from(Args& a) { return a.integer<unsigned>("u32"); }
};

template <>
struct Read<long long> {
    static long long from(Args& a) { return a.integer<long long>("i64"); }
};

template <>
struct Read<float> {
    static float from(Args& a) {
        const std::string v = a.take("f32");
        char* end = nullptr;
        const float x = std::strtof(v.c_str(), &end);
        if (*end != 0) {
            script_error("bad f32 value " + v);
        }
        return x;
    }
};

template <class T>
struct Read<T*> {
    static T* from(Args& a) {
        if (a.next < a.tokens.size() && a.tokens[a.next] == "null") {
            ++a.next;
            return nullptr;
        }
        return reinterpret_cast<T*>(buffer(a.take("buf")).data);
    }
};

using Bound = std::function<void()>;
using Binder = std::function<Bound(Args&)>;

// Reads one argument per parameter of `kernel` and binds them: the call each GPU thread makes.
template <class... P>
Binder bind(void (*kernel)(P...)) {
    return [kernel](Args& a) -> Bound {
        std::tuple<P...> args{Read<P>::from(a)...};  // braced: evaluated left to right
        if (a.next != a.tokens.size()) {
            script_error("too many arguments");
        }
        return [kernel, args] { std::apply(kernel, args); };
    };
}

struct Kernel {
    Binder bind;
    float* (*dynamic_shared)();  // this OS thread's dynamic shared memory, for kernels that declare it
};

float* blur_shared() { return blur_cu::taps_s; }

const std::map<std::string, Kernel>& kernels() {
    static const std::map<std::string, Kernel> table = {
        {"embed_layer", {bind(embed_cu::embed_layer), nullptr}},
        {"blur_rows", {bind(blur_cu::blur_rows), blur_shared}},
        {"blur_cols", {bind(blur_cu::blur_cols), blur_shared}},
        {"bias_act", {bind(conv_cu::bias_act), nullptr}},
        {"pad_nchw", {bind(conv_cu::pad_nchw), nullptr}},
        {"coreset_project_f32", {bind(coreset_cu::coreset_project_f32), nullptr}},
        {"coreset_project_f16", {bind(coreset_cu::coreset_project_f16), nullptr}},
        {"coreset_init_f32", {bind(coreset_cu::coreset_init_f32), nullptr}},
        {"coreset_init_f16", {bind(coreset_cu::coreset_init_f16), nullptr}},
        {"coreset_pick", {bind(coreset_cu::coreset_pick), nullptr}},
        {"coreset_reach_f32", {bind(coreset_cu::coreset_reach_f32), nullptr}},
        {"coreset_reach_f16", {bind(coreset_cu::coreset_reach_f16), nullptr}},
        {"coreset_filter", {bind(coreset_cu::coreset_filter), nullptr}},
        {"coreset_distance_f32", {bind(coreset_cu::coreset_distance_f32), nullptr}},
        {"coreset_distance_f16", {bind(coreset_cu::coreset_distance_f16), nullptr}},
        {"squared_norms_f32", {bind(knn_cu::squared_norms_f32), nullptr}},
        {"squared_norms_tf32", {bind(knn_cu::squared_norms_tf32), nullptr}},
        {"squared_norms_f16", {bind(knn_cu::squared_norms_f16), nullptr}},
        {"to_f16", {bind(knn_cu::to_f16), nullptr}},
        {"knn_partial_f32_k1", {bind(knn_cu::knn_partial_f32_k1), nullptr}},
        {"knn_partial_f32_k16", {bind(knn_cu::knn_partial_f32_k16), nullptr}},
        {"knn_partial_tf32_k1", {bind(knn_cu::knn_partial_tf32_k1), nullptr}},
        {"knn_partial_tf32_k16", {bind(knn_cu::knn_partial_tf32_k16), nullptr}},
        {"knn_partial_f16_k1", {bind(knn_cu::knn_partial_f16_k1), nullptr}},
        {"knn_partial_f16_k16", {bind(knn_cu::knn_partial_f16_k16), nullptr}},
        {"knn_merge", {bind(knn_cu::knn_merge), nullptr}},
        {"preprocess_rows", {bind(preprocess_cu::preprocess_rows), nullptr}},
        {"preprocess_cols", {bind(preprocess_cu::preprocess_cols), nullptr}},
        {"top_patch", {bind(score_cu::top_patch), nullptr}},
        {"gather_rows", {bind(score_cu::gather_rows), nullptr}},
        {"eq7_scores", {bind(score_cu::eq7_scores), nullptr}},
    };
    return table;
}

unsigned to_unsigned(const std::string& t) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(t.c_str(), &end, 10);
    if (t.empty() || *end != 0 || v > 0xFFFFFFFFul) {
        script_error("bad number " + t);
    }
    return static_cast<unsigned>(v);
}

void launch(const std::vector<std::string>& t) {
    if (t.size() < 9) {
        script_error("launch KERNEL GX GY GZ BX BY BZ SHARED ARG...");
    }
    auto it = kernels().find(t[1]);
    if (it == kernels().end()) {
        script_error("no kernel " + t[1]);
    }
    const Kernel& k = it->second;
    const dim3 grid{to_unsigned(t[2]), to_unsigned(t[3]), to_unsigned(t[4])};
    const dim3 block{to_unsigned(t[5]), to_unsigned(t[6]), to_unsigned(t[7])};
    const size_t shared = to_unsigned(t[8]);
    Args args{std::vector<std::string>(t.begin() + 9, t.end())};
    const Bound body = k.bind(args);
    emu::BlockHooks hooks;
    if (k.dynamic_shared != nullptr) {
        if (shared > blur_cu::DYNAMIC_SHARED_BYTES) {
            script_error("dynamic shared memory " + t[8] + " bytes is more than a launch gets by default");
        }
        hooks.before = [&] { memset(k.dynamic_shared(), 0xFF, blur_cu::DYNAMIC_SHARED_BYTES); };
        hooks.after = [&] {
            const unsigned char* p = reinterpret_cast<const unsigned char*>(k.dynamic_shared());
            for (size_t i = shared; i < blur_cu::DYNAMIC_SHARED_BYTES; ++i) {
                if (p[i] != 0xFF) {
                    emu::fail("%s wrote dynamic shared memory byte %zu of a %zu-byte launch", t[1].c_str(), i, shared);
                }
            }
        };
    }
    emu::launch(grid, block, body, hooks);
}

std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        script_error("cannot read " + path);
    }
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

void run_line(const std::vector<std::string>& t) {
    const std::string& op = t[0];
    if (op == "load" && t.size() == 3) {
        const auto bytes = read_file(t[2]);
        Buffer b = allocate(bytes.size());
        memcpy(b.data, bytes.data(), bytes.size());
        buffers[t[1]] = b;
    } else if (op == "alloc" && t.size() == 4) {
        const unsigned fill = to_unsigned(t[3]);
        if (fill > 255) {
            script_error("fill byte " + t[3]);
        }
        Buffer b = allocate(to_unsigned(t[2]));
        memset(b.data, static_cast<int>(fill), b.bytes);
        buffers[t[1]] = b;
    } else if (op == "launch") {
        launch(t);
    } else if (op == "save" && t.size() == 3) {
        const Buffer& b = buffer(t[1]);
        std::ofstream f(t[2], std::ios::binary);
        f.write(reinterpret_cast<const char*>(b.data), static_cast<std::streamsize>(b.bytes));
        if (!f) {
            script_error("cannot write " + t[2]);
        }
    } else {
        script_error("unknown command or wrong argument count: " + op);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCRIPT\n", argv[0]);
        return 2;
    }
    std::ifstream script(argv[1]);
    if (!script) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    for (std::string line; std::getline(script, line);) {
        ++line_no;
        std::istringstream words(line);
        std::vector<std::string> t{std::istream_iterator<std::string>(words), {}};
        if (!t.empty()) {
            run_line(t);
        }
    }
    return 0;
}
