/* Per-thread agent state in initial-exec TLS: the re-entrancy guard, stack
 * bounds for the sampler's stack copy, the heap sampling countdown; and the
 * fork gate that keeps agent threads out of foreign code while a host
 * thread forks. */
#ifndef PA_THREAD_H
#define PA_THREAD_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

struct pa_thread {
	/* Non-zero while agent code runs on this thread (hooks, init, the
	 * exporter): nested hooks forward straight to libc and the sampler
	 * drops the tick (counted). volatile: gcc removes plain stores to a
	 * TLS flag around calls (PITFALLS 3). */
	volatile int busy;
	int is_agent;  /* the agent's own thread: never sampled */
	int inited;    /* pa_thread_init_current has run */
	int in_loader; /* inside dlopen/dlclose/dl_iterate_phdr */
	uint32_t tid;  /* 0 until known (threads older than the agent) */
	uint64_t stack_lo, stack_hi; /* 0,0 when unknown */
	int64_t alloc_countdown; /* bytes left before the next heap sample */
	uint64_t rng;		 /* xorshift state for the countdown */
	uint32_t seq_next, seq_left; /* heap sample ids taken, not used */
	int gate_depth;		     /* pa_gate_enter nesting on this thread */
};

extern __thread struct pa_thread pa_self
    __attribute__((tls_model("initial-exec")));

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

/* In a child after fork, where only the calling thread exists: a mutex
 * (and condition, cv may be NULL) that another thread of the parent may
 * have held, made new. Never destroyed or unlocked: that is undefined for
 * a mutex held by a thread that is gone. */
void pa_thread_reset_lock(pthread_mutex_t *mu, pthread_cond_t *cv);

/*
 * The fork gate. fork() copies every lock as it is; glibc resets its
 * malloc, stdio and loader locks in the child, but not others: the locale
 * lock that strerror() holds while it translates (libcurl calls it on
 * every connection error), the loader's write lock that dl_iterate_phdr
 * holds, OpenSSL's locks. A child that inherits one of those held by an
 * agent thread hangs the first time it needs it (measured: a child's
 * exit hung in freelocale, called by libp11-kit's destructor, on a locale
 * lock a thread held in strerror at the fork).
 *
 * So agent threads run such foreign code inside pa_gate_enter/leave, and
 * the agent's pthread_atfork prepare handler waits until no agent thread
 * is inside. Waiting is bounded: an agent thread blocked inside (a long
 * DNS lookup) delays one fork by at most PA_GATE_FORK_WAIT_MS; later forks
 * go ahead until the gate is free again. An agent thread that blocks in
 * poll() (libcurl waiting on the network) is not inside: preload.c's poll
 * calls pa_gate_pause/resume around the wait.
 */
#define PA_GATE_FORK_WAIT_MS 20

/* Agent threads, around foreign code; nests. Blocks while a fork is in
 * progress. Not for signal handlers. */
void pa_gate_enter(void);
void pa_gate_leave(void);
/* The calling thread holds the gate (pa_self.gate_depth > 0) and is about
 * to block in a call that takes no lock (poll): let forks through. */
void pa_gate_pause(void);
void pa_gate_resume(void);
/* pthread_atfork handlers of the agent (agent.c): prepare returns 1 when
 * no agent thread was inside at the fork, 0 when the wait timed out. */
int pa_gate_fork_prepare(void);
void pa_gate_fork_parent(void);
void pa_gate_fork_child(void);

#endif
