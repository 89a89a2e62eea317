/* CPU sampling: one POSIX timer per thread on its CPU-time clock delivering
 * SIGPROF to that thread (or the process itimer fallback), and the SIGPROF
 * disposition shared with the host. */
#ifndef PA_CPU_H
#define PA_CPU_H

#include <signal.h>
#include <sys/time.h>

#include "config.h"

/* Installs the SIGPROF handler (SA_RESTART|SA_SIGINFO), then arms the
 * calling thread and every thread in /proc/self/task. Not in a handler.
 * Returns -EBUSY (and samples nothing) when SIGPROF already has a handler:
 * the host's own profiler, or another one loaded before the agent. */
int pa_cpu_start(const struct pa_config *cfg);
/* Arms / disarms the calling thread (pthread_create trampoline, exit). */
void pa_cpu_thread_start(void);
void pa_cpu_thread_stop(void);
/* Agent thread, about once a second: arm threads the hooks missed, delete
 * timers whose thread is gone, and notice a SIGPROF handler the host
 * installed without sigaction() (a raw syscall): then stop sampling. */
void pa_cpu_rescan(void);
/* Disarms every timer; the handler stays installed as a no-op so a late
 * signal never kills the host (PITFALLS 4). */
void pa_cpu_stop(void);
/* After fork in the child (only the calling thread exists): forgets the
 * parent's timers (not inherited) and arms the calling thread (or the
 * itimer) when the parent sampled. */
void pa_cpu_atfork_child(void);

/* The host's sigaction(SIGPROF, act, old) (preload.c). While the agent's
 * handler is installed the host sees and sets its own view: SIG_DFL and
 * SIG_IGN are recorded (SIGPROFs that are not the agent's are ignored,
 * never given SIG_DFL), a handler makes the agent stop CPU sampling for
 * good and is installed for real. Otherwise it is the real sigaction. */
int pa_cpu_sigaction(const struct sigaction *act, struct sigaction *old);
/* libc's sigaction, past the agent's wrapper (any signal). */
int pa_cpu_real_sigaction(int sig, const struct sigaction *act,
			  struct sigaction *old);
/* The host's setitimer(ITIMER_PROF): in itimer mode the agent's timer is
 * the host's now, CPU sampling stops. Then the real setitimer. */
int pa_cpu_setitimer(int which, const struct itimerval *value,
		     struct itimerval *old);

/* exec from the calling thread (preload.c's exec wrappers): before it,
 * its timer (or the itimer) is removed and a SIGPROF already pending is
 * taken, so none reaches the new program, which starts with SIGPROF at
 * SIG_DFL; a host that set SIG_IGN gets SIG_IGN passed on. If exec fails,
 * pa_cpu_exec_end undoes it. */
struct pa_cpu_exec {
	int own;	/* in the agent's process (not a vfork child) */
	int timer_off;	/* the thread's timer was removed */
	int itimer_off; /* the itimer was disarmed: old holds it */
	int ignored;	/* SIGPROF was set to SIG_IGN for the new program */
	struct itimerval old;
};
void pa_cpu_exec_begin(struct pa_cpu_exec *st);
void pa_cpu_exec_end(struct pa_cpu_exec *st);
/* posix_spawn (preload.c): the child is cloned with the parent's
 * dispositions, and handlers become SIG_DFL in it. When the host set
 * SIG_IGN, the real disposition is SIG_IGN around the call so the child
 * inherits it (the agent's ticks meanwhile are lost). */
void pa_cpu_spawn_begin(struct pa_cpu_exec *st);
void pa_cpu_spawn_end(struct pa_cpu_exec *st);

#endif
