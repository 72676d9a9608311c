#ifndef RADAR_ALLOCATION_COUNTER_H
#define RADAR_ALLOCATION_COUNTER_H
#include <stdint.h>
// Counts calls to malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign made by the
// process that links this target (tests and `radar bench step`). The counter only runs between start and stop.
void radar_allocation_counter_start(void);
uint64_t radar_allocation_counter_stop(void);
// Allocations made while `*flag` is nonzero are not counted (NULL: all are). The test stand-in for
// the CUDA libraries (Tests/FakeCUDA) raises its flag, `radar_fake_cuda_busy`, while one of its entry
// points runs, so that on it `radar bench step` counts the host code's allocations, not the
// stand-in's or its emulated kernels' (a real driver's own allocations are counted: it has no flag).
void radar_allocation_counter_ignore_while(const volatile int *flag);
#endif
