/* Per-thread agent state in initial-exec TLS: the re-entrancy guard, stack
 * bounds for the sampler's stack copy, the heap sampling countdown. */
#ifndef PA_THREAD_H
#define PA_THREAD_H

#include <stdint.h>
#include <time.h>

struct pa_thread {
	/* Non-zero while agent code runs on this thread (hooks, init, the
	 * exporter): nested hooks forward straight to libc and the sampler
	 * drops the tick (counted). volatile: gcc removes plain stores to a
	 * TLS flag around calls (PITFALLS 3). */
	volatile int busy;
	int is_agent;        /* the agent's own thread: never sampled */
	int inited;          /* pa_thread_init_current has run */
	int in_loader;       /* inside dlopen/dlclose/dl_iterate_phdr */
	uint32_t tid;
	uint64_t stack_lo, stack_hi; /* 0,0 when unknown */
	int64_t alloc_countdown;     /* bytes left before the next heap sample */
	uint64_t rng;                /* xorshift state for the countdown */
	int timer_armed;
	timer_t timer;
};

extern __thread struct pa_thread pa_self __attribute__((tls_model("initial-exec")));

/* Fills tid and stack bounds for the calling thread (pthread_getattr_np;
 * may allocate: call with busy set, never from a signal handler). */
void pa_thread_init_current(void);

/* The guard, as used by hooks: returns 0 if the caller may run agent code
 * (and sets busy), -1 if agent code is already running on this thread. */
static inline int pa_thread_enter(void)
{
	if (pa_self.busy)
		return -1;
	pa_self.busy = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	return 0;
}

static inline void pa_thread_leave(void)
{
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	pa_self.busy = 0;
}

#endif
