#ifndef CCUDA_EMULATOR_H
#define CCUDA_EMULATOR_H
// The emulated CUDA device: the CUDA backend's kernel sources compiled a second time as host C++,
// each block's threads run as cooperative fibers on the calling thread. Launches look like
// cuLaunchKernel: grid and block sizes, and an array of pointers to the arguments.
#ifdef __cplusplus
extern "C" {
#endif

typedef int (*radar_emu_kernel)(const unsigned grid[3], const unsigned block[3], void **args);

/// Threads a block of a kernel without `__launch_bounds__` may have (256 fit any kernel's
/// registers: 255 a thread at most, 64K a block; past that ptxas must be told). The emulated
/// device refuses more; the CUDA backend's kernel table (`KernelSources.defaultBlockLimit`) reads it.
#define RADAR_EMU_DEFAULT_BLOCK_LIMIT 256

/// The launcher of a kernel by its name (e.g. "radar_adamw"), or NULL.
radar_emu_kernel radar_emu_lookup(const char *name);
/// Every kernel's name, NULL-terminated.
const char *const *radar_emu_kernel_names(void);
/// The message of the last failed launch (deadlock, barrier misuse); "" when none.
const char *radar_emu_last_error(void);
/// Run blocks and each block's threads in reverse order (a missing __syncthreads then changes
/// results); 0: index order.
void radar_emu_set_reverse_order(int on);
/// The schedule by name: "forward", "reversed" or "shuffled[:SEED]" (blocks in a seeded random
/// order, a block's runnable threads in a fresh random order at every pass). 0, or -1 when the
/// text is none of these (the schedule is then unchanged). `RADAR_EMULATED_SCHEDULE` sets it at
/// the first launch.
int radar_emu_set_schedule_text(const char *text);
/// Strict mode: a barrier reached after some threads of the block returned is an error.
void radar_emu_set_strict(int on);
/// An anonymous memory file of `bytes` (memfd_create + ftruncate) for device memory mapped twice;
/// -1 with errno on failure.
int radar_emu_memory_file(unsigned long bytes);

#ifdef __cplusplus
}
#endif
#endif
