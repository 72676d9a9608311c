// The fiber scheduler of the emulated device. A launch runs its blocks one after another on the
// calling thread; a block's threads are fibers run in turn until each returns or waits:
// at a block barrier (__syncthreads, told apart by call site) or a warp exchange (__shfl_xor_sync,
// 32 lanes). Barriers release when every live thread of the block (warp) waits at the same one,
// and only when no thread can run, a warp at a time (so one warp runs ahead to the next block
// barrier while the others wait at their exchanges: as far apart as a GPU may run them);
// threads waiting at different barriers are a deadlock and fail the launch with a report, as is
// (in strict mode) a barrier reached after some threads of the block returned.
//
// The schedule (`RADAR_EMULATED_SCHEDULE`, or radar_emu_set_schedule_text): `forward` runs blocks and
// threads in index order; `reversed` runs both last to first; `shuffled[:SEED]` runs blocks in a
// seeded random order (SEED 1 when not given) and, in each pass over a block's runnable threads, the threads in a fresh
// random order. A GPU promises no order among blocks, nor among threads between barriers, so a
// kernel whose results change with the schedule has a race (a missing __syncthreads, a block
// reading another block's output); ours have no atomics, so every output must be bit-identical
// under every schedule.
#include "emulator.hpp"
#include "CCUDAEmulator.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <ucontext.h>
#include <vector>

// ThreadSanitizer (`swift build --sanitize=thread`) follows one stack per thread unless told of
// fibers: every switch is announced, right before its switch and in the function that makes
// it (a helper that returned between the two would pop a frame off the next fiber's empty shadow
// stack: the first function entry on a fresh fiber then faulted). Other builds: no-ops.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RADAR_EMU_TSAN 1
extern "C" {
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
}
#define RADAR_EMU_ANNOUNCE_SWITCH(fiber) __tsan_switch_to_fiber((fiber), 0)
#endif
#endif
#ifndef RADAR_EMU_ANNOUNCE_SWITCH
#define RADAR_EMU_ANNOUNCE_SWITCH(fiber) ((void)0)
#endif

// Switching fibers. On x86-64 (every machine this runs on) a switch of our own: the callee-saved
// registers, MXCSR and the x87 control word pushed on the old stack, the stack pointer swapped,
// popped from the new one; about 20 instructions and no system call. glibc's swapcontext also
// saves and restores the signal mask, a system call each way, which had made the switches most of
// an emulated launch's time. Elsewhere, and under a sanitizer (whose runtimes know ucontext), the
// ucontext functions.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RADAR_EMU_ASAN 1
#endif
#endif
#if defined(__x86_64__) && !defined(RADAR_EMU_TSAN) && !defined(RADAR_EMU_ASAN)
#define RADAR_EMU_OWN_SWITCH 1
extern "C" void radar_emu_switch(void **save_sp, void *next_sp);
asm(R"(
    .pushsection .text
    .p2align 4
    .globl radar_emu_switch
    .hidden radar_emu_switch
    .type radar_emu_switch, @function
radar_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size radar_emu_switch, .-radar_emu_switch
    .popsection
)");
#endif

namespace radar_emu {
thread_local dim3 thread_index, block_index, block_dim, grid_dim;

namespace {
enum class State { runnable, at_block_barrier, at_warp_barrier, done };

// A saved execution context: the stack pointer where the switch left it, or a ucontext.
struct Context {
#ifdef RADAR_EMU_OWN_SWITCH
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
};
// Suspends the running context into `from` and resumes `to`. A macro, not a function: under
// ThreadSanitizer the switch must be in the function that announced it (above).
#ifdef RADAR_EMU_OWN_SWITCH
#define RADAR_EMU_SWITCH(from, to) radar_emu_switch(&(from).sp, (to).sp)
#else
#define RADAR_EMU_SWITCH(from, to) swapcontext(&(from).uc, &(to).uc)
#endif

// A cp.async copy issued and not yet waited for: 16 bytes to `dst`, the first `bytes` from `src`,
// the rest zeros; `group` the commit group (uncommitted: ~0u).
struct AsyncCopy {
    void *dst;
    const void *src;
    unsigned bytes, group;
};

struct Fiber {
    Context context;
    std::vector<AsyncCopy> copies;  // cp.async copies in flight
    unsigned groups = 0;            // cp.async groups committed
    char *stack = nullptr;  // stack_bytes, from the launching thread's pool
    dim3 index;
    unsigned linear = 0;
    State state = State::runnable;
    const void *site = nullptr;
    void *sanitizer_fiber = nullptr;  // ThreadSanitizer's handle (RADAR_EMU_TSAN)
};

struct Block {
    Context scheduler;
    std::vector<Fiber> fibers;
    unsigned current = 0;
    const std::function<void()> *body = nullptr;
    // Warp exchange slots, double-buffered by generation parity: lane values of each warp.
    std::vector<float> exchange[2];
    // Whole-warp exchanges of up to 16 words a lane (the tensor-core products), likewise.
    std::vector<uint32_t> words[2];
    std::vector<unsigned> generation;  // per fiber: warp exchanges done
    std::vector<unsigned> warp_order;  // scratch: the order in which waiting warps are considered
    void *sanitizer_scheduler = nullptr;  // ThreadSanitizer's handle of the launching thread
#ifdef RADAR_EMU_TSAN
    ~Block() {
        for (auto &f : fibers)
            if (f.sanitizer_fiber) __tsan_destroy_fiber(f.sanitizer_fiber);
    }
#endif
};

thread_local Block *running = nullptr;
thread_local bool direct = false;  // a barrier-free launch in progress (no fibers)
thread_local std::string last_error;
enum Schedule { forward = 0, reversed = 1, shuffled = 2 };
// Read by every launching thread (the fake driver launches from several), set between launches.
std::atomic<int> schedule{forward};
std::atomic<uint64_t> schedule_seed{1};
int strict_mode = 0;
std::atomic<bool> schedule_set{false};
std::atomic<uint64_t> schedule_generation{1};
thread_local uint64_t rng_state = 0;
constexpr size_t stack_bytes = 64 * 1024;

int parse_schedule(const char *text);

/// splitmix64: the shuffled schedule's random numbers.
uint64_t next_random() {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/// `order[k]` is the k-th of n indices to run under the schedule.
void schedule_order(std::vector<unsigned> &order, unsigned n) {
    order.resize(n);
    std::iota(order.begin(), order.end(), 0u);
    if (schedule == reversed) std::reverse(order.begin(), order.end());
    if (schedule == shuffled)
        for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[(unsigned)(next_random() % i)]);
}

void fiber_entry() {
    Block *b = running;
    (*b->body)();
    b->fibers[b->current].state = State::done;
    RADAR_EMU_ANNOUNCE_SWITCH(b->sanitizer_scheduler);
    RADAR_EMU_SWITCH(b->fibers[b->current].context, b->scheduler);
    __builtin_trap();  // a finished fiber is never resumed (the next block starts it afresh)
}

/// Readies `f` to start in fiber_entry on its stack when first switched to.
void start_context(Fiber &f) {
#ifdef RADAR_EMU_OWN_SWITCH
    // What radar_emu_switch pops, from the stack pointer up: MXCSR and the x87 control word (the
    // launching thread's), r15, r14, r13, r12, rbx, rbp (zeros), then the address its `ret` takes,
    // fiber_entry, at a 16-byte boundary, so fiber_entry starts as if called (rsp = 8 mod 16),
    // with a zero return address above it.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + stack_bytes) & ~uintptr_t(15);
    auto *slot = reinterpret_cast<uint64_t *>(top - 16);
    slot[0] = reinterpret_cast<uint64_t>(&fiber_entry);
    slot[1] = 0;
    uint64_t *frame = slot - 7;
    uint32_t mxcsr;
    uint16_t x87;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87));
    frame[0] = uint64_t(mxcsr) | uint64_t(x87) << 32;
    for (int i = 1; i < 7; ++i) frame[i] = 0;
    f.context.sp = frame;
#else
    getcontext(&f.context.uc);
    f.context.uc.uc_stack.ss_sp = f.stack;
    f.context.uc.uc_stack.ss_size = stack_bytes;
    f.context.uc.uc_link = nullptr;
    makecontext(&f.context.uc, fiber_entry, 0);
#endif
}

/// The launching thread's fiber stacks, kept from launch to launch (made on first need, never
/// filled: a stack's pages are touched once, by the first fibers that use them); one set per
/// depth of launches in progress on the thread, so a launch made while another's fibers are
/// suspended never runs on their stacks.
thread_local std::vector<std::vector<std::unique_ptr<char[]>>> stack_pools;
thread_local unsigned launch_depth = 0;
char *pooled_stack(unsigned i) {  // inside a LaunchDepth
    if (stack_pools.size() < launch_depth) stack_pools.resize(launch_depth);
    auto &pool = stack_pools[launch_depth - 1];
    while (pool.size() <= i) pool.emplace_back(new char[stack_bytes]);
    return pool[i].get();
}
/// Counts a fiber launch in progress on this thread (for `pooled_stack`) for its scope.
struct LaunchDepth {
    LaunchDepth() { ++launch_depth; }
    ~LaunchDepth() { --launch_depth; }
};

std::string describe(const dim3 &d) { return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")"; }

/// Runs one block to completion; returns "" or an error report.
std::string run_block(Block &b) {
    const unsigned n = (unsigned)b.fibers.size();
    std::vector<unsigned> order;
    for (;;) {
        bool progressed = false;
        schedule_order(order, n);
        for (unsigned i : order) {
            Fiber &f = b.fibers[i];
            if (f.state != State::runnable) continue;
            b.current = i;
            thread_index = f.index;
            RADAR_EMU_ANNOUNCE_SWITCH(f.sanitizer_fiber);
            RADAR_EMU_SWITCH(b.scheduler, f.context);
            progressed = true;
        }
        if (progressed) continue;
        // Nobody can run: release a barrier, finish, or report a deadlock.
        unsigned done = 0, at_block = 0;
        const void *site = nullptr;
        bool mixed_sites = false;
        for (auto &f : b.fibers) {
            if (f.state == State::done) ++done;
            if (f.state == State::at_block_barrier) {
                if (at_block && f.site != site) mixed_sites = true;
                site = f.site;
                ++at_block;
            }
        }
        if (done == n) {
            for (auto &f : b.fibers)
                if (!f.copies.empty()) {
                    const size_t left = f.copies.size();
                    f.copies.clear();
                    return "thread " + std::to_string(f.linear) + " of block " + describe(block_index) + " returned with " + std::to_string(left) +
                           " cp.async copies it never waited for";
                }
            return "";
        }
        // One warp whose live lanes all wait at an exchange goes on (the first such in the
        // schedule's order of warps), and it alone: it runs ahead, exchange after exchange, until
        // it reaches a block barrier or returns, before any other warp passes its exchange. So the
        // warps of a block drift as far apart as a GPU lets them, and a read of another warp's
        // shared data with no barrier between (a cp.async tile after the reader's own wait but
        // before the __syncthreads after everyone's, say) sees it unwritten.
        const unsigned warps = (n + 31) / 32;
        std::vector<unsigned> &warp_order = b.warp_order;
        schedule_order(warp_order, warps);
        bool released = false;
        for (unsigned w : warp_order) {
            unsigned lo = w * 32, hi = lo + 32 < n ? lo + 32 : n, waiting = 0, live = 0;
            for (unsigned i = lo; i < hi; ++i) {
                if (b.fibers[i].state != State::done) ++live;
                if (b.fibers[i].state == State::at_warp_barrier) ++waiting;
            }
            if (waiting > 0 && waiting == live) {
                if (live != hi - lo) return "warp " + std::to_string(w) + " of block " + describe(block_index) +
                                            ": __shfl_xor_sync with a full mask after some lanes returned";
                for (unsigned i = lo; i < hi; ++i) b.fibers[i].state = State::runnable;
                released = true;
                break;
            }
        }
        if (released) continue;
        if (at_block + done == n && !mixed_sites) {
            if (strict_mode && done > 0)
                return "block " + describe(block_index) + ": __syncthreads (line " + std::to_string((uintptr_t)site) + ") reached after " +
                       std::to_string(done) + " of " + std::to_string(n) + " threads returned (strict mode)";
            for (auto &f : b.fibers) if (f.state == State::at_block_barrier) f.state = State::runnable;
            continue;
        }
        std::string report = "deadlock in block " + describe(block_index) + ":";
        for (auto &f : b.fibers) {
            if (f.state == State::at_block_barrier) report += " thread " + std::to_string(f.linear) + " at __syncthreads line " + std::to_string((uintptr_t)f.site) + ";";
            if (f.state == State::at_warp_barrier) report += " thread " + std::to_string(f.linear) + " at a warp exchange (__shfl_xor_sync, mma);";
        }
        return report + " " + std::to_string(done) + " returned";
    }
}
}  // namespace

// Misaligned accesses. A GPU faults on any load or store whose address is not a multiple of its
// size (CUDA_ERROR_MISALIGNED_ADDRESS: a uint4 staged from an odd row, a bf16 pair read as one
// word at an odd element); x86 does not, so a kernel with such a bug would pass here and fail on
// the first GPU. This target is compiled with -fsanitize=alignment: clang checks each typed access
// against its type's alignment and calls the handler below, the UBSan runtime's entry point with
// its data layout (stable since clang 5), defined here so no sanitizer runtime is linked. The first
// misaligned access of a launch is kept; the launch then fails with it (the access itself goes on:
// x86 allows it, and the fibers must reach their barriers).
thread_local std::string misaligned;
}  // namespace radar_emu

namespace {
struct UBSanSourceLocation { const char *file; uint32_t line, column; };
struct UBSanTypeDescriptor { uint16_t kind, info; char name[1]; };
struct UBSanTypeMismatch { UBSanSourceLocation location; const UBSanTypeDescriptor *type; unsigned char log_alignment, check_kind; };
}  // namespace

// Weak: in a build with a sanitizer runtime (`swift build --sanitize=address`) the runtime's own wins.
extern "C" __attribute__((weak)) void __ubsan_handle_type_mismatch_v1(UBSanTypeMismatch *data, uintptr_t pointer) {
    using namespace radar_emu;
    if (!misaligned.empty() || !data) return;
    // The kernel source's path from its folder on (kernels/layout.cuh), whatever the build's root.
    std::string file = data->location.file ? data->location.file : "?";
    for (const char *folder : {"/kernels/", "/selftest/"})
        if (size_t at = file.rfind(folder); at != std::string::npos) { file = file.substr(at + 1); break; }
    char address[32];
    snprintf(address, sizeof address, "0x%llx", (unsigned long long)pointer);
    // The type's name comes quoted ('const uint4': a load; 'uint4': a store).
    misaligned = std::string("misaligned address (a GPU faults here: CUDA_ERROR_MISALIGNED_ADDRESS): ") +
                 (data->type ? data->type->name : "?") + " at " + address + ", which needs " +
                 std::to_string(1u << data->log_alignment) + "-byte alignment, by thread " + describe(thread_index) + " of block " +
                 describe(block_index) + " (" + file + ":" + std::to_string(data->location.line) + ":" +
                 std::to_string(data->location.column) + ")";
}
extern "C" __attribute__((weak)) void __ubsan_handle_type_mismatch_v1_abort(UBSanTypeMismatch *data, uintptr_t pointer) {
    __ubsan_handle_type_mismatch_v1(data, pointer);
}

namespace radar_emu {
struct BarrierInDirectLaunch : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void sync_block(const void *site) {
    if (direct) throw BarrierInDirectLaunch("__syncthreads in a kernel run as barrier-free (line " + std::to_string((uintptr_t)site) + ")");
    Block *b = running;
    Fiber &f = b->fibers[b->current];
    f.state = State::at_block_barrier;
    f.site = site;
    RADAR_EMU_ANNOUNCE_SWITCH(b->sanitizer_scheduler);
    RADAR_EMU_SWITCH(f.context, b->scheduler);
}

float shuffle_xor(float v, int lane_mask) {
    if (direct) throw BarrierInDirectLaunch("__shfl_xor_sync in a kernel run as barrier-free");
    Block *b = running;
    unsigned me = b->current, lane = me % 32, base = me - lane;
    unsigned parity = b->generation[me]++ & 1u;
    b->exchange[parity][me] = v;
    Fiber &f = b->fibers[me];
    f.state = State::at_warp_barrier;
    RADAR_EMU_ANNOUNCE_SWITCH(b->sanitizer_scheduler);
    RADAR_EMU_SWITCH(f.context, b->scheduler);
    unsigned partner = base + (lane ^ (unsigned)lane_mask);
    return partner < b->fibers.size() ? b->exchange[parity][partner] : v;
}

/// Every lane's `count` (at most 16) words, lane by lane, into `all` (32 * count words; a lane
/// past the block's last thread gives zeros). A warp exchange: returns once every lane gave its own.
void warp_gather(const uint32_t *mine, unsigned count, uint32_t *all) {
    if (direct) throw BarrierInDirectLaunch("a warp-wide exchange in a kernel run as barrier-free");
    Block *b = running;
    unsigned me = b->current, lane = me % 32, base = me - lane, n = (unsigned)b->fibers.size();
    unsigned parity = b->generation[me]++ & 1u;
    std::copy(mine, mine + count, &b->words[parity][size_t(me) * 16]);
    Fiber &f = b->fibers[me];
    f.state = State::at_warp_barrier;
    RADAR_EMU_ANNOUNCE_SWITCH(b->sanitizer_scheduler);
    RADAR_EMU_SWITCH(f.context, b->scheduler);
    for (unsigned l = 0; l < 32; ++l)
        for (unsigned w = 0; w < count; ++w) all[l * count + w] = base + l < n ? b->words[parity][size_t(base + l) * 16 + w] : 0u;
}

/// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: `count` 8 x 8 matrices of 16-bit
/// elements; lanes 8 i to 8 i + 7 give the addresses of matrix i's rows (16 bytes each, which must
/// be 16-byte aligned: a misaligned row fails the launch as any misaligned access does); register
/// i of lane l gets matrix i's elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1), the first
/// in the low half, or with .trans the transposed matrix's: (2 (l % 4), l / 4) and (2 (l % 4) + 1,
/// l / 4). Lanes past 8 count give addresses that are not read. (PTX ISA, "Warp-level matrix load
/// instruction: ldmatrix".)
void ldmatrix(unsigned *r, const void *row, unsigned count, bool trans) {
    uint32_t mine[2], all[32 * 2];
    memcpy(mine, &row, sizeof row);
    warp_gather(mine, 2, all);
    auto address = [&](unsigned l) {
        const unsigned short *p;
        memcpy(&p, all + 2 * l, sizeof p);
        return p;
    };
    for (unsigned l = 0; l < 8 * count; ++l)
        if (((uintptr_t)address(l) & 15) && misaligned.empty())
            misaligned = "misaligned address (a GPU faults here: CUDA_ERROR_MISALIGNED_ADDRESS): ldmatrix row " + std::to_string(l % 8) +
                         " of matrix " + std::to_string(l / 8) + " (lane " + std::to_string(l) + ") is not 16-byte aligned, in block " +
                         describe(block_index);
    const unsigned lane = running->current % 32, g = lane / 4, t = lane % 4;
    for (unsigned i = 0; i < count; ++i) {
        uint32_t lo, hi;
        if (trans) lo = address(8 * i + 2 * t)[g], hi = address(8 * i + 2 * t + 1)[g];
        else lo = address(8 * i + g)[2 * t], hi = address(8 * i + g)[2 * t + 1];
        r[i] = lo | hi << 16;
    }
}

/// cp.async.cg.shared.global [dst], [src], 16, src_bytes: both addresses 16-byte aligned (else the
/// launch fails, as a GPU's does). A GPU's copy lands at any moment between the issue and the
/// issuing thread's wait; here, at one of the two ends, by the schedule: at the wait (forward), at
/// once (reversed), either (shuffled, drawn per copy). A tile read before its wait is stale in the
/// first, one overwritten while others still read it is caught by the second.
void cp_async16(void *dst, const void *src, unsigned src_bytes) {
    if ((((uintptr_t)dst | (src_bytes ? (uintptr_t)src : 0)) & 15) && misaligned.empty())
        misaligned = "misaligned address (a GPU faults here: CUDA_ERROR_MISALIGNED_ADDRESS): cp.async of 16 bytes with an address not 16-byte aligned, in block " +
                     describe(block_index);
    if (src_bytes > 16) src_bytes = 16;
    const bool at_once = schedule == reversed || (schedule == shuffled && (next_random() & 1));
    if (direct || !running || at_once) {  // no fibers: nothing runs between issue and wait
        memcpy(dst, src, src_bytes);
        memset((char *)dst + src_bytes, 0, 16 - src_bytes);
        return;
    }
    running->fibers[running->current].copies.push_back({dst, src, src_bytes, ~0u});
}
/// cp.async.commit_group: the fiber's uncommitted copies become its next group.
void cp_async_commit() {
    if (direct || !running) return;
    Fiber &f = running->fibers[running->current];
    for (auto &c : f.copies)
        if (c.group == ~0u) c.group = f.groups;
    ++f.groups;
}
/// cp.async.wait_group N: the fiber's committed copies land in shared memory, but for its N newest groups.
void cp_async_wait(unsigned newest_groups_left) {
    if (direct || !running) return;
    Fiber &f = running->fibers[running->current];
    size_t kept = 0;
    for (auto &c : f.copies) {
        if (c.group != ~0u && c.group + newest_groups_left < f.groups) {
            memcpy(c.dst, c.src, c.bytes);
            memset((char *)c.dst + c.bytes, 0, 16 - c.bytes);
        } else {
            f.copies[kept++] = c;
        }
    }
    f.copies.resize(kept);
}

namespace {
float bf16_low(uint32_t r) { return __uint_as_float(r << 16); }
float bf16_high(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }
}  // namespace

/// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with D = C in place: the warp's A (16 x 16)
/// and B (16 x 8) rebuilt from every lane's registers by the PTX ISA's fragment layout (groupID =
/// lane / 4, threadID_in_group = lane % 4; the lower-indexed element in the low half), then this
/// lane's four accumulators. A kernel that places its fragments wrongly gets a wrong product here
/// as it would on the GPU.
void mma_bf16_m16n8k16(float *d, const unsigned *a, const unsigned *b) {
    uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]}, all[32 * 6];
    warp_gather(mine, 6, all);
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const uint32_t *r = all + l * 6;
        unsigned g = l / 4, t = l % 4;
        A[g][2 * t] = bf16_low(r[0]), A[g][2 * t + 1] = bf16_high(r[0]);
        A[g + 8][2 * t] = bf16_low(r[1]), A[g + 8][2 * t + 1] = bf16_high(r[1]);
        A[g][2 * t + 8] = bf16_low(r[2]), A[g][2 * t + 9] = bf16_high(r[2]);
        A[g + 8][2 * t + 8] = bf16_low(r[3]), A[g + 8][2 * t + 9] = bf16_high(r[3]);
        B[2 * t][g] = bf16_low(r[4]), B[2 * t + 1][g] = bf16_high(r[4]);
        B[2 * t + 8][g] = bf16_low(r[5]), B[2 * t + 9][g] = bf16_high(r[5]);
    }
    unsigned lane = running->current % 32, g = lane / 4, t = lane % 4;
    for (unsigned e = 0; e < 4; ++e) {
        unsigned row = g + (e / 2) * 8, col = 2 * t + e % 2;
        float s = d[e];
        for (unsigned k = 0; k < 16; ++k) s = fmaf(A[row][k], B[k][col], s);
        d[e] = s;
    }
}

/// Runs `body` as every thread of every block of the grid; "" or the first error.
int launch(const unsigned grid[3], const unsigned block[3], const std::function<void()> &body, bool barrier_free, unsigned block_limit) {
    last_error.clear();
    misaligned.clear();
    const uint64_t block_threads = uint64_t(block[0]) * block[1] * block[2], limit = block_limit ? block_limit : RADAR_EMU_DEFAULT_BLOCK_LIMIT;
    if (block_threads > limit) {
        last_error = "a block of " + std::to_string(block_threads) + " threads is more than this kernel's limit of " + std::to_string(limit) +
                     (block_limit ? " (its __launch_bounds__)" : " (it declares no __launch_bounds__; " + std::to_string(RADAR_EMU_DEFAULT_BLOCK_LIMIT) + " threads fit any kernel's registers)") +
                     ": a GPU may refuse it (too many resources requested for launch)";
        return 1;
    }
    static std::once_flag from_environment;
    std::call_once(from_environment, [] {
        const char *text = getenv("RADAR_EMULATED_SCHEDULE");
        if (!schedule_set && text && *text && parse_schedule(text) != 0) {
            fprintf(stderr, "RADAR_EMULATED_SCHEDULE: '%s' is not forward, reversed or shuffled[:SEED]\n", text);
            exit(2);
        }
    });
    // Each launch of a shuffled schedule draws from its own stream (seed, launches on this thread
    // since the schedule was set): setting a schedule again replays the same orders.
    static thread_local uint64_t launches = 0, seen_generation = 0;
    if (seen_generation != schedule_generation.load()) { seen_generation = schedule_generation.load(); launches = 0; }
    rng_state = schedule_seed * 0x2545f4914f6cdd1dull + (++launches);
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
    const unsigned n = block[0] * block[1] * block[2];
    std::vector<unsigned> blocks, threads;
    schedule_order(blocks, grid[0] * grid[1] * grid[2]);
    auto block_at = [&](unsigned linear) { return dim3{linear % grid[0], (linear / grid[0]) % grid[1], linear / (grid[0] * grid[1])}; };
    if (barrier_free) {
        direct = true;
        try {
            for (unsigned linear : blocks) {
                block_index = block_at(linear);
                schedule_order(threads, n);
                for (unsigned i : threads) {
                    thread_index = dim3{i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
                    body();
                }
                if (!misaligned.empty()) {
                    direct = false;
                    last_error = misaligned;
                    return 1;
                }
            }
        } catch (const BarrierInDirectLaunch &e) {
            direct = false;
            last_error = e.what();
            return 1;
        }
        direct = false;
        return 0;
    }
    Block b;
#ifdef RADAR_EMU_TSAN
    b.sanitizer_scheduler = __tsan_get_current_fiber();
#endif
    b.fibers.resize(n);
    b.body = &body;
    b.exchange[0].assign(n, 0.f);
    b.exchange[1].assign(n, 0.f);
    b.words[0].assign(size_t(n) * 16, 0u);
    b.words[1].assign(size_t(n) * 16, 0u);
    Block *saved = running;
    running = &b;
    const LaunchDepth depth;
    for (unsigned i = 0; i < n; ++i) b.fibers[i].stack = pooled_stack(i);  // the same for every block
    for (unsigned linear : blocks) {
        block_index = block_at(linear);
        b.generation.assign(n, 0);
        for (unsigned i = 0; i < n; ++i) {
            Fiber &f = b.fibers[i];
            f.linear = i;
            f.index = dim3{i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
            f.state = State::runnable;
            f.copies.clear();
            f.groups = 0;
            start_context(f);
#ifdef RADAR_EMU_TSAN
            // A fresh one per block: the last block's never returned from fiber_entry.
            if (f.sanitizer_fiber) __tsan_destroy_fiber(f.sanitizer_fiber);
            f.sanitizer_fiber = __tsan_create_fiber(0);
#endif
        }
        std::string e = run_block(b);
        if (e.empty()) e = misaligned;
        if (!e.empty()) {
            last_error = e;
            running = saved;
            return 1;
        }
    }
    running = saved;
    return 0;
}
}  // namespace radar_emu

extern "C" const char *radar_emu_last_error(void) { return radar_emu::last_error.c_str(); }
namespace radar_emu {
namespace {
int parse_schedule(const char *text) {
    if (!text) return -1;
    if (!strcmp(text, "forward")) { schedule = forward; return 0; }
    if (!strcmp(text, "reversed")) { schedule = reversed; return 0; }
    if (strncmp(text, "shuffled", 8)) return -1;
    uint64_t seed = 1;
    if (text[8] == ':') {
        char *end = nullptr;
        errno = 0;
        unsigned long long v = strtoull(text + 9, &end, 10);
        if (text[9] == 0 || text[9] == '-' || *end != 0 || errno) return -1;
        seed = v;
    } else if (text[8] != 0) {
        return -1;
    }
    schedule_seed = seed;
    schedule = shuffled;
    ++schedule_generation;
    return 0;
}
}  // namespace
}  // namespace radar_emu

// A schedule set here wins over RADAR_EMULATED_SCHEDULE, whenever the first launch comes.
extern "C" void radar_emu_set_reverse_order(int on) {
    radar_emu::schedule_set = true;
    radar_emu::schedule = on ? radar_emu::reversed : radar_emu::forward;
}
extern "C" int radar_emu_set_schedule_text(const char *text) {
    radar_emu::schedule_set = true;
    return radar_emu::parse_schedule(text);
}
extern "C" void radar_emu_set_strict(int on) { radar_emu::strict_mode = on; }

#include <sys/mman.h>
#include <unistd.h>

extern "C" int radar_emu_memory_file(unsigned long bytes) {
    int fd = memfd_create("radar-emulated-device", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)bytes) != 0) { close(fd); return -1; }
    return fd;
}
