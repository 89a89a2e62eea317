/* The uploader: a bounded queue of encoded profiles and one thread that
 * pushes them to Pyroscope in order, retrying with backoff, spooling to
 * disk while the server is away; the host never waits on the network. */
#ifndef PA_UPLOAD_H
#define PA_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* The in-memory backlog: a hard cap on profiles and on their bytes. */
#define PA_UPLOAD_QUEUE_MAX   64
#define PA_UPLOAD_QUEUE_BYTES (32u << 20)
/* Extra series labels kept per profile (pa_upload_enqueue_labels). */
#define PA_UPLOAD_MAX_EXTRA 4
/* Retries: exponential backoff with jitter between these; a server's
 * Retry-After is honoured up to PA_UPLOAD_RETRY_AFTER_MAX_MS. */
#define PA_UPLOAD_BACKOFF_MIN_MS     500
#define PA_UPLOAD_BACKOFF_MAX_MS     30000
#define PA_UPLOAD_RETRY_AFTER_MAX_MS (5 * 60 * 1000)

/* Starts the uploader thread (it calls thread_init first, e.g.
 * pa_agent_thread_init, so it is never sampled; NULL for none). Keeps cfg,
 * which outlives it. With cfg->spool_dir, opens the spool (a bad directory
 * is logged and the uploader runs without it); files of this service left
 * there by an earlier process are replayed before anything new. Returns 0
 * or -errno (-EALREADY when running). */
int pa_upload_start(const struct pa_config *cfg, void (*thread_init)(void));

/* Queues one profile and returns: O(1) under a short mutex, never any I/O.
 * Takes ownership of gz (malloc'd). name is the __name__ label, a static
 * string; time_ns the profile's start (wall clock), which orders the
 * spool and decides when it is too old to send. When the backlog is full
 * the oldest profile not being sent is dropped and counted. */
void pa_upload_enqueue(const char *name, uint8_t *gz, size_t len,
		       int64_t time_ns);
/* The same with extra series labels for this profile only (e.g.
 * pyroagent_trigger="oom_guard"); extra must be static (kept by pointer),
 * at most PA_UPLOAD_MAX_EXTRA are used. They go into the spool with it. */
void pa_upload_enqueue_labels(const char *name, uint8_t *gz, size_t len,
			      int64_t time_ns, const struct pa_label *extra,
			      int nextra);

/* Exit: goes on delivering in order (what waits in the spool first), with
 * no retries, until the first failure or shortly before deadline_ns
 * (CLOCK_MONOTONIC: 1.2 s, or half the time left if less), then aborts a
 * send in flight (pa_push_abort) and puts what is left into the spool
 * (without one it is dropped and counted). Returns by deadline_ns plus the
 * time to write those files; if the uploader is still inside curl then,
 * the calling thread writes them itself. Logs one summary line when
 * anything was spooled, replayed or dropped. Further calls do nothing. */
void pa_upload_stop(int64_t deadline_ns);

/* Child after fork: forgets the parent's uploader (its thread does not
 * exist here, its curl handle shares the parent's socket and TLS state,
 * its queue belongs to the parent) without freeing or cleaning up any of
 * it; pa_upload_start then starts a fresh one. */
void pa_upload_atfork_child(void);

/* Counters since pa_upload_start, for tests and reports. Dropped are
 * dropped_full + dropped_old + refused + dropped_spool + dropped_exit. */
struct pa_upload_stats {
	uint64_t sent;		/* delivered from memory */
	uint64_t spooled;	/* written to the spool */
	uint64_t replayed;	/* delivered from the spool (any process's) */
	uint64_t retries;	/* failed sends that will be tried again */
	uint64_t dropped_full;	/* backlog full: the oldest dropped */
	uint64_t dropped_old;	/* past PYROAGENT_SPOOL_MAX_AGE (both places) */
	uint64_t refused;	/* refused for good by the server (4xx) */
	uint64_t dropped_spool; /* spool cap, failed write, corrupt file */
	uint64_t dropped_exit;	/* not delivered by the deadline, no spool */
};
void pa_upload_stats(struct pa_upload_stats *out);

#endif
