/* The agent thread: drain samples, unwind, aggregate, and every interval
 * build the profiles and hand them to the sinks. Never sampled itself. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "cpu.h"
#include "export.h"
#include "filesink.h"
#include "heap.h"
#include "log.h"
#include "memprof.h"
#include "modules.h"
#include "oom.h"
#include "pprof.h"
#include "symbols.h"
#include "thread.h"
#include "unwind.h"
#include "upload.h"

#define MAX_FRAMES 256
/* The drain's pace: every 20 ms when samples trickle in; every 2 ms after
 * a drain that found DRAIN_BUSY or more (heap sampling can bring tens of
 * thousands a second: the ring must not fill between two drains); at once
 * after one that stopped at its budget. */
#define DRAIN_PERIOD_NS	 (20 * 1000000LL)
#define DRAIN_BUSY_NS	 (2 * 1000000LL)
#define DRAIN_BUSY	 64
#define DRAIN_BUDGET	 8192
#define RESCAN_PERIOD_NS (1000 * 1000000LL)
/* A forked child's exporter waits this long before its start: most
 * children exec or exit first, and cost no more than a thread. */
#define CHILD_DELAY_NS (100 * 1000000LL)
/* Pyroscope's limits: 16000 samples; one profile past ~2 MiB
 * uncompressed is always answered 429. */
#define MAX_SAMPLES 15000
#define MAX_BYTES   (1800 * 1024)
#define MAX_STACKS  50000

static const struct pa_pprof_type cpu_types[] = {
    {"samples", "count"},
    {"cpu", "nanoseconds"},
};
static const struct pa_pprof_type mem_types[] = {
    {"alloc_objects", "count"},
    {"alloc_space", "bytes"},
    {"inuse_objects", "count"},
    {"inuse_space", "bytes"},
};

struct exporter {
	struct pa_modules *mods;
	struct pa_symbols *syms;
	struct pa_unwind *uw;
	struct pa_pprof *cpu;
	struct pa_pprof *mem;
	struct pa_memprof *heap;
	struct pa_oom *oom;
	int64_t start_wall_ns, start_mono_ns;
	/* The memory profile's own interval: the OOM guard may cut it short. */
	int64_t mem_start_wall_ns, mem_start_mono_ns;
	uint64_t seq_cpu, seq_mem;
	uint64_t unwind_failures;
	uint64_t reported_drops;
	int sink_ok;
	uint64_t pcs[MAX_FRAMES];
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	int running;
	int stop;    /* asked to do the final interval and quit */
	int stopped; /* final interval delivered */
	int delayed; /* a forked child's exporter: start after CHILD_DELAY_NS */
	int abandoned; /* exit stopped waiting: start no uploader any more */
} ctl = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0};

static int sink_ok; /* PYROAGENT_OUTPUT_DIR was usable at start */

static int64_t now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* dl_iterate_phdr holds the loader's write lock, which fork does not
 * reset: inside the fork gate (thread.h). Called with the modules read
 * lock held. */
static void refresh_modules(struct exporter *e)
{
	pa_gate_enter();
	pa_modules_refresh(e->mods, false);
	pa_gate_leave();
}

/* Returns how many samples it took. */
static int drain(struct exporter *e)
{
	pa_modules_read_lock();
	refresh_modules(e);
	struct pa_sample *s;
	int budget = DRAIN_BUDGET;
	for (; budget > 0 && (s = pa_ring_next(pa_agent.ring)); budget--) {
		if (s->kind == PA_SAMPLE_MUNMAP ||
		    s->kind == PA_SAMPLE_MREMAP) {
			/* Mapping events carry no stack; every one must reach
			 * the region table, in order. */
			if (e->heap)
				pa_memprof_consume(e->heap, s, NULL, 0);
			pa_ring_release(pa_agent.ring, s);
			continue;
		}
		int n = pa_unwind_sample(e->uw, s, e->pcs, MAX_FRAMES);
		if (s->kind != PA_SAMPLE_CPU) {
			/* Even without a stack: live entries and mappings need
			 * their sample consumed (memprof counts the failure).
			 */
			if (e->heap)
				pa_memprof_consume(e->heap, s, e->pcs,
						   n > 0 ? n : 0);
		} else if (n <= 0) {
			e->unwind_failures++;
		} else {
			pa_pprof_add(e->cpu, e->pcs, n, NULL, s->values);
		}
		pa_ring_release(pa_agent.ring, s);
	}
	pa_modules_read_unlock();
	return DRAIN_BUDGET - budget;
}

static void deliver(struct exporter *e, struct pa_pprof *p, const char *name,
		    const char *kind, uint64_t *seq, int64_t start_wall,
		    int64_t duration, const struct pa_label *extra, int nextra)
{
	uint8_t *gz = NULL;
	size_t len = 0;
	int rc = pa_pprof_encode(p, e->mods, e->syms, start_wall, duration, &gz,
				 &len);
	pa_pprof_reset(p);
	if (rc != 0) {
		pa_log_once(
		    PA_LOG_WARN,
		    "could not encode a %s profile (errno %d): interval lost",
		    kind, -rc);
		return;
	}
	++*seq;
	const struct pa_config *cfg = &pa_agent.cfg;
	if (cfg->output_dir && e->sink_ok) {
		rc = pa_filesink_write(cfg->output_dir, cfg->application_name,
				       pa_agent.pid, kind, *seq, gz, len);
		if (rc != 0)
			pa_log_once(PA_LOG_WARN,
				    "could not write profiles to %s (errno %d)",
				    cfg->output_dir, -rc);
	}
	if (cfg->upload)
		/* The start, as in the profile's time_nanos: what Pyroscope's
		 * ingestion window and the spool's order go by. */
		pa_upload_enqueue_labels(name, gz, len, start_wall, extra,
					 nextra);
	else
		free(gz);
}

/* CPU samples lost since the process (or forked child) started: the ring
 * counts every record it refused, heap samples and mapping events too,
 * which the memory profile reports itself. */
static uint64_t cpu_drops(void)
{
	uint64_t ring = pa_ring_dropped(pa_agent.ring);
	uint64_t heap =
	    __atomic_load_n(&pa_heap.stats.ring_full_alloc, __ATOMIC_RELAXED) +
	    __atomic_load_n(&pa_heap.stats.ring_full_mmap, __ATOMIC_RELAXED) +
	    __atomic_load_n(&pa_heap.stats.ring_full_unmap, __ATOMIC_RELAXED);
	/* Read at slightly different moments: never below zero. */
	return (ring > heap ? ring - heap : 0) +
	       __atomic_load_n(&pa_agent.drops_busy, __ATOMIC_RELAXED);
}

static void add_drop_comment(struct exporter *e)
{
	uint64_t drops = cpu_drops();
	if (drops < e->reported_drops)
		e->reported_drops = drops; /* the heap counts overtook a read */
	if (drops == e->reported_drops && !e->unwind_failures)
		return;
	char text[160];
	snprintf(text, sizeof(text),
		 "pyroagent: %llu samples dropped, %llu not unwound",
		 (unsigned long long)(drops - e->reported_drops),
		 (unsigned long long)e->unwind_failures);
	pa_pprof_comment(e->cpu, text);
	e->reported_drops = drops;
	e->unwind_failures = 0;
}

/* The label that lets a user find the OOM guard's out-of-cycle profiles. */
static const struct pa_label oom_labels[] = {
    {"pyroagent_trigger", "oom_guard"}};

/* The memory profile: every interval, or at once when the OOM guard fires
 * (ev set): then labelled, with a comment saying why, and the next
 * regular profile covers the time since. The caller holds the modules
 * read lock. */
static void emit_memory(struct exporter *e, int64_t now_wall, int64_t now_mono,
			const struct pa_oom_event *ev)
{
	if (!e->heap)
		return;
	if (pa_memprof_profile(e->heap, e->mem) != 0) {
		pa_pprof_reset(e->mem);
		return;
	}
	if (ev) {
		char text[256];
		const struct pa_oom_limit *l = ev->limit;
		if (l)
			snprintf(text, sizeof(text),
				 "pyroagent: oom_guard: %s at %d%% of the "
				 "memory limit "
				 "(%lld of %lld bytes, %s)",
				 ev->null_alloc ? "an allocation failed"
						: "memory use",
				 ev->pct, (long long)ev->usage,
				 (long long)l->limit,
				 pa_oom_source_name(l->source));
		else
			snprintf(text, sizeof(text),
				 "pyroagent: oom_guard: an allocation failed "
				 "(no memory limit found)");
		pa_pprof_comment(e->mem, text);
	}
	deliver(e, e->mem, "memory", "memory", &e->seq_mem,
		e->mem_start_wall_ns, now_mono - e->mem_start_mono_ns,
		ev ? oom_labels : NULL, ev ? 1 : 0);
	e->mem_start_wall_ns = now_wall;
	e->mem_start_mono_ns = now_mono;
}

static void emit(struct exporter *e)
{
	int64_t now_wall = now_ns(CLOCK_REALTIME);
	int64_t now_mono = now_ns(CLOCK_MONOTONIC);
	int64_t duration = now_mono - e->start_mono_ns;
	pa_modules_read_lock();
	refresh_modules(e);
	add_drop_comment(e);
	deliver(e, e->cpu, "process_cpu", "cpu", &e->seq_cpu, e->start_wall_ns,
		duration, NULL, 0);
	emit_memory(e, now_wall, now_mono, NULL);
	pa_modules_read_unlock();
	e->start_wall_ns = now_wall;
	e->start_mono_ns = now_mono;
}

static int exporter_init(struct exporter *e)
{
	const struct pa_config *cfg = &pa_agent.cfg;
	int rc;
	if ((rc = pa_modules_new(&e->mods)) || (rc = pa_symbols_new(&e->syms)))
		return rc;
	pa_modules_set_forget(e->mods, pa_symbols_forget);
	if ((rc = pa_unwind_new(&e->uw, e->mods)))
		return rc;
	struct pa_pprof_desc cd = {
	    .sample_types = cpu_types,
	    .ntypes = 2,
	    .period_type = {"cpu", "nanoseconds"},
	    .period = cfg->profiling_interval_ns,
	    .max_samples = MAX_SAMPLES,
	    .max_bytes = MAX_BYTES,
	    .max_stacks = MAX_STACKS,
	};
	if ((rc = pa_pprof_new(&e->cpu, &cd)))
		return rc;
	if (cfg->alloc_rate > 0) {
		struct pa_pprof_desc md = {
		    .sample_types = mem_types,
		    .ntypes = 4,
		    .period_type = {"space", "bytes"},
		    .period = cfg->alloc_rate,
		    .max_samples = MAX_SAMPLES,
		    .max_bytes = MAX_BYTES,
		    .max_stacks = MAX_STACKS,
		};
		if ((rc = pa_pprof_new(&e->mem, &md)) ||
		    (rc = pa_memprof_new(&e->heap, cfg)) ||
		    (rc = pa_oom_new(&e->oom, cfg, NULL)))
			return rc;
	}
	e->sink_ok = sink_ok;
	if (cfg->upload) {
		/* Not once exit gave up waiting for us: an uploader started
		 * then would run libcurl under the host's exit handlers. */
		pthread_mutex_lock(&ctl.mu);
		rc = ctl.abandoned ? -ECANCELED
				   : pa_upload_start(cfg, pa_agent_thread_init);
		pthread_mutex_unlock(&ctl.mu);
		if (rc)
			return rc;
	}
	e->start_wall_ns = e->mem_start_wall_ns = now_ns(CLOCK_REALTIME);
	e->start_mono_ns = e->mem_start_mono_ns = now_ns(CLOCK_MONOTONIC);
	return 0;
}

/* At exit the agent's threads park rather than end: a thread's teardown
 * runs TSD destructors (OpenSSL's thread cleanup among them) that must not
 * race with the host's exit handlers. Every signal is blocked here. */
static void park(void)
{
	for (;;)
		pause();
}

/* A forked child's exporter: waits CHILD_DELAY_NS or until exit. Returns
 * 0 to go on, -1 when the child exits with nothing sampled. */
static int child_delay(void)
{
	int64_t until_ns = now_ns(CLOCK_REALTIME) + CHILD_DELAY_NS;
	struct timespec until = {until_ns / 1000000000LL,
				 until_ns % 1000000000LL};
	pthread_mutex_lock(&ctl.mu);
	while (!ctl.stop)
		if (pthread_cond_timedwait(&ctl.cv, &ctl.mu, &until) ==
		    ETIMEDOUT)
			break;
	int skip = ctl.stop && !pa_ring_next(pa_agent.ring);
	if (skip) {
		ctl.stopped = 1;
		pthread_cond_broadcast(&ctl.cv);
	}
	pthread_mutex_unlock(&ctl.mu);
	return skip ? -1 : 0;
}

static void *exporter_main(void *arg)
{
	(void)arg;
	pa_agent_thread_init();
	if (ctl.delayed && child_delay() != 0)
		park();
	struct exporter *e = calloc(1, sizeof(*e));
	int rc = e ? exporter_init(e) : -ENOMEM;
	if (rc != 0) {
		pa_error(
		    "agent thread could not start (errno %d): profiling off",
		    -rc);
		__atomic_store_n(&pa_agent.state, PA_STATE_OFF,
				 __ATOMIC_RELAXED);
	}
	int64_t interval = pa_agent.cfg.upload_interval_ns;
	int64_t next_emit = now_ns(CLOCK_MONOTONIC) + interval;
	int64_t next_rescan = now_ns(CLOCK_MONOTONIC) + RESCAN_PERIOD_NS;
	/* Busy pace first: a host that allocates at once fills the ring
	 * before the first stack top hints make its samples short. */
	int64_t wait_ns = DRAIN_BUSY_NS;
	pthread_mutex_lock(&ctl.mu);
	while (rc == 0 && !ctl.stop) {
		if (wait_ns > 0) {
			struct timespec until;
			int64_t wake = now_ns(CLOCK_REALTIME) + wait_ns;
			until.tv_sec = wake / 1000000000LL;
			until.tv_nsec = wake % 1000000000LL;
			pthread_cond_timedwait(&ctl.cv, &ctl.mu, &until);
		}
		if (ctl.stop)
			break;
		pthread_mutex_unlock(&ctl.mu);
		int took = drain(e);
		wait_ns = took >= DRAIN_BUDGET ? 0
			  : took >= DRAIN_BUSY ? DRAIN_BUSY_NS
					       : DRAIN_PERIOD_NS;
		int64_t now = now_ns(CLOCK_MONOTONIC);
		struct pa_oom_event ev;
		if (e->oom && pa_oom_poll(e->oom, now, &ev)) {
			pa_modules_read_lock();
			refresh_modules(e);
			emit_memory(e, now_ns(CLOCK_REALTIME), now, &ev);
			pa_modules_read_unlock();
		}
		if (now >= next_rescan) {
			pa_cpu_rescan();
			next_rescan = now + RESCAN_PERIOD_NS;
		}
		if (now >= next_emit) {
			emit(e);
			next_emit += interval;
			if (next_emit < now)
				next_emit = now + interval;
		}
		pthread_mutex_lock(&ctl.mu);
	}
	pthread_mutex_unlock(&ctl.mu);
	if (rc == 0) {
		/* The final interval: what the host did since the last one
		 * (the ring may hold more than one budget; other threads may
		 * still be producing: a bounded number of rounds). */
		for (int round = 0; round < 16 && drain(e) >= DRAIN_BUDGET;
		     round++)
			;
		emit(e);
	}
	pthread_mutex_lock(&ctl.mu);
	ctl.stopped = 1;
	pthread_cond_broadcast(&ctl.cv);
	int exiting = ctl.stop;
	pthread_mutex_unlock(&ctl.mu);
	/* The exporter's tables stay allocated: the process is exiting and
	 * late hooks may still look at them. */
	if (exiting)
		park();
	return NULL;
}

/* Agent threads start with every signal blocked, so no host handler runs
 * on one even before it blocks them itself. */
static int start_thread(void)
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	/* Through the real pthread_create: the wrapper skips busy threads. */
	int rc = pthread_create(&ctl.thread, &attr, exporter_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc != 0)
		return -rc;
	ctl.running = 1;
	return 0;
}

int pa_export_start(void)
{
	/* Checked here, on the host's thread at load, so a bad directory is
	 * reported even by a process that exits at once. */
	const struct pa_config *cfg = &pa_agent.cfg;
	if (cfg->output_dir) {
		int rc = pa_filesink_prepare(cfg->output_dir);
		if (rc != 0)
			pa_warn("PYROAGENT_OUTPUT_DIR=%s is not usable (errno "
				"%d): no profile files",
				cfg->output_dir, -rc);
		sink_ok = rc == 0;
	}
	return start_thread();
}

void pa_export_stop(int64_t timeout_ns)
{
	if (!ctl.running)
		return;
	int64_t deadline = now_ns(CLOCK_REALTIME) + timeout_ns;
	struct timespec until = {deadline / 1000000000LL,
				 deadline % 1000000000LL};
	pthread_mutex_lock(&ctl.mu);
	ctl.stop = 1;
	pthread_cond_broadcast(&ctl.cv);
	while (!ctl.stopped)
		if (pthread_cond_timedwait(&ctl.cv, &ctl.mu, &until) ==
		    ETIMEDOUT)
			break;
	ctl.abandoned = 1;
	pthread_mutex_unlock(&ctl.mu);
	ctl.running = 0;
	if (pa_agent.cfg.upload) {
		int64_t left = deadline - now_ns(CLOCK_REALTIME);
		pa_upload_stop(now_ns(CLOCK_MONOTONIC) + (left > 0 ? left : 0));
	}
}

void pa_export_atfork_child(void)
{
	pa_thread_reset_lock(&ctl.mu, &ctl.cv);
	ctl.running = 0;
	ctl.stop = 0;
	ctl.stopped = 0;
	ctl.abandoned = 0;
	pa_upload_atfork_child();
	if (!pa_agent_running())
		return;
	/* The child's own exporter, which starts the child's uploader. */
	ctl.delayed = 1;
	if (start_thread() != 0) {
		__atomic_store_n(&pa_agent.state, PA_STATE_OFF,
				 __ATOMIC_RELAXED);
		pa_warn("could not start the agent thread in the forked child: "
			"it is not profiled");
	}
}
