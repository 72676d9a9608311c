#ifndef RADAR_CPROCESS_H
#define RADAR_CPROCESS_H
#include <stdint.h>
/// Asks the kernel to send `signal` to this process when its parent exits (Linux
/// PR_SET_PDEATHSIG; prctl is variadic, so Swift cannot call it directly). Returns 0 or -1.
int radar_set_parent_death_signal(int signal);

// Between processes through a shared mapping (the TCP transport's same-host links): Swift has
// no atomics on raw memory and cannot call the variadic syscall(2), so these are C.
/// Acquire load of a 64-bit counter another process writes.
uint64_t radar_shared_load(const uint64_t *p);
/// Release store of a 64-bit counter another process reads.
void radar_shared_store(uint64_t *p, uint64_t value);
/// Sleeps while the 32-bit word at `p` (the low half of a counter) still holds `expected`, at most
/// `timeout_us` microseconds (a FUTEX_WAIT on a shared mapping). Returns at once if it differs.
void radar_shared_wait(const uint64_t *p, uint32_t expected, int timeout_us);
/// Wakes every process sleeping in radar_shared_wait on `p` (FUTEX_WAKE).
void radar_shared_wake(const uint64_t *p);

// CPU affinity (sched_getaffinity/sched_setaffinity are GNU extensions Swift does not see), as a
// bit mask of `words` 64-bit words (CPU c is bit c % 64 of word c / 64) for thread `tid` (0: the
// calling thread). Return 0 or -1 (errno set).
int radar_get_affinity(int tid, uint64_t *mask, int words);
int radar_set_affinity(int tid, const uint64_t *mask, int words);

/// Catches `signal` with a handler that writes the signal's number (one byte) to `fd`, the
/// write end of a non-blocking pipe, and nothing else (async-signal-safe; errno kept), with
/// SA_RESTART. The same `fd` for every signal. Returns 0 or -1 (errno set).
int radar_signal_to_pipe(int signal, int fd);
/// The default action for `signal` again. Returns 0 or -1.
int radar_signal_default(int signal);
#endif
