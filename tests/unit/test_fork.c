/* fork and the agent's state: the fork gate (thread.c) and the heap's
 * fresh start in a forked child / silence in a vfork child (heap.c). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "heap.h"
#include "live.h"
#include "ring.h"
#include "thread.h"
#include "unit.h"

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
	struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&d, &d) != 0 && errno == EINTR)
		;
}

/* ---- the fork gate --------------------------------------------------------
 */

struct holder {
	int hold_ms;  /* inside the gate for this long */
	int pause_ms; /* then "in poll" (paused) for this long */
	int inside;   /* atomic: read by the test's thread */
	volatile int resumed_at_ms;
};

static void *gate_holder(void *arg)
{
	struct holder *h = arg;
	pa_gate_enter();
	__atomic_store_n(&h->inside, 1, __ATOMIC_RELEASE);
	sleep_ms(h->hold_ms);
	if (h->pause_ms) {
		pa_gate_pause();
		sleep_ms(h->pause_ms);
		double t0 = mono();
		pa_gate_resume();
		h->resumed_at_ms = (int)((mono() - t0) * 1000);
	}
	pa_gate_leave();
	__atomic_store_n(&h->inside, 0, __ATOMIC_RELEASE);
	return NULL;
}

static void wait_inside(struct holder *h)
{
	while (!__atomic_load_n(&h->inside, __ATOMIC_ACQUIRE))
		sleep_ms(1);
}

TEST(thread_gate_fork_waits_for_an_agent_thread_inside)
{
	struct holder h = {.hold_ms = 60};
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, gate_holder, &h), 0);
	wait_inside(&h);
	double t0 = mono();
	/* 60 ms inside is past the bound: the fork goes after ~20 ms. */
	CHECK_EQ_INT(pa_gate_fork_prepare(), 0);
	double waited = mono() - t0;
	CHECK(waited >= 0.015 && waited < 0.055);
	pa_gate_fork_parent();
	/* The same holder does not delay the next fork again. */
	t0 = mono();
	CHECK_EQ_INT(pa_gate_fork_prepare(), 0);
	CHECK(mono() - t0 < 0.010);
	pa_gate_fork_parent();
	pthread_join(t, NULL);
	/* Free again: no wait, and clear. */
	t0 = mono();
	CHECK_EQ_INT(pa_gate_fork_prepare(), 1);
	CHECK(mono() - t0 < 0.010);
	pa_gate_fork_parent();
}

TEST(thread_gate_fork_waits_for_a_short_stay)
{
	struct holder h = {.hold_ms = 8};
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, gate_holder, &h), 0);
	wait_inside(&h);
	/* Within the bound: the fork waits until the agent thread left. */
	CHECK_EQ_INT(pa_gate_fork_prepare(), 1);
	CHECK(!__atomic_load_n(&h.inside, __ATOMIC_ACQUIRE) ||
	      pa_self.gate_depth == 0);
	pa_gate_fork_parent();
	pthread_join(t, NULL);
}

TEST(thread_gate_poll_lets_forks_through)
{
	struct holder h = {.hold_ms = 2, .pause_ms = 100};
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, gate_holder, &h), 0);
	wait_inside(&h);
	sleep_ms(20); /* now paused, "in poll" */
	double t0 = mono();
	CHECK_EQ_INT(pa_gate_fork_prepare(), 1);
	CHECK(mono() - t0 < 0.015);
	/* While the fork is in progress the agent thread does not get back
	 * in: it waits for the parent handler. */
	sleep_ms(120);
	pa_gate_fork_parent();
	pthread_join(t, NULL);
	CHECK(h.resumed_at_ms >= 10);
}

TEST(thread_gate_nests_and_child_resets)
{
	pa_gate_enter();
	pa_gate_enter();
	CHECK_EQ_INT(pa_self.gate_depth, 2);
	pa_gate_leave();
	CHECK_EQ_INT(pa_self.gate_depth, 1);
	/* A fork now (held by this thread: a fork from an agent thread
	 * does not happen; the bound ends the wait). */
	pid_t pid = fork();
	if (pid == 0) {
		pa_gate_fork_child();
		/* Nothing inherited: a fork in the child does not wait. */
		double t0 = mono();
		int clear = pa_gate_fork_prepare();
		pa_gate_fork_parent();
		_exit(clear == 1 && mono() - t0 < 0.010 &&
			      pa_self.gate_depth == 0
			  ? 0
			  : 1);
	}
	int st;
	CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	pa_gate_leave();
	CHECK_EQ_INT(pa_self.gate_depth, 0);
	pa_gate_leave(); /* unbalanced: ignored */
	CHECK_EQ_INT(pa_self.gate_depth, 0);
}

/* ---- the heap after fork
 * ----------------------------------------------------- */

static int fork_heap_state = PA_STATE_RUNNING;

static struct pa_ring *fork_heap_setup(void)
{
	struct pa_ring *ring;
	struct pa_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.alloc_rate = 1; /* every allocation */
	cfg.alloc_live = true;
	CHECK_EQ_INT(pa_ring_new(&ring, 64), 0);
	pa_heap_start(&cfg, ring, &fork_heap_state);
	pa_self.alloc_countdown = 0;
	pa_self.rng = 0;
	pa_heap_free(pa_heap_malloc(1)); /* ends the placeholder countdown */
	return ring;
}

static int ring_count(struct pa_ring *ring)
{
	int n = 0;
	struct pa_sample *s;
	while ((s = pa_ring_next(ring))) {
		n++;
		pa_ring_release(ring, s);
	}
	return n;
}

static int in_live_table(const void *p)
{
	struct pa_live_entry e;
	return pa_heap.live &&
	       pa_live_find(pa_heap.live, (uint64_t)(uintptr_t)p, &e);
}

TEST(heap_atfork_child_starts_fresh)
{
	struct pa_ring *ring = fork_heap_setup();
	ring_count(ring);
	void *inherited = pa_heap_malloc(1000);
	CHECK(in_live_table(inherited));
	CHECK_EQ_INT(ring_count(ring), 1);
	/* A sample reserved and never committed, as a parent thread in the
	 * middle of a hook at fork time leaves it. */
	CHECK(pa_ring_reserve(ring) != NULL);
	pid_t pid = fork();
	if (pid == 0) {
		struct pa_ring *fresh;
		if (pa_ring_new(&fresh, 64) != 0)
			_exit(10);
		struct pa_live *old_table = pa_heap.live;
		pa_heap_atfork_child(fresh);
		if (pa_heap.ring != fresh || pa_heap.live == old_table ||
		    !pa_heap.live)
			_exit(11);
		/* The parent's entries are gone; freeing the inherited block
		 * is a plain free. */
		if (in_live_table(inherited))
			_exit(12);
		pa_heap_free(inherited);
		/* New samples reach the fresh ring, and only it. */
		void *mine = pa_heap_malloc(2000);
		if (ring_count(fresh) != 1 || !in_live_table(mine))
			_exit(13);
		if (pa_heap.regions != 0 || pa_heap.stats.ring_full_alloc != 0)
			_exit(14);
		pa_heap_free(mine);
		if (in_live_table(mine))
			_exit(15);
		_exit(0);
	}
	int st;
	CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
	CHECK(WIFEXITED(st));
	CHECK_EQ_INT(WEXITSTATUS(st), 0);
	/* The parent's state is its own. */
	CHECK(in_live_table(inherited));
	pa_heap_free(inherited);
	CHECK(!in_live_table(inherited));
}

TEST(heap_vfork_child_records_nothing)
{
	struct pa_ring *ring = fork_heap_setup();
	ring_count(ring);
	int before_busy = pa_self.busy;
	/* What preload.c's vfork does first (unit tests call libc's). */
	pa_heap_note_shared_vm();
	pid_t pid = vfork();
	if (pid == 0) {
		/* Shares the parent's memory and runs no atfork handler. */
		void *p = pa_heap_malloc(1 << 20);
		pa_heap_free(p);
		_exit(0);
	}
	int st;
	CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
	CHECK_EQ_INT(ring_count(ring), 0);
	CHECK_EQ_INT(pa_self.busy, before_busy);
	/* And the parent still records. */
	void *q = pa_heap_malloc(100);
	CHECK_EQ_INT(ring_count(ring), 1);
	pa_heap_free(q);
}
