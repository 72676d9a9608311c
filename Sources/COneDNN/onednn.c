#include "COneDNN.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if __has_include(<oneapi/dnnl/dnnl.h>)
#include <oneapi/dnnl/dnnl.h>
#endif

#if defined(DNNL_VERSION_MAJOR) && DNNL_VERSION_MAJOR == 2

#define RADAR_DNNL_FUNCTIONS(X) \
    X(dnnl_engine_create) X(dnnl_stream_create) X(dnnl_stream_wait) X(dnnl_memory_desc_init_by_strides) \
    X(dnnl_matmul_desc_init) X(dnnl_primitive_attr_create) X(dnnl_primitive_attr_destroy) \
    X(dnnl_primitive_attr_set_output_scales) X(dnnl_post_ops_create) X(dnnl_post_ops_destroy) \
    X(dnnl_post_ops_append_sum) X(dnnl_primitive_attr_set_post_ops) X(dnnl_primitive_desc_create) \
    X(dnnl_primitive_desc_destroy) X(dnnl_primitive_desc_query) X(dnnl_primitive_create) \
    X(dnnl_primitive_destroy) X(dnnl_memory_create) X(dnnl_memory_destroy) X(dnnl_primitive_execute) \
    X(dnnl_memory_set_data_handle) X(dnnl_version)

#define RADAR_DECLARE(name) static __typeof__(&name) p_##name;
RADAR_DNNL_FUNCTIONS(RADAR_DECLARE)

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int loaded;
static char load_error[256];
static char version[64];
static dnnl_engine_t engine;

static void load(void) {
    // Our pool runs one product per thread: oneDNN's OpenMP runtime must not add its own threads.
    // libgomp reads this when it loads, which dlopen below triggers.
    setenv("OMP_NUM_THREADS", "1", 1);
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(load_error, sizeof load_error, "oneDNN 2 (libdnnl.so.2) not found: %s", dlerror());
        return;
    }
#define RADAR_RESOLVE(name) \
    p_##name = (__typeof__(p_##name))dlsym(lib, #name); \
    if (!p_##name) { snprintf(load_error, sizeof load_error, "libdnnl.so.2 lacks %s", #name); return; }
    RADAR_DNNL_FUNCTIONS(RADAR_RESOLVE)
    if (p_dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) {
        snprintf(load_error, sizeof load_error, "oneDNN could not create its CPU engine");
        return;
    }
    const dnnl_version_t *v = p_dnnl_version();
    snprintf(version, sizeof version, "%d.%d.%d (%s)", v->major, v->minor, v->patch,
             v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential" : "threadpool/TBB");
    loaded = 1;
}

int radar_onednn_load(char *why, int why_len) {
    pthread_once(&once, load);
    if (!loaded && why && why_len > 0) snprintf(why, (size_t)why_len, "%s", load_error);
    return loaded;
}

const char *radar_onednn_version(void) { return loaded ? version : ""; }

// Per-thread cache of matmul primitives by shape (the products of a training step repeat).
typedef struct {
    int bf16, trans_a, trans_b;
    int64_t m, n, k, lda, ldb, ldc;
    uint32_t alpha, beta;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c;
    // Memory objects made once with the primitive; each call points them at its operands.
    dnnl_memory_t ma, mb, mc;
    const char *impl;
} entry_t;

// On the heap, made by the first product of each thread: static thread-local storage this size
// (a memory descriptor is about a kilobyte) would be carved out of every thread's stack.
enum { CACHE = 256 };
static _Thread_local entry_t *cache;
static _Thread_local int cache_used, cache_next;
static _Thread_local dnnl_stream_t stream;
// Implementation names, interned once (a few distinct ones per process), and the last one used
// by any thread.
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static char names[32][48];
static int names_used;
static _Atomic(const char *) last_impl;

static const char *intern(const char *name) {
    pthread_mutex_lock(&names_lock);
    const char *found = "(more than 32 implementations)";
    for (int i = 0; i < names_used; i++) if (strcmp(names[i], name) == 0) { found = names[i]; goto done; }
    if (names_used < 32) {
        snprintf(names[names_used], sizeof names[0], "%s", name);
        found = names[names_used++];
    }
done:
    pthread_mutex_unlock(&names_lock);
    return found;
}

const char *radar_onednn_last_implementation(void) {
    const char *p = atomic_load_explicit(&last_impl, memory_order_relaxed);
    return p ? p : "";
}

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static int fail(char *why, int why_len, const char *what, dnnl_status_t s) {
    if (why && why_len > 0)
        snprintf(why, (size_t)why_len, "oneDNN %s failed (status %d%s)", what, (int)s,
                 s == dnnl_unimplemented ? ": no implementation for this data type on this CPU" : "");
    return 0;
}

static void release(entry_t *e) {
    if (e->ma) p_dnnl_memory_destroy(e->ma);
    if (e->mb) p_dnnl_memory_destroy(e->mb);
    if (e->mc) p_dnnl_memory_destroy(e->mc);
    if (e->prim) p_dnnl_primitive_destroy(e->prim);
    e->ma = e->mb = e->mc = NULL;
    e->prim = NULL;
}

static entry_t *primitive(int bf16, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, int64_t lda, int64_t ldb,
                          float beta, int64_t ldc, char *why, int why_len) {
    for (int i = 0; i < cache_used; i++) {
        entry_t *e = &cache[i];
        if (e->bf16 == bf16 && e->trans_a == ta && e->trans_b == tb && e->m == m && e->n == n && e->k == k && e->lda == lda &&
            e->ldb == ldb && e->ldc == ldc && e->alpha == bits(alpha) && e->beta == bits(beta))
            return e;
    }
    entry_t e = {bf16, ta, tb, m, n, k, lda, ldb, ldc, bits(alpha), bits(beta), NULL, {0}, {0}, {0}, NULL, NULL, NULL, ""};
    dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_dims_t ad = {m, k}, as = {ta ? 1 : lda, ta ? lda : 1};
    dnnl_dims_t bd = {k, n}, bs = {tb ? 1 : ldb, tb ? ldb : 1};
    dnnl_dims_t cd = {m, n}, cs = {ldc, 1};
    dnnl_status_t s;
    if ((s = p_dnnl_memory_desc_init_by_strides(&e.a, 2, ad, dt, as)) != dnnl_success ||
        (s = p_dnnl_memory_desc_init_by_strides(&e.b, 2, bd, dt, bs)) != dnnl_success ||
        (s = p_dnnl_memory_desc_init_by_strides(&e.c, 2, cd, dnnl_f32, cs)) != dnnl_success) {
        fail(why, why_len, "memory descriptor", s);
        return NULL;
    }
    dnnl_matmul_desc_t md;
    if ((s = p_dnnl_matmul_desc_init(&md, &e.a, &e.b, NULL, &e.c)) != dnnl_success) { fail(why, why_len, "matmul descriptor", s); return NULL; }
    dnnl_primitive_attr_t attr;
    p_dnnl_primitive_attr_create(&attr);
    dnnl_post_ops_t po = NULL;
    if (alpha != 1.0f) p_dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
    if (beta != 0.0f) {
        p_dnnl_post_ops_create(&po);
        p_dnnl_post_ops_append_sum(po, beta);
        p_dnnl_primitive_attr_set_post_ops(attr, po);
    }
    dnnl_primitive_desc_t pd;
    s = p_dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL);
    if (po) p_dnnl_post_ops_destroy(po);
    p_dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) { fail(why, why_len, bf16 ? "bf16 matmul" : "f32 matmul", s); return NULL; }
    const char *impl = "";
    p_dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    e.impl = intern(impl ? impl : "");  // the descriptor owns `impl`
    s = p_dnnl_primitive_create(&e.prim, pd);
    p_dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) { fail(why, why_len, "primitive creation", s); return NULL; }
    if ((s = p_dnnl_memory_create(&e.ma, &e.a, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
        (s = p_dnnl_memory_create(&e.mb, &e.b, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
        (s = p_dnnl_memory_create(&e.mc, &e.c, engine, DNNL_MEMORY_NONE)) != dnnl_success) {
        release(&e);
        fail(why, why_len, "memory", s);
        return NULL;
    }
    int slot = cache_used < CACHE ? cache_used++ : (cache_next++ % CACHE);
    release(&cache[slot]);
    cache[slot] = e;
    return &cache[slot];
}

int radar_onednn_matmul(int bf16, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const void *a, int64_t lda, const void *b, int64_t ldb, float beta, float *c, int64_t ldc,
                        char *why, int why_len) {
    if (!radar_onednn_load(why, why_len)) return 0;
    if (m == 0 || n == 0) return 1;
    if (!stream) {
        dnnl_status_t s = p_dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
        if (s != dnnl_success) return fail(why, why_len, "stream creation", s);
    }
    if (!cache && !(cache = calloc(CACHE, sizeof *cache))) {
        if (why && why_len > 0) snprintf(why, (size_t)why_len, "out of memory for oneDNN's primitive cache");
        return 0;
    }
    entry_t *e = primitive(bf16, trans_a, trans_b, m, n, k, alpha, lda, ldb, beta, ldc, why, why_len);
    if (!e) return 0;
    dnnl_status_t s;
    if ((s = p_dnnl_memory_set_data_handle(e->ma, (void *)a)) != dnnl_success ||
        (s = p_dnnl_memory_set_data_handle(e->mb, (void *)b)) != dnnl_success ||
        (s = p_dnnl_memory_set_data_handle(e->mc, c)) != dnnl_success)
        return fail(why, why_len, "memory", s);
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->ma}, {DNNL_ARG_WEIGHTS, e->mb}, {DNNL_ARG_DST, e->mc}};
    s = p_dnnl_primitive_execute(e->prim, stream, 3, args);
    if (s == dnnl_success) s = p_dnnl_stream_wait(stream);
    if (s != dnnl_success) return fail(why, why_len, "matmul execution", s);
    atomic_store_explicit(&last_impl, e->impl, memory_order_relaxed);
    return 1;
}

#else

int radar_onednn_load(char *why, int why_len) {
    if (why && why_len > 0) snprintf(why, (size_t)why_len, "this build has no oneDNN 2 support (libdnnl-dev was absent when it was compiled)");
    return 0;
}
const char *radar_onednn_version(void) { return ""; }
int radar_onednn_matmul(int bf16, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const void *a, int64_t lda, const void *b, int64_t ldb, float beta, float *c, int64_t ldc,
                        char *why, int why_len) {
    (void)bf16; (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)b;
    (void)ldb; (void)beta; (void)c; (void)ldc;
    return radar_onednn_load(why, why_len);
}
const char *radar_onednn_last_implementation(void) { return ""; }
#endif
