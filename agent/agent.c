/* Lifecycle: load-time constructor, threads, fork, exit flush. */
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "cpu.h"
#include "export.h"
#include "heap.h"
#include "log.h"
#include "modules.h"
#include "thread.h"

#define PA_VERSION "0.1.0"
/* The sample ring: room for 256 full-size samples (4.3 MiB); a sample
 * takes only the stack it copied (about 1 KiB after the first unwinds of
 * a thread), so this holds thousands. */
#define RING_SLOTS 256
#define NOWN	   (sizeof(pa_agent.own_tids) / sizeof(pa_agent.own_tids[0]))

struct pa_agent pa_agent;

static pthread_key_t exit_key;
static int exit_key_ok;
/* SIGPROF is blocked across fork (PITFALLS 5); the mask to restore. */
static __thread sigset_t fork_mask __attribute__((tls_model("initial-exec")));

bool pa_agent_is_own_thread(pid_t tid)
{
	for (size_t i = 0; i < NOWN; i++)
		if (__atomic_load_n(&pa_agent.own_tids[i], __ATOMIC_RELAXED) ==
		    tid)
			return true;
	return false;
}

void pa_agent_thread_init(void)
{
	pa_self.busy = 1;
	if (pa_self.is_agent)
		return; /* started as a helper (agent_helper) already */
	pa_self.is_agent = 1;
	/* Every signal: a process-directed signal then goes to a host
	 * thread, so no host handler (one that longjmps, say) ever runs on
	 * an agent thread. glibc keeps its internal signals (setxid,
	 * cancellation) deliverable. */
	sigset_t set;
	sigfillset(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pid_t tid = (pid_t)syscall(SYS_gettid);
	pa_self.tid = (uint32_t)tid;
	for (size_t i = 0; i < NOWN; i++) {
		pid_t zero = 0;
		if (__atomic_compare_exchange_n(&pa_agent.own_tids[i], &zero,
						tid, false, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			break;
	}
	/* A rescan that listed this thread before it was registered may
	 * have given it a timer. */
	pa_cpu_thread_stop();
}

static void forget_own_thread(void *unused)
{
	(void)unused;
	pid_t tid = (pid_t)pa_self.tid;
	for (size_t i = 0; i < NOWN; i++) {
		pid_t expect = tid;
		if (__atomic_compare_exchange_n(&pa_agent.own_tids[i], &expect,
						0, false, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			break;
	}
}

/* ---- host threads ----------------------------------------------------------
 */

struct start {
	void *(*fn)(void *);
	void *arg;
};

static void on_thread_exit(void *unused)
{
	(void)unused;
	pa_cpu_thread_stop();
}

static void *trampoline(void *p)
{
	struct start st = *(struct start *)p;
	pa_self.busy = 1;
	free(p);
	pa_thread_init_current();
	if (exit_key_ok)
		pthread_setspecific(exit_key, (void *)1);
	pa_cpu_thread_start();
	pa_self.busy = 0;
	return st.fn(st.arg);
}

/* A thread an agent thread starts (libcurl's threaded resolver): agent
 * code too, never sampled, signals blocked (inherited from its creator). */
static void *agent_helper(void *p)
{
	pa_agent_thread_init();
	struct start st = *(struct start *)p;
	free(p);
	void *ret;
	pthread_cleanup_push(forget_own_thread, NULL);
	ret = st.fn(st.arg);
	pthread_cleanup_pop(1);
	return ret;
}

int pa_lifecycle_pthread_create(pa_pthread_create_fn real, pthread_t *thread,
				const pthread_attr_t *attr,
				void *(*start)(void *), void *arg)
{
	int helper = pa_self.is_agent;
	if (!helper && (!pa_agent_running() || pa_self.busy))
		return real(thread, attr, start, arg);
	int busy = pa_self.busy;
	pa_self.busy = 1;
	struct start *st = malloc(sizeof(*st));
	pa_self.busy = busy;
	if (!st)
		return real(thread, attr, start, arg);
	st->fn = start;
	st->arg = arg;
	int rc = real(thread, attr, helper ? agent_helper : trampoline, st);
	if (rc != 0) {
		pa_self.busy = 1;
		free(st);
		pa_self.busy = busy;
	}
	return rc;
}

/* ---- fork
 * ---------------------------------------------------------------------- */

/*
 * prepare: SIGPROF blocked on the forking thread (a tick must not land in
 * the middle of clone: PITFALLS 5), then the fork gate: no agent thread is
 * inside foreign code that holds a lock glibc does not reset (thread.h).
 * Registered after libcurl (and OpenSSL) registered theirs, so this runs
 * first in prepare and last in the child.
 */
static void fork_prepare(void)
{
	int saved = errno;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGPROF);
	pthread_sigmask(SIG_BLOCK, &set, &fork_mask);
	pa_gate_fork_prepare();
	errno = saved;
}

static void fork_parent(void)
{
	int saved = errno;
	pa_gate_fork_parent();
	pthread_sigmask(SIG_SETMASK, &fork_mask, NULL);
	errno = saved;
}

/*
 * The child of a fork without exec is profiled as a process of its own:
 * its pid names its files, it gets a fresh sample ring (the parent's may
 * hold parent samples and slots that parent threads reserved and will
 * never commit here), a fresh live-heap table (the entries name stacks of
 * the parent's exporter), a timer for this thread, and its own exporter,
 * which waits a little before its heavy start: most children exec or
 * exit at once. Nothing of the parent's agent threads is touched: their
 * locks are reset, their buffers and curl handle dropped (never cleaned
 * up: a curl handle shares the parent's connection). Only this thread
 * exists here, and SIGPROF is blocked until the end.
 */
static int child_restart(void)
{
	struct pa_ring *ring;
	if (pa_ring_new(&ring, RING_SLOTS) != 0)
		return -ENOMEM;
	struct pa_ring *old = pa_agent.ring;
	pa_agent.ring = ring;
	pa_heap_atfork_child(ring);
	pa_ring_free(old);
	__atomic_store_n(&pa_agent.drops_busy, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&pa_agent.drops_capture, 0, __ATOMIC_RELAXED);
	return 0;
}

static void fork_child(void)
{
	int saved = errno;
	int busy = pa_self.busy;
	pa_self.busy = 1;
	pa_gate_fork_child();
	pa_modules_atfork_child();
	memset(pa_agent.own_tids, 0, sizeof(pa_agent.own_tids));
	pa_self.tid = (uint32_t)syscall(SYS_gettid);
	pa_agent.pid = getpid();
	int running = pa_agent_running();
	if (running && child_restart() != 0) {
		pa_warn("no memory for a sample buffer in the forked child: it "
			"is not profiled");
		running = 0;
	}
	if (!running)
		__atomic_store_n(&pa_agent.state, PA_STATE_OFF,
				 __ATOMIC_RELAXED);
	pa_cpu_atfork_child();
	/* Starts the child's exporter when the agent runs here. */
	pa_export_atfork_child();
	if (!pa_agent_running())
		pa_cpu_stop();
	pa_self.busy = busy;
	pthread_sigmask(SIG_SETMASK, &fork_mask, NULL);
	errno = saved;
}

/* ---- exit
 * -------------------------------------------------------------------- */

/*
 * Once per process, by the first thread that calls exit (any thread, with
 * other threads still running). After libcurl's and OpenSSL's exit
 * handlers were registered, so it runs before them (PITFALLS 10); bounded
 * by PYROAGENT_EXIT_TIMEOUT. The agent's threads park when done instead
 * of exiting: thread teardown (OpenSSL's thread-local cleanup) must not
 * race with the host's exit handlers. _exit and fatal signals skip it.
 */
static void on_exit_flush(void)
{
	if (getpid() != pa_agent.pid)
		return; /* a vfork or _Fork child */
	int expect = PA_STATE_RUNNING;
	if (!__atomic_compare_exchange_n(&pa_agent.state, &expect,
					 PA_STATE_STOPPING, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
		return;
	int saved = errno;
	int busy = pa_self.busy;
	pa_self.busy = 1;
	pa_cpu_stop();
	pa_export_stop(pa_agent.cfg.exit_timeout_ns);
	pa_self.busy = busy;
	errno = saved;
}

/* ---- load -------------------------------------------------------------------
 */

__attribute__((constructor)) static void pa_agent_load(void)
{
	int saved = errno;
	pa_self.busy = 1;
	pa_config_load(&pa_agent.cfg);
	const struct pa_config *cfg = &pa_agent.cfg;
	pa_log_level = cfg->log_level;
	/* Disabled or filtered out: a no-op agent. No thread, no timer, no
	 * handler, no file; the hooks forward. */
	if (cfg->disable) {
		pa_debug("disabled by PYROAGENT_DISABLE");
		goto out;
	}
	if (!pa_config_selects_self(cfg->process_filter)) {
		pa_debug(
		    "%s does not match PYROAGENT_PROCESS_FILTER: not profiling",
		    program_invocation_short_name);
		goto out;
	}
	pa_agent.pid = getpid();
	pa_thread_init_current();
	if (cfg->upload && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		pa_error("libcurl failed to initialise: profiling off");
		goto out;
	}
	if (pa_ring_new(&pa_agent.ring, RING_SLOTS) != 0) {
		pa_error("no memory for the sample buffer: profiling off");
		goto out;
	}
	pa_ring_warm(pa_agent.ring);
	exit_key_ok = pthread_key_create(&exit_key, on_thread_exit) == 0;
	/* Heap sampling: countdowns become real draws, the live table is
	 * mapped; hooks record only once the state below is RUNNING. */
	pa_heap_start(cfg, pa_agent.ring, &pa_agent.state);
	if (cfg->alloc_rate > 0)
		pa_heap_check_interposed();
	__atomic_store_n(&pa_agent.state, PA_STATE_RUNNING, __ATOMIC_RELAXED);
	if (pa_export_start() != 0) {
		__atomic_store_n(&pa_agent.state, PA_STATE_OFF,
				 __ATOMIC_RELAXED);
		pa_error("could not start the agent thread: profiling off");
		goto out;
	}
	int rc = pa_cpu_start(cfg);
	if (rc != 0 && rc != -EBUSY)
		pa_warn(
		    "CPU sampling unavailable (errno %d); other profiles go on",
		    -rc);
	/* After curl (and OpenSSL) registered their exit and fork handlers,
	 * so these run before their cleanup and first in prepare
	 * (PITFALLS 10). */
	atexit(on_exit_flush);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
	pa_info("pyroagent %s profiling %s (pid %d): cpu every %lld us (%s), "
		"heap every %lld bytes, "
		"upload every %lld ms to %s%s%s",
		PA_VERSION, cfg->application_name, (int)pa_agent.pid,
		(long long)(cfg->profiling_interval_ns / 1000),
		cfg->event == PA_EVENT_ITIMER ? "itimer"
					      : "per-thread cpu timers",
		(long long)cfg->alloc_rate,
		(long long)(cfg->upload_interval_ns / 1000000),
		cfg->upload ? cfg->server_address : "(no server)",
		cfg->output_dir ? " and files in " : "",
		cfg->output_dir ? cfg->output_dir : "");
out:
	pa_self.busy = 0;
	errno = saved;
}
