/* The uploader thread: a bounded FIFO of encoded profiles pushed in order
 * with backoff, the disk spool while the server is away, and the exit
 * deadline; the host never waits on the network. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "push.h"
#include "spool.h"
#include "thread.h"
#include "upload.h"

#define NS_MS 1000000LL
/* Pyroscope refuses profiles older than its ingestion window (1 h); used
 * when the config carries no PYROAGENT_SPOOL_MAX_AGE (unit tests). */
#define DEFAULT_MAX_AGE_NS (55LL * 60 * 1000 * NS_MS)
#define DEFAULT_SPOOL_MAX  (64LL << 20)
/*
 * At exit a send in flight is aborted this long before the deadline:
 * pa_push_abort takes effect when curl next calls its progress callback,
 * at most about a second later when the server is silent. The rest is the
 * time to spool what is left. With a shorter exit timeout, half of it.
 */
#define ABORT_LEAD_NS (1200 * NS_MS)
/* After the deadline the exiting thread writes the spool itself; it waits
 * this long at most for the uploader to finish a file it is writing. */
#define TAKEOVER_SLACK_NS (300 * NS_MS)
/* Idle, the uploader looks at the spool this often, for files another
 * process of the service left behind. */
#define SPOOL_RECHECK_NS (60 * 1000 * NS_MS)

enum head_state {
	HEAD_IDLE = 0,
	HEAD_SENDING,  /* the uploader is pushing q[head] (a copy of it) */
	HEAD_SPILLING, /* the uploader is writing q[head] to the spool */
};

struct item {
	const char *name; /* static */
	uint8_t *gz;	  /* owned */
	size_t len;
	int64_t time_ns;
	const struct pa_label *extra; /* static */
	int nextra;
};

/*
 * Locking: `mu` guards the queue and the flags; it is never held across
 * I/O, so pa_upload_enqueue stays O(1). `spool_mu` guards the pa_spool
 * object (the uploader, and at exit the exiting thread, use it). The two
 * are never held together.
 */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC once pa_upload_start ran */
	struct item q[PA_UPLOAD_QUEUE_MAX];
	int head, count;
	size_t bytes;
	int head_state; /* enum head_state: a busy q[head] is never dropped */
	int started;	/* between pa_upload_start and pa_upload_stop */
	int running;	/* the thread has not finished */
	int stopping;	/* exit: deliver what is queued, take nothing new */
	int aborting;	/* exit deadline near: no more sends, spool the rest */
	int taken;	/* the exiting thread took the queue over */
	int spool_mode; /* the spool may hold profiles older than the queue */
	int outage; /* the last send failed: what arrives goes to the spool */
	int spool_failed; /* a spool write failed: keep the rest in memory */
	const struct pa_config *cfg;
	int64_t max_age_ns;
	struct pa_push *push;
	struct pa_spool *spool; /* NULL without PYROAGENT_SPOOL_DIR */
	void (*thread_init)(void);
	struct pa_upload_stats st;  /* atomic adds */
	struct pa_spool_stats seen; /* spool counters already logged */
} up = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t spool_mu = PTHREAD_MUTEX_INITIALIZER;

#define COUNT(field, n)                                                        \
	__atomic_add_fetch(&up.st.field, (uint64_t)(n), __ATOMIC_RELAXED)

static int64_t clock_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t mono_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

static struct timespec to_timespec(int64_t ns)
{
	return (struct timespec){.tv_sec = ns / 1000000000LL,
				 .tv_nsec = ns % 1000000000LL};
}

/* Waits on up.cv (held: up.mu) until woken or `until` (monotonic). */
static void wait_locked(int64_t until)
{
	if (until == INT64_MAX) {
		pthread_cond_wait(&up.cv, &up.mu);
		return;
	}
	struct timespec ts = to_timespec(until);
	pthread_cond_timedwait(&up.cv, &up.mu, &ts);
}

static int too_old(const struct item *it)
{
	return clock_ns(CLOCK_REALTIME) - it->time_ns > up.max_age_ns;
}

static void note_too_old(uint64_t n)
{
	COUNT(dropped_old, n);
	pa_log_once(PA_LOG_WARN,
		    "dropping profiles older than PYROAGENT_SPOOL_MAX_AGE "
		    "(%lld s): Pyroscope refuses them",
		    (long long)(up.max_age_ns / 1000000000LL));
}

/* Removes and frees q[head] (held: up.mu). */
static void pop_head_locked(void)
{
	struct item *it = &up.q[up.head];
	free(it->gz);
	up.bytes -= it->len;
	*it = (struct item){0};
	up.head = (up.head + 1) % PA_UPLOAD_QUEUE_MAX;
	up.count--;
}

/* A send runs libcurl, which may hold locks fork does not reset (the
 * locale lock under strerror on a connection error, OpenSSL's): inside the
 * fork gate, which it leaves while it waits in poll (thread.h). */
static int send_gated(struct pa_push *push, const char *name, const uint8_t *gz,
		      size_t len, const struct pa_label *extra, int nextra,
		      long *status, long *retry_after_ms)
{
	pa_gate_enter();
	int rc = pa_push_send(push, name, gz, len, extra, nextra, status,
			      retry_after_ms);
	pa_gate_leave();
	return rc;
}

/* ---- the spool ----------------------------------------------------------- */

/* Logs the first spool drop of each kind; held: spool_mu. */
static void note_spool_stats_locked(void)
{
	struct pa_spool_stats s;
	pa_spool_stats(up.spool, &s);
	if (s.dropped_full > up.seen.dropped_full)
		pa_log_once(PA_LOG_WARN,
			    "the spool in %s is full (PYROAGENT_SPOOL_MAX): "
			    "dropping the oldest spooled profiles",
			    up.cfg->spool_dir);
	if (s.dropped_old > up.seen.dropped_old)
		pa_log_once(PA_LOG_WARN,
			    "dropping spooled profiles older than "
			    "PYROAGENT_SPOOL_MAX_AGE (%lld s): "
			    "Pyroscope refuses them",
			    (long long)(up.max_age_ns / 1000000000LL));
	up.seen = s; /* corrupt files are logged by the spool itself */
}

/* Writes one profile to the spool with what a replay needs: its time, its
 * __name__ and extra labels (the rest comes from the replaying process's
 * config). Not holding up.mu; takes spool_mu unless already held. */
static int spool_put_item(const struct item *it)
{
	struct pa_spool_record r = {
	    .time_ns = it->time_ns, .gz = it->gz, .len = it->len};
	r.labels[r.nlabels++] = (struct pa_label){"__name__", it->name};
	for (int i = 0; i < it->nextra && r.nlabels < PA_SPOOL_MAX_LABELS; i++)
		if (it->extra[i].name && it->extra[i].value)
			r.labels[r.nlabels++] = it->extra[i];
	int rc = pa_spool_put(up.spool, &r);
	note_spool_stats_locked();
	return rc;
}

/* Moves the queue, oldest first, into the spool (held: up.mu; dropped
 * around each write). Stops at the first failed write: the rest stays in
 * memory, and so does everything after it until the queue has drained,
 * which keeps the order (the spool is replayed before the queue). With
 * `all` false, only during an outage or when the backlog is half full:
 * while a replay goes well, new profiles wait for it in memory. */
static int spill_due(int all)
{
	return up.count && up.spool && !up.spool_failed && !up.taken &&
	       (all || up.outage || up.count >= PA_UPLOAD_QUEUE_MAX / 2);
}

static void spill_locked(int all)
{
	while (spill_due(all)) {
		if (too_old(&up.q[up.head])) {
			pop_head_locked();
			note_too_old(1);
			continue;
		}
		struct item copy = up.q[up.head];
		up.head_state = HEAD_SPILLING;
		pthread_mutex_unlock(&up.mu);
		pthread_mutex_lock(&spool_mu);
		int rc = spool_put_item(&copy);
		pthread_mutex_unlock(&spool_mu);
		pthread_mutex_lock(&up.mu);
		up.head_state = HEAD_IDLE;
		if (up.taken) {
			/* The exiting thread skipped this one for us. */
			if (rc != 0)
				COUNT(dropped_exit, 1);
			else
				COUNT(spooled, 1);
			return;
		}
		if (rc == 0) {
			COUNT(spooled, 1);
			pop_head_locked();
		} else if (rc == -EFBIG) {
			/* Larger than PYROAGENT_SPOOL_MAX on its own: the
			 * spool counted it as dropped. */
			pop_head_locked();
		} else {
			up.spool_failed = 1;
			pa_log_once(PA_LOG_WARN,
				    "cannot write to the spool in %s (errno "
				    "%d): keeping profiles in memory",
				    up.cfg->spool_dir, -rc);
		}
	}
}

/* Sends the oldest spooled profile (held: up.mu; dropped during I/O).
 * Returns 0 when it was delivered or refused for good (then removed),
 * -ENOENT when the spool has nothing to replay, -EAGAIN to retry later,
 * -ECANCELED when the exit deadline stopped it (it stays spooled). */
static int replay_one_locked(long *retry_after_ms)
{
	struct pa_push *push = up.push;
	pthread_mutex_unlock(&up.mu);
	struct pa_spool_record r;
	pthread_mutex_lock(&spool_mu);
	int rc = pa_spool_next(up.spool, &r);
	note_spool_stats_locked();
	pthread_mutex_unlock(&spool_mu);
	if (rc != 0) {
		pthread_mutex_lock(&up.mu);
		return rc == -ENOENT ? -ENOENT : -EAGAIN;
	}
	const char *name = NULL;
	struct pa_label extra[PA_SPOOL_MAX_LABELS];
	int nextra = 0;
	for (int i = 0; i < r.nlabels; i++) {
		if (!name && strcmp(r.labels[i].name, "__name__") == 0)
			name = r.labels[i].value;
		else
			extra[nextra++] = r.labels[i];
	}
	pthread_mutex_lock(&up.mu);
	int stop = up.aborting || up.taken;
	pthread_mutex_unlock(&up.mu);
	long status = 0;
	if (stop)
		rc = -ECANCELED;
	else if (!name || !*name)
		rc = -EBADMSG;
	else
		rc = send_gated(push, name, r.gz, r.len, extra, nextra, &status,
				retry_after_ms);
	pthread_mutex_lock(&spool_mu);
	if (rc == 0) {
		pa_spool_done(up.spool);
		COUNT(replayed, 1);
		pa_log_once(PA_LOG_INFO,
			    "delivering the profiles kept in the spool in %s",
			    up.cfg->spool_dir);
	} else if (rc == -EAGAIN || rc == -ENOMEM || rc == -ECANCELED) {
		pa_spool_release(up.spool);
		if (rc != -ECANCELED)
			COUNT(retries, 1);
	} else {
		/* Refused by the server (logged once by push.c), or not a
		 * record we can send: never better on a retry. */
		pa_spool_done(up.spool);
		if (rc == -EBADMSG) {
			COUNT(dropped_spool, 1);
			pa_log_once(
			    PA_LOG_WARN,
			    "a spool file in %s names no profile: removed",
			    up.cfg->spool_dir);
		} else {
			COUNT(refused, 1);
		}
	}
	pthread_mutex_unlock(&spool_mu);
	pthread_mutex_lock(&up.mu);
	if (rc == -ECANCELED)
		return -ECANCELED;
	up.outage = rc == -EAGAIN || rc == -ENOMEM;
	return up.outage ? -EAGAIN : 0;
}

/* ---- the uploader thread ------------------------------------------ */

/* Sends q[head] (held: up.mu; dropped during the send). Returns 0 when it
 * was delivered or dropped for good, -EAGAIN to retry (with a spool: the
 * spool takes it and what follows), -ECANCELED at the exit deadline. */
static int send_head_locked(long *retry_after_ms)
{
	if (too_old(&up.q[up.head])) {
		pop_head_locked();
		note_too_old(1);
		return 0;
	}
	struct item copy = up.q[up.head];
	struct pa_push *push = up.push;
	up.head_state = HEAD_SENDING;
	pthread_mutex_unlock(&up.mu);
	long status = 0;
	int rc = send_gated(push, copy.name, copy.gz, copy.len, copy.extra,
			    copy.nextra, &status, retry_after_ms);
	pthread_mutex_lock(&up.mu);
	up.head_state = HEAD_IDLE;
	if (up.taken)
		return -ECANCELED; /* the exiting thread owns the queue now */
	switch (rc) {
	case 0:
		COUNT(sent, 1);
		pop_head_locked();
		up.outage = 0;
		return 0;
	case -EAGAIN:
	case -ENOMEM:
		COUNT(retries, 1);
		up.outage = 1;
		if (up.spool && !up.spool_failed) {
			up.spool_mode = 1;
			pa_log_once(PA_LOG_WARN,
				    "Pyroscope is not accepting profiles: "
				    "keeping them in the spool in %s until "
				    "it is back",
				    up.cfg->spool_dir);
		} else if (!up.spool) {
			pa_log_once(PA_LOG_WARN,
				    "Pyroscope is not accepting profiles: "
				    "keeping up to %d in memory and retrying "
				    "(PYROAGENT_SPOOL_DIR would keep them on "
				    "disk)",
				    PA_UPLOAD_QUEUE_MAX);
		}
		return -EAGAIN;
	case -ECANCELED:
		up.aborting = 1; /* the push handle refuses every later send */
		return -ECANCELED;
	default:
		/* Refused by the server: logged once per status by push.c. */
		COUNT(refused, 1);
		pop_head_locked();
		return 0;
	}
}

/* Everything still queued at exit: into the spool, else dropped and
 * counted (held: up.mu). */
static void finish_locked(void)
{
	spill_locked(1);
	if (up.taken)
		return;
	uint64_t n = (uint64_t)up.count;
	while (up.count)
		pop_head_locked();
	if (n) {
		COUNT(dropped_exit, n);
		pa_warn("exit: %llu profile(s) not delivered are dropped (%s)",
			(unsigned long long)n,
			up.spool ? "the spool could not take them"
				 : "no PYROAGENT_SPOOL_DIR to keep them");
	}
}

struct backoff {
	unsigned ms;
	uint64_t rng;
};

/* Waits before the next attempt: exponential backoff with jitter (half
 * fixed, half random), at least the server's Retry-After. Spools what
 * arrives meanwhile, so a crash loses nothing already produced. Returns
 * early at exit. Held: up.mu. */
static void backoff_wait_locked(struct backoff *b, long retry_after_ms)
{
	b->ms = b->ms ? b->ms * 2 : PA_UPLOAD_BACKOFF_MIN_MS;
	if (b->ms > PA_UPLOAD_BACKOFF_MAX_MS)
		b->ms = PA_UPLOAD_BACKOFF_MAX_MS;
	b->rng ^= b->rng << 13;
	b->rng ^= b->rng >> 7;
	b->rng ^= b->rng << 17;
	int64_t delay_ms = b->ms / 2 + (int64_t)(b->rng % (b->ms / 2 + 1));
	if (retry_after_ms > delay_ms)
		delay_ms = retry_after_ms < PA_UPLOAD_RETRY_AFTER_MAX_MS
			       ? retry_after_ms
			       : PA_UPLOAD_RETRY_AFTER_MAX_MS;
	pa_debug("next upload attempt in %lld ms", (long long)delay_ms);
	int64_t until = mono_ns() + delay_ms * NS_MS;
	while (!up.stopping && !up.taken && mono_ns() < until) {
		if (up.spool_mode && spill_due(0)) {
			spill_locked(0);
			continue;
		}
		wait_locked(until);
	}
}

static void *uploader_main(void *arg)
{
	(void)arg;
	if (up.thread_init)
		up.thread_init();
	struct backoff b = {0, (uint64_t)mono_ns() ^
				   ((uint64_t)getpid() << 32) ^
				   0x9e3779b97f4a7c15ULL};
	int64_t next_recheck = mono_ns() + SPOOL_RECHECK_NS;
	pthread_mutex_lock(&up.mu);
	for (;;) {
		if (up.taken)
			break;
		if (up.stopping) {
			/* Exit: deliver in order (the spool first) until the
			 * first failure or the abort, without retries; the
			 * spool takes the rest. A short-lived process thus
			 * still drains a spool left behind, bounded by
			 * PYROAGENT_EXIT_TIMEOUT. */
			if (up.aborting || (!up.count && !up.spool_mode)) {
				finish_locked();
				break;
			}
		} else if (!up.count && !up.spool_mode) {
			if (up.spool && mono_ns() >= next_recheck) {
				up.spool_mode = 1;
				continue;
			}
			wait_locked(up.spool ? next_recheck : INT64_MAX);
			continue;
		}
		long retry_after_ms = 0;
		int rc;
		if (up.spool_mode) {
			/* Oldest first: the spool, then the queue; what
			 * arrives meanwhile joins the spool. */
			spill_locked(0);
			if (up.taken || up.aborting)
				continue;
			rc = replay_one_locked(&retry_after_ms);
			if (rc == -ENOENT) {
				up.spool_mode = 0;
				up.spool_failed = 0;
				next_recheck = mono_ns() + SPOOL_RECHECK_NS;
				continue;
			}
		} else {
			rc = send_head_locked(&retry_after_ms);
			/* Drained: the spool may be tried again. */
			if (up.spool_failed && !up.count)
				up.spool_failed = 0;
		}
		if (rc == 0) {
			b.ms = 0;
			continue;
		}
		if (rc == -EAGAIN && up.stopping) {
			/* No time to retry: the spool keeps the rest. */
			finish_locked();
			break;
		}
		if (rc == -EAGAIN)
			backoff_wait_locked(&b, retry_after_ms);
	}
	up.running = 0;
	pthread_cond_broadcast(&up.cv);
	pthread_mutex_unlock(&up.mu);
	/* Stopped means exit: park instead of ending, so this thread's
	 * teardown (OpenSSL's and libcurl's thread-local cleanup) never runs
	 * while the host's exit handlers tear those libraries down. */
	for (;;)
		pause();
	return NULL;
}

/* ---- the interface ------------------------------------------------ */

int pa_upload_start(const struct pa_config *cfg, void (*thread_init)(void))
{
	pthread_mutex_lock(&up.mu);
	int busy = up.running || up.started;
	pthread_mutex_unlock(&up.mu);
	if (busy)
		return -EALREADY;
	/* No uploader thread exists: the state is ours alone. */
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_destroy(&up.cv);
	pthread_cond_init(&up.cv, &ca);
	pthread_condattr_destroy(&ca);
	up.head = up.count = 0;
	up.bytes = 0;
	up.head_state = HEAD_IDLE;
	up.stopping = up.aborting = up.taken = up.spool_mode = up.spool_failed =
	    up.outage = 0;
	memset(&up.st, 0, sizeof(up.st));
	memset(&up.seen, 0, sizeof(up.seen));
	up.cfg = cfg;
	up.thread_init = thread_init;
	up.max_age_ns = cfg->spool_max_age_ns > 0 ? cfg->spool_max_age_ns
						  : DEFAULT_MAX_AGE_NS;
	up.push = NULL;
	up.spool = NULL;
	int rc = pa_push_new(&up.push, cfg);
	if (rc != 0)
		return rc;
	if (cfg->spool_dir && *cfg->spool_dir) {
		const char *service =
		    cfg->application_name && *cfg->application_name
			? cfg->application_name
			: PA_UNKNOWN_SERVICE;
		rc = pa_spool_open(&up.spool, cfg->spool_dir, service,
				   cfg->spool_max > 0 ? cfg->spool_max
						      : DEFAULT_SPOOL_MAX,
				   up.max_age_ns);
		if (rc != 0) {
			up.spool = NULL;
			pa_warn("PYROAGENT_SPOOL_DIR=%s is not usable (errno "
				"%d): no spool, undelivered profiles are kept "
				"in memory only",
				cfg->spool_dir, -rc);
		}
	}
	/* What an earlier process left is replayed before anything new. */
	up.spool_mode = up.spool != NULL;
	up.running = 1;
	up.started = 1;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_t t;
	rc = pthread_create(&t, &attr, uploader_main, NULL);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		up.running = up.started = 0;
		pa_spool_close(up.spool);
		pa_push_free(up.push);
		up.spool = NULL;
		up.push = NULL;
		return -rc;
	}
	return 0;
}

void pa_upload_enqueue(const char *name, uint8_t *gz, size_t len,
		       int64_t time_ns)
{
	pa_upload_enqueue_labels(name, gz, len, time_ns, NULL, 0);
}

void pa_upload_enqueue_labels(const char *name, uint8_t *gz, size_t len,
			      int64_t time_ns, const struct pa_label *extra,
			      int nextra)
{
	if (!gz)
		return;
	pthread_mutex_lock(&up.mu);
	if (!up.started || up.stopping || !name || !len) {
		/* Too late (exit deadline passed) or never started. */
		if (up.stopping)
			COUNT(dropped_exit, 1);
		pthread_mutex_unlock(&up.mu);
		free(gz);
		return;
	}
	/* Make room: drop the oldest profiles that are not in flight. */
	int busy = up.head_state != HEAD_IDLE;
	while (up.count > busy && (up.count == PA_UPLOAD_QUEUE_MAX ||
				   up.bytes + len > PA_UPLOAD_QUEUE_BYTES)) {
		int victim = (up.head + busy) % PA_UPLOAD_QUEUE_MAX;
		free(up.q[victim].gz);
		up.bytes -= up.q[victim].len;
		if (busy) /* the busy one moves up */
			up.q[victim] = up.q[up.head];
		up.q[up.head] = (struct item){0};
		up.head = (up.head + 1) % PA_UPLOAD_QUEUE_MAX;
		up.count--;
		COUNT(dropped_full, 1);
		pa_log_once(PA_LOG_WARN,
			    "upload backlog full (%d profiles or %u MiB): "
			    "dropping the oldest",
			    PA_UPLOAD_QUEUE_MAX, PA_UPLOAD_QUEUE_BYTES >> 20);
	}
	if (up.count == PA_UPLOAD_QUEUE_MAX) {
		pthread_mutex_unlock(&up.mu);
		free(gz);
		COUNT(dropped_full, 1);
		return;
	}
	if (nextra < 0 || !extra)
		nextra = 0;
	if (nextra > PA_UPLOAD_MAX_EXTRA)
		nextra = PA_UPLOAD_MAX_EXTRA;
	int tail = (up.head + up.count) % PA_UPLOAD_QUEUE_MAX;
	up.q[tail] = (struct item){name, gz, len, time_ns, extra, nextra};
	up.count++;
	up.bytes += len;
	pthread_cond_broadcast(&up.cv);
	pthread_mutex_unlock(&up.mu);
}

/* The exit deadline has passed with the uploader still busy (inside curl
 * or a write): the exiting thread spools the queue itself and leaves the
 * uploader to find `taken` when it returns; nothing is freed, since it may
 * still be reading the profile in flight. Held: up.mu (dropped). */
static void take_over_locked(int64_t deadline_ns)
{
	up.taken = 1;
	struct item items[PA_UPLOAD_QUEUE_MAX];
	int n = 0;
	/* A profile being written to the spool is the uploader's to finish;
	 * one being sent may never get its answer: spool it. */
	for (int i = up.head_state == HEAD_SPILLING ? 1 : 0; i < up.count; i++)
		items[n++] = up.q[(up.head + i) % PA_UPLOAD_QUEUE_MAX];
	struct pa_spool *spool = up.spool_failed ? NULL : up.spool;
	pthread_mutex_unlock(&up.mu);
	int written = 0;
	if (spool && n) {
		/* The uploader holds spool_mu only for one file's write. */
		int64_t until = clock_ns(CLOCK_REALTIME) +
				(deadline_ns - mono_ns()) + TAKEOVER_SLACK_NS;
		struct timespec ts = to_timespec(until);
		if (pthread_mutex_timedlock(&spool_mu, &ts) == 0) {
			for (; written < n; written++)
				if (too_old(&items[written]))
					note_too_old(1);
				else if (spool_put_item(&items[written]) != 0)
					break;
				else
					COUNT(spooled, 1);
			pthread_mutex_unlock(&spool_mu);
		}
	}
	if (written < n) {
		COUNT(dropped_exit, n - written);
		pa_warn("exit: %d profile(s) not delivered before "
			"PYROAGENT_EXIT_TIMEOUT are dropped (%s)",
			n - written,
			spool ? "the spool could not take them"
			      : "no PYROAGENT_SPOOL_DIR to keep them");
	}
	pthread_mutex_lock(&up.mu);
}

static void log_summary(void)
{
	struct pa_upload_stats s;
	pa_upload_stats(&s);
	uint64_t dropped = s.dropped_full + s.dropped_old + s.refused +
			   s.dropped_spool + s.dropped_exit;
	if (!s.spooled && !s.replayed && !dropped)
		return;
	char why[256] = "";
	if (dropped)
		snprintf(why, sizeof(why),
			 " (%llu backlog full, %llu too old, %llu refused by "
			 "the server, %llu spool full or unreadable, %llu at "
			 "exit)",
			 (unsigned long long)s.dropped_full,
			 (unsigned long long)s.dropped_old,
			 (unsigned long long)s.refused,
			 (unsigned long long)s.dropped_spool,
			 (unsigned long long)s.dropped_exit);
	pa_info(
	    "%llu profiles sent, %llu spooled, %llu replayed, %llu dropped%s",
	    (unsigned long long)s.sent, (unsigned long long)s.spooled,
	    (unsigned long long)s.replayed, (unsigned long long)dropped, why);
}

void pa_upload_stop(int64_t deadline_ns)
{
	pthread_mutex_lock(&up.mu);
	if (!up.started) {
		pthread_mutex_unlock(&up.mu);
		return;
	}
	up.started = 0;
	up.stopping = 1;
	pthread_cond_broadcast(&up.cv);
	int64_t lead = (deadline_ns - mono_ns()) / 2;
	if (lead > ABORT_LEAD_NS)
		lead = ABORT_LEAD_NS;
	int64_t abort_at = deadline_ns - (lead > 0 ? lead : 0);
	while (up.running && mono_ns() < abort_at)
		wait_locked(abort_at);
	if (up.running) {
		/* A send is still in flight: cut it short, so the uploader is
		 * not inside curl while the host's exit handlers run (they
		 * may take locks curl needs, or free what it uses). */
		up.aborting = 1;
		pa_push_abort(up.push);
		pthread_cond_broadcast(&up.cv);
		while (up.running && mono_ns() < deadline_ns)
			wait_locked(deadline_ns);
	}
	if (up.running)
		take_over_locked(deadline_ns);
	pthread_mutex_unlock(&up.mu);
	log_summary();
}

void pa_upload_atfork_child(void)
{
	/* Only the calling thread exists: the locks may have been held by
	 * the parent's uploader and the queue may be half updated. The
	 * parent's buffers, curl handle and spool leak once in the child
	 * rather than be touched (curl_easy_cleanup would shut down the
	 * parent's connection and TLS session). */
	pa_spool_atfork_child(up.spool);
	pa_thread_reset_lock(&up.mu, &up.cv);
	pa_thread_reset_lock(&spool_mu, NULL);
	memset(up.q, 0, sizeof(up.q));
	up.head = up.count = 0;
	up.bytes = 0;
	up.head_state = HEAD_IDLE;
	up.started = up.running = 0;
	up.stopping = up.aborting = up.taken = up.spool_mode = up.spool_failed =
	    up.outage = 0;
	up.push = NULL;
	up.spool = NULL;
	memset(&up.st, 0, sizeof(up.st));
}

void pa_upload_stats(struct pa_upload_stats *out)
{
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		((uint64_t *)out)[i] =
		    __atomic_load_n(&((uint64_t *)&up.st)[i], __ATOMIC_RELAXED);
	pthread_mutex_lock(&up.mu);
	struct pa_spool *spool = up.spool;
	pthread_mutex_unlock(&up.mu);
	if (!spool)
		return;
	/* Bounded: at exit the uploader may be stuck in a write. */
	struct timespec ts =
	    to_timespec(clock_ns(CLOCK_REALTIME) + TAKEOVER_SLACK_NS);
	if (pthread_mutex_timedlock(&spool_mu, &ts) != 0)
		return;
	struct pa_spool_stats s;
	pa_spool_stats(spool, &s);
	pthread_mutex_unlock(&spool_mu);
	out->dropped_old += s.dropped_old;
	out->dropped_spool += s.dropped_full + s.corrupt;
}
