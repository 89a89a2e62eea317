/* The agent's process-wide state, shared by the hot path and the agent thread.
 */
#ifndef PA_AGENT_H
#define PA_AGENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "ring.h"

enum pa_state {
	PA_STATE_OFF = 0,  /* not loaded yet, disabled, or filtered out: hooks
			      forward only */
	PA_STATE_RUNNING,  /* sampling */
	PA_STATE_STOPPING, /* exit flush under way: no new samples */
};

struct pa_agent {
	int state; /* enum pa_state; read with relaxed atomics on the hot path
		    */
	pid_t pid; /* the process the agent was started in (fork changes it) */
	struct pa_config cfg;
	struct pa_ring *ring;
	/* Drops counted on the hot path, reported by the exporter. */
	uint64_t drops_busy;	/* sample while agent code ran on the thread */
	uint64_t drops_capture; /* stack copy failed */
	/* The agent's own threads, never sampled: the exporter, the
	 * uploader, threads they start (libcurl's resolver). */
	pid_t own_tids[8];
};

extern struct pa_agent pa_agent;

static inline bool pa_agent_running(void)
{
	return __atomic_load_n(&pa_agent.state, __ATOMIC_RELAXED) ==
	       PA_STATE_RUNNING;
}

/* True for the agent's own threads (exporter, uploader). */
bool pa_agent_is_own_thread(pid_t tid);
/* An agent thread calls this first: marks itself busy and agent-owned
 * (never sampled, its allocations never profiled), blocks every signal
 * (the host's handlers never run on an agent thread). */
void pa_agent_thread_init(void);

typedef int (*pa_pthread_create_fn)(pthread_t *, const pthread_attr_t *,
				    void *(*)(void *), void *);

/* Starts the thread through a trampoline that arms its CPU timer and
 * disarms it when the thread ends (return, pthread_exit or cancel). A
 * thread started by an agent thread (libcurl's resolver) is an agent
 * thread itself. */
int pa_lifecycle_pthread_create(pa_pthread_create_fn real, pthread_t *thread,
				const pthread_attr_t *attr,
				void *(*start)(void *), void *arg);

#endif
