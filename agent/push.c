/* Pyroscope Push API client: one reused libcurl handle, the PushRequest
 * encoding, and the mapping of replies to retry / drop decisions. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "push.h"
#include "push.pb-c.h"

#define PUSH_PATH "/push.v1.PusherService/Push"
/* Replies worth reading are small JSON errors; the rest is discarded. */
#define RESP_CAP 4096
/* What of a server message reaches the log (bytes, after escaping). */
#define MSG_LOG_MAX 200
/* A Retry-After beyond this is treated as this: the uploader drops
 * profiles older than Pyroscope's ingestion window anyway. */
#define RETRY_AFTER_CAP_MS (10L * 60 * 1000)
/* Labels considered per series before the cap (core + static + extra). */
#define MAX_CANDIDATES (3 + PA_MAX_LABELS + PA_MAX_LABELS)

/*
 * Timeouts (push.h): connecting gets PA_PUSH_CONNECT_TIMEOUT_MS (5 s), the
 * whole request PA_PUSH_TIMEOUT_MS (20 s): enough for a ~2 MiB profile at
 * ~100 KiB/s, short enough that a stuck server does not hold the
 * uploader's queue for more than about one default upload interval.
 */

struct pa_push {
	const struct pa_config *cfg;
	CURL *curl;
	struct curl_slist *headers; /* may hold a bearer token: wiped on free */
	char *url;		    /* server_address + PUSH_PATH */
	char *shown_url;	    /* url without user:password@, for logs */
	char *basic_b64; /* base64(user:password), only to redact echoes */
	int aborted;	 /* atomic: pa_push_abort */
	/* Per request: */
	char errbuf[CURL_ERROR_SIZE];
	char resp[RESP_CAP];
	size_t resp_len;
	long retry_after_ms;
	/* One log line per failure kind: HTTP status, curl error code. */
	uint64_t seen_status[10]; /* statuses 0..639 */
	uint64_t seen_curl[2];	  /* CURLcode 0..127 */
};

/* ---- small helpers ----------------------------------------------------- */

static bool once_bit(uint64_t *bits, size_t nwords, long i)
{
	if (i < 0 || (size_t)i >= nwords * 64)
		i = 0;
	uint64_t m = 1ULL << (i % 64);
	if (bits[i / 64] & m)
		return false;
	bits[i / 64] |= m;
	return true;
}

static bool utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;
	while (p < end) {
		unsigned c = *p;
		size_t k;
		unsigned min;
		if (c < 0x80) {
			p++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			k = 1, min = 0x80, c &= 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2, min = 0x800, c &= 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3, min = 0x10000, c &= 0x07;
		} else {
			return false;
		}
		if ((size_t)(end - p) <= k)
			return false;
		for (size_t i = 1; i <= k; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			c = (c << 6) | (p[i] & 0x3f);
		}
		if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
			return false;
		p += k + 1;
	}
	return true;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
	size_t k = *p < 0x80		 ? 1
		   : (*p & 0xe0) == 0xc0 ? 2
		   : (*p & 0xf0) == 0xe0 ? 3
		   : (*p & 0xf8) == 0xf0 ? 4
					 : 0;
	if (!k || k > left || !utf8_valid((const char *)p, k))
		return 0;
	return k;
}

static bool header_name_ok(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", c))
			return false;
	}
	return true;
}

static bool header_value_ok(const char *s)
{
	for (; s && *s; s++)
		if (*s == '\r' || *s == '\n')
			return false;
	return s != NULL;
}

/* A Pyroscope label name: [a-zA-Z_.][a-zA-Z0-9_.]*, at most 1024 bytes. */
static bool label_name_ok(const char *s)
{
	if (!s || !*s || strlen(s) > PA_LABEL_NAME_MAX)
		return false;
	for (const char *p = s; *p; p++) {
		char c = *p;
		bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			     c == '_' || c == '.';
		if (!alpha && !(p > s && c >= '0' && c <= '9'))
			return false;
	}
	return true;
}

static char *base64(const char *s)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t n = strlen(s);
	char *out = malloc((n + 2) / 3 * 4 + 1);
	if (!out)
		return NULL;
	const unsigned char *p = (const unsigned char *)s;
	char *o = out;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)p[i] << 16;
		if (i + 1 < n)
			v |= (unsigned)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		*o++ = tab[(v >> 18) & 63];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = i + 2 < n ? tab[v & 63] : '=';
	}
	*o = 0;
	return out;
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* ---- the content ID -------------------------------------------------------
 */

static uint64_t rotl64(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static uint64_t fmix64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	k *= 0xc4ceb9fe1a85ec53ULL;
	k ^= k >> 33;
	return k;
}

/* A 128-bit non-cryptographic hash: two multiply-rotate lanes over 8-byte
 * words, cross-mixed at the end. Only has to be stable and spread well. */
static void hash128(const uint8_t *d, size_t n, uint64_t out[2])
{
	const uint64_t k1 = 0x87c37b91114253d5ULL, k2 = 0x4cf5ad432745937fULL;
	uint64_t a = 0x9e3779b97f4a7c15ULL ^ n, b = 0x6a09e667f3bcc909ULL + n;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, d + i, 8);
		a = rotl64(a ^ (w * k1), 31) * k2 + b;
		b = rotl64(b ^ (w * k2), 27) * k1 + 0x52dce729;
	}
	uint64_t t = 0;
	for (size_t j = 0; i + j < n; j++)
		t |= (uint64_t)d[i + j] << (8 * j);
	a ^= rotl64(t * k1, 33) * k2;
	b ^= rotl64(t * k2, 29) * k1;
	a += b;
	b += a;
	a = fmix64(a);
	b = fmix64(b);
	a += b;
	b += a;
	out[0] = a;
	out[1] = b;
}

/* The ID as a UUID (version 8, RFC 9562 "custom"): Pyroscope parses the
 * sample ID as a UUID. Derived from the profile bytes, so a retried
 * profile keeps its ID. */
static void content_id(const uint8_t *gz, size_t len, char out[37])
{
	uint64_t h[2];
	hash128(gz, len, h);
	uint8_t b[16];
	for (int i = 0; i < 8; i++) {
		b[i] = (uint8_t)(h[0] >> (56 - 8 * i));
		b[8 + i] = (uint8_t)(h[1] >> (56 - 8 * i));
	}
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x80);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	static const char hex[] = "0123456789abcdef";
	char *o = out;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*o++ = '-';
		*o++ = hex[b[i] >> 4];
		*o++ = hex[b[i] & 15];
	}
	*o = 0;
}

/* ---- the series labels ----------------------------------------------------
 */

struct cand {
	const char *name, *value;
};

static int cand_cmp(const void *x, const void *y)
{
	return strcmp(((const struct cand *)x)->name,
		      ((const struct cand *)y)->name);
}

/* Picks the series labels in priority order (core, extra, static), one per
 * name, at most PA_MAX_LABELS, and sorts them by name. Returns the count. */
static int series_labels(const struct pa_push *p, const char *name,
			 const struct pa_label *extra, int nextra,
			 struct cand *out)
{
	const struct pa_config *cfg = p->cfg;
	const char *service = cfg->application_name;
	if (!service || !*service || strlen(service) > PA_LABEL_VALUE_MAX ||
	    !utf8_valid(service, strlen(service))) {
		if (service && *service)
			pa_log_once(PA_LOG_WARN,
				    "the service name is not valid UTF-8 of at "
				    "most %d bytes: using %s",
				    PA_LABEL_VALUE_MAX, PA_UNKNOWN_SERVICE);
		service = PA_UNKNOWN_SERVICE;
	}
	struct cand in[MAX_CANDIDATES];
	int nin = 0;
	in[nin++] = (struct cand){"__name__", name};
	in[nin++] = (struct cand){"service_name", service};
	in[nin++] = (struct cand){"__delta__", "false"};
	for (int i = 0; i < nextra && nin < MAX_CANDIDATES; i++)
		in[nin++] = (struct cand){extra[i].name, extra[i].value};
	if (nextra > PA_MAX_LABELS)
		pa_log_once(
		    PA_LOG_WARN,
		    "more than %d labels on a profile: the surplus is dropped",
		    PA_MAX_LABELS);
	int nstatic =
	    cfg->nlabels < PA_MAX_LABELS ? cfg->nlabels : PA_MAX_LABELS;
	for (int i = 0; i < nstatic && nin < MAX_CANDIDATES; i++)
		in[nin++] =
		    (struct cand){cfg->labels[i].name, cfg->labels[i].value};

	int n = 0;
	for (int i = 0; i < nin; i++) {
		const char *ln = in[i].name, *lv = in[i].value;
		if (!lv || !*lv)
			continue; /* an empty value is the same as no label */
		if (!label_name_ok(ln) || strlen(lv) > PA_LABEL_VALUE_MAX ||
		    !utf8_valid(lv, strlen(lv))) {
			pa_log_once(
			    PA_LOG_WARN,
			    "label %s is not valid for Pyroscope (name "
			    "[a-zA-Z_.][a-zA-Z0-9_.]*, "
			    "value valid UTF-8 up to %d bytes): dropped",
			    label_name_ok(ln) ? ln : "(bad name)",
			    PA_LABEL_VALUE_MAX);
			continue;
		}
		bool dup = false;
		for (int j = 0; j < n && !dup; j++)
			dup = strcmp(out[j].name, ln) == 0;
		if (dup)
			continue;
		if (n == PA_MAX_LABELS) {
			pa_log_once(PA_LOG_WARN,
				    "Pyroscope takes at most %d labels per "
				    "series: dropping %s and others",
				    PA_MAX_LABELS, ln);
			continue;
		}
		out[n++] = in[i];
	}
	qsort(out, (size_t)n, sizeof(*out), cand_cmp);
	return n;
}

int pa_push_encode(const struct pa_push *p, const char *name, const uint8_t *gz,
		   size_t len, const struct pa_label *extra, int nextra,
		   uint8_t **body, size_t *body_len)
{
	if (!p || !name || !*name || !gz || !len || !body || !body_len ||
	    nextra < 0 || (nextra && !extra))
		return -EINVAL;
	struct cand labels[PA_MAX_LABELS];
	int n = series_labels(p, name, extra, nextra, labels);

	Push__V1__LabelPair lp[PA_MAX_LABELS];
	Push__V1__LabelPair *lpp[PA_MAX_LABELS];
	for (int i = 0; i < n; i++) {
		push__v1__label_pair__init(&lp[i]);
		/* protobuf-c wants char *; packing only reads them. */
		lp[i].name = (char *)labels[i].name;
		lp[i].value = (char *)labels[i].value;
		lpp[i] = &lp[i];
	}
	char id[37];
	content_id(gz, len, id);
	Push__V1__RawSample sample;
	push__v1__raw_sample__init(&sample);
	sample.raw_profile.data = (uint8_t *)gz;
	sample.raw_profile.len = len;
	sample.id = id;
	Push__V1__RawSample *samples[1] = {&sample};
	Push__V1__RawProfileSeries series;
	push__v1__raw_profile_series__init(&series);
	series.n_labels = (size_t)n;
	series.labels = lpp;
	series.n_samples = 1;
	series.samples = samples;
	Push__V1__RawProfileSeries *seriesp[1] = {&series};
	Push__V1__PushRequest req;
	push__v1__push_request__init(&req);
	req.n_series = 1;
	req.series = seriesp;

	size_t size = push__v1__push_request__get_packed_size(&req);
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return -ENOMEM;
	size_t packed = push__v1__push_request__pack(&req, buf);
	if (packed != size) {
		free(buf);
		return -EIO;
	}
	*body = buf;
	*body_len = size;
	return 0;
}

/* ---- server replies ----------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct pa_push *p = arg;
	size_t n = size * nmemb;
	size_t room = sizeof(p->resp) - 1 - p->resp_len;
	size_t take = n < room ? n : room;
	memcpy(p->resp + p->resp_len, data, take);
	p->resp_len += take;
	p->resp[p->resp_len] = 0;
	return n; /* the rest is read and discarded */
}

/* Retry-After: delay-seconds or an HTTP-date; -1 when unusable. */
static long parse_retry_after(const char *v, size_t n)
{
	char buf[80];
	while (n && (*v == ' ' || *v == '\t'))
		v++, n--;
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' ||
		     v[n - 1] == '\t'))
		n--;
	if (!n || n >= sizeof(buf))
		return -1;
	memcpy(buf, v, n);
	buf[n] = 0;
	if (strspn(buf, "0123456789") == n) {
		if (n > 9)
			return RETRY_AFTER_CAP_MS;
		long ms = strtol(buf, NULL, 10) * 1000;
		return ms > RETRY_AFTER_CAP_MS ? RETRY_AFTER_CAP_MS : ms;
	}
	time_t t = curl_getdate(buf, NULL);
	if (t == (time_t)-1)
		return -1;
	time_t now = time(NULL);
	if (t <= now)
		return 0;
	if (t - now > RETRY_AFTER_CAP_MS / 1000)
		return RETRY_AFTER_CAP_MS;
	return (long)(t - now) * 1000;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
	struct pa_push *p = arg;
	size_t n = size * nmemb;
	static const char ra[] = "retry-after:";
	if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		/* A new response (after 100 Continue): forget the last one. */
		p->retry_after_ms = 0;
	} else if (n > sizeof(ra) - 1 &&
		   strncasecmp(data, ra, sizeof(ra) - 1) == 0) {
		long ms = parse_retry_after(data + sizeof(ra) - 1,
					    n - (sizeof(ra) - 1));
		if (ms >= 0)
			p->retry_after_ms = ms;
	}
	return n;
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
		       curl_off_t ultotal, curl_off_t ulnow)
{
	(void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
	struct pa_push *p = arg;
	return __atomic_load_n(&p->aborted, __ATOMIC_RELAXED) ? 1 : 0;
}

static void skip_ws(const char **s, const char *end)
{
	while (*s < end && **s && strchr(" \t\r\n", **s))
		(*s)++;
}

static void put_utf8(char *out, size_t cap, size_t *o, unsigned cp)
{
	char tmp[4];
	size_t k;
	if (cp < 0x80) {
		tmp[0] = (char)cp, k = 1;
	} else if (cp < 0x800) {
		tmp[0] = (char)(0xc0 | (cp >> 6));
		tmp[1] = (char)(0x80 | (cp & 0x3f)), k = 2;
	} else {
		tmp[0] = (char)(0xe0 | (cp >> 12));
		tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		tmp[2] = (char)(0x80 | (cp & 0x3f)), k = 3;
	}
	if (*o + k < cap) {
		memcpy(out + *o, tmp, k);
		*o += k;
	}
}

/* Parses the JSON string at *s (on its opening quote) into out (bounded,
 * NUL-terminated; out may be NULL to skip). Returns false if malformed. */
static bool json_string(const char **s, const char *end, char *out, size_t cap)
{
	size_t o = 0;
	const char *q = *s + 1;
	while (q < end && *q != '"') {
		unsigned cp;
		if (*q != '\\') {
			cp = (unsigned char)*q++;
			if (out && o + 1 < cap)
				out[o++] = (char)cp;
			continue;
		}
		if (++q >= end)
			return false;
		char e = *q++;
		switch (e) {
		case 'n':
			cp = '\n';
			break;
		case 't':
			cp = '\t';
			break;
		case 'r':
			cp = '\r';
			break;
		case 'b':
			cp = '\b';
			break;
		case 'f':
			cp = '\f';
			break;
		case 'u':
			if (end - q < 4)
				return false;
			cp = 0;
			for (int i = 0; i < 4; i++, q++) {
				char c = *q;
				int v = c >= '0' && c <= '9'   ? c - '0'
					: c >= 'a' && c <= 'f' ? c - 'a' + 10
					: c >= 'A' && c <= 'F' ? c - 'A' + 10
							       : -1;
				if (v < 0)
					return false;
				cp = cp * 16 + (unsigned)v;
			}
			if (cp >= 0xd800 && cp <= 0xdfff)
				cp = '?'; /* surrogate halves: not worth pairing
					   */
			break;
		default:
			cp = (unsigned char)e;
			break;
		}
		if (out)
			put_utf8(out, cap, &o, cp);
	}
	if (q >= end)
		return false;
	if (out)
		out[o] = 0;
	*s = q + 1;
	return true;
}

/* Skips one JSON value of any kind (nesting bounded by the input). */
static bool json_skip(const char **s, const char *end)
{
	int depth = 0;
	do {
		skip_ws(s, end);
		if (*s >= end)
			return false;
		char c = **s;
		if (c == '"') {
			if (!json_string(s, end, NULL, 0))
				return false;
		} else if (c == '{' || c == '[') {
			depth++;
			(*s)++;
		} else if (c == '}' || c == ']') {
			if (--depth < 0)
				return false;
			(*s)++;
		} else {
			/* number, literal, ',' or ':' inside a container */
			(*s)++;
			while (*s < end && !strchr(",:{}[]\" \t\r\n", **s))
				(*s)++;
		}
	} while (depth > 0);
	return true;
}

/* The "message" of a top-level JSON object {"code":...,"message":...}. */
static bool json_message(const char *body, size_t n, char *out, size_t cap)
{
	const char *s = body, *end = body + n;
	skip_ws(&s, end);
	if (s >= end || *s != '{')
		return false;
	s++;
	for (;;) {
		skip_ws(&s, end);
		if (s >= end || *s != '"')
			return false;
		char key[16];
		if (!json_string(&s, end, key, sizeof(key)))
			return false;
		skip_ws(&s, end);
		if (s >= end || *s != ':')
			return false;
		s++;
		skip_ws(&s, end);
		if (s < end && *s == '"' && strcmp(key, "message") == 0)
			return json_string(&s, end, out, cap);
		if (!json_skip(&s, end))
			return false;
		skip_ws(&s, end);
		if (s >= end || *s != ',')
			return false;
		s++;
	}
}

/* Replaces each occurrence of secret in s with "<redacted>" (bounded). */
static void redact(char *s, size_t cap, const char *secret)
{
	static const char mark[] = "<redacted>";
	size_t k = secret ? strlen(secret) : 0;
	if (k < 3)
		return; /* too short to tell from ordinary text */
	char *hit;
	char *from = s;
	while ((hit = strstr(from, secret))) {
		size_t head = (size_t)(hit - s) + sizeof(mark) - 1;
		if (head >= cap) {
			*hit = 0; /* no room for the mark: cut the secret off */
			break;
		}
		size_t tail = strlen(hit + k);
		if (head + tail >= cap)
			tail = cap - 1 - head;
		memmove(hit + sizeof(mark) - 1, hit + k, tail);
		memcpy(hit, mark, sizeof(mark) - 1);
		hit[sizeof(mark) - 1 + tail] = 0;
		from = hit + sizeof(mark) - 1;
	}
}

/* One clean line: control bytes and invalid UTF-8 as \n, \xNN; at most
 * MSG_LOG_MAX bytes, cut at a character with "...". */
static void escape_line(const char *in, char *out, size_t cap)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t o = 0, left = strlen(in);
	size_t limit = cap - 4 < MSG_LOG_MAX ? cap - 4 : MSG_LOG_MAX;
	while (left) {
		char tmp[8];
		size_t k = 0, used = 1;
		if (*p == '\n' || *p == '\r' || *p == '\t') {
			tmp[0] = '\\';
			tmp[1] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
			k = 2;
		} else if (*p >= 0x20 && *p < 0x7f) {
			tmp[0] = (char)*p, k = 1;
		} else if (*p >= 0x80 && (used = utf8_seq(p, left)) > 0) {
			memcpy(tmp, p, used);
			k = used;
		} else {
			static const char hex[] = "0123456789abcdef";
			tmp[0] = '\\', tmp[1] = 'x';
			tmp[2] = hex[*p >> 4], tmp[3] = hex[*p & 15];
			k = 4, used = 1;
		}
		if (o + k > limit) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(out + o, tmp, k);
		o += k;
		p += used;
		left -= used;
	}
	out[o] = 0;
}

/* The server's explanation, safe to log: its JSON "message" or the start
 * of the body, secrets redacted, escaped into one short line. */
static void server_message(const struct pa_push *p, char *out, size_t cap)
{
	char raw[RESP_CAP];
	if (!json_message(p->resp, p->resp_len, raw, sizeof(raw))) {
		memcpy(raw, p->resp, p->resp_len);
		raw[p->resp_len] = 0;
	}
	redact(raw, sizeof(raw), p->cfg->basic_password);
	redact(raw, sizeof(raw), p->cfg->auth_token);
	redact(raw, sizeof(raw), p->basic_b64);
	escape_line(raw, out, cap);
	/* Once more on what is logged: an escape can rebuild a secret (a
	 * tab before "ok-123" reads "\tok-123"). */
	redact(out, cap, p->cfg->basic_password);
	redact(out, cap, p->cfg->auth_token);
	redact(out, cap, p->basic_b64);
	if (!*out)
		snprintf(out, cap, "(no message)");
}

static const char *status_hint(long status)
{
	switch (status) {
	case 401:
	case 403:
		return "; check PYROSCOPE_BASIC_AUTH_USER/_PASSWORD, "
		       "PYROSCOPE_AUTH_TOKEN and PYROSCOPE_TENANT_ID";
	case 404:
	case 405:
		return "; check PYROSCOPE_SERVER_ADDRESS (it must be "
		       "Pyroscope's base URL)";
	case 413:
		return "; a proxy limits the request size";
	case 415:
	case 501:
		return "; this is a pyroagent bug, please report it";
	default:
		return status >= 300 && status < 400
			   ? "; redirects are not followed: set "
			     "PYROSCOPE_SERVER_ADDRESS to the final URL"
			   : "";
	}
}

static int map_status(struct pa_push *p, const char *name, long status,
		      long *retry_after_ms)
{
	if (status >= 200 && status < 300)
		return 0;
	char msg[MSG_LOG_MAX + 8];
	bool first = once_bit(p->seen_status, 10, status);
	/* 501 is Pyroscope refusing our encoding: retrying cannot help, and
	 * a head-of-line retry would stall every later profile. */
	if (status == 408 || status == 429 ||
	    (status >= 500 && status != 501)) {
		*retry_after_ms = p->retry_after_ms;
		if (first) {
			server_message(p, msg, sizeof(msg));
			pa_warn(
			    "Pyroscope at %s answered HTTP %ld: %s; retrying",
			    p->shown_url, status, msg);
		}
		return -EAGAIN;
	}
	if (first) {
		server_message(p, msg, sizeof(msg));
		pa_warn("Pyroscope at %s rejected a %s profile (HTTP %ld): "
			"%s%s; such profiles are dropped",
			p->shown_url, name, status, msg, status_hint(status));
	}
	return -EINVAL;
}

static int map_curl_error(struct pa_push *p, CURLcode rc)
{
	if (rc == CURLE_ABORTED_BY_CALLBACK)
		return -ECANCELED;
	if (rc == CURLE_OUT_OF_MEMORY)
		return -ENOMEM;
	if (once_bit(p->seen_curl, 2, (long)rc)) {
		const char *hint = "";
		switch (rc) {
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CONNECT_ERROR:
			hint =
			    " (PYROAGENT_CA_FILE names the CA bundle to trust)";
			break;
		default:
			break;
		}
		pa_warn("cannot push to Pyroscope at %s: %s%s", p->shown_url,
			p->errbuf[0] ? p->errbuf : curl_easy_strerror(rc),
			hint);
	}
	/* A malformed URL never heals; everything else (refused, reset,
	 * timed out, TLS, a garbled reply) may. */
	return rc == CURLE_URL_MALFORMAT ? -EINVAL : -EAGAIN;
}

int pa_push_send(struct pa_push *p, const char *name, const uint8_t *gz,
		 size_t len, const struct pa_label *extra, int nextra,
		 long *http_status, long *retry_after_ms)
{
	long status_dummy, retry_dummy;
	if (!http_status)
		http_status = &status_dummy;
	if (!retry_after_ms)
		retry_after_ms = &retry_dummy;
	*http_status = 0;
	*retry_after_ms = 0;
	if (!p)
		return -EINVAL;
	if (__atomic_load_n(&p->aborted, __ATOMIC_RELAXED))
		return -ECANCELED;
	uint8_t *body = NULL;
	size_t body_len = 0;
	int rc =
	    pa_push_encode(p, name, gz, len, extra, nextra, &body, &body_len);
	if (rc != 0)
		return rc;
	p->errbuf[0] = 0;
	p->resp_len = 0;
	p->resp[0] = 0;
	p->retry_after_ms = 0;
	curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, (const char *)body);
	curl_easy_setopt(p->curl, CURLOPT_POSTFIELDSIZE_LARGE,
			 (curl_off_t)body_len);

	/* With CURLOPT_NOSIGNAL curl does not ignore SIGPIPE itself: block it
	 * on this thread and swallow one raised by a dead connection, so the
	 * host never dies of our socket. */
	sigset_t pipe_set, old_set;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CURLcode crc = curl_easy_perform(p->curl);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (!sigismember(&old_set, SIGPIPE)) {
		sigset_t pending;
		if (sigpending(&pending) == 0 &&
		    sigismember(&pending, SIGPIPE)) {
			struct timespec zero = {0, 0};
			sigtimedwait(&pipe_set, NULL, &zero);
		}
	}
	pthread_sigmask(SIG_SETMASK, &old_set, NULL);
	curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, (const char *)NULL);
	free(body);

	long ms = (long)((t1.tv_sec - t0.tv_sec) * 1000 +
			 (t1.tv_nsec - t0.tv_nsec) / 1000000);
	if (crc != CURLE_OK) {
		pa_debug(
		    "push of %s (%zu bytes) failed after %ld ms: curl error %d",
		    name, body_len, ms, (int)crc);
		return map_curl_error(p, crc);
	}
	long status = 0;
	curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &status);
	*http_status = status;
	pa_debug("pushed %s (%zu bytes): HTTP %ld in %ld ms", name, body_len,
		 status, ms);
	if (status == 0)
		return -EAGAIN;
	return map_status(p, name, status, retry_after_ms);
}

/* The reply half of pa_push_send, fed by hand (push.h: for tests and
 * fuzzers). Header lines and body reach the same callbacks libcurl calls,
 * in pieces no larger than libcurl's (CURL_MAX_WRITE_SIZE). */
int pa_push_take_reply(struct pa_push *p, const char *name, long status,
		       const char *head, size_t head_len, const char *body,
		       size_t body_len, long *retry_after_ms, char *msg,
		       size_t msg_cap)
{
	long retry_dummy;
	if (!retry_after_ms)
		retry_after_ms = &retry_dummy;
	*retry_after_ms = 0;
	if (!p || !name || (head_len && !head) || (body_len && !body) ||
	    (msg && msg_cap < 4))
		return -EINVAL;
	p->resp_len = 0;
	p->resp[0] = 0;
	p->retry_after_ms = 0;
	for (size_t i = 0; i < head_len;) {
		const char *nl = memchr(head + i, '\n', head_len - i);
		size_t n = nl ? (size_t)(nl - (head + i)) + 1 : head_len - i;
		on_header((char *)head + i, 1, n, p);
		i += n;
	}
	for (size_t i = 0; i < body_len;) {
		size_t n = body_len - i < CURL_MAX_WRITE_SIZE
			       ? body_len - i
			       : CURL_MAX_WRITE_SIZE;
		on_body((char *)body + i, 1, n, p);
		i += n;
	}
	if (msg)
		server_message(p, msg, msg_cap);
	if (status == 0)
		return -EAGAIN;
	return map_status(p, name, status, retry_after_ms);
}

/* ---- the handle --------------------------------------------------------- */

/* "scheme://user:pass@host/..." without "user:pass@". */
static char *strip_userinfo(const char *url)
{
	char *out = strdup(url);
	if (!out)
		return NULL;
	char *host = strstr(out, "://");
	if (!host)
		return out;
	host += 3;
	size_t hostlen = strcspn(host, "/?#");
	char *at = memrchr(host, '@', hostlen);
	if (at)
		memmove(host, at + 1, strlen(at + 1) + 1);
	return out;
}

static bool is_loopback(const char *url)
{
	const char *h = strstr(url, "://");
	h = h ? h + 3 : url;
	const char *at = memchr(h, '@', strcspn(h, "/?#"));
	if (at)
		h = at + 1;
	/* The host alone: up to the port, the path or the end, so that
	 * "localhost.example.com" or "127.example.com" is not loopback. */
	size_t n = strcspn(h, ":/?#");
	if (h[0] == '[') {
		const char *close = strchr(h, ']');
		if (!close || (close[1] && !strchr(":/?#", close[1])))
			return false; /* "[::1].example" */
		n = (size_t)(close - h) + 1;
	}
	if (n == 9 && strncasecmp(h, "localhost", 9) == 0)
		return true;
	if (n == 5 && strncmp(h, "[::1]", 5) == 0)
		return true;
	if (n < 4 || n > 15 || strncmp(h, "127.", 4) != 0)
		return false;
	/* 127.a.b.c, digits and dots only */
	for (size_t i = 4; i < n; i++)
		if (!((h[i] >= '0' && h[i] <= '9') || h[i] == '.'))
			return false;
	return true;
}

static bool same_name(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

/* Appends "Name: value" (or "Name;" for an empty value: curl's way to send
 * an empty header). The temporary copy is wiped: it may be a secret. */
static int add_header(struct pa_push *p, const char *hname, const char *value)
{
	size_t n = strlen(hname) + strlen(value) + 3;
	char *line = malloc(n);
	if (!line)
		return -ENOMEM;
	if (*value)
		snprintf(line, n, "%s: %s", hname, value);
	else
		snprintf(line, n, "%s;", hname);
	struct curl_slist *l = curl_slist_append(p->headers, line);
	wipe_free(line);
	if (!l)
		return -ENOMEM;
	p->headers = l;
	return 0;
}

static int build_headers(struct pa_push *p, bool *user_agent_given)
{
	const struct pa_config *cfg = p->cfg;
	bool basic = cfg->basic_user && *cfg->basic_user;
	bool bearer = !basic && cfg->auth_token && *cfg->auth_token;
	bool tenant = cfg->tenant_id && *cfg->tenant_id;
	int rc;
	/* Connect unary over HTTP/1.1 or h2; "Expect:" turns off curl's
	 * 100-continue round trip for large bodies. */
	if ((rc = add_header(p, "Content-Type", "application/proto")) ||
	    (rc = add_header(p, "Connect-Protocol-Version", "1")))
		return rc;
	struct curl_slist *l = curl_slist_append(p->headers, "Expect:");
	if (!l)
		return -ENOMEM;
	p->headers = l;
	if (tenant) {
		if (!header_value_ok(cfg->tenant_id))
			pa_warn("PYROSCOPE_TENANT_ID contains a line break: "
				"not sent");
		else if ((rc = add_header(p, "X-Scope-OrgID", cfg->tenant_id)))
			return rc;
	}
	if (bearer) {
		if (!header_value_ok(cfg->auth_token)) {
			pa_warn("PYROSCOPE_AUTH_TOKEN contains a line break: "
				"not sent");
		} else {
			size_t n = strlen(cfg->auth_token) + 8;
			char *v = malloc(n);
			if (!v)
				return -ENOMEM;
			snprintf(v, n, "Bearer %s", cfg->auth_token);
			rc = add_header(p, "Authorization", v);
			wipe_free(v);
			if (rc)
				return rc;
		}
	}
	/* Headers the protocol depends on are ours; explicit settings win
	 * over the same header in PYROSCOPE_HTTP_HEADERS. */
	static const char *const managed[] = {
	    "Content-Type",
	    "Content-Length",
	    "Content-Encoding",
	    "Transfer-Encoding",
	    "Connect-Protocol-Version",
	    "Host",
	    "Connection",
	    "Expect",
	};
	for (int i = 0; i < cfg->nheaders && i < PA_MAX_HEADERS; i++) {
		const char *hn = cfg->headers[i].name;
		const char *hv =
		    cfg->headers[i].value ? cfg->headers[i].value : "";
		if (!header_name_ok(hn) || !header_value_ok(hv)) {
			pa_warn("PYROSCOPE_HTTP_HEADERS: header %s is not "
				"valid HTTP: not sent",
				header_name_ok(hn) ? hn : "(bad name)");
			continue;
		}
		bool skip = false;
		for (size_t j = 0; j < sizeof(managed) / sizeof(managed[0]);
		     j++)
			skip |= same_name(hn, managed[j]);
		if (skip) {
			pa_warn("PYROSCOPE_HTTP_HEADERS: %s is set by the "
				"agent: ignored",
				hn);
			continue;
		}
		if ((same_name(hn, "Authorization") && (basic || bearer)) ||
		    (same_name(hn, "X-Scope-OrgID") && tenant)) {
			pa_warn("PYROSCOPE_HTTP_HEADERS: %s is already set by "
				"its own variable: ignored",
				hn);
			continue;
		}
		if (same_name(hn, "User-Agent"))
			*user_agent_given = true;
		if ((rc = add_header(p, hn, hv)))
			return rc;
	}
	return 0;
}

#define SETOPT(opt, val)                                                       \
	do {                                                                   \
		if (curl_easy_setopt(p->curl, opt, val) != CURLE_OK) {         \
			pa_error("libcurl refused option " #opt);              \
			rc = -EINVAL;                                          \
			goto fail;                                             \
		}                                                              \
	} while (0)

int pa_push_new(struct pa_push **out, const struct pa_config *cfg)
{
	*out = NULL;
	const char *server = cfg ? cfg->server_address : NULL;
	if (!server || (strncasecmp(server, "http://", 7) != 0 &&
			strncasecmp(server, "https://", 8) != 0)) {
		pa_error("PYROSCOPE_SERVER_ADDRESS must be an http:// or "
			 "https:// URL: no uploads");
		return -EINVAL;
	}
	struct pa_push *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->cfg = cfg;
	int rc = -ENOMEM;
	size_t n = strlen(server) + sizeof(PUSH_PATH);
	if (!(p->url = malloc(n)))
		goto fail;
	snprintf(p->url, n, "%s%s", server, PUSH_PATH);
	if (!(p->shown_url = strip_userinfo(p->url)))
		goto fail;
	bool basic = cfg->basic_user && *cfg->basic_user;
	if (basic) {
		const char *pw = cfg->basic_password ? cfg->basic_password : "";
		size_t k = strlen(cfg->basic_user) + strlen(pw) + 2;
		char *up = malloc(k);
		if (!up)
			goto fail;
		snprintf(up, k, "%s:%s", cfg->basic_user, pw);
		p->basic_b64 = base64(up);
		wipe_free(up);
		if (!p->basic_b64)
			goto fail;
	}
	if (!(p->curl = curl_easy_init()))
		goto fail;
	bool user_agent_given = false;
	if ((rc = build_headers(p, &user_agent_given)))
		goto fail;

	SETOPT(CURLOPT_URL, p->url);
	SETOPT(CURLOPT_NOSIGNAL, 1L); /* the host owns its signals */
	SETOPT(CURLOPT_POST, 1L);
	SETOPT(CURLOPT_HTTPHEADER, p->headers);
	if (!user_agent_given)
		SETOPT(CURLOPT_USERAGENT, "pyroagent/" PA_VERSION);
	SETOPT(CURLOPT_ERRORBUFFER, p->errbuf);
	SETOPT(CURLOPT_WRITEFUNCTION, on_body);
	SETOPT(CURLOPT_WRITEDATA, p);
	SETOPT(CURLOPT_HEADERFUNCTION, on_header);
	SETOPT(CURLOPT_HEADERDATA, p);
	SETOPT(CURLOPT_NOPROGRESS, 0L);
	SETOPT(CURLOPT_XFERINFOFUNCTION, on_progress);
	SETOPT(CURLOPT_XFERINFODATA, p);
	SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)PA_PUSH_CONNECT_TIMEOUT_MS);
	SETOPT(CURLOPT_TIMEOUT_MS, (long)PA_PUSH_TIMEOUT_MS);
	SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
	SETOPT(CURLOPT_TCP_KEEPIDLE, 60L);
	SETOPT(CURLOPT_TCP_KEEPINTVL, 30L);
	/* Protocols: our scheme check above covers a libcurl older than
	 * 7.85 that lacks the option. */
	if (curl_easy_setopt(p->curl, CURLOPT_PROTOCOLS_STR, "http,https") !=
	    CURLE_OK)
		pa_debug("libcurl has no CURLOPT_PROTOCOLS_STR");
	if (basic) {
		SETOPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		SETOPT(CURLOPT_USERNAME, cfg->basic_user);
		SETOPT(CURLOPT_PASSWORD,
		       cfg->basic_password ? cfg->basic_password : "");
		if (cfg->auth_token && *cfg->auth_token)
			pa_warn("both PYROSCOPE_BASIC_AUTH_USER and "
				"PYROSCOPE_AUTH_TOKEN are set: "
				"using basic auth");
	}
	if (cfg->tls_insecure) {
		SETOPT(CURLOPT_SSL_VERIFYPEER, 0L);
		SETOPT(CURLOPT_SSL_VERIFYHOST, 0L);
		pa_warn("TLS verification is OFF (PYROAGENT_TLS_INSECURE)");
	} else {
		SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
		SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
		if (cfg->ca_file && *cfg->ca_file)
			SETOPT(CURLOPT_CAINFO, cfg->ca_file);
	}
	if ((basic || (cfg->auth_token && *cfg->auth_token)) &&
	    strncasecmp(server, "http://", 7) == 0 && !is_loopback(server))
		pa_warn("credentials go to %s over plain http: anyone on the "
			"path can read them",
			p->shown_url);
	*out = p;
	return 0;
fail:
	pa_push_free(p);
	return rc;
}

void pa_push_set_timeouts(struct pa_push *p, long connect_ms, long total_ms)
{
	if (!p)
		return;
	if (connect_ms > 0)
		curl_easy_setopt(p->curl, CURLOPT_CONNECTTIMEOUT_MS,
				 connect_ms);
	if (total_ms > 0)
		curl_easy_setopt(p->curl, CURLOPT_TIMEOUT_MS, total_ms);
}

void pa_push_abort(struct pa_push *p)
{
	if (p)
		__atomic_store_n(&p->aborted, 1, __ATOMIC_RELAXED);
}

void pa_push_free(struct pa_push *p)
{
	if (!p)
		return;
	if (p->curl)
		curl_easy_cleanup(p->curl);
	for (struct curl_slist *l = p->headers; l; l = l->next)
		explicit_bzero(l->data, strlen(l->data));
	curl_slist_free_all(p->headers);
	free(p->url);
	free(p->shown_url);
	wipe_free(p->basic_b64);
	free(p);
}
