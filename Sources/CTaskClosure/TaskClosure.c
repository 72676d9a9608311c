#include "TaskClosure.h"

// Swift passes a thick closure as two words (function, context); the function expects its
// argument in the first register and the context in the swift_context register.
typedef __attribute__((swiftcall)) void (*radar_task_function)(intptr_t, __attribute__((swift_context)) void *);

// Swift-side declaration: @_silgen_name("radar_task_capture")
//   func radarTaskCapture(_ slot: UnsafeMutablePointer<radar_task>, _ body: (Int) -> Void)
__attribute__((swiftcall)) void radar_task_capture(radar_task *slot, void *function, void *context) {
    slot->function = function;
    slot->context = context;
}

void radar_task_invoke(const radar_task *task, intptr_t index) {
    ((radar_task_function)task->function)(index, task->context);
}
