#ifndef RADAR_TASK_CLOSURE_H
#define RADAR_TASK_CLOSURE_H
#include <stdint.h>

/// A borrowed Swift closure of type (Int) -> Void: its function pointer and context, as the
/// Swift calling convention passes them. Lets the worker pool hand a non-escaping closure to its
/// threads without converting it to an escaping one (which costs a heap allocation per call).
/// Valid only while the Swift call that captured it is running.
typedef struct radar_task {
    void *function;
    void *context;
} radar_task;

/// Calls the captured closure with `index`.
void radar_task_invoke(const radar_task *task, intptr_t index);

/// A spin-wait hint to the CPU (x86 `pause`, Arm `yield`): a waiting thread spins politely.
static inline void radar_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
#endif
