/* The uploader thread: a bounded FIFO of encoded profiles, pushed in order
 * with exponential backoff; the host never waits on the network. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"
#include "log.h"
#include "push.h"
#include "upload.h"

#define QUEUE_MAX      64
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
/* Pyroscope rejects profiles older than its ingestion window (1 h). */
#define MAX_AGE_NS     (55LL * 60 * 1000000000LL)

struct item {
	const char *name;
	uint8_t *gz;
	size_t len;
	int64_t time_ns;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct item q[QUEUE_MAX];
	int head, count;
	int stopping;
	int64_t deadline_ns; /* CLOCK_MONOTONIC, while stopping */
	int busy;            /* a push is in flight */
	int running;
	struct pa_push *push;
	uint64_t dropped_full, dropped_old, rejected;
} up = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void wait_until(int64_t mono_deadline)
{
	/* The condvar runs on CLOCK_REALTIME: convert the remaining time. */
	int64_t left = mono_deadline - mono_ns();
	if (left <= 0)
		return;
	struct timespec now, until;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t t = (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec + left;
	until.tv_sec = t / 1000000000LL;
	until.tv_nsec = t % 1000000000LL;
	pthread_cond_timedwait(&up.cv, &up.mu, &until);
}

static void pop_locked(void)
{
	free(up.q[up.head].gz);
	up.head = (up.head + 1) % QUEUE_MAX;
	up.count--;
}

static void *uploader_main(void *arg)
{
	(void)arg;
	pa_agent_thread_init();
	unsigned backoff_ms = 0;
	uint64_t rng = (uint64_t)mono_ns() | 1;
	pthread_mutex_lock(&up.mu);
	for (;;) {
		while (!up.count && !up.stopping)
			pthread_cond_wait(&up.cv, &up.mu);
		if (!up.count || (up.stopping && mono_ns() >= up.deadline_ns))
			break;
		struct item it = up.q[up.head];
		struct timespec wall;
		clock_gettime(CLOCK_REALTIME, &wall);
		int64_t age = (int64_t)wall.tv_sec * 1000000000LL + wall.tv_nsec - it.time_ns;
		if (age > MAX_AGE_NS) {
			up.dropped_old++;
			pa_log_once(PA_LOG_WARN, "dropping profiles older than Pyroscope accepts");
			pop_locked();
			continue;
		}
		up.busy = 1;
		pthread_mutex_unlock(&up.mu);
		long status = 0, retry_after_ms = 0;
		int rc = pa_push_send(up.push, it.name, it.gz, it.len, NULL, 0, &status,
				      &retry_after_ms);
		pthread_mutex_lock(&up.mu);
		up.busy = 0;
		if (rc == 0 || rc != -EAGAIN) {
			if (rc != 0)
				up.rejected++;
			pop_locked();
			backoff_ms = 0;
			pthread_cond_broadcast(&up.cv);
			continue;
		}
		/* Retryable: keep the item at the head, back off with jitter. */
		backoff_ms = backoff_ms ? backoff_ms * 2 : BACKOFF_MIN_MS;
		if (backoff_ms > BACKOFF_MAX_MS)
			backoff_ms = BACKOFF_MAX_MS;
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		int64_t delay_ms = backoff_ms / 2 + (int64_t)(rng % (backoff_ms / 2 + 1));
		if (retry_after_ms > delay_ms)
			delay_ms = retry_after_ms > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : retry_after_ms;
		pa_log_once(PA_LOG_WARN, "Pyroscope at %s is not accepting profiles (HTTP %ld); retrying with backoff",
			    pa_agent.cfg.server_address, status);
		int64_t until = mono_ns() + delay_ms * 1000000LL;
		if (up.stopping)
			break; /* no retries past the exit deadline */
		while (!up.stopping && mono_ns() < until)
			wait_until(until);
	}
	up.running = 0;
	pthread_cond_broadcast(&up.cv);
	pthread_mutex_unlock(&up.mu);
	return NULL;
}

int pa_upload_start(const struct pa_config *cfg)
{
	int rc = pa_push_new(&up.push, cfg);
	if (rc != 0)
		return rc;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_t t;
	rc = pthread_create(&t, &attr, uploader_main, NULL);
	pthread_attr_destroy(&attr);
	if (rc != 0)
		return -rc;
	up.running = 1;
	return 0;
}

void pa_upload_enqueue(const char *name, uint8_t *gz, size_t len, int64_t time_ns)
{
	pthread_mutex_lock(&up.mu);
	if (!up.running) {
		pthread_mutex_unlock(&up.mu);
		free(gz);
		return;
	}
	if (up.count == QUEUE_MAX) {
		/* Keep the newest: drop the oldest that is not in flight. */
		int victim = up.busy ? (up.head + 1) % QUEUE_MAX : up.head;
		free(up.q[victim].gz);
		if (victim != up.head) {
			up.q[victim] = up.q[up.head];
		}
		up.head = (up.head + 1) % QUEUE_MAX;
		up.count--;
		up.dropped_full++;
		pa_log_once(PA_LOG_WARN, "upload queue full: dropping the oldest profiles");
	}
	int tail = (up.head + up.count) % QUEUE_MAX;
	up.q[tail] = (struct item){name, gz, len, time_ns};
	up.count++;
	pthread_cond_broadcast(&up.cv);
	pthread_mutex_unlock(&up.mu);
}

void pa_upload_stop(int64_t deadline_ns)
{
	pthread_mutex_lock(&up.mu);
	up.stopping = 1;
	up.deadline_ns = deadline_ns;
	pthread_cond_broadcast(&up.cv);
	while (up.running && (up.count || up.busy) && mono_ns() < deadline_ns)
		wait_until(deadline_ns);
	if (up.count)
		pa_warn("exit: %d profile(s) not delivered before PYROAGENT_EXIT_TIMEOUT", up.count);
	pthread_mutex_unlock(&up.mu);
}

void pa_upload_atfork_child(void)
{
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
	memcpy(&up.mu, &mu, sizeof(mu));
	memcpy(&up.cv, &cv, sizeof(cv));
	/* The parent's queue belongs to the parent; the buffers leak once
	 * in the child rather than risk a half-updated queue. */
	up.head = up.count = 0;
	up.running = 0;
	up.busy = 0;
}
