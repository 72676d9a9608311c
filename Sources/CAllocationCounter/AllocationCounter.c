// Interposes glibc's allocator entry points in the test executable so a test can prove that a
// training step performs no heap allocation. Forwarding goes to glibc's __libc_* entry points,
// which avoids dlsym (itself an allocator client) during start-up.
#include "AllocationCounter.h"
#include <stddef.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static volatile int counting = 0;
static uint64_t count = 0;
static const volatile int *ignoring = 0;

static inline void note(void) {
    if (counting && !(ignoring && *ignoring)) __atomic_fetch_add(&count, 1, __ATOMIC_RELAXED);
}

void radar_allocation_counter_ignore_while(const volatile int *flag) {
    __atomic_store_n(&ignoring, flag, __ATOMIC_SEQ_CST);
}

void radar_allocation_counter_start(void) {
    __atomic_store_n(&count, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&counting, 1, __ATOMIC_SEQ_CST);
}

uint64_t radar_allocation_counter_stop(void) {
    __atomic_store_n(&counting, 0, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&count, __ATOMIC_SEQ_CST);
}

// Under AddressSanitizer or ThreadSanitizer (`swift build --sanitize=address|thread`) the
// sanitizer's allocator must own every block: no interposition there, so the counter reads 0 and
// the allocation-count tests say nothing.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define RADAR_NO_INTERPOSITION 1
#endif
#endif
#ifndef RADAR_NO_INTERPOSITION
void *malloc(size_t n) { note(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { note(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { note(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    note();
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
#endif
