#include "CProcess.h"
#ifdef __linux__
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int radar_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0); }

uint64_t radar_shared_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void radar_shared_store(uint64_t *p, uint64_t value) { __atomic_store_n(p, value, __ATOMIC_RELEASE); }

// The futex word is the counter's low 32 bits (little-endian: at its address). Not
// FUTEX_PRIVATE_FLAG: the waker is another process mapping the same pages.
void radar_shared_wait(const uint64_t *p, uint32_t expected, int timeout_us) {
    struct timespec t = {timeout_us / 1000000, (long)(timeout_us % 1000000) * 1000};
    syscall(SYS_futex, (const uint32_t *)p, FUTEX_WAIT, expected, &t, NULL, 0);
}
void radar_shared_wake(const uint64_t *p) { syscall(SYS_futex, (const uint32_t *)p, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0); }
// The raw system calls (the kernel's mask is little-endian words of bits, as given here); the
// kernel returns the bytes it wrote for get, 0 for set.
int radar_get_affinity(int tid, uint64_t *mask, int words) {
    for (int i = 0; i < words; i++) mask[i] = 0;
    return syscall(SYS_sched_getaffinity, tid, (size_t)words * 8, mask) < 0 ? -1 : 0;
}
int radar_set_affinity(int tid, const uint64_t *mask, int words) {
    return syscall(SYS_sched_setaffinity, tid, (size_t)words * 8, mask) < 0 ? -1 : 0;
}
#else
int radar_set_parent_death_signal(int signal) { (void)signal; return -1; }
uint64_t radar_shared_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void radar_shared_store(uint64_t *p, uint64_t value) { __atomic_store_n(p, value, __ATOMIC_RELEASE); }
void radar_shared_wait(const uint64_t *p, uint32_t expected, int timeout_us) { (void)p; (void)expected; (void)timeout_us; }
void radar_shared_wake(const uint64_t *p) { (void)p; }
int radar_get_affinity(int tid, uint64_t *mask, int words) { (void)tid; (void)mask; (void)words; return -1; }
int radar_set_affinity(int tid, const uint64_t *mask, int words) { (void)tid; (void)mask; (void)words; return -1; }
#endif

// Signals as bytes on a pipe (SignalWatch): plain POSIX.
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
static volatile int signal_pipe = -1;
static void radar_signal_to_pipe_handler(int signal) {
    int saved = errno;
    unsigned char byte = (unsigned char)signal;
    if (signal_pipe >= 0) (void)!write(signal_pipe, &byte, 1);
    errno = saved;
}
int radar_signal_to_pipe(int signal, int fd) {
    signal_pipe = fd;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = radar_signal_to_pipe_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    return sigaction(signal, &action, NULL);
}
int radar_signal_default(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_DFL;
    sigemptyset(&action.sa_mask);
    return sigaction(signal, &action, NULL);
}
