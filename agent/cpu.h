/* CPU sampling: one POSIX timer per thread on its CPU-time clock delivering
 * SIGPROF to that thread (or the process itimer fallback). */
#ifndef PA_CPU_H
#define PA_CPU_H

#include "config.h"

/* Installs the SIGPROF handler (SA_RESTART|SA_SIGINFO), then arms the
 * calling thread and every thread in /proc/self/task. Not in a handler. */
int pa_cpu_start(const struct pa_config *cfg);
/* Arms / disarms the calling thread (pthread_create trampoline, exit). */
void pa_cpu_thread_start(void);
void pa_cpu_thread_stop(void);
/* Agent thread, about once a second: arm threads the hooks missed, delete
 * timers whose thread is gone. */
void pa_cpu_rescan(void);
/* Disarms every timer; the handler stays installed as a no-op so a late
 * signal never kills the host (PITFALLS 4). */
void pa_cpu_stop(void);
/* After fork in the child: timers are not inherited; forget the table. */
void pa_cpu_atfork_child(void);

#endif
