// A stand-in for libcuda.so.1, libcublas (and libcublasLt) and libcufft, for tests only. No CI machine has a GPU,
// and the emulated device (EmulatedDevice) replaces the driver at the Swift level, so DriverAPI,
// the code that talks to a real GPU, would otherwise first run on a lent GPU. With this library
// behind RADAR_CUDA_LIBS (as libcuda.so.1, libcublas.so.13 and libcufft.so.12), DriverAPI runs
// unchanged: dlopen, dlsym, the primary context, streams, events, page-locked memory, copies,
// CUBINs from the real NVRTC loaded and their kernels looked up by name, launches, cuBLAS and
// cuFFT calls.
//
// It checks what the real ones check, and a little more, returning their error codes: cuInit
// first; a current context on the calling thread for every call that needs one (the
// communication thread must set it too); copies and memsets inside one allocation and in the
// direction named (a device address passed as host memory is an error); a CUBIN (ELF, EM_CUDA)
// built for this device's architecture (sm_90 here) that contains the kernel asked for; launch
// dimensions; cuBLAS's argument rules (leading dimensions, operand types, compute types, host
// scalars, operands inside device memory); cuFFT plans of the kind DriverAPI makes.
//
// Streams are asynchronous where CUDA lets them be: a copy to or from page-locked memory, and a
// copy from pageable memory into the device (whose source is read at the call, as CUDA stages it),
// waits in its stream's queue and happens only when something needs it: a later kernel, memset,
// GEMM or FFT on the same stream, a stream waiting on an event recorded after it, a synchronise,
// a pageable download (synchronous in CUDA), a free. So host code that reads page-locked memory
// without synchronising the stream reads what was there before, as it would on a GPU that has not
// finished. (RADAR_FAKE_CUDA_DEFER=0: every copy at its call.) Kernels run on the emulator (the
// same kernel sources compiled for the host), GEMMs through cblas_sgemm in column-major (not the
// emulator's route), FFTs through FFTW's own 2-D r2c plan. cuFFT plans report a work area as
// the real one does (RADAR_FAKE_CUFFT_WORK_BYTES sets its size); allocated by the plan or, with
// auto-allocation off, one the caller sets, which must then be device memory when a plan runs.
//
// Device faults, on demand: RADAR_FAKE_CUDA_FAULT=NAME:N makes the N-th call of NAME (one of
// cuLaunchKernel, cuMemcpyHtoDAsync_v2, cuMemcpyDtoHAsync_v2, cuStreamSynchronize, cuEventSynchronize,
// cublasGemmStridedBatchedEx, cufftExecR2C) fail as an illegal address does on a GPU, and, the
// context being lost, every such call after it too (CUDA_ERROR_ILLEGAL_ADDRESS; cuBLAS
// EXECUTION_FAILED; cuFFT EXEC_FAILED). With RADAR_FAKE_CUDA_FAULT_RANK=R, only in the process
// whose RANK is R (one rank of a `radar launch` job).
#include "CCUDAEmulator.h"

#include <cblas.h>
#include <fftw3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmath>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

/// Nonzero while one of this library's entry points runs (a depth: the communication thread's calls
/// overlap the compute thread's). `radar bench step` hands it to the allocation counter
/// (radar_allocation_counter_ignore_while), which then counts the host code's allocations and not
/// this stand-in's or its emulated kernels'.
EXPORT volatile int radar_fake_cuda_busy = 0;
namespace {
struct LibraryCall {
    LibraryCall() { __atomic_add_fetch(&radar_fake_cuda_busy, 1, __ATOMIC_SEQ_CST); }
    ~LibraryCall() { __atomic_sub_fetch(&radar_fake_cuda_busy, 1, __ATOMIC_SEQ_CST); }
};
}  // namespace

namespace {

// cuda.h's CUresult values used here.
enum : int {
    SUCCESS = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, NO_DEVICE = 100, INVALID_DEVICE = 101,
    INVALID_IMAGE = 200, INVALID_CONTEXT = 201, NO_BINARY_FOR_GPU = 209, INVALID_HANDLE = 400, NOT_FOUND = 500,
    ILLEGAL_ADDRESS = 700, MISALIGNED_ADDRESS = 716, LAUNCH_FAILED = 719,
};

struct Context { int device; };
struct Stream;
/// Queued work: a copy (from `snapshot` when the source was read at the call), an event's record,
/// or a wait for another stream to reach `until`.
struct Op {
    uint64_t sequence;
    void *destination = nullptr;
    const void *source = nullptr;
    size_t bytes = 0;
    std::vector<unsigned char> snapshot;
    Stream *other = nullptr;
    uint64_t until = 0;
};
/// `clock`: made-up device milliseconds, advanced 1 microsecond per queued operation and by each
/// product's made-up cost (`advance`), read by events.
struct Stream { Context *context; std::deque<Op> queue; uint64_t issued = 0; double clock = 0; };
struct Event { Context *context; Stream *stream = nullptr; uint64_t sequence = 0; double at = 0; };
struct Module { std::vector<unsigned char> image; };
struct Function { radar_emu_kernel launcher; std::string name; };

std::mutex lock;
bool initialized = false;
std::vector<Context *> primary;
std::map<uintptr_t, size_t> allocations;  // device memory: base -> bytes
std::map<uintptr_t, size_t> pinned;  // page-locked host memory: base -> bytes
std::set<Stream *> streams;
std::recursive_mutex queues;  // every stream's queue

bool deferring() {
    static const bool on = [] {
        const char *v = getenv("RADAR_FAKE_CUDA_DEFER");
        return !(v && strcmp(v, "0") == 0);
    }();
    return on;
}

/// Runs `s`'s queued work up to and including sequence number `until`.
void flush(Stream *s, uint64_t until = UINT64_MAX) {
    std::lock_guard<std::recursive_mutex> g(queues);
    while (!s->queue.empty() && s->queue.front().sequence <= until) {
        Op op = std::move(s->queue.front());
        s->queue.pop_front();
        if (op.other) flush(op.other, op.until);
        if (op.destination) memcpy(op.destination, op.snapshot.empty() ? op.source : op.snapshot.data(), op.bytes);
    }
}

void flushAll() {
    std::lock_guard<std::recursive_mutex> g(queues);
    for (Stream *s : streams) flush(s);
}

void enqueue(Stream *s, Op op) {
    std::lock_guard<std::recursive_mutex> g(queues);
    op.sequence = ++s->issued;
    s->clock += 0.001;
    s->queue.push_back(std::move(op));
    if (!deferring()) flush(s);
}


/// A product's made-up cost on `s`'s clock (none on the legacy default stream, which events on it
/// cannot time).
void advance(void *s, double ms) {
    std::lock_guard<std::recursive_mutex> g(queues);
    if (s) static_cast<Stream *>(s)->clock += ms;
}

/// Work on `s` that runs now (kernels, memsets, GEMMs, FFTs): after what the stream has queued.
void runsNow(void *s) {
    if (s) flush(static_cast<Stream *>(s));
    else flushAll();  // the legacy default stream waits for every stream
}
size_t allocated = 0;
thread_local Context *current = nullptr;

int deviceCount() {
    const char *v = getenv("RADAR_FAKE_CUDA_DEVICES");
    return v ? atoi(v) : 1;
}

size_t capacity() {
    const char *v = getenv("RADAR_FAKE_CUDA_MEMORY");
    return v ? strtoull(v, nullptr, 10) : (size_t(8) << 30);
}

/// Whether one region of `regions` (base -> bytes) holds [p, p + bytes).
bool within(const std::map<uintptr_t, size_t> &regions, uintptr_t p, size_t bytes) {
    std::lock_guard<std::mutex> g(lock);
    auto it = regions.upper_bound(p);
    if (it == regions.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

bool inDevice(uintptr_t p, size_t bytes) { return within(allocations, p, bytes); }
bool isPinned(const void *p, size_t bytes) { return within(pinned, uintptr_t(p), bytes); }

bool isDevice(const void *p) { return inDevice(uintptr_t(p), 1); }

/// Whether this call of `name` meets the injected fault (RADAR_FAKE_CUDA_FAULT=NAME:N), or comes
/// after it: a lost context fails every call.
bool faulted(const char *name) {
    static std::mutex m;
    static bool tripped = false;
    static long calls = 0;
    static const std::pair<std::string, long> target = [] {
        const char *v = getenv("RADAR_FAKE_CUDA_FAULT"), *rank = getenv("RADAR_FAKE_CUDA_FAULT_RANK"), *mine = getenv("RANK");
        if (rank && (!mine || strcmp(rank, mine) != 0)) v = nullptr;
        const char *colon = v ? strrchr(v, ':') : nullptr;
        return colon ? std::make_pair(std::string(v, size_t(colon - v)), atol(colon + 1)) : std::make_pair(std::string(), 0L);
    }();
    if (target.first.empty()) return false;
    std::lock_guard<std::mutex> g(m);
    if (!tripped && target.first == name && ++calls == target.second) tripped = true;
    return tripped;
}

int needContext() { return !initialized ? NOT_INITIALIZED : current == nullptr ? INVALID_CONTEXT : SUCCESS; }

/// A stream handle usable from the current context (NULL: the legacy default stream).
int checkStream(void *s) {
    if (int r = needContext()) return r;
    if (s && static_cast<Stream *>(s)->context != current) return INVALID_HANDLE;
    return SUCCESS;
}

/// The bytes an ELF image spans (headers, sections, program headers), or 0 when it is none.
size_t elfExtent(const unsigned char *b) {
    if (memcmp(b, "\x7f" "ELF", 4) != 0 || b[4] != 2) return 0;  // 64-bit ELF
    uint64_t shoff, phoff;
    uint16_t phentsize, phnum, shentsize, shnum;
    memcpy(&phoff, b + 32, 8); memcpy(&shoff, b + 40, 8);
    memcpy(&phentsize, b + 54, 2); memcpy(&phnum, b + 56, 2);
    memcpy(&shentsize, b + 58, 2); memcpy(&shnum, b + 60, 2);
    size_t end = std::max<size_t>(shoff + size_t(shentsize) * shnum, phoff + size_t(phentsize) * phnum);
    for (unsigned i = 0; i < shnum; i++) {
        const unsigned char *sh = b + shoff + size_t(i) * shentsize;
        uint32_t type; uint64_t offset, size;
        memcpy(&type, sh + 4, 4); memcpy(&offset, sh + 24, 8); memcpy(&size, sh + 32, 8);
        if (type != 8) end = std::max<size_t>(end, offset + size);  // SHT_NOBITS takes no file bytes
    }
    return end;
}

/// The SM a CUBIN was built for (90 for sm_90): e_flags' low byte in ELF ABI 7, the next in 8.
int cubinArchitecture(const unsigned char *b) {
    uint32_t flags;
    memcpy(&flags, b + 48, 4);
    return b[8] >= 8 ? int((flags >> 8) & 0xff) : int(flags & 0xff);
}

const int computeMajor = 9, computeMinor = 0;

}  // namespace

// MARK: Driver API

EXPORT int cuInit(unsigned flags) {
    LibraryCall call;
    if (flags != 0) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(lock);
    if (!initialized) {
        for (int i = 0; i < deviceCount(); i++) primary.push_back(new Context{i});
        initialized = true;
    }
    return SUCCESS;
}

EXPORT int cuDriverGetVersion(int *version) {
    LibraryCall call;
    if (!version) return INVALID_VALUE;
    *version = 13000;
    return SUCCESS;
}

EXPORT int cuDeviceGetCount(int *count) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (!count) return INVALID_VALUE;
    *count = deviceCount();
    return SUCCESS;
}

EXPORT int cuDeviceGet(int *device, int ordinal) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (!device) return INVALID_VALUE;
    if (ordinal < 0 || ordinal >= deviceCount()) return INVALID_DEVICE;
    *device = ordinal;
    return SUCCESS;
}

EXPORT int cuDeviceGetName(char *name, int length, int device) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (device < 0 || device >= deviceCount()) return INVALID_DEVICE;
    if (!name || length <= 0) return INVALID_VALUE;
    snprintf(name, size_t(length), "RADAR fake CUDA device %d", device);
    return SUCCESS;
}

// A made-up PCI address in the driver's spelling (upper-case hex), bus 0x3B + device.
EXPORT int cuDeviceGetPCIBusId(char *id, int length, int device) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (device < 0 || device >= deviceCount()) return INVALID_DEVICE;
    if (!id || length <= 0) return INVALID_VALUE;
    snprintf(id, size_t(length), "0000:%02X:00.0", 0x3B + device);
    return SUCCESS;
}

EXPORT int cuDeviceTotalMem_v2(size_t *bytes, int device) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (device < 0 || device >= deviceCount()) return INVALID_DEVICE;
    if (!bytes) return INVALID_VALUE;
    *bytes = capacity();
    return SUCCESS;
}

EXPORT int cuDeviceGetAttribute(int *value, int attribute, int device) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (device < 0 || device >= deviceCount()) return INVALID_DEVICE;
    if (!value) return INVALID_VALUE;
    switch (attribute) {
    case 75: *value = computeMajor; return SUCCESS;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    case 76: *value = computeMinor; return SUCCESS;  // ..._MINOR
    default: return INVALID_VALUE;
    }
}

EXPORT int cuDevicePrimaryCtxRetain(void **context, int device) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    if (device < 0 || device >= deviceCount()) return INVALID_DEVICE;
    if (!context) return INVALID_VALUE;
    *context = primary[size_t(device)];
    return SUCCESS;
}

EXPORT int cuCtxSetCurrent(void *context) {
    LibraryCall call;
    if (!initialized) return NOT_INITIALIZED;
    current = static_cast<Context *>(context);
    return SUCCESS;
}

EXPORT int cuStreamCreate(void **stream, unsigned flags) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!stream || flags > 1) return INVALID_VALUE;
    Stream *created = new Stream{current};
    {
        std::lock_guard<std::recursive_mutex> g(queues);
        streams.insert(created);
    }
    *stream = created;
    return SUCCESS;
}

EXPORT int cuStreamSynchronize(void *stream) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (faulted("cuStreamSynchronize")) return ILLEGAL_ADDRESS;
    runsNow(stream);
    return SUCCESS;
}

/// Waits for the work queued before the event's record on its stream (nothing: never recorded).
EXPORT int cuEventSynchronize(void *event) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!event || static_cast<Event *>(event)->context != current) return INVALID_HANDLE;
    if (faulted("cuEventSynchronize")) return ILLEGAL_ADDRESS;
    const Event *e = static_cast<Event *>(event);
    if (e->stream) flush(e->stream, e->sequence);
    return SUCCESS;
}

EXPORT int cuEventCreate(void **event, unsigned flags) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!event || flags > 0xf) return INVALID_VALUE;
    *event = new Event{current};
    return SUCCESS;
}

EXPORT int cuEventRecord(void *event, void *stream) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (!event || static_cast<Event *>(event)->context != current) return INVALID_HANDLE;
    if (!stream) {  // the legacy default stream: everything queued before has run
        flushAll();
        static_cast<Event *>(event)->stream = nullptr;
        return SUCCESS;
    }
    Stream *s = static_cast<Stream *>(stream);
    std::lock_guard<std::recursive_mutex> g(queues);
    enqueue(s, Op{});  // a marker: the event completes when the stream's work before it has run
    static_cast<Event *>(event)->stream = s;
    static_cast<Event *>(event)->sequence = s->issued;
    static_cast<Event *>(event)->at = s->clock;
    return SUCCESS;
}

/// Milliseconds between two events recorded on one stream whose work has run (the real driver's
/// CUDA_ERROR_NOT_READY, 600, before that): the stream's made-up clock (1 microsecond per operation
/// between them, and the products' costs), so `radar bench step --kernel-times` and
/// `radar bench gemm` have times without a clock.
EXPORT int cuEventElapsedTime_v2(float *ms, void *start, void *end) {
    LibraryCall call;
    if (!ms || !start || !end) return INVALID_VALUE;
    const Event *a = static_cast<Event *>(start), *b = static_cast<Event *>(end);
    if (a->context != current || b->context != current) return INVALID_HANDLE;
    if (!a->stream || a->stream != b->stream || b->sequence < a->sequence) return INVALID_HANDLE;
    std::lock_guard<std::recursive_mutex> g(queues);
    if (!a->stream->queue.empty() && a->stream->queue.front().sequence <= b->sequence) return 600;
    *ms = float(b->at - a->at);
    return SUCCESS;
}

EXPORT int cuStreamWaitEvent(void *stream, void *event, unsigned flags) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (!event) return INVALID_HANDLE;
    if (flags != 0 && flags != 1) return INVALID_VALUE;  // CU_EVENT_WAIT_DEFAULT, CU_EVENT_WAIT_EXTERNAL
    const Event *e = static_cast<Event *>(event);
    if (!e->stream) return SUCCESS;  // never recorded, or on the default stream: nothing to wait for
    if (!stream) {
        flush(e->stream, e->sequence);
        return SUCCESS;
    }
    Op wait;
    wait.other = e->stream;
    wait.until = e->sequence;
    enqueue(static_cast<Stream *>(stream), std::move(wait));
    return SUCCESS;
}

EXPORT int cuMemAlloc_v2(unsigned long long *address, size_t bytes) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!address || bytes == 0) return INVALID_VALUE;
    {
        std::lock_guard<std::mutex> g(lock);
        if (allocated + bytes > capacity()) return OUT_OF_MEMORY;
        allocated += bytes;
    }
    void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        std::lock_guard<std::mutex> g(lock);
        allocated -= bytes;
        return OUT_OF_MEMORY;
    }
    memset(p, 0xa5, bytes);  // device memory starts as garbage, not zeros
    std::lock_guard<std::mutex> g(lock);
    allocations[uintptr_t(p)] = bytes;
    *address = uintptr_t(p);
    return SUCCESS;
}

EXPORT int cuMemFree_v2(unsigned long long address) {
    LibraryCall call;
    if (int r = needContext()) return r;
    flushAll();  // cuMemFree waits for work in flight
    size_t bytes;
    {
        std::lock_guard<std::mutex> g(lock);
        auto it = allocations.find(uintptr_t(address));
        if (it == allocations.end()) return INVALID_VALUE;
        bytes = it->second;
        allocations.erase(it);
        allocated -= bytes;
    }
    munmap(reinterpret_cast<void *>(address), bytes);
    return SUCCESS;
}

EXPORT int cuMemGetInfo_v2(size_t *free, size_t *total) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!free || !total) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(lock);
    *total = capacity();
    *free = capacity() - allocated;
    return SUCCESS;
}

EXPORT int cuMemsetD8Async(unsigned long long address, unsigned char value, size_t bytes, void *stream) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (!inDevice(uintptr_t(address), bytes)) return INVALID_VALUE;
    runsNow(stream);
    memset(reinterpret_cast<void *>(address), value, bytes);
    return SUCCESS;
}

EXPORT int cuMemcpyHtoDAsync_v2(unsigned long long destination, const void *source, size_t bytes, void *stream) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (faulted("cuMemcpyHtoDAsync_v2")) return ILLEGAL_ADDRESS;
    if (!inDevice(uintptr_t(destination), bytes) || !source || isDevice(source)) return INVALID_VALUE;
    if (!stream) {  // the legacy default stream: after everything queued, at the call
        runsNow(nullptr);
        memcpy(reinterpret_cast<void *>(destination), source, bytes);
        return SUCCESS;
    }
    Op copy;
    copy.destination = reinterpret_cast<void *>(destination);
    copy.bytes = bytes;
    if (isPinned(source, bytes)) copy.source = source;  // read when the copy runs
    else copy.snapshot.assign(static_cast<const unsigned char *>(source), static_cast<const unsigned char *>(source) + bytes);
    enqueue(static_cast<Stream *>(stream), std::move(copy));
    return SUCCESS;
}

EXPORT int cuMemcpyDtoHAsync_v2(void *destination, unsigned long long source, size_t bytes, void *stream) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (faulted("cuMemcpyDtoHAsync_v2")) return ILLEGAL_ADDRESS;
    if (!inDevice(uintptr_t(source), bytes) || !destination || isDevice(destination)) return INVALID_VALUE;
    if (!stream || !isPinned(destination, bytes)) {  // default stream or pageable: done when CUDA returns
        runsNow(stream);
        memcpy(destination, reinterpret_cast<const void *>(source), bytes);
        return SUCCESS;
    }
    Op copy;
    copy.destination = destination;
    copy.source = reinterpret_cast<const void *>(source);
    copy.bytes = bytes;
    enqueue(static_cast<Stream *>(stream), std::move(copy));
    return SUCCESS;
}

EXPORT int cuMemHostAlloc(void **p, size_t bytes, unsigned flags) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!p || bytes == 0 || flags > 0xf) return INVALID_VALUE;
    *p = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (!*p) return OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(lock);
    pinned[uintptr_t(*p)] = bytes;
    return SUCCESS;
}

EXPORT int cuMemFreeHost(void *p) {
    LibraryCall call;
    if (int r = needContext()) return r;
    flushAll();
    {
        std::lock_guard<std::mutex> g(lock);
        if (!pinned.erase(uintptr_t(p))) return INVALID_VALUE;
    }
    free(p);
    return SUCCESS;
}

EXPORT int cuModuleLoadData(void **module, const void *image) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!module || !image) return INVALID_VALUE;
    const unsigned char *b = static_cast<const unsigned char *>(image);
    size_t n = elfExtent(b);
    uint16_t machine;
    memcpy(&machine, b + 18, 2);
    if (n == 0 || machine != 190) return INVALID_IMAGE;  // EM_CUDA: a CUBIN, not PTX text
    int sm = cubinArchitecture(b);
    if (sm / 10 != computeMajor || sm % 10 > computeMinor) return NO_BINARY_FOR_GPU;
    *module = new Module{std::vector<unsigned char>(b, b + n)};
    return SUCCESS;
}

EXPORT int cuModuleGetFunction(void **function, void *module, const char *name) {
    LibraryCall call;
    if (int r = needContext()) return r;
    if (!function || !module || !name) return INVALID_VALUE;
    const std::vector<unsigned char> &image = static_cast<Module *>(module)->image;
    size_t length = strlen(name) + 1;  // the symbol with its terminator, in the CUBIN's string table
    if (!memmem(image.data(), image.size(), name, length)) return NOT_FOUND;
    radar_emu_kernel k = radar_emu_lookup(name);
    if (!k) return NOT_FOUND;
    *function = new Function{k, name};
    return SUCCESS;
}

EXPORT int cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                          unsigned sharedBytes, void *stream, void **params, void **extra) {
    LibraryCall call;
    if (int r = checkStream(stream)) return r;
    if (!function) return INVALID_HANDLE;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || size_t(bx) * by * bz > 1024 || bz > 64
        || gy > 65535 || gz > 65535 || sharedBytes > 48 * 1024 || extra != nullptr || params == nullptr)
        return INVALID_VALUE;
    if (faulted("cuLaunchKernel")) return ILLEGAL_ADDRESS;
    const Function *f = static_cast<Function *>(function);
    runsNow(stream);
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    if (f->launcher(grid, block, params) != 0) {
        fprintf(stderr, "fake CUDA: kernel %s failed: %s\n", f->name.c_str(), radar_emu_last_error());
        // The emulator's alignment check: what a GPU reports for that access.
        return strncmp(radar_emu_last_error(), "misaligned address", 18) == 0 ? MISALIGNED_ADDRESS : LAUNCH_FAILED;
    }
    return SUCCESS;
}

EXPORT int cuGetErrorString(int error, const char **text) {
    LibraryCall call;
    if (!text) return INVALID_VALUE;
    switch (error) {
    case SUCCESS: *text = "no error"; break;
    case INVALID_VALUE: *text = "invalid argument"; break;
    case OUT_OF_MEMORY: *text = "out of memory"; break;
    case NOT_INITIALIZED: *text = "initialization error"; break;
    case NO_DEVICE: *text = "no CUDA-capable device is detected"; break;
    case INVALID_DEVICE: *text = "invalid device ordinal"; break;
    case INVALID_IMAGE: *text = "device kernel image is invalid"; break;
    case INVALID_CONTEXT: *text = "invalid device context"; break;
    case NO_BINARY_FOR_GPU: *text = "no kernel image is available for execution on the device"; break;
    case INVALID_HANDLE: *text = "invalid resource handle"; break;
    case NOT_FOUND: *text = "named symbol not found"; break;
    case ILLEGAL_ADDRESS: *text = "an illegal memory access was encountered"; break;
    case MISALIGNED_ADDRESS: *text = "misaligned address"; break;
    case LAUNCH_FAILED: *text = "unspecified launch failure"; break;
    default: *text = nullptr; return INVALID_VALUE;
    }
    return SUCCESS;
}

// MARK: cuBLAS

namespace {
enum : int { BLAS_SUCCESS = 0, BLAS_NOT_INITIALIZED = 1, BLAS_INVALID_VALUE = 7, BLAS_EXECUTION_FAILED = 13, BLAS_NOT_SUPPORTED = 15 };
struct Blas { Context *context; void *stream = nullptr; int mathMode = 0; };

size_t span(long rows, long cols, long ld) { return rows == 0 || cols == 0 ? 0 : size_t(ld) * size_t(cols - 1) + size_t(rows); }

float tf32(float v) {  // the low 13 mantissa bits rounded off, nearest even
    if (!std::isfinite(v)) return v;
    uint32_t u; memcpy(&u, &v, 4);
    u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&v, &u, 4);
    return v;
}

/// A column-major operand as fp32 values: bf16 expanded, TF32 rounded.
std::vector<float> operand(const void *p, size_t count, int type, bool roundTF32) {
    std::vector<float> out(count);
    if (type == 14) {  // CUDA_R_16BF
        const uint16_t *s = static_cast<const uint16_t *>(p);
        for (size_t i = 0; i < count; i++) { uint32_t u = uint32_t(s[i]) << 16; memcpy(&out[i], &u, 4); }
    } else {
        memcpy(out.data(), p, count * 4);
        if (roundTF32) for (float &v : out) v = tf32(v);
    }
    return out;
}
}  // namespace

EXPORT int cublasCreate_v2(void **handle) {
    LibraryCall call;
    if (!handle) return BLAS_INVALID_VALUE;
    if (needContext()) return BLAS_NOT_INITIALIZED;
    *handle = new Blas{current};
    return BLAS_SUCCESS;
}

EXPORT int cublasSetStream_v2(void *handle, void *stream) {
    LibraryCall call;
    if (!handle) return BLAS_NOT_INITIALIZED;
    if (stream && static_cast<Stream *>(stream)->context != static_cast<Blas *>(handle)->context) return BLAS_INVALID_VALUE;
    static_cast<Blas *>(handle)->stream = stream;
    return BLAS_SUCCESS;
}

EXPORT int cublasSetMathMode(void *handle, int mode) {
    LibraryCall call;
    if (!handle) return BLAS_NOT_INITIALIZED;
    if ((mode & 0xf) > 3) return BLAS_INVALID_VALUE;  // DEFAULT, TENSOR_OP (deprecated), PEDANTIC, TF32_TENSOR_OP
    static_cast<Blas *>(handle)->mathMode = mode;
    return BLAS_SUCCESS;
}

EXPORT int cublasSetWorkspace_v2(void *handle, void *workspace, size_t bytes) {
    LibraryCall call;
    if (!handle) return BLAS_NOT_INITIALIZED;
    // Checked, not used: the host GEMM needs no scratch.
    if (bytes > 0 && (!inDevice(uintptr_t(workspace), bytes) || uintptr_t(workspace) % 256 != 0)) return BLAS_INVALID_VALUE;
    return BLAS_SUCCESS;
}

EXPORT int cublasGemmStridedBatchedEx(void *handle, int transa, int transb, int m, int n, int k, const void *alpha,
                                      const void *A, int Atype, int lda, long long strideA, const void *B, int Btype, int ldb,
                                      long long strideB, const void *beta, void *C, int Ctype, int ldc, long long strideC,
                                      int batch, int computeType, int algo) {
    LibraryCall call;
    if (!handle) return BLAS_NOT_INITIALIZED;
    if (transa < 0 || transa > 2 || transb < 0 || transb > 2 || m < 0 || n < 0 || k < 0 || batch < 0) return BLAS_INVALID_VALUE;
    const long rowsA = transa ? k : m, colsA = transa ? m : k, rowsB = transb ? n : k, colsB = transb ? k : n;
    if (lda < std::max(1L, rowsA) || ldb < std::max(1L, rowsB) || ldc < std::max(1, m)) return BLAS_INVALID_VALUE;
    // Types DriverAPI uses: fp32 or bf16 inputs, fp32 output (or bf16 with bf16 inputs), fp32
    // compute (or its TF32 variant).
    if (Atype != Btype || (Atype != 0 && Atype != 14) || (Ctype != 0 && Ctype != 14) || (Ctype == 14 && Atype != 14))
        return BLAS_NOT_SUPPORTED;
    if (computeType != 68 && computeType != 77) return BLAS_NOT_SUPPORTED;  // CUBLAS_COMPUTE_32F(_FAST_TF32)
    if (computeType == 77 && Atype != 0) return BLAS_NOT_SUPPORTED;
    if (algo != -1 && algo != 99) return BLAS_INVALID_VALUE;  // CUBLAS_GEMM_DEFAULT (_TENSOR_OP)
    if (m == 0 || n == 0 || batch == 0) return BLAS_SUCCESS;
    if (faulted("cublasGemmStridedBatchedEx")) return BLAS_EXECUTION_FAILED;
    if (!alpha || !beta || isDevice(alpha) || isDevice(beta)) return BLAS_INVALID_VALUE;  // host pointer mode
    const size_t element = Atype == 14 ? 2 : 4;
    const size_t spanA = span(rowsA, colsA, lda), spanB = span(rowsB, colsB, ldb), spanC = span(m, n, ldc);
    auto covers = [&](const void *p, size_t count, long long stride, size_t bytes) {
        return count == 0 || inDevice(uintptr_t(p), (size_t(stride) * size_t(batch - 1) + count) * bytes);
    };
    const size_t cElement = Ctype == 14 ? 2 : 4;
    if (!covers(A, spanA, strideA, element) || !covers(B, spanB, strideB, element) || !covers(C, spanC, strideC, cElement))
        return BLAS_INVALID_VALUE;
    runsNow(static_cast<Blas *>(handle)->stream);
    advance(static_cast<Blas *>(handle)->stream, 0.003);  // made-up: 3 microseconds a product
    const bool round = computeType == 77 || (static_cast<Blas *>(handle)->mathMode & 0xf) == 3;
    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    for (int i = 0; i < batch; i++) {
        std::vector<float> x = operand(static_cast<const char *>(A) + size_t(i) * size_t(strideA) * element, spanA, Atype, round);
        std::vector<float> y = operand(static_cast<const char *>(B) + size_t(i) * size_t(strideB) * element, spanB, Btype, round);
        if (Ctype == 0) {
            float *c = static_cast<float *>(C) + size_t(i) * size_t(strideC);
            cblas_sgemm(CblasColMajor, transa ? CblasTrans : CblasNoTrans, transb ? CblasTrans : CblasNoTrans, m, n, k, a,
                        x.empty() ? nullptr : x.data(), lda, y.empty() ? nullptr : y.data(), ldb, b, c, ldc);
            continue;
        }
        // A bf16 C: read as fp32 (when beta is not 0), the product in fp32, rounded to nearest even.
        uint16_t *c16 = static_cast<uint16_t *>(C) + size_t(i) * size_t(strideC);
        std::vector<float> c(size_t(m) * size_t(n), 0.0f);
        if (b != 0)
            for (int col = 0; col < n; col++)
                for (int row = 0; row < m; row++) {
                    uint32_t u = uint32_t(c16[size_t(col) * ldc + row]) << 16;
                    memcpy(&c[size_t(col) * m + row], &u, 4);
                }
        cblas_sgemm(CblasColMajor, transa ? CblasTrans : CblasNoTrans, transb ? CblasTrans : CblasNoTrans, m, n, k, a,
                    x.empty() ? nullptr : x.data(), lda, y.empty() ? nullptr : y.data(), ldb, b, c.data(), m);
        for (int col = 0; col < n; col++)
            for (int row = 0; row < m; row++) {
                uint32_t u;
                memcpy(&u, &c[size_t(col) * m + row], 4);
                if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;  // NaN stays a quiet NaN
                else u += 0x7fffu + ((u >> 16) & 1u);
                c16[size_t(col) * ldc + row] = uint16_t(u >> 16);
            }
    }
    return BLAS_SUCCESS;
}

EXPORT const char *cublasGetStatusString(int status) {
    LibraryCall call;
    switch (status) {
    case BLAS_SUCCESS: return "the operation completed successfully";
    case BLAS_NOT_INITIALIZED: return "the library was not initialized";
    case BLAS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case BLAS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case BLAS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
    }
}

// MARK: cuBLASLt (libcublasLt.so.13): the matmul with epilogues DriverAPI uses for biases and
// residuals. Checks what the real library documents: attribute sizes, layouts that agree with the
// operation, C and D of one layout, D's type for the bias, the algorithm from a heuristic, operands
// at least as aligned as the preference that algorithm was found under promised, host scalars,
// operands and bias inside device memory.

namespace {
struct LtHandle { Context *context; };
struct LtDesc { int compute, transa = 0, transb = 0; unsigned epilogue = 1; const void *bias = nullptr; };
struct LtLayout { int type; uint64_t rows, cols; int64_t ld; int batch = 1; int64_t stride = 0; };
struct LtPreference { uint64_t workspace = 0; uint32_t align[4] = {256, 256, 256, 256}; };
const uint64_t ltMarker = 0x52414441524c5431ull;  // the algorithms this fake hands out

template <class T> int ltSet(T &field, const void *buf, size_t size) {
    if (!buf || size != sizeof(T)) return BLAS_INVALID_VALUE;
    memcpy(&field, buf, sizeof(T));
    return BLAS_SUCCESS;
}

/// The operation's shape from the layouts, or false where they disagree.
bool ltShape(const LtDesc *d, const LtLayout *a, const LtLayout *b, const LtLayout *c, const LtLayout *dl, long &m, long &n, long &k) {
    if (!d || !a || !b || !c || !dl) return false;
    m = long(c->rows); n = long(c->cols);
    k = long(d->transa ? a->rows : a->cols);
    const long am = long(d->transa ? a->cols : a->rows), bk = long(d->transb ? b->cols : b->rows), bn = long(d->transb ? b->rows : b->cols);
    if (am != m || bk != k || bn != n) return false;
    if (c->type != dl->type || c->rows != dl->rows || c->cols != dl->cols || c->ld != dl->ld || c->batch != dl->batch || c->stride != dl->stride)
        return false;
    if (a->type != b->type || (a->type != 0 && a->type != 14) || (c->type != 0 && c->type != 14) || (c->type == 14 && a->type != 14)) return false;
    if (d->compute == 77 && a->type != 0) return false;
    return a->batch == c->batch && b->batch == c->batch;
}
}  // namespace

EXPORT int cublasLtCreate(void **handle) {
    LibraryCall call;
    if (!handle) return BLAS_INVALID_VALUE;
    if (needContext()) return BLAS_NOT_INITIALIZED;
    *handle = new LtHandle{current};
    return BLAS_SUCCESS;
}

EXPORT int cublasLtMatmulDescCreate(void **desc, int computeType, int scaleType) {
    LibraryCall call;
    if (!desc) return BLAS_INVALID_VALUE;
    if ((computeType != 68 && computeType != 77) || scaleType != 0) return BLAS_NOT_SUPPORTED;
    *desc = new LtDesc{computeType};
    return BLAS_SUCCESS;
}

EXPORT int cublasLtMatmulDescSetAttribute(void *desc, int attr, const void *buf, size_t size) {
    LibraryCall call;
    if (!desc) return BLAS_NOT_INITIALIZED;
    LtDesc *d = static_cast<LtDesc *>(desc);
    switch (attr) {
    case 3: return ltSet(d->transa, buf, size) ? BLAS_INVALID_VALUE : (d->transa < 0 || d->transa > 1 ? BLAS_INVALID_VALUE : BLAS_SUCCESS);
    case 4: return ltSet(d->transb, buf, size) ? BLAS_INVALID_VALUE : (d->transb < 0 || d->transb > 1 ? BLAS_INVALID_VALUE : BLAS_SUCCESS);
    case 7: return ltSet(d->epilogue, buf, size) ? BLAS_INVALID_VALUE : (d->epilogue != 1 && d->epilogue != 4 ? BLAS_NOT_SUPPORTED : BLAS_SUCCESS);
    case 8: return ltSet(d->bias, buf, size);
    default: return BLAS_INVALID_VALUE;
    }
}

EXPORT int cublasLtMatrixLayoutCreate(void **layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    LibraryCall call;
    if (!layout) return BLAS_INVALID_VALUE;
    if (type != 0 && type != 14) return BLAS_NOT_SUPPORTED;
    if (ld < int64_t(std::max<uint64_t>(1, rows))) return BLAS_INVALID_VALUE;
    *layout = new LtLayout{type, rows, cols, ld};
    return BLAS_SUCCESS;
}

EXPORT int cublasLtMatrixLayoutSetAttribute(void *layout, int attr, const void *buf, size_t size) {
    LibraryCall call;
    if (!layout) return BLAS_NOT_INITIALIZED;
    LtLayout *l = static_cast<LtLayout *>(layout);
    switch (attr) {
    case 5: return ltSet(l->batch, buf, size) ? BLAS_INVALID_VALUE : (l->batch < 1 ? BLAS_INVALID_VALUE : BLAS_SUCCESS);
    case 6: return ltSet(l->stride, buf, size);
    default: return BLAS_INVALID_VALUE;
    }
}

EXPORT int cublasLtMatmulPreferenceCreate(void **pref) {
    LibraryCall call;
    if (!pref) return BLAS_INVALID_VALUE;
    *pref = new LtPreference{};
    return BLAS_SUCCESS;
}

EXPORT int cublasLtMatmulPreferenceSetAttribute(void *pref, int attr, const void *buf, size_t size) {
    LibraryCall call;
    if (!pref) return BLAS_NOT_INITIALIZED;
    LtPreference *p = static_cast<LtPreference *>(pref);
    if (attr == 1) return ltSet(p->workspace, buf, size);
    if (attr >= 5 && attr <= 8) {
        uint32_t &a = p->align[attr - 5];
        if (ltSet(a, buf, size)) return BLAS_INVALID_VALUE;
        return a == 0 || (a & (a - 1)) ? BLAS_INVALID_VALUE : BLAS_SUCCESS;
    }
    return BLAS_INVALID_VALUE;
}

// cublasLtMatmulHeuristicResult_t: algo (64 bytes), workspaceSize (size_t at 64), state (at 72), 96 bytes.
EXPORT int cublasLtMatmulAlgoGetHeuristic(void *handle, void *desc, void *a, void *b, void *c, void *d, void *pref, int requested,
                                          void *results, int *returned) {
    LibraryCall call;
    if (!handle) return BLAS_NOT_INITIALIZED;
    if (!desc || !pref || !results || !returned || requested < 1) return BLAS_INVALID_VALUE;
    long m, n, k;
    if (!ltShape(static_cast<LtDesc *>(desc), static_cast<LtLayout *>(a), static_cast<LtLayout *>(b), static_cast<LtLayout *>(c),
                 static_cast<LtLayout *>(d), m, n, k)) {
        *returned = 0;
        return BLAS_NOT_SUPPORTED;
    }
    // RADAR_FAKE_LT_NO_BIAS=1: no algorithm with a bias epilogue, as a real heuristic may answer
    // for some types, sizes or alignments (the backend must fill the bias instead).
    const char *noBias = getenv("RADAR_FAKE_LT_NO_BIAS");
    if (noBias && noBias[0] == '1' && static_cast<LtDesc *>(desc)->epilogue == 4) {
        *returned = 0;
        return BLAS_NOT_SUPPORTED;
    }
    unsigned char *r = static_cast<unsigned char *>(results);
    const LtPreference *p = static_cast<LtPreference *>(pref);
    // Three offers, told apart by byte 40 (their index): a made-up cost of 3, 2 and 1 microseconds
    // (`cublasLtMatmul`), so `radar bench gemm` has a faster algorithm to find and pin.
    const int offers = std::min(requested, 3);
    for (int i = 0; i < offers; i++) {
        unsigned char *o = r + size_t(i) * 96;
        memset(o, 0, 96);
        memcpy(o, &ltMarker, 8);
        memcpy(o + 8, p->align, sizeof p->align);  // what the algorithm may assume of the operands
        o[40] = static_cast<unsigned char>(i);
        const size_t workspace = std::min<uint64_t>(p->workspace, 1 << 20);
        memcpy(o + 64, &workspace, sizeof workspace);
    }
    *returned = offers;
    return BLAS_SUCCESS;
}

EXPORT int cublasLtMatmul(void *handle, void *desc, const void *alpha, const void *A, void *adesc, const void *B, void *bdesc,
                          const void *beta, const void *C, void *cdesc, void *D, void *ddesc, const void *algo, void *workspace,
                          size_t workspaceBytes, void *stream) {
    LibraryCall call;
    if (!handle) return BLAS_NOT_INITIALIZED;
    const LtDesc *d = static_cast<LtDesc *>(desc);
    const LtLayout *la = static_cast<LtLayout *>(adesc), *lb = static_cast<LtLayout *>(bdesc), *lc = static_cast<LtLayout *>(cdesc);
    long m, n, k;
    if (!ltShape(d, la, lb, lc, static_cast<LtLayout *>(ddesc), m, n, k)) return BLAS_INVALID_VALUE;
    uint64_t marker = 0;
    if (!algo || (memcpy(&marker, algo, 8), marker != ltMarker)) return BLAS_INVALID_VALUE;  // an algorithm from the heuristic
    if (stream && static_cast<Stream *>(stream)->context != static_cast<LtHandle *>(handle)->context) return BLAS_INVALID_VALUE;
    if (workspaceBytes > 0 && !inDevice(uintptr_t(workspace), workspaceBytes)) return BLAS_INVALID_VALUE;
    if (!alpha || !beta || isDevice(alpha) || isDevice(beta)) return BLAS_INVALID_VALUE;  // host scalars (the default pointer mode)
    uint32_t align[4];
    memcpy(align, static_cast<const unsigned char *>(algo) + 8, sizeof align);
    const void *pointers[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++)
        if (uintptr_t(pointers[i]) % align[i] != 0) return BLAS_INVALID_VALUE;  // less aligned than the algorithm assumes
    const int batch = lc->batch;
    if (m == 0 || n == 0 || batch == 0) return BLAS_SUCCESS;
    const size_t element = la->type == 14 ? 2 : 4, cElement = lc->type == 14 ? 2 : 4;
    auto covers = [&](const void *p, const LtLayout *l, size_t bytes) {
        const size_t count = span(long(l->rows), long(l->cols), long(l->ld));
        return count == 0 || inDevice(uintptr_t(p), (size_t(l->stride) * size_t(batch - 1) + count) * bytes);
    };
    if (!covers(A, la, element) || !covers(B, lb, element) || !covers(C, lc, cElement) || !covers(D, lc, cElement)) return BLAS_INVALID_VALUE;
    const bool biased = d->epilogue == 4;
    if (biased && (!d->bias || !inDevice(uintptr_t(d->bias), size_t(m) * cElement))) return BLAS_INVALID_VALUE;
    runsNow(stream);
    advance(stream, 0.001 * (3 - static_cast<const unsigned char *>(algo)[40]));  // the offer's made-up cost
    const bool round = d->compute == 77;
    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    auto load = [&](const void *p, size_t at) {
        if (lc->type == 0) return static_cast<const float *>(p)[at];
        uint32_t u = uint32_t(static_cast<const uint16_t *>(p)[at]) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    };
    for (int i = 0; i < batch; i++) {
        std::vector<float> x = operand(static_cast<const char *>(A) + size_t(i) * size_t(la->stride) * element,
                                       span(long(la->rows), long(la->cols), long(la->ld)), la->type, round);
        std::vector<float> y = operand(static_cast<const char *>(B) + size_t(i) * size_t(lb->stride) * element,
                                       span(long(lb->rows), long(lb->cols), long(lb->ld)), lb->type, round);
        const size_t base = size_t(i) * size_t(lc->stride);
        std::vector<float> c(size_t(m) * size_t(n), 0.0f);
        if (b != 0)
            for (long col = 0; col < n; col++)
                for (long row = 0; row < m; row++) c[size_t(col) * m + row] = load(C, base + size_t(col) * lc->ld + row);
        cblas_sgemm(CblasColMajor, d->transa ? CblasTrans : CblasNoTrans, d->transb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k), a,
                    x.empty() ? nullptr : x.data(), int(la->ld), y.empty() ? nullptr : y.data(), int(lb->ld), b, c.data(), int(m));
        for (long col = 0; col < n; col++)
            for (long row = 0; row < m; row++) {
                float v = c[size_t(col) * m + row] + (biased ? load(d->bias, size_t(row)) : 0.0f);
                const size_t at = base + size_t(col) * lc->ld + row;
                if (lc->type == 0) { static_cast<float *>(D)[at] = v; continue; }
                uint32_t u;
                memcpy(&u, &v, 4);
                if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;
                else u += 0x7fffu + ((u >> 16) & 1u);
                static_cast<uint16_t *>(D)[at] = uint16_t(u >> 16);
            }
    }
    return BLAS_SUCCESS;
}

// MARK: cuFFT

namespace {
enum : int {
    FFT_SUCCESS = 0, FFT_INVALID_PLAN = 1, FFT_ALLOC_FAILED = 2, FFT_INVALID_TYPE = 3, FFT_INVALID_VALUE = 4, FFT_EXEC_FAILED = 6,
    FFT_INVALID_SIZE = 8, FFT_NOT_SUPPORTED = 16
};
/// A plan: its shape once made, where its work area is (allocated by the plan, or set by the caller
/// when auto-allocation is off) and the bytes it needs.
struct Plan {
    int rows = 0, cols = 0, batch = 0;
    Context *context;
    void *stream = nullptr;
    bool made = false, autoAllocate = true;
    size_t workSize = 0;
    void *work = nullptr;
};
std::vector<Plan> plans;
std::mutex fftLock;  // FFTW's planner is not thread-safe

/// The work area a plan asks for: one complex spectrum per plane, or RADAR_FAKE_CUFFT_WORK_BYTES.
size_t workBytes(int rows, int cols, int batch) {
    const char *v = getenv("RADAR_FAKE_CUFFT_WORK_BYTES");
    return v ? strtoull(v, nullptr, 10) : size_t(rows) * size_t(cols / 2 + 1) * 8 * size_t(batch);
}

Plan *planFor(int handle) { return handle < 1 || size_t(handle) > plans.size() ? nullptr : &plans[size_t(handle - 1)]; }
}  // namespace

EXPORT int cufftCreate(int *plan) {
    LibraryCall call;
    if (!plan) return FFT_INVALID_VALUE;
    if (needContext()) return FFT_INVALID_VALUE;
    std::lock_guard<std::mutex> g(fftLock);
    plans.push_back(Plan{});
    plans.back().context = current;
    *plan = int(plans.size());  // handles start at 1
    return FFT_SUCCESS;
}

EXPORT int cufftSetAutoAllocation(int plan, int autoAllocate) {
    LibraryCall call;
    std::lock_guard<std::mutex> g(fftLock);
    Plan *p = planFor(plan);
    if (!p) return FFT_INVALID_PLAN;
    if (p->made) return FFT_INVALID_VALUE;  // set before the plan is made
    p->autoAllocate = autoAllocate != 0;
    return FFT_SUCCESS;
}

EXPORT int cufftMakePlanMany(int plan, int rank, int *n, int *inembed, int istride, int idist, int *onembed, int ostride, int odist,
                             int type, int batch, size_t *workSize) {
    LibraryCall call;
    if (!n || !workSize) return FFT_INVALID_VALUE;
    if (needContext()) return FFT_INVALID_VALUE;
    if (type != 0x2a) return FFT_INVALID_TYPE;            // CUFFT_R2C is all DriverAPI plans
    if (rank != 2 || inembed || onembed) return FFT_NOT_SUPPORTED;  // basic layout: strides and distances unused
    (void)istride; (void)idist; (void)ostride; (void)odist;
    if (n[0] <= 0 || n[1] <= 0 || batch <= 0) return FFT_INVALID_SIZE;
    std::lock_guard<std::mutex> g(fftLock);
    Plan *p = planFor(plan);
    if (!p || p->made) return FFT_INVALID_PLAN;
    p->rows = n[0]; p->cols = n[1]; p->batch = batch;
    p->workSize = workBytes(n[0], n[1], batch);
    if (p->autoAllocate && p->workSize > 0) {
        unsigned long long w = 0;
        if (cuMemAlloc_v2(&w, p->workSize) != SUCCESS) return FFT_ALLOC_FAILED;
        p->work = reinterpret_cast<void *>(w);
    }
    p->made = true;
    *workSize = p->workSize;
    return FFT_SUCCESS;
}

EXPORT int cufftSetWorkArea(int plan, void *work) {
    LibraryCall call;
    std::lock_guard<std::mutex> g(fftLock);
    Plan *p = planFor(plan);
    if (!p || !p->made) return FFT_INVALID_PLAN;
    if (p->workSize > 0 && !inDevice(uintptr_t(work), p->workSize)) return FFT_INVALID_VALUE;
    p->work = work;
    return FFT_SUCCESS;
}

EXPORT int cufftSetStream(int plan, void *stream) {
    LibraryCall call;
    std::lock_guard<std::mutex> g(fftLock);
    Plan *p = planFor(plan);
    if (!p) return FFT_INVALID_PLAN;
    if (stream && static_cast<Stream *>(stream)->context != p->context) return FFT_INVALID_VALUE;
    p->stream = stream;
    return FFT_SUCCESS;
}

EXPORT int cufftExecR2C(int plan, float *input, void *output) {
    LibraryCall call;
    Plan p;
    {
        std::lock_guard<std::mutex> g(fftLock);
        const Plan *found = planFor(plan);
        if (!found || !found->made) return FFT_INVALID_PLAN;
        p = *found;
    }
    // The work area must still be device memory of its size (one freed or never set is an error).
    if (p.workSize > 0 && !inDevice(uintptr_t(p.work), p.workSize)) return FFT_INVALID_VALUE;
    const size_t real = size_t(p.rows) * size_t(p.cols), complex = size_t(p.rows) * size_t(p.cols / 2 + 1);
    if (!inDevice(uintptr_t(input), real * size_t(p.batch) * 4) || !inDevice(uintptr_t(output), complex * size_t(p.batch) * 8))
        return FFT_INVALID_VALUE;
    if (faulted("cufftExecR2C")) return FFT_EXEC_FAILED;
    runsNow(p.stream);
    int dims[2] = {p.rows, p.cols};
    std::lock_guard<std::mutex> g(fftLock);
    fftwf_plan f = fftwf_plan_many_dft_r2c(2, dims, p.batch, input, nullptr, 1, int(real), static_cast<fftwf_complex *>(output), nullptr, 1,
                                           int(complex), FFTW_ESTIMATE);
    if (!f) return FFT_NOT_SUPPORTED;
    fftwf_execute(f);
    fftwf_destroy_plan(f);
    return FFT_SUCCESS;
}
