// Stand-ins for the glibc functions newer than the bundle's glibc floor (tools/glibc_floor.py
// renames the bundled libraries' references to them to these names). Each calls glibc's own
// function where the running glibc has it, and otherwise does what it documents:
//   arc4random, arc4random_buf (glibc 2.36): bytes from getrandom(2) (glibc 2.25, Linux 3.17);
//   _dl_find_object (glibc 2.35): the loaded object holding an address, found by dl_iterate_phdr,
//   with its PT_GNU_EH_FRAME (what libgcc_s's unwinder asks it for).
// Built by scripts/bundle.sh as lib/libradar-glibc-compat.so, which the patched libraries need.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

static void fill_random(void *buffer, size_t length) {
    unsigned char *p = buffer;
    while (length > 0) {
        ssize_t n = getrandom(p, length, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            abort();  // as glibc's arc4random does where the kernel gives no randomness
        }
        p += n;
        length -= (size_t)n;
    }
}

// The running glibc's own function of that name and version, or NULL where it is older (or where
// RADAR_GLIBC_COMPAT_FALLBACK=1 asks for the stand-ins, as scripts/check-bundle.sh does to run the
// bundle as an older glibc would).
static void *glibc_function(const char *name, const char *version) {
    const char *force = getenv("RADAR_GLIBC_COMPAT_FALLBACK");
    if (force && strcmp(force, "1") == 0) return NULL;
    return dlvsym(RTLD_DEFAULT, name, version);
}

uint32_t rcg4random(void) {
    static uint32_t (*real)(void);
    static int looked;
    if (!__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) {
        real = (uint32_t (*)(void))glibc_function("arc4random", "GLIBC_2.36");
        __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
    }
    if (real) return real();
    uint32_t value;
    fill_random(&value, sizeof value);
    return value;
}

void rcg4random_buf(void *buffer, size_t length) {
    static void (*real)(void *, size_t);
    static int looked;
    if (!__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) {
        real = (void (*)(void *, size_t))glibc_function("arc4random_buf", "GLIBC_2.36");
        __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
    }
    if (real) { real(buffer, length); return; }
    fill_random(buffer, length);
}

// glibc 2.35's struct dl_find_object, spelled out so this builds against any glibc's headers.
struct rcg_dl_find_object {
    unsigned long long dlfo_flags;
    void *dlfo_map_start;
    void *dlfo_map_end;
    struct link_map *dlfo_link_map;
    void *dlfo_eh_frame;
    unsigned long long reserved[7];
};

struct search {
    uintptr_t pc;
    struct rcg_dl_find_object *result;
    int found;
};

static int visit(struct dl_phdr_info *info, size_t size, void *context) {
    (void)size;
    struct search *s = context;
    uintptr_t low = UINTPTR_MAX, high = 0, eh_frame = 0;
    int holds = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD) {
            if (start < low) low = start;
            if (start + ph->p_memsz > high) high = start + ph->p_memsz;
            if (s->pc >= start && s->pc < start + ph->p_memsz) holds = 1;
        } else if (ph->p_type == PT_GNU_EH_FRAME) {
            eh_frame = start;
        }
    }
    if (!holds) return 0;
    memset(s->result, 0, sizeof *s->result);
    s->result->dlfo_map_start = (void *)low;
    s->result->dlfo_map_end = (void *)high;
    s->result->dlfo_eh_frame = (void *)eh_frame;
    Dl_info dl;
    struct link_map *map = NULL;
    if (dladdr1((void *)s->pc, &dl, (void **)&map, RTLD_DL_LINKMAP)) s->result->dlfo_link_map = map;
    s->found = 1;
    return 1;
}

int rcg_find_object(void *pc, struct rcg_dl_find_object *result) {
    static int (*real)(void *, struct rcg_dl_find_object *);
    static int looked;
    if (!__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) {
        real = (int (*)(void *, struct rcg_dl_find_object *))glibc_function("_dl_find_object", "GLIBC_2.35");
        __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
    }
    if (real) return real(pc, result);
    struct search s = {(uintptr_t)pc, result, 0};
    dl_iterate_phdr(visit, &s);
    return s.found ? 0 : -1;
}

// The bundle check's test of the fallbacks, run where glibc has the real functions: random bytes
// come, and the dl_iterate_phdr search finds what glibc's own _dl_find_object finds for an address
// in this library and one in libc. 0 when all holds, else the number of the first check failed.
static int agrees_with_glibc(void *pc) {
    int (*real)(void *, struct rcg_dl_find_object *) =
        (int (*)(void *, struct rcg_dl_find_object *))dlvsym(RTLD_DEFAULT, "_dl_find_object", "GLIBC_2.35");
    struct rcg_dl_find_object ours, theirs;
    struct search s = {(uintptr_t)pc, &ours, 0};
    dl_iterate_phdr(visit, &s);
    if (!s.found || ours.dlfo_eh_frame == NULL) return 0;
    if (!real) return 1;  // an older glibc: nothing to compare with
    if (real(pc, &theirs) != 0) return 0;
    return ours.dlfo_map_start == theirs.dlfo_map_start && ours.dlfo_map_end == theirs.dlfo_map_end &&
           ours.dlfo_eh_frame == theirs.dlfo_eh_frame && ours.dlfo_link_map == theirs.dlfo_link_map;
}

int rcg_selftest_fallbacks(void) {
    uint32_t a, b;
    unsigned char buf[64] = {0}, zero[64] = {0};
    fill_random(&a, sizeof a);
    fill_random(&b, sizeof b);
    fill_random(buf, sizeof buf);
    if (memcmp(buf, zero, sizeof buf) == 0 || a == b) return 1;
    if (!agrees_with_glibc((void *)&rcg_selftest_fallbacks)) return 2;
    if (!agrees_with_glibc((void *)&getrandom)) return 3;
    struct rcg_dl_find_object r;
    struct search s = {(uintptr_t)1, &r, 0};  // an address no object holds
    dl_iterate_phdr(visit, &s);
    if (s.found) return 4;
    return 0;
}
