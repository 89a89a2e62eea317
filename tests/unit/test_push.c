/* push: PushRequest encoding, and pa_push_send against a scripted HTTP server
 * thread. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "push.h"
#include "push.pb-c.h"
#include "unit.h"

/* ---- a scripted HTTP/1.1 server on 127.0.0.1 -------------------------------
 */

enum srv_mode { ANSWER, SILENT, CLOSE_EARLY };

struct reply {
	enum srv_mode mode;
	int status;
	const char *headers; /* extra header lines, each ending in \r\n */
	const char *body;
};

#define MAX_REQ 8

struct srv {
	int lfd, port;
	pthread_t th;
	struct reply script[MAX_REQ];
	int nscript;
	pthread_mutex_t mu;
	int accepts, nreq;
	char head[MAX_REQ][8192];
	uint8_t *body[MAX_REQ];
	size_t body_len[MAX_REQ];
};

/* Reads one request; returns 0, or -1 when the client closed. */
static int read_request(struct srv *s, int fd, int idx, bool headers_only)
{
	char buf[8192];
	size_t n = 0;
	char *end = NULL;
	while (!end) {
		if (n == sizeof(buf) - 1)
			return -1;
		ssize_t r = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
		if (r <= 0)
			return -1;
		n += (size_t)r;
		buf[n] = 0;
		end = strstr(buf, "\r\n\r\n");
	}
	size_t hlen = (size_t)(end - buf) + 4;
	size_t clen = 0;
	for (char *l = buf; l && l < end;
	     l = strstr(l, "\r\n"), l = l ? l + 2 : l)
		if (strncasecmp(l, "Content-Length:", 15) == 0)
			clen = strtoull(l + 15, NULL, 10);
	uint8_t *body = malloc(clen + 1);
	size_t have = n - hlen < clen ? n - hlen : clen;
	memcpy(body, buf + hlen, have);
	while (!headers_only && have < clen) {
		ssize_t r = recv(fd, body + have, clen - have, 0);
		if (r <= 0) {
			free(body);
			return -1;
		}
		have += (size_t)r;
	}
	pthread_mutex_lock(&s->mu);
	memcpy(s->head[idx], buf, hlen);
	s->head[idx][hlen] = 0;
	s->body[idx] = body;
	s->body_len[idx] = have;
	s->nreq = idx + 1;
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	int idx = 0;
	for (;;) {
		int fd = accept(s->lfd, NULL, NULL);
		if (fd < 0)
			return NULL;
		pthread_mutex_lock(&s->mu);
		s->accepts++;
		pthread_mutex_unlock(&s->mu);
		while (idx < MAX_REQ) {
			const struct reply *r =
			    &s->script[idx < s->nscript ? idx : s->nscript - 1];
			if (read_request(s, fd, idx, r->mode == CLOSE_EARLY) !=
			    0)
				break;
			idx++;
			if (r->mode == SILENT) {
				sleep(60);
				break;
			}
			if (r->mode == CLOSE_EARLY)
				break;
			const char *body = r->body ? r->body : "";
			char out[8192];
			int k = snprintf(
			    out, sizeof(out),
			    "HTTP/1.1 %d Scripted\r\nContent-Length: %zu\r\n"
			    "Content-Type: application/json\r\n%s\r\n%s",
			    r->status, strlen(body),
			    r->headers ? r->headers : "", body);
			if (send(fd, out, (size_t)k, MSG_NOSIGNAL) != k)
				break;
		}
		close(fd);
	}
}

static void srv_start(struct srv *s, const struct reply *script, int n)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	memcpy(s->script, script, sizeof(*script) * (size_t)n);
	s->nscript = n;
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(s->lfd >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CHECK(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(listen(s->lfd, 8) == 0);
	socklen_t al = sizeof(a);
	CHECK(getsockname(s->lfd, (struct sockaddr *)&a, &al) == 0);
	s->port = ntohs(a.sin_port);
	CHECK(pthread_create(&s->th, NULL, srv_main, s) == 0);
}

/* A header's value in recorded request idx (case-insensitive name), or NULL. */
static const char *req_header(struct srv *s, int idx, const char *name,
			      char *out, size_t cap)
{
	size_t k = strlen(name);
	for (char *l = strstr(s->head[idx], "\r\n"); l; l = strstr(l, "\r\n")) {
		l += 2;
		if (strncasecmp(l, name, k) == 0 && l[k] == ':') {
			const char *v = l + k + 1;
			while (*v == ' ')
				v++;
			size_t n = strcspn(v, "\r");
			if (n >= cap)
				n = cap - 1;
			memcpy(out, v, n);
			out[n] = 0;
			return out;
		}
	}
	return NULL;
}

/* ---- fixtures
 * ---------------------------------------------------------------- */

static char url_buf[64];

static void base_cfg(struct pa_config *cfg, int port)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(url_buf, sizeof(url_buf), "http://127.0.0.1:%d", port);
	cfg->server_address = url_buf;
	cfg->application_name = "svc";
	cfg->labels[0] = (struct pa_label){"region", "local"};
	cfg->labels[1] = (struct pa_label){"env", "ci"};
	cfg->nlabels = 2;
	cfg->upload = true;
}

static const uint8_t fake_gz[] = {0x1f, 0x8b, 8, 0, 1, 2,  3, 4,
				  5,	6,    7, 8, 9, 10, 0, 0xff};

/* stderr into a file, to read back what was logged. */
static int saved_stderr = -1;
static char cap_path[64];

static void capture_start(void)
{
	snprintf(cap_path, sizeof(cap_path), "/tmp/pa-push-log-%d",
		 (int)getpid());
	int fd = open(cap_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	saved_stderr = dup(2);
	dup2(fd, 2);
	close(fd);
}

static char *capture_end(void)
{
	dup2(saved_stderr, 2);
	close(saved_stderr);
	static char text[65536];
	int fd = open(cap_path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	unlink(cap_path);
	text[n > 0 ? n : 0] = 0;
	return text;
}

static int count(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static Push__V1__PushRequest *decode(const uint8_t *b, size_t n)
{
	Push__V1__PushRequest *r = push__v1__push_request__unpack(NULL, n, b);
	CHECK(r != NULL);
	CHECK_EQ_INT(r->n_series, 1);
	CHECK_EQ_INT(r->series[0]->n_samples, 1);
	return r;
}

static bool uuid_like(const char *s)
{
	if (strlen(s) != 36)
		return false;
	for (int i = 0; i < 36; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;
		if (dash ? s[i] != '-' : !strchr("0123456789abcdef", s[i]))
			return false;
	}
	return s[14] == '8' && strchr("89ab", s[19]);
}

/* ---- encoding
 * ---------------------------------------------------------------- */

TEST(push_encode_labels_sorted_and_stable_id)
{
	struct pa_config cfg;
	base_cfg(&cfg, 1);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	struct pa_label extra[] = {{"thread", "main"}};
	uint8_t *b1, *b2, *b3;
	size_t n1, n2, n3;
	CHECK_EQ_INT(pa_push_encode(p, "process_cpu", fake_gz, sizeof(fake_gz),
				    extra, 1, &b1, &n1),
		     0);
	CHECK_EQ_INT(pa_push_encode(p, "process_cpu", fake_gz, sizeof(fake_gz),
				    extra, 1, &b2, &n2),
		     0);
	uint8_t other[sizeof(fake_gz)];
	memcpy(other, fake_gz, sizeof(other));
	other[5] ^= 1;
	CHECK_EQ_INT(pa_push_encode(p, "process_cpu", other, sizeof(other),
				    extra, 1, &b3, &n3),
		     0);

	Push__V1__PushRequest *r = decode(b1, n1);
	Push__V1__RawProfileSeries *s = r->series[0];
	static const char *const want[][2] = {
	    {"__delta__", "false"},  {"__name__", "process_cpu"},
	    {"env", "ci"},	     {"region", "local"},
	    {"service_name", "svc"}, {"thread", "main"},
	};
	CHECK_EQ_INT(s->n_labels, 6);
	for (int i = 0; i < 6; i++) {
		CHECK_EQ_STR(s->labels[i]->name, want[i][0]);
		CHECK_EQ_STR(s->labels[i]->value, want[i][1]);
	}
	CHECK_EQ_INT(s->samples[0]->raw_profile.len, sizeof(fake_gz));
	CHECK(memcmp(s->samples[0]->raw_profile.data, fake_gz,
		     sizeof(fake_gz)) == 0);
	CHECK(uuid_like(s->samples[0]->id));

	Push__V1__PushRequest *r2 = decode(b2, n2), *r3 = decode(b3, n3);
	CHECK_EQ_STR(r2->series[0]->samples[0]->id, s->samples[0]->id);
	CHECK(strcmp(r3->series[0]->samples[0]->id, s->samples[0]->id) != 0);
	CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0);
	push__v1__push_request__free_unpacked(r, NULL);
	push__v1__push_request__free_unpacked(r2, NULL);
	push__v1__push_request__free_unpacked(r3, NULL);
	free(b1), free(b2), free(b3);
	pa_push_free(p);
}

TEST(push_encode_precedence_validity_and_cap)
{
	struct pa_config cfg;
	base_cfg(&cfg, 1);
	static char names[PA_MAX_LABELS][16];
	for (int i = 0; i < PA_MAX_LABELS; i++) {
		snprintf(names[i], sizeof(names[i]), "l%02d", i);
		cfg.labels[i] = (struct pa_label){names[i], "v"};
	}
	cfg.labels[0] = (struct pa_label){"env", "static"};
	cfg.nlabels = PA_MAX_LABELS;
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	struct pa_label extra[] = {
	    {"env", "extra"},	  /* beats the static env */
	    {"__name__", "evil"}, /* never beats the core label */
	    {"bad-name", "x"},	  /* invalid name: dropped */
	    {"empty", ""},	  /* empty value: dropped */
	    {"bad_utf8", "\xff"}, /* invalid UTF-8: dropped */
	    {"zz", "last"},
	};
	capture_start();
	uint8_t *b;
	size_t n;
	CHECK_EQ_INT(pa_push_encode(p, "memory", fake_gz, sizeof(fake_gz),
				    extra, 6, &b, &n),
		     0);
	char *log = capture_end();
	Push__V1__PushRequest *r = decode(b, n);
	Push__V1__RawProfileSeries *s = r->series[0];
	CHECK_EQ_INT(s->n_labels, PA_MAX_LABELS);
	bool env = false, zz = false;
	for (size_t i = 0; i < s->n_labels; i++) {
		const char *ln = s->labels[i]->name, *lv = s->labels[i]->value;
		if (i)
			CHECK(strcmp(s->labels[i - 1]->name, ln) <
			      0); /* sorted, unique */
		if (!strcmp(ln, "__name__"))
			CHECK_EQ_STR(lv, "memory");
		if (!strcmp(ln, "env")) {
			env = true;
			CHECK_EQ_STR(lv, "extra");
		}
		zz |= !strcmp(ln, "zz");
		CHECK(strcmp(ln, "bad-name") && strcmp(ln, "empty") &&
		      strcmp(ln, "bad_utf8"));
	}
	CHECK(env && zz);
	/* core 3 + extra 2 kept: 25 of the static ones fit. */
	CHECK(strstr(log, "at most 30 labels") != NULL);
	CHECK(strstr(log, "bad-name") ==
	      NULL); /* an invalid name is not echoed */
	push__v1__push_request__free_unpacked(r, NULL);
	free(b);
	pa_push_free(p);
}

TEST(push_encode_bad_service_name_falls_back)
{
	struct pa_config cfg;
	base_cfg(&cfg, 1);
	cfg.application_name = "\xff\xfe";
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	uint8_t *b;
	size_t n;
	capture_start();
	CHECK_EQ_INT(pa_push_encode(p, "process_cpu", fake_gz, sizeof(fake_gz),
				    NULL, 0, &b, &n),
		     0);
	char *log = capture_end();
	Push__V1__PushRequest *r = decode(b, n);
	Push__V1__RawProfileSeries *s = r->series[0];
	CHECK_EQ_INT(s->n_labels, 5);
	CHECK_EQ_STR(s->labels[4]->name, "service_name");
	CHECK_EQ_STR(s->labels[4]->value, "unknown_service");
	CHECK(strstr(log, "unknown_service") != NULL);
	push__v1__push_request__free_unpacked(r, NULL);
	free(b);
	pa_push_free(p);
}

TEST(push_encode_rejects_bad_arguments)
{
	struct pa_config cfg;
	base_cfg(&cfg, 1);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	uint8_t *b;
	size_t n;
	CHECK_EQ_INT(pa_push_encode(p, NULL, fake_gz, 4, NULL, 0, &b, &n),
		     -EINVAL);
	CHECK_EQ_INT(pa_push_encode(p, "x", NULL, 4, NULL, 0, &b, &n), -EINVAL);
	CHECK_EQ_INT(pa_push_encode(p, "x", fake_gz, 0, NULL, 0, &b, &n),
		     -EINVAL);
	CHECK_EQ_INT(pa_push_encode(p, "x", fake_gz, 4, NULL, 1, &b, &n),
		     -EINVAL);
	pa_push_free(p);
	pa_push_free(NULL);
	int rc;
	cfg.server_address = "ftp://example";
	capture_start();
	rc = pa_push_new(&p, &cfg);
	char *log = capture_end();
	CHECK_EQ_INT(rc, -EINVAL);
	CHECK(strstr(log, "PYROSCOPE_SERVER_ADDRESS") != NULL);
	CHECK(p == NULL);
}

/* ---- sending
 * ------------------------------------------------------------------- */

TEST(push_send_ok_headers_body_basic_auth)
{
	struct reply script[] = {{ANSWER, 200, NULL, ""}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	cfg.basic_user = "alice";
	cfg.basic_password = "s3cret-pass";
	cfg.tenant_id = "team-a";
	cfg.headers[0] = (struct pa_label){"X-Extra", "yes"};
	cfg.headers[1] = (struct pa_label){"X-Empty", ""};
	cfg.nheaders = 2;
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status = -1, ra = -1;
	CHECK_EQ_INT(pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz),
				  NULL, 0, &status, &ra),
		     0);
	CHECK_EQ_INT(status, 200);
	CHECK_EQ_INT(ra, 0);
	CHECK_EQ_INT(s.nreq, 1);
	CHECK(strncmp(s.head[0],
		      "POST /push.v1.PusherService/Push HTTP/1.1\r\n",
		      43) == 0);
	char v[256];
	CHECK_EQ_STR(req_header(&s, 0, "Content-Type", v, sizeof(v)),
		     "application/proto");
	CHECK_EQ_STR(
	    req_header(&s, 0, "Connect-Protocol-Version", v, sizeof(v)), "1");
	CHECK_EQ_STR(req_header(&s, 0, "User-Agent", v, sizeof(v)),
		     "pyroagent/" PA_VERSION);
	/* base64("alice:s3cret-pass") */
	CHECK_EQ_STR(req_header(&s, 0, "Authorization", v, sizeof(v)),
		     "Basic YWxpY2U6czNjcmV0LXBhc3M=");
	CHECK_EQ_STR(req_header(&s, 0, "X-Scope-OrgID", v, sizeof(v)),
		     "team-a");
	CHECK_EQ_STR(req_header(&s, 0, "X-Extra", v, sizeof(v)), "yes");
	CHECK_EQ_STR(req_header(&s, 0, "X-Empty", v, sizeof(v)), "");
	CHECK(req_header(&s, 0, "Expect", v, sizeof(v)) == NULL);
	Push__V1__PushRequest *r = decode(s.body[0], s.body_len[0]);
	CHECK_EQ_STR(r->series[0]->labels[1]->name, "__name__");
	CHECK_EQ_STR(r->series[0]->labels[1]->value, "process_cpu");
	CHECK(memcmp(r->series[0]->samples[0]->raw_profile.data, fake_gz,
		     sizeof(fake_gz)) == 0);
	push__v1__push_request__free_unpacked(r, NULL);
	pa_push_free(p);
}

TEST(push_send_bearer_token_and_managed_headers)
{
	struct reply script[] = {{ANSWER, 204, NULL, ""}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	cfg.auth_token = "tok-123456";
	cfg.headers[0] = (struct pa_label){"Content-Type", "text/plain"};
	cfg.headers[1] =
	    (struct pa_label){"Authorization", "Basic Zm9vOmJhcg=="};
	cfg.headers[2] = (struct pa_label){"User-Agent", "custom/1"};
	cfg.headers[3] = (struct pa_label){"X-Bad", "a\r\nX-Injected: 1"};
	cfg.nheaders = 4;
	struct pa_push *p;
	capture_start();
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status;
	int rc = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			      0, &status, NULL);
	char *log = capture_end();
	CHECK_EQ_INT(rc, 0);
	CHECK_EQ_INT(status, 204);
	char v[256];
	CHECK_EQ_STR(req_header(&s, 0, "Authorization", v, sizeof(v)),
		     "Bearer tok-123456");
	CHECK_EQ_STR(req_header(&s, 0, "Content-Type", v, sizeof(v)),
		     "application/proto");
	CHECK_EQ_STR(req_header(&s, 0, "User-Agent", v, sizeof(v)), "custom/1");
	CHECK(req_header(&s, 0, "X-Injected", v, sizeof(v)) == NULL);
	CHECK(req_header(&s, 0, "X-Bad", v, sizeof(v)) == NULL);
	CHECK_EQ_INT(count(s.head[0], "Authorization:"), 1);
	CHECK(strstr(log, "tok-123456") == NULL);
	CHECK(strstr(log, "Zm9vOmJhcg") == NULL);
	CHECK(strstr(log, "X-Injected") == NULL);
	pa_push_free(p);
}

TEST(push_send_503_is_retryable)
{
	struct reply script[] = {
	    {ANSWER, 503, NULL,
	     "{\"code\":\"unavailable\",\"message\":\"ingesters down\"}"}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status, ra = -1;
	capture_start();
	int rc1 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	int rc2 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	char *log = capture_end();
	CHECK_EQ_INT(rc1, -EAGAIN);
	CHECK_EQ_INT(rc2, -EAGAIN);
	CHECK_EQ_INT(status, 503);
	CHECK_EQ_INT(ra, 0);
	CHECK_EQ_INT(count(log, "ingesters down"), 1);
	pa_push_free(p);
}

TEST(push_send_429_retry_after_seconds_and_date)
{
	char date_hdr[128];
	time_t later = time(NULL) + 5;
	struct tm tm;
	gmtime_r(&later, &tm);
	strftime(date_hdr, sizeof(date_hdr),
		 "Retry-After: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
	struct reply script[] = {
	    {ANSWER, 429, "Retry-After: 2\r\n",
	     "{\"code\":\"resource_exhausted\",\"message\":\"slow down\"}"},
	    {ANSWER, 503, date_hdr, ""},
	    {ANSWER, 503, "Retry-After: 99999999999\r\n", ""},
	    {ANSWER, 400, "Retry-After: 7\r\n", ""},
	};
	struct srv s;
	srv_start(&s, script, 4);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status, ra;
	capture_start();
	int rc1 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	long ra1 = ra, st1 = status;
	int rc2 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	long ra2 = ra;
	int rc3 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	long ra3 = ra;
	int rc4 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	long ra4 = ra;
	capture_end();
	CHECK_EQ_INT(rc1, -EAGAIN);
	CHECK_EQ_INT(st1, 429);
	CHECK_EQ_INT(ra1, 2000);
	CHECK_EQ_INT(rc2, -EAGAIN);
	CHECK(ra2 >= 3000 && ra2 <= 5000);
	CHECK_EQ_INT(rc3, -EAGAIN);
	CHECK_EQ_INT(ra3, 10L * 60 * 1000); /* capped */
	CHECK_EQ_INT(rc4, -EINVAL);
	CHECK_EQ_INT(ra4, 0); /* only retryable answers carry a delay */
	pa_push_free(p);
}

TEST(push_send_400_logs_message_once_without_secrets)
{
	/* The server echoes the password and the Basic credentials. */
	const char *body =
	    "{\"code\":\"invalid_argument\",\"details\":[{\"x\":\"}\\\"\"}],"
	    "\"message\":\"invalid profile: \\\"bad\\\" stuff\\nnext "
	    "s3cret-pass "
	    "YWxpY2U6czNjcmV0LXBhc3M= \\u00e9\\u0007\"}";
	struct reply script[] = {{ANSWER, 400, NULL, body}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	cfg.basic_user = "alice";
	cfg.basic_password = "s3cret-pass";
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status, ra;
	capture_start();
	int rc1 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	int rc2 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	char *log = capture_end();
	CHECK_EQ_INT(rc1, -EINVAL);
	CHECK_EQ_INT(rc2, -EINVAL);
	CHECK_EQ_INT(status, 400);
	CHECK_EQ_INT(s.nreq, 2);
	CHECK_EQ_INT(count(log, "invalid profile: \"bad\" stuff\\nnext "
				"<redacted> <redacted> \xc3\xa9\\x07"),
		     1);
	CHECK_EQ_INT(count(log, "HTTP 400"), 1);
	CHECK(strstr(log, "s3cret") == NULL);
	CHECK(strstr(log, "YWxpY2U6") == NULL);
	CHECK(strstr(log, "invalid_argument") == NULL);
	pa_push_free(p);
}

TEST(push_send_415_501_say_bug_and_drop)
{
	struct reply script[] = {
	    {ANSWER, 415, NULL,
	     "{\"code\":\"unknown\",\"message\":\"bad content type\"}"},
	    {ANSWER, 501, NULL,
	     "{\"code\":\"unimplemented\",\"message\":\"zstd\"}"},
	    {ANSWER, 401, NULL,
	     "{\"code\":\"unauthenticated\",\"message\":\"who are you\"}"},
	};
	struct srv s;
	srv_start(&s, script, 3);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status, ra;
	capture_start();
	int rc1 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	int rc2 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	int rc3 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	char *log = capture_end();
	CHECK_EQ_INT(rc1, -EINVAL);
	CHECK_EQ_INT(rc2, -EINVAL);
	CHECK_EQ_INT(rc3, -EINVAL);
	CHECK_EQ_INT(count(log, "pyroagent bug"), 2);
	CHECK(strstr(log, "bad content type") && strstr(log, "zstd"));
	CHECK(strstr(log, "who are you") &&
	      strstr(log, "PYROSCOPE_AUTH_TOKEN"));
	pa_push_free(p);
}

TEST(push_send_plain_text_and_long_messages)
{
	char longmsg[3000] = "{\"message\":\"";
	size_t k = strlen(longmsg);
	memset(longmsg + k, 'm', 1000);
	strcpy(longmsg + k + 1000, "\"}");
	struct reply script[] = {
	    {ANSWER, 404, NULL, "404 page not found\n"},
	    {ANSWER, 422, NULL, longmsg},
	};
	struct srv s;
	srv_start(&s, script, 2);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status, ra;
	capture_start();
	pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL, 0,
		     &status, &ra);
	int rc = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			      0, &status, &ra);
	char *log = capture_end();
	CHECK_EQ_INT(rc, -EINVAL);
	CHECK(strstr(log, "404 page not found\\n") != NULL);
	CHECK(strstr(log, "PYROSCOPE_SERVER_ADDRESS") != NULL);
	const char *m = strstr(log, "mmmm");
	CHECK(m != NULL);
	size_t run = strspn(m, "m");
	CHECK(run >= 150 && run <= 200);
	CHECK(strncmp(m + run, "...", 3) == 0);
	pa_push_free(p);
}

TEST(push_send_connection_refused)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	socklen_t al = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &al);
	close(fd); /* nothing listens there now */
	struct pa_config cfg;
	base_cfg(&cfg, ntohs(a.sin_port));
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	long status = -1, ra = -1;
	capture_start();
	int rc1 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	int rc2 = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			       0, &status, &ra);
	char *log = capture_end();
	CHECK_EQ_INT(rc1, -EAGAIN);
	CHECK_EQ_INT(rc2, -EAGAIN);
	CHECK_EQ_INT(status, 0);
	CHECK_EQ_INT(ra, 0);
	CHECK_EQ_INT(count(log, "cannot push to Pyroscope"), 1);
}

TEST(push_send_silent_server_times_out)
{
	struct reply script[] = {{SILENT, 0, NULL, NULL}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	pa_push_set_timeouts(p, 300, 600);
	long status = -1;
	capture_start();
	int64_t t0 = mono_ms();
	int rc = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			      0, &status, NULL);
	int64_t took = mono_ms() - t0;
	char *log = capture_end();
	CHECK_EQ_INT(rc, -EAGAIN);
	CHECK_EQ_INT(status, 0);
	CHECK(took >= 500 && took < 3000);
	CHECK(strstr(log, "timed out") != NULL);
}

TEST(push_send_reuses_one_connection)
{
	struct reply script[] = {{ANSWER, 200, NULL, ""}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	for (int i = 0; i < 3; i++)
		CHECK_EQ_INT(pa_push_send(p, "process_cpu", fake_gz,
					  sizeof(fake_gz), NULL, 0, NULL, NULL),
			     0);
	CHECK_EQ_INT(s.nreq, 3);
	CHECK_EQ_INT(s.accepts, 1);
	pa_push_free(p);
}

TEST(push_send_large_body_whole_without_expect)
{
	/* Past 1 MiB curl would wait for "100 Continue" unless told not to. */
	struct reply script[] = {{ANSWER, 200, NULL, ""}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	size_t n = 3u << 20;
	uint8_t *big = malloc(n);
	CHECK(big != NULL);
	for (size_t i = 0; i < n; i++)
		big[i] = (uint8_t)(i * 7 + (i >> 11));
	int64_t t0 = mono_ms();
	CHECK_EQ_INT(
	    pa_push_send(p, "process_cpu", big, n, NULL, 0, NULL, NULL), 0);
	CHECK(mono_ms() - t0 < 900); /* curl's Expect wait is 1 s */
	char v[64];
	CHECK(req_header(&s, 0, "Expect", v, sizeof(v)) == NULL);
	Push__V1__PushRequest *r = decode(s.body[0], s.body_len[0]);
	CHECK_EQ_INT(r->series[0]->samples[0]->raw_profile.len, n);
	CHECK(memcmp(r->series[0]->samples[0]->raw_profile.data, big, n) == 0);
	push__v1__push_request__free_unpacked(r, NULL);
	free(big);
	pa_push_free(p);
}

TEST(push_send_big_body_to_closing_server_survives)
{
	/* The server hangs up after the headers while 16 MiB are on the way:
	 * the write fails with EPIPE, and SIGPIPE must not kill the process. */
	struct reply script[] = {{CLOSE_EARLY, 0, NULL, NULL}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	size_t n = 16u << 20;
	uint8_t *big = calloc(1, n);
	CHECK(big != NULL);
	capture_start();
	int rc = pa_push_send(p, "process_cpu", big, n, NULL, 0, NULL, NULL);
	capture_end();
	CHECK_EQ_INT(rc, -EAGAIN);
	free(big);
	pa_push_free(p);
}

struct abort_arg {
	struct pa_push *p;
	int delay_ms;
};

static void *abort_later(void *arg)
{
	struct abort_arg *a = arg;
	usleep((useconds_t)a->delay_ms * 1000);
	pa_push_abort(a->p);
	return NULL;
}

TEST(push_abort_stops_a_send_in_flight)
{
	struct reply script[] = {{SILENT, 0, NULL, NULL}};
	struct srv s;
	srv_start(&s, script, 1);
	struct pa_config cfg;
	base_cfg(&cfg, s.port);
	struct pa_push *p;
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	struct abort_arg a = {p, 200};
	pthread_t t;
	pthread_create(&t, NULL, abort_later, &a);
	int64_t t0 = mono_ms();
	int rc = pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz), NULL,
			      0, NULL, NULL);
	int64_t took = mono_ms() - t0;
	pthread_join(t, NULL);
	CHECK_EQ_INT(rc, -ECANCELED);
	CHECK(took < 2500); /* not the 20 s transfer timeout */
	CHECK_EQ_INT(pa_push_send(p, "process_cpu", fake_gz, sizeof(fake_gz),
				  NULL, 0, NULL, NULL),
		     -ECANCELED);
	pa_push_free(p);
}

/* Credentials over plain http warn unless the host is loopback itself,
 * not a name that merely starts like one. */
TEST(push_plain_http_warning_knows_loopback_hosts)
{
	static const struct {
		const char *url;
		int warns;
	} cases[] = {
	    {"http://localhost:4040", 0},
	    {"http://LOCALHOST", 0},
	    {"http://127.0.0.1:4040/prefix", 0},
	    {"http://127.1.2.3", 0},
	    {"http://[::1]:4040", 0},
	    {"http://localhost.example.com:4040", 1},
	    {"http://127.example.com", 1},
	    {"http://127.0.0.1.nip.io", 1},
	    {"http://[::1].example", 1},
	    {"http://pyroscope:4040", 1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pa_config cfg;
		base_cfg(&cfg, 1);
		cfg.server_address = cases[i].url;
		cfg.auth_token = "tok-123456";
		struct pa_push *p;
		capture_start();
		CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
		char *log = capture_end();
		if ((strstr(log, "plain http") != NULL) != cases[i].warns)
			FAIL("%s: plain-http warning %s", cases[i].url,
			     cases[i].warns ? "missing" : "wrongly given");
		pa_push_free(p);
	}
}

TEST(push_new_warns_about_insecure_settings)
{
	struct pa_config cfg;
	base_cfg(&cfg, 1);
	cfg.server_address = "http://user:urlpass@pyroscope.example.com:4040";
	cfg.tls_insecure = true;
	cfg.basic_user = "alice";
	cfg.basic_password = "s3cret-pass";
	cfg.auth_token = "tok-123456";
	struct pa_push *p;
	capture_start();
	CHECK_EQ_INT(pa_push_new(&p, &cfg), 0);
	char *log = capture_end();
	CHECK(strstr(log, "TLS verification is OFF (PYROAGENT_TLS_INSECURE)") !=
	      NULL);
	CHECK(strstr(log, "plain http") != NULL);
	CHECK(strstr(log, "using basic auth") != NULL);
	CHECK(strstr(log, "http://pyroscope.example.com:4040/"
			  "push.v1.PusherService/Push") != NULL);
	CHECK(strstr(log, "urlpass") == NULL && strstr(log, "s3cret") == NULL &&
	      strstr(log, "tok-1234") == NULL);
	pa_push_free(p);
}
