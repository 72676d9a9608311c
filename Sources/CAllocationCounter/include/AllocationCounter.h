#ifndef RADAR_ALLOCATION_COUNTER_H
#define RADAR_ALLOCATION_COUNTER_H
#include <stdint.h>
// Counts calls to malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign made by the
// process that links this target (tests and `radar bench step`). The counter only runs between start and stop.
void radar_allocation_counter_start(void);
uint64_t radar_allocation_counter_stop(void);
#endif
