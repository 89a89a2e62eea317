/* Per-thread agent state (identity, stack bounds, set outside signal
 * context) and the fork gate between agent threads and fork(). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "thread.h"

__thread struct pa_thread pa_self __attribute__((tls_model("initial-exec")));

void pa_thread_init_current(void)
{
	pa_self.tid = (uint32_t)syscall(SYS_gettid);
	pthread_attr_t attr;
	void *addr;
	size_t size;
	/* pthread_getattr_np allocates and, on the main thread, reads
	 * /proc/self/maps: never from a signal handler. */
	if (pthread_getattr_np(pthread_self(), &attr) == 0) {
		if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
			pa_self.stack_lo = (uint64_t)(uintptr_t)addr;
			pa_self.stack_hi = pa_self.stack_lo + size;
		}
		pthread_attr_destroy(&attr);
	}
	pa_self.inited = 1;
}

/* ---- the fork gate ------------------------------------------------------ */

/*
 * `inside` counts agent threads in foreign code; `forks` counts host
 * threads between their prepare and parent handlers (no agent thread
 * enters meanwhile); `stalled` is set when a fork gave up waiting for the
 * threads inside now, so later forks do not wait for them again. The
 * mutex is held only for these few instructions, never across a call.
 */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_REALTIME */
	int inside;
	int forks;
	int stalled;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

/* The calling thread goes in (waiting while a fork is in progress) or
 * out (the last one out frees the forks waiting for it). errno kept. */
static void gate_step(bool in)
{
	int saved = errno;
	pthread_mutex_lock(&gate.mu);
	if (in) {
		while (gate.forks)
			pthread_cond_wait(&gate.cv, &gate.mu);
		gate.inside++;
	} else if (gate.inside > 0 && --gate.inside == 0) {
		gate.stalled = 0;
		pthread_cond_broadcast(&gate.cv);
	}
	pthread_mutex_unlock(&gate.mu);
	errno = saved;
}

void pa_gate_enter(void)
{
	if (pa_self.gate_depth++ == 0)
		gate_step(true);
}

void pa_gate_leave(void)
{
	if (pa_self.gate_depth > 0 && --pa_self.gate_depth == 0)
		gate_step(false);
}

void pa_gate_pause(void)
{
	if (pa_self.gate_depth > 0)
		gate_step(false);
}

void pa_gate_resume(void)
{
	if (pa_self.gate_depth > 0)
		gate_step(true);
}

int pa_gate_fork_prepare(void)
{
	int saved = errno;
	pthread_mutex_lock(&gate.mu);
	gate.forks++;
	int clear = 1;
	if (gate.inside && !gate.stalled) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += PA_GATE_FORK_WAIT_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		while (gate.inside && !gate.stalled)
			if (pthread_cond_timedwait(&gate.cv, &gate.mu,
						   &until) == ETIMEDOUT)
				gate.stalled = 1;
	}
	if (gate.inside)
		clear = 0;
	pthread_mutex_unlock(&gate.mu);
	errno = saved;
	return clear;
}

void pa_gate_fork_parent(void)
{
	int saved = errno;
	pthread_mutex_lock(&gate.mu);
	if (gate.forks > 0 && --gate.forks == 0)
		pthread_cond_broadcast(&gate.cv);
	pthread_mutex_unlock(&gate.mu);
	errno = saved;
}

void pa_thread_reset_lock(pthread_mutex_t *mu, pthread_cond_t *cv)
{
	const pthread_mutex_t fresh_mu = PTHREAD_MUTEX_INITIALIZER;
	const pthread_cond_t fresh_cv = PTHREAD_COND_INITIALIZER;
	memcpy(mu, &fresh_mu, sizeof(fresh_mu));
	if (cv)
		memcpy(cv, &fresh_cv, sizeof(fresh_cv));
}

void pa_gate_fork_child(void)
{
	/* Only the forking thread exists: whoever held the mutex or was
	 * inside is gone. */
	pa_thread_reset_lock(&gate.mu, &gate.cv);
	gate.inside = 0;
	gate.forks = 0;
	gate.stalled = 0;
	pa_self.gate_depth = 0;
}
