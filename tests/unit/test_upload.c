/* upload: order, retries, the spool, the exit deadline, backlog caps, fork;
 * against a scripted HTTP server (one thread per connection). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "push.pb-c.h"
#include "spool.h"
#include "unit.h"
#include "upload.h"

/* ---- the server ---------------------------------------------------------- */

enum reply { R200, R503, R503_RETRY2, R400, RSILENT };

#define SRV_MAX 256

static struct {
	int lfd, port;
	enum reply script[16];
	int nscript;
	pthread_mutex_t mu;
	int nreq;
	int hangups; /* silent connections the client closed */
	int64_t at_ms[SRV_MAX];
	int status[SRV_MAX];
	uint8_t *body[SRV_MAX];
	size_t len[SRV_MAX];
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t mono_ns(void)
{
	return mono_ms() * 1000000LL;
}

/* One request from fd into the log; -1 when the client went away. */
static int srv_read(int fd, int *idx)
{
	char head[8192];
	size_t n = 0;
	char *end = NULL;
	while (!end) {
		if (n == sizeof(head) - 1)
			return -1;
		ssize_t r = recv(fd, head + n, sizeof(head) - 1 - n, 0);
		if (r <= 0)
			return -1;
		n += (size_t)r;
		head[n] = 0;
		end = strstr(head, "\r\n\r\n");
	}
	size_t hlen = (size_t)(end - head) + 4, clen = 0;
	for (char *l = head; l && l < end;
	     l = strstr(l, "\r\n"), l = l ? l + 2 : l)
		if (strncasecmp(l, "Content-Length:", 15) == 0)
			clen = strtoull(l + 15, NULL, 10);
	uint8_t *body = malloc(clen + 1);
	size_t have = n - hlen < clen ? n - hlen : clen;
	memcpy(body, head + hlen, have);
	while (have < clen) {
		ssize_t r = recv(fd, body + have, clen - have, 0);
		if (r <= 0) {
			free(body);
			return -1;
		}
		have += (size_t)r;
	}
	pthread_mutex_lock(&srv.mu);
	int i = srv.nreq < SRV_MAX ? srv.nreq++ : SRV_MAX - 1;
	srv.at_ms[i] = mono_ms();
	srv.body[i] = body;
	srv.len[i] = have;
	pthread_mutex_unlock(&srv.mu);
	*idx = i;
	return 0;
}

static void *srv_conn(void *arg)
{
	int fd = (int)(intptr_t)arg;
	int idx;
	while (srv_read(fd, &idx) == 0) {
		enum reply r =
		    srv.script[idx < srv.nscript ? idx : srv.nscript - 1];
		if (r == RSILENT) {
			/* No answer, until the client hangs up. */
			char c;
			while (recv(fd, &c, 1, 0) > 0)
				;
			pthread_mutex_lock(&srv.mu);
			srv.hangups++;
			pthread_mutex_unlock(&srv.mu);
			break;
		}
		int status = r == R200 ? 200 : r == R400 ? 400 : 503;
		pthread_mutex_lock(&srv.mu);
		srv.status[idx] = status;
		pthread_mutex_unlock(&srv.mu);
		char out[512];
		int k = snprintf(
		    out, sizeof(out),
		    "HTTP/1.1 %d X\r\nContent-Length: 2\r\n%s\r\n{}", status,
		    r == R503_RETRY2 ? "Retry-After: 2\r\n" : "");
		if (send(fd, out, (size_t)k, MSG_NOSIGNAL) != k)
			break;
	}
	close(fd);
	return NULL;
}

static void *srv_accept(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept(srv.lfd, NULL, NULL);
		if (fd < 0)
			return NULL;
		pthread_t t;
		pthread_create(&t, NULL, srv_conn, (void *)(intptr_t)fd);
		pthread_detach(t);
	}
}

static void srv_start(const enum reply *script, int n)
{
	memcpy(srv.script, script, sizeof(*script) * (size_t)n);
	srv.nscript = n;
	srv.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(srv.lfd >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CHECK(bind(srv.lfd, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(listen(srv.lfd, 16) == 0);
	socklen_t al = sizeof(a);
	CHECK(getsockname(srv.lfd, (struct sockaddr *)&a, &al) == 0);
	srv.port = ntohs(a.sin_port);
	pthread_t t;
	CHECK(pthread_create(&t, NULL, srv_accept, NULL) == 0);
	pthread_detach(t);
}

static int srv_count(void)
{
	pthread_mutex_lock(&srv.mu);
	int n = srv.nreq;
	pthread_mutex_unlock(&srv.mu);
	return n;
}

static int64_t srv_at(int i)
{
	pthread_mutex_lock(&srv.mu);
	int64_t at = srv.at_ms[i];
	pthread_mutex_unlock(&srv.mu);
	return at;
}

static int srv_hangups(void)
{
	pthread_mutex_lock(&srv.mu);
	int n = srv.hangups;
	pthread_mutex_unlock(&srv.mu);
	return n;
}

/* Waits until the server has seen n requests (answered ones: n answers). */
static void srv_wait(int n, bool answered, int timeout_ms)
{
	int64_t until = mono_ms() + timeout_ms;
	for (;;) {
		pthread_mutex_lock(&srv.mu);
		int got = 0;
		for (int i = 0; i < srv.nreq; i++)
			got += !answered || srv.status[i] != 0;
		pthread_mutex_unlock(&srv.mu);
		if (got >= n)
			return;
		if (mono_ms() > until)
			FAIL("%d of %d requests after %d ms", got, n,
			     timeout_ms);
		usleep(10000);
	}
}

/* Request i's profile bytes (as a string), __name__ and one more label. */
static void srv_request(int i, char *payload, size_t cap, char *name,
			char *label)
{
	Push__V1__PushRequest *r =
	    push__v1__push_request__unpack(NULL, srv.len[i], srv.body[i]);
	CHECK(r && r->n_series == 1 && r->series[0]->n_samples == 1);
	ProtobufCBinaryData raw = r->series[0]->samples[0]->raw_profile;
	size_t n = raw.len < cap - 1 ? raw.len : cap - 1;
	memcpy(payload, raw.data, n);
	payload[n] = 0;
	name[0] = label[0] = 0;
	for (size_t k = 0; k < r->series[0]->n_labels; k++) {
		const Push__V1__LabelPair *lp = r->series[0]->labels[k];
		if (strcmp(lp->name, "__name__") == 0)
			strcpy(name, lp->value);
		if (strcmp(lp->name, "pyroagent_trigger") == 0)
			strcpy(label, lp->value);
	}
	push__v1__push_request__free_unpacked(r, NULL);
}

/* The payloads of the answered-200 requests, joined by ',' in order. */
static const char *srv_delivered(void)
{
	static char out[8192];
	out[0] = 0;
	pthread_mutex_lock(&srv.mu);
	for (int i = 0; i < srv.nreq; i++) {
		if (srv.status[i] != 200)
			continue;
		char p[64], n[64], l[64];
		srv_request(i, p, sizeof(p), n, l);
		if (out[0])
			strcat(out, ",");
		strcat(out, p);
	}
	pthread_mutex_unlock(&srv.mu);
	return out;
}

/* ---- fixtures ------------------------------------------------------------ */

static char url[64], spool_dir[64];

static void cfg_init(struct pa_config *cfg, bool spool)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", srv.port);
	cfg->server_address = url;
	cfg->application_name = "svc";
	cfg->upload = true;
	cfg->spool_max_age_ns = 55LL * 60 * 1000000000LL;
	cfg->spool_max = 64 << 20;
	if (spool) {
		strcpy(spool_dir, "/tmp/pa-upload-XXXXXX");
		CHECK(mkdtemp(spool_dir));
		cfg->spool_dir = spool_dir;
	}
}

static void enqueue(const char *payload, int64_t time_ns)
{
	pa_upload_enqueue("process_cpu", (uint8_t *)strdup(payload),
			  strlen(payload), time_ns);
}

/* Spool records of service "svc", oldest first: payloads joined by ','. */
static const char *spool_contents(int64_t max_age_ns)
{
	static char out[8192];
	out[0] = 0;
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, spool_dir, "svc", 64 << 20, max_age_ns),
		     0);
	struct pa_spool_record r;
	while (pa_spool_next(s, &r) == 0) {
		if (out[0])
			strcat(out, ",");
		strncat(out, (const char *)r.gz, r.len);
		pa_spool_done(s);
	}
	pa_spool_close(s);
	return out;
}

static pid_t uploader_tid;

static void mark_thread(void)
{
	uploader_tid = (pid_t)syscall(SYS_gettid);
}

/* ---- tests -----------------------------------------------------------------
 */

TEST(upload_delivers_in_order_on_its_own_thread)
{
	enum reply script[] = {R200};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, false);
	CHECK_EQ_INT(pa_upload_start(&cfg, mark_thread), 0);
	CHECK_EQ_INT(pa_upload_start(&cfg, mark_thread), -EALREADY);
	int64_t t = wall_ns();
	for (int i = 1; i <= 5; i++) {
		char p[16];
		snprintf(p, sizeof(p), "p%d", i);
		enqueue(p, t + i);
	}
	srv_wait(5, true, 5000);
	pa_upload_stop(mono_ns() + 2000000000LL);
	CHECK_EQ_STR(srv_delivered(), "p1,p2,p3,p4,p5");
	CHECK(uploader_tid != 0 && uploader_tid != (pid_t)syscall(SYS_gettid));
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.sent, 5);
	CHECK_EQ_INT(st.retries + st.spooled + st.dropped_exit + st.refused, 0);
	CHECK_EQ_INT(srv_count(), 5);
}

TEST(upload_retries_with_backoff_and_keeps_order_without_spool)
{
	enum reply script[] = {R503, R503, R200};
	srv_start(script, 3);
	struct pa_config cfg;
	cfg_init(&cfg, false);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	int64_t t = wall_ns();
	enqueue("a", t);
	enqueue("b", t + 1);
	enqueue("c", t + 2);
	srv_wait(5, true, 8000);
	pa_upload_stop(mono_ns() + 1000000000LL);
	CHECK_EQ_STR(srv_delivered(), "a,b,c");
	CHECK_EQ_INT(srv_count(), 5);
	/* Jittered exponential backoff: 250-500 ms, then 500-1000 ms. */
	CHECK(srv_at(1) - srv_at(0) >= 240);
	CHECK(srv_at(2) - srv_at(1) >= 490);
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.retries, 2);
	CHECK_EQ_INT(st.sent, 3);
}

TEST(upload_honours_retry_after)
{
	enum reply script[] = {R503_RETRY2, R200};
	srv_start(script, 2);
	struct pa_config cfg;
	cfg_init(&cfg, false);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	enqueue("a", wall_ns());
	srv_wait(2, true, 6000);
	CHECK(srv_at(1) - srv_at(0) >= 1950);
	pa_upload_stop(mono_ns());
}

TEST(upload_outage_spools_then_replays_everything_in_order)
{
	enum reply script[] = {R503, R503, R200};
	srv_start(script, 3);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	static const struct pa_label oom[] = {
	    {"pyroagent_trigger", "oom_guard"}};
	int64_t t = wall_ns();
	enqueue("a", t);
	srv_wait(1, true, 3000); /* a failed: spool mode */
	pa_upload_enqueue_labels("memory", (uint8_t *)strdup("b"), 1, t + 1,
				 oom, 1);
	enqueue("c", t + 2);
	srv_wait(3, true, 5000);
	enqueue("d", t + 3);
	srv_wait(5, true, 5000);
	pa_upload_stop(mono_ns() + 1000000000LL);
	CHECK_EQ_STR(srv_delivered(), "a,b,c,d");
	/* b kept its name and its extra label through the spool. */
	char p[16], n[32], l[32];
	srv_request(3, p, sizeof(p), n, l);
	CHECK_EQ_STR(p, "b");
	CHECK_EQ_STR(n, "memory");
	CHECK_EQ_STR(l, "oom_guard");
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.sent + st.replayed, 4);
	CHECK(st.spooled >= 3 && st.replayed >= 3);
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "");
}

TEST(upload_outage_spools_what_arrives_at_once)
{
	enum reply script[] = {R503_RETRY2};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	int64_t t = wall_ns();
	enqueue("a", t);
	srv_wait(1, true, 3000); /* the uploader now waits 2 s */
	usleep(100000);
	enqueue("b", t + 1);
	/* Both go to disk during the wait, not after it: a crash now loses
	 * nothing. */
	struct pa_spool *s;
	CHECK_EQ_INT(
	    pa_spool_open(&s, spool_dir, "svc", 64 << 20, cfg.spool_max_age_ns),
	    0);
	int n = 0;
	for (int i = 0; i < 120 && (n = pa_spool_count(s)) < 2; i++)
		usleep(10000);
	CHECK_EQ_INT(n, 2);
	pa_spool_close(s);
	CHECK_EQ_INT(srv_count(), 1);
	pa_upload_stop(mono_ns() + 1000000000LL);
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "a,b");
}

TEST(upload_replays_an_earlier_process_spool_first)
{
	enum reply script[] = {R200};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	struct pa_spool *s;
	CHECK_EQ_INT(
	    pa_spool_open(&s, spool_dir, "svc", 64 << 20, cfg.spool_max_age_ns),
	    0);
	int64_t t = wall_ns();
	const char *old[] = {"old1", "old2", "ancient"};
	int64_t at[] = {t - 2000000000LL, t - 1000000000LL,
			t - 3600LL * 1000000000LL};
	for (int i = 0; i < 3; i++) {
		struct pa_spool_record r = {.time_ns = at[i],
					    .gz = (const uint8_t *)old[i],
					    .len = strlen(old[i])};
		r.labels[0] = (struct pa_label){"__name__", "process_cpu"};
		r.nlabels = 1;
		CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	}
	pa_spool_close(s);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	enqueue("new", t);
	srv_wait(3, true, 5000);
	pa_upload_stop(mono_ns() + 1000000000LL);
	CHECK_EQ_STR(srv_delivered(),
		     "old1,old2,new"); /* ancient: past the window */
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.replayed, 2);
	CHECK_EQ_INT(st.sent, 1); /* waited in memory for the replay */
	CHECK_EQ_INT(st.dropped_old, 1);
}

TEST(upload_exit_aborts_a_hanging_send_and_spools_the_rest)
{
	enum reply script[] = {RSILENT};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	int64_t t = wall_ns();
	enqueue("a", t);
	srv_wait(1, false, 3000); /* a is in flight and gets no answer */
	enqueue("b", t + 1);
	enqueue("c", t + 2);
	int64_t t0 = mono_ms();
	pa_upload_stop(mono_ns() + 4000000000LL);
	int64_t took = mono_ms() - t0;
	/* Aborted 1.2 s before the deadline; curl noticed within ~1 s and
	 * the uploader spooled the rest itself: it is out of curl (the
	 * connection is closed) before the host's exit handlers run. */
	CHECK(took >= 2700 && took < 3950);
	usleep(50000);
	CHECK_EQ_INT(srv_hangups(), 1);
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "a,b,c");
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.spooled, 3);
	CHECK_EQ_INT(st.dropped_exit, 0);
}

TEST(upload_exit_still_drains_a_spool_left_behind)
{
	enum reply script[] = {R200};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	struct pa_spool *s;
	CHECK_EQ_INT(
	    pa_spool_open(&s, spool_dir, "svc", 64 << 20, cfg.spool_max_age_ns),
	    0);
	int64_t t = wall_ns();
	struct pa_spool_record r = {
	    .time_ns = t - 1000, .gz = (const uint8_t *)"old", .len = 3};
	r.labels[0] = (struct pa_label){"__name__", "process_cpu"};
	r.nlabels = 1;
	CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	pa_spool_close(s);
	/* A short-lived process: it exits as soon as it started. */
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	enqueue("new", t);
	pa_upload_stop(mono_ns() + 2000000000LL);
	CHECK_EQ_STR(srv_delivered(), "old,new");
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "");
}

TEST(upload_exit_without_spool_drops_and_keeps_the_deadline)
{
	enum reply script[] = {RSILENT};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, false);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	enqueue("a", wall_ns());
	enqueue("b", wall_ns());
	srv_wait(1, false, 3000);
	int64_t t0 = mono_ms();
	pa_upload_stop(mono_ns() + 1000000000LL);
	CHECK(mono_ms() - t0 <= 1300);
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.dropped_exit, 2);
	enqueue("late", wall_ns()); /* after stop: dropped, not queued */
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.dropped_exit, 3);
}

TEST(upload_exit_with_no_time_left_takes_the_queue_over)
{
	enum reply script[] = {RSILENT};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	int64_t t = wall_ns();
	enqueue("a", t);
	srv_wait(1, false, 3000);
	enqueue("b", t + 1);
	int64_t t0 = mono_ms();
	pa_upload_stop(mono_ns()); /* the uploader is still inside curl */
	CHECK(mono_ms() - t0 <= 500);
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "a,b");
	usleep(
	    1500000); /* the aborted uploader comes back and touches nothing */
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "");
}

TEST(upload_refused_profiles_are_dropped_not_retried)
{
	enum reply script[] = {R400};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	enqueue("a", wall_ns());
	enqueue("b", wall_ns());
	enqueue("c", wall_ns());
	srv_wait(3, true, 3000);
	usleep(800000);
	CHECK_EQ_INT(srv_count(), 3);
	pa_upload_stop(mono_ns() + 1000000000LL);
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.refused, 3);
	CHECK_EQ_INT(st.retries + st.spooled, 0);
}

TEST(upload_backlog_full_drops_the_oldest_not_the_one_in_flight)
{
	enum reply script[] = {RSILENT};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	int64_t t = wall_ns();
	enqueue("p0", t);
	srv_wait(1, false, 3000);
	int64_t worst_us = 0;
	for (int i = 1; i <= 70; i++) {
		char p[16];
		snprintf(p, sizeof(p), "p%d", i);
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		enqueue(p, t + i);
		clock_gettime(CLOCK_MONOTONIC, &b);
		int64_t us = (b.tv_sec - a.tv_sec) * 1000000 +
			     (b.tv_nsec - a.tv_nsec) / 1000;
		if (us > worst_us)
			worst_us = us;
	}
	/* The host never waits for the network, not even with it stuck. */
	CHECK(worst_us < 200000);
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.dropped_full, 7); /* 64 kept: p0 in flight, p8..p70 */
	pa_upload_stop(mono_ns() + 1500000000LL);
	char want[1024] = "p0";
	for (int i = 8; i <= 70; i++)
		snprintf(want + strlen(want), sizeof(want) - strlen(want),
			 ",p%d", i);
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), want);
}

TEST(upload_profiles_past_max_age_are_dropped)
{
	enum reply script[] = {R200};
	srv_start(script, 1);
	struct pa_config cfg;
	cfg_init(&cfg, false);
	cfg.spool_max_age_ns = 60LL * 1000000000LL;
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	enqueue("old", wall_ns() - 61LL * 1000000000LL);
	enqueue("fresh", wall_ns() - 59LL * 1000000000LL);
	srv_wait(1, true, 3000);
	pa_upload_stop(mono_ns() + 1000000000LL);
	CHECK_EQ_STR(srv_delivered(), "fresh");
	struct pa_upload_stats st;
	pa_upload_stats(&st);
	CHECK_EQ_INT(st.dropped_old, 1);
}

TEST(upload_forked_child_starts_a_fresh_uploader)
{
	enum reply script[] = {RSILENT, R200};
	srv_start(script, 2);
	struct pa_config cfg;
	cfg_init(&cfg, true);
	CHECK_EQ_INT(pa_upload_start(&cfg, NULL), 0);
	int64_t t = wall_ns();
	enqueue("parent", t);
	srv_wait(1, false, 3000); /* the parent's handle holds a connection */
	enqueue("queued", t + 1);
	pid_t pid = fork();
	if (pid == 0) {
		pa_upload_atfork_child();
		struct pa_upload_stats st;
		pa_upload_stats(&st);
		if (pa_upload_start(&cfg, NULL) != 0 || st.sent)
			_exit(1);
		enqueue("child", t + 2);
		for (int i = 0; i < 300 && (pa_upload_stats(&st), !st.sent);
		     i++)
			usleep(10000);
		pa_upload_stop(mono_ns() + 1000000000LL);
		_exit(st.sent == 1 && st.spooled == 0 ? 0 : 2);
	}
	int status;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ_INT(WEXITSTATUS(status), 0);
	/* Only the child's profile reached the server; the parent's queue
	 * was neither sent nor spooled by the child. */
	CHECK_EQ_STR(srv_delivered(), "child");
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "");
	/* The parent's uploader is untouched: its send is still in flight. */
	pa_upload_stop(mono_ns() + 1500000000LL);
	CHECK_EQ_STR(spool_contents(cfg.spool_max_age_ns), "parent,queued");
}
