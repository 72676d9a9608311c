#ifndef RADAR_CPROCESS_H
#define RADAR_CPROCESS_H
/// Asks the kernel to send `signal` to this process when its parent exits (Linux
/// PR_SET_PDEATHSIG; prctl is variadic, so Swift cannot call it directly). Returns 0 or -1.
int radar_set_parent_death_signal(int signal);
#endif
