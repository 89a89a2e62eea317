/* Lifecycle: load-time constructor, thread start/exit, fork, exit flush. */
#include <curl/curl.h>
#include <errno.h>
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
#define RING_SLOTS 512

struct pa_agent pa_agent;

static pthread_key_t exit_key;
static int exit_key_ok;
/* SIGPROF is blocked across fork (PITFALLS 5); the mask to restore. */
static __thread sigset_t fork_mask __attribute__((tls_model("initial-exec")));

bool pa_agent_is_own_thread(pid_t tid)
{
	for (size_t i = 0; i < sizeof(pa_agent.own_tids) / sizeof(pa_agent.own_tids[0]); i++)
		if (__atomic_load_n(&pa_agent.own_tids[i], __ATOMIC_RELAXED) == tid)
			return true;
	return false;
}

void pa_agent_thread_init(void)
{
	pa_self.busy = 1;
	pa_self.is_agent = 1;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGPROF);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pid_t tid = (pid_t)syscall(SYS_gettid);
	pa_self.tid = (uint32_t)tid;
	for (size_t i = 0; i < sizeof(pa_agent.own_tids) / sizeof(pa_agent.own_tids[0]); i++) {
		pid_t zero = 0;
		if (__atomic_compare_exchange_n(&pa_agent.own_tids[i], &zero, tid, false,
						__ATOMIC_RELAXED, __ATOMIC_RELAXED))
			break;
	}
}

/* ---- host threads ---------------------------------------------------------- */

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

int pa_lifecycle_pthread_create(pa_pthread_create_fn real, pthread_t *thread,
				const pthread_attr_t *attr,
				void *(*start)(void *), void *arg)
{
	if (!pa_agent_running() || pa_self.busy)
		return real(thread, attr, start, arg);
	pa_self.busy = 1;
	struct start *st = malloc(sizeof(*st));
	pa_self.busy = 0;
	if (!st)
		return real(thread, attr, start, arg);
	st->fn = start;
	st->arg = arg;
	int rc = real(thread, attr, trampoline, st);
	if (rc != 0)
		free(st);
	return rc;
}

/* ---- fork and exit ----------------------------------------------------------- */

static void fork_prepare(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGPROF);
	pthread_sigmask(SIG_BLOCK, &set, &fork_mask);
}

static void fork_parent(void)
{
	pthread_sigmask(SIG_SETMASK, &fork_mask, NULL);
}

static void fork_child(void)
{
	/* The agent's threads are gone and their locks may be held: the
	 * child runs passive (hooks forward only). */
	__atomic_store_n(&pa_agent.state, PA_STATE_OFF, __ATOMIC_RELAXED);
	pa_cpu_atfork_child();
	pa_modules_atfork_child();
	pa_export_atfork_child();
	memset(pa_agent.own_tids, 0, sizeof(pa_agent.own_tids));
	pthread_sigmask(SIG_SETMASK, &fork_mask, NULL);
}

static void on_exit_flush(void)
{
	if (getpid() != pa_agent.pid || !pa_agent_running())
		return;
	pa_self.busy = 1;
	__atomic_store_n(&pa_agent.state, PA_STATE_STOPPING, __ATOMIC_RELAXED);
	pa_cpu_stop();
	pa_export_stop(pa_agent.cfg.exit_timeout_ns);
	pa_self.busy = 0;
}

/* ---- load ------------------------------------------------------------------- */

static bool process_selected(const char *filter)
{
	if (!filter || !*filter)
		return true;
	const char *name = program_invocation_short_name;
	size_t len = strlen(name);
	for (const char *p = filter; *p;) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		while (n && (*p == ' ')) {
			p++;
			n--;
		}
		while (n && p[n - 1] == ' ')
			n--;
		if (n == len && memcmp(p, name, n) == 0)
			return true;
		if (n == 1 && *p == '*')
			return true;
		if (!end)
			break;
		p = end + 1;
	}
	return false;
}

__attribute__((constructor)) static void pa_agent_load(void)
{
	int saved = errno;
	pa_self.busy = 1;
	pa_config_load(&pa_agent.cfg);
	const struct pa_config *cfg = &pa_agent.cfg;
	pa_log_level = cfg->log_level;
	if (cfg->disable) {
		pa_debug("disabled by PYROAGENT_DISABLE");
		goto out;
	}
	if (!process_selected(cfg->process_filter)) {
		pa_debug("%s does not match PYROAGENT_PROCESS_FILTER: not profiling",
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
	exit_key_ok = pthread_key_create(&exit_key, on_thread_exit) == 0;
	/* Heap sampling: countdowns become real draws, the live table is
	 * mapped; hooks record only once the state below is RUNNING. */
	pa_heap_start(cfg, pa_agent.ring, &pa_agent.state);
	if (cfg->alloc_rate > 0)
		pa_heap_check_interposed();
	__atomic_store_n(&pa_agent.state, PA_STATE_RUNNING, __ATOMIC_RELAXED);
	if (pa_export_start() != 0) {
		__atomic_store_n(&pa_agent.state, PA_STATE_OFF, __ATOMIC_RELAXED);
		pa_error("could not start the agent thread: profiling off");
		goto out;
	}
	int rc = pa_cpu_start(cfg);
	if (rc != 0)
		pa_warn("CPU sampling unavailable (errno %d); other profiles go on", -rc);
	/* After curl (and OpenSSL) registered their exit handlers, so this
	 * one runs before their cleanup (PITFALLS 10). */
	atexit(on_exit_flush);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
	pa_info("pyroagent %s profiling %s (pid %d): cpu every %lld us (%s), heap every %lld bytes, "
		"upload every %lld ms to %s%s%s",
		PA_VERSION, cfg->application_name, (int)pa_agent.pid,
		(long long)(cfg->profiling_interval_ns / 1000),
		cfg->event == PA_EVENT_ITIMER ? "itimer" : "per-thread cpu timers",
		(long long)cfg->alloc_rate, (long long)(cfg->upload_interval_ns / 1000000),
		cfg->upload ? cfg->server_address : "(no server)",
		cfg->output_dir ? " and files in " : "", cfg->output_dir ? cfg->output_dir : "");
out:
	pa_self.busy = 0;
	errno = saved;
}
