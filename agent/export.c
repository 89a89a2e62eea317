/* The agent thread: drain samples, unwind, aggregate, and every interval
 * build the profiles and hand them to the sinks. Never sampled itself. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "cpu.h"
#include "export.h"
#include "filesink.h"
#include "memprof.h"
#include "log.h"
#include "modules.h"
#include "pprof.h"
#include "symbols.h"
#include "thread.h"
#include "unwind.h"
#include "upload.h"

#define MAX_FRAMES       256
#define DRAIN_PERIOD_NS  (20 * 1000000LL)
#define RESCAN_PERIOD_NS (1000 * 1000000LL)
/* Pyroscope's limits: 16000 samples; one profile past ~2 MiB
 * uncompressed is always answered 429. */
#define MAX_SAMPLES      15000
#define MAX_BYTES        (1800 * 1024)
#define MAX_STACKS       50000

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
	int64_t start_wall_ns, start_mono_ns;
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
} ctl = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};

static int64_t now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void drain(struct exporter *e)
{
	pa_modules_read_lock();
	pa_modules_refresh(e->mods, false);
	struct pa_sample *s;
	for (int budget = 8192; budget > 0 && (s = pa_ring_next(pa_agent.ring)); budget--) {
		int n = pa_unwind_sample(e->uw, s, e->pcs, MAX_FRAMES);
		if (n <= 0) {
			e->unwind_failures++;
		} else if (s->kind == PA_SAMPLE_CPU) {
			pa_pprof_add(e->cpu, e->pcs, n, NULL, s->values);
		} else if (e->heap) {
			pa_memprof_consume(e->heap, s, e->pcs, n);
		}
		pa_ring_release(pa_agent.ring, s);
	}
	pa_modules_read_unlock();
}

static void deliver(struct exporter *e, struct pa_pprof *p, const char *name,
		    const char *kind, uint64_t *seq, int64_t now_wall, int64_t duration)
{
	uint8_t *gz = NULL;
	size_t len = 0;
	int rc = pa_pprof_encode(p, e->mods, e->syms, e->start_wall_ns, duration, &gz, &len);
	pa_pprof_reset(p);
	if (rc != 0) {
		pa_log_once(PA_LOG_WARN, "could not encode a %s profile (errno %d): interval lost", kind, -rc);
		return;
	}
	++*seq;
	const struct pa_config *cfg = &pa_agent.cfg;
	if (cfg->output_dir && e->sink_ok) {
		rc = pa_filesink_write(cfg->output_dir, cfg->application_name, pa_agent.pid, kind,
				       *seq, gz, len);
		if (rc != 0)
			pa_log_once(PA_LOG_WARN, "could not write profiles to %s (errno %d)",
				    cfg->output_dir, -rc);
	}
	if (cfg->upload)
		pa_upload_enqueue(name, gz, len, now_wall);
	else
		free(gz);
}

static void add_drop_comment(struct exporter *e)
{
	uint64_t drops = pa_ring_dropped(pa_agent.ring) +
			 __atomic_load_n(&pa_agent.drops_busy, __ATOMIC_RELAXED);
	if (drops == e->reported_drops && !e->unwind_failures)
		return;
	char text[160];
	snprintf(text, sizeof(text), "pyroagent: %llu samples dropped, %llu not unwound",
		 (unsigned long long)(drops - e->reported_drops),
		 (unsigned long long)e->unwind_failures);
	pa_pprof_comment(e->cpu, text);
	e->reported_drops = drops;
	e->unwind_failures = 0;
}

static void emit(struct exporter *e)
{
	int64_t now_wall = now_ns(CLOCK_REALTIME);
	int64_t now_mono = now_ns(CLOCK_MONOTONIC);
	int64_t duration = now_mono - e->start_mono_ns;
	pa_modules_read_lock();
	pa_modules_refresh(e->mods, false);
	add_drop_comment(e);
	deliver(e, e->cpu, "process_cpu", "cpu", &e->seq_cpu, now_wall, duration);
	if (e->heap && pa_memprof_profile(e->heap, e->mem) == 0)
		deliver(e, e->mem, "memory", "memory", &e->seq_mem, now_wall, duration);
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
		.sample_types = cpu_types, .ntypes = 2,
		.period_type = {"cpu", "nanoseconds"}, .period = cfg->profiling_interval_ns,
		.max_samples = MAX_SAMPLES, .max_bytes = MAX_BYTES, .max_stacks = MAX_STACKS,
	};
	if ((rc = pa_pprof_new(&e->cpu, &cd)))
		return rc;
	if (cfg->alloc_rate > 0) {
		struct pa_pprof_desc md = {
			.sample_types = mem_types, .ntypes = 4,
			.period_type = {"space", "bytes"}, .period = cfg->alloc_rate,
			.max_samples = MAX_SAMPLES, .max_bytes = MAX_BYTES, .max_stacks = MAX_STACKS,
		};
		if ((rc = pa_pprof_new(&e->mem, &md)) || (rc = pa_memprof_new(&e->heap, cfg)))
			return rc;
	}
	if (cfg->output_dir) {
		rc = pa_filesink_prepare(cfg->output_dir);
		if (rc != 0)
			pa_warn("PYROAGENT_OUTPUT_DIR=%s is not usable (errno %d): no profile files",
				cfg->output_dir, -rc);
		e->sink_ok = rc == 0;
	}
	if (cfg->upload && (rc = pa_upload_start(cfg)))
		return rc;
	e->start_wall_ns = now_ns(CLOCK_REALTIME);
	e->start_mono_ns = now_ns(CLOCK_MONOTONIC);
	return 0;
}

static void *exporter_main(void *arg)
{
	(void)arg;
	pa_agent_thread_init();
	struct exporter *e = calloc(1, sizeof(*e));
	int rc = e ? exporter_init(e) : -ENOMEM;
	if (rc != 0) {
		pa_error("agent thread could not start (errno %d): profiling off", -rc);
		__atomic_store_n(&pa_agent.state, PA_STATE_OFF, __ATOMIC_RELAXED);
	}
	int64_t interval = pa_agent.cfg.upload_interval_ns;
	int64_t next_emit = now_ns(CLOCK_MONOTONIC) + interval;
	int64_t next_rescan = now_ns(CLOCK_MONOTONIC) + RESCAN_PERIOD_NS;
	pthread_mutex_lock(&ctl.mu);
	while (rc == 0 && !ctl.stop) {
		struct timespec until;
		int64_t wake = now_ns(CLOCK_REALTIME) + DRAIN_PERIOD_NS;
		until.tv_sec = wake / 1000000000LL;
		until.tv_nsec = wake % 1000000000LL;
		pthread_cond_timedwait(&ctl.cv, &ctl.mu, &until);
		if (ctl.stop)
			break;
		pthread_mutex_unlock(&ctl.mu);
		drain(e);
		int64_t now = now_ns(CLOCK_MONOTONIC);
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
		/* The final interval: what the host did since the last one. */
		drain(e);
		emit(e);
	}
	pthread_mutex_lock(&ctl.mu);
	ctl.stopped = 1;
	pthread_cond_broadcast(&ctl.cv);
	pthread_mutex_unlock(&ctl.mu);
	/* The exporter's tables stay allocated: the process is exiting and
	 * late hooks may still look at them. */
	return NULL;
}

int pa_export_start(void)
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	/* Through the real pthread_create: the wrapper skips busy threads. */
	int rc = pthread_create(&ctl.thread, &attr, exporter_main, NULL);
	pthread_attr_destroy(&attr);
	if (rc != 0)
		return -rc;
	ctl.running = 1;
	return 0;
}

void pa_export_stop(int64_t timeout_ns)
{
	if (!ctl.running)
		return;
	int64_t deadline = now_ns(CLOCK_REALTIME) + timeout_ns;
	struct timespec until = {deadline / 1000000000LL, deadline % 1000000000LL};
	pthread_mutex_lock(&ctl.mu);
	ctl.stop = 1;
	pthread_cond_broadcast(&ctl.cv);
	while (!ctl.stopped)
		if (pthread_cond_timedwait(&ctl.cv, &ctl.mu, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&ctl.mu);
	ctl.running = 0;
	if (pa_agent.cfg.upload) {
		int64_t left = deadline - now_ns(CLOCK_REALTIME);
		pa_upload_stop(now_ns(CLOCK_MONOTONIC) + (left > 0 ? left : 0));
	}
}

void pa_export_atfork_child(void)
{
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
	memcpy(&ctl.mu, &mu, sizeof(mu));
	memcpy(&ctl.cv, &cv, sizeof(cv));
	ctl.running = 0;
	ctl.stop = 0;
	ctl.stopped = 0;
	pa_upload_atfork_child();
}
