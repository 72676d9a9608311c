#ifndef CCUDA_EMULATOR_H
#define CCUDA_EMULATOR_H
// The emulated CUDA device: the CUDA backend's kernel sources compiled a second time as host C++,
// each block's threads run as cooperative fibers on the calling thread. Launches look like
// cuLaunchKernel: grid and block sizes, and an array of pointers to the arguments.
#ifdef __cplusplus
extern "C" {
#endif

typedef int (*radar_emu_kernel)(const unsigned grid[3], const unsigned block[3], void **args);

/// The launcher of a kernel by its name (e.g. "radar_adamw"), or NULL.
radar_emu_kernel radar_emu_lookup(const char *name);
/// Every kernel's name, NULL-terminated.
const char *const *radar_emu_kernel_names(void);
/// The message of the last failed launch (deadlock, barrier misuse); "" when none.
const char *radar_emu_last_error(void);
/// Run each block's threads in reverse order (a missing __syncthreads then changes results).
void radar_emu_set_reverse_order(int on);
/// Strict mode: a barrier reached after some threads of the block returned is an error.
void radar_emu_set_strict(int on);
/// An anonymous memory file of `bytes` (memfd_create + ftruncate) for device memory mapped twice;
/// -1 with errno on failure.
int radar_emu_memory_file(unsigned long bytes);

#ifdef __cplusplus
}
#endif
#endif
