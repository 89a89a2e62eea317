/* Fuzz target: what the Push client makes of a server's reply (status, header
 * lines with Retry-After, a JSON or free-text error body), through the
 * pa_push_take_reply seam. Input: 2 bytes status, the header block up to a
 * 0xff byte, then the body. Checks the retry decision against a reference,
 * and that the logged message is one clean line without any secret. */
#include <curl/curl.h>
#include <strings.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"
#include "push.h"

#define USER	 "alice"
#define PASSWORD "Pw9Zq7" /* shorter than "<redacted>": the text grows */
#define TOKEN	 "tok-Zq7Kp9Wx-9f8e7d"
#define CAP_MS	 (10L * 60 * 1000)
#define LOG_CAP	 (64u << 10)

static char b64[64];

static void base64(const char *s, char *out)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"
	    "tuvwxyz0123456789+/";
	size_t n = strlen(s);
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)p[i] << 16 |
			     (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		*out++ = tab[v >> 18 & 63];
		*out++ = tab[v >> 12 & 63];
		*out++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
		*out++ = i + 2 < n ? tab[v & 63] : '=';
	}
	*out = 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	base64(USER ":" PASSWORD, b64);
	fz_capture_init();
	return 0;
}

/* The Retry-After pa_push_send must report: -1 when it depends on the
 * clock (an HTTP date), else the last usable value of the last response. */
static long expected_retry(const char *head, size_t len)
{
	long ra = 0;
	for (size_t i = 0; i < len;) {
		const char *line = head + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t n = nl ? (size_t)(nl - line) + 1 : len - i;
		i += n;
		if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
			ra = 0;
			continue;
		}
		if (n <= 12 || strncasecmp(line, "retry-after:", 12) != 0 ||
		    memchr(line, 0, 12))
			continue;
		const char *v = line + 12;
		size_t k = n - 12;
		while (k && (*v == ' ' || *v == '\t'))
			v++, k--;
		while (k && strchr("\r\n \t", v[k - 1]) && v[k - 1])
			k--;
		if (!k || k >= 80)
			continue;
		size_t d = 0;
		while (d < k && v[d] >= '0' && v[d] <= '9')
			d++;
		if (d < k)
			return -1; /* a date (or nothing usable: also -1) */
		if (k > 9) {
			ra = CAP_MS;
		} else {
			long s = 0;
			for (size_t j = 0; j < k; j++)
				s = s * 10 + (v[j] - '0');
			ra = s * 1000 > CAP_MS ? CAP_MS : s * 1000;
		}
	}
	return ra;
}

/* One line of UTF-8 without C0 controls or DEL and without a secret; a
 * log line (log.c escapes them) not even C1 controls or U+2028/2029. */
static void check_line(const char *s, size_t n, size_t max, bool logged)
{
	const unsigned char *u = (const unsigned char *)s;
	FZ_CHECK(n <= max);
	FZ_CHECK(fz_utf8_ok(s, n));
	for (size_t i = 0; i < n; i++) {
		FZ_CHECK(u[i] >= 0x20 && u[i] != 0x7f);
		if (logged && i + 1 < n)
			FZ_CHECK(!(u[i] == 0xc2 && u[i + 1] <= 0x9f));
		if (logged && i + 2 < n)
			FZ_CHECK(!(u[i] == 0xe2 && u[i + 1] == 0x80 &&
				   (u[i + 2] == 0xa8 || u[i + 2] == 0xa9)));
	}
	FZ_CHECK(!fz_contains(s, n, PASSWORD));
	FZ_CHECK(!fz_contains(s, n, TOKEN));
	FZ_CHECK(!fz_contains(s, n, b64));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	long status = (long)(fz_uint(&in, 2) % 700);
	size_t head_len;
	char *head = fz_piece(&in, &head_len);
	/* Both as exact-size copies: an overread is an ASan error. */
	char *body = malloc(in.n ? in.n : 1);
	if (!body)
		abort();
	if (in.n)
		memcpy(body, in.p, in.n);

	struct pa_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.server_address = "http://127.0.0.1:9";
	cfg.application_name = "fuzz";
	cfg.basic_user = USER;
	cfg.basic_password = PASSWORD;
	cfg.auth_token = TOKEN; /* only redacted: basic auth wins */
	static char log[LOG_CAP];
	pa_log_level = PA_LOG_DEBUG;
	/* Creation warns (token and basic auth both set): not counted. */
	fz_capture_begin();
	struct pa_push *p;
	int rc = pa_push_new(&p, &cfg);
	fz_capture_end(log, sizeof(log));
	if (rc) {
		FZ_CHECK(rc == -ENOMEM);
		free(head);
		free(body);
		return 0;
	}
	long retry = -5;
	char msg[256];
	fz_capture_begin();
	rc = pa_push_take_reply(p, "process_cpu", status, head, head_len, body,
				in.n, &retry, msg, sizeof(msg));
	/* The same reply again: the message is logged once per status. */
	long retry2 = -5;
	int rc2 = pa_push_take_reply(p, "process_cpu", status, head, head_len,
				     body, in.n, &retry2, NULL, 0);
	size_t loglen = fz_capture_end(log, sizeof(log));
	pa_push_free(p);

	bool retryable = status == 0 || status == 408 || status == 429 ||
			 (status >= 500 && status != 501);
	int want = status >= 200 && status < 300 ? 0
		   : retryable			 ? -EAGAIN
						 : -EINVAL;
	FZ_CHECK(rc == want && rc2 == want);
	FZ_CHECK(retry2 == retry);
	if (rc != -EAGAIN || status == 0) {
		FZ_CHECK(retry == 0);
	} else {
		FZ_CHECK(retry >= 0 && retry <= CAP_MS);
		long ra = expected_retry(head, head_len);
		if (ra >= 0)
			FZ_CHECK(retry == ra);
	}
	/* The message: "(no message)" or text, cut with "..." at about 200
	 * bytes (a redaction may lengthen it within msg). */
	size_t mlen = strnlen(msg, sizeof(msg));
	FZ_CHECK(mlen > 0 && mlen < sizeof(msg));
	check_line(msg, mlen, sizeof(msg) - 1, false);

	/* Every log line: one line, no secret; a warning per rejection
	 * at most, none for success. */
	FZ_CHECK(loglen < sizeof(log));
	int lines = 0;
	for (const char *l = log; *l;) {
		const char *nl = strchr(l, '\n');
		FZ_CHECK(nl && strncmp(l, "pyroagent[", 10) == 0);
		check_line(l, (size_t)(nl - l), 1023, true);
		if (strstr(l, "]: warn: ") && strstr(l, "]: warn: ") < nl)
			lines++;
		l = nl + 1;
	}
	if (rc == 0 || status == 0)
		FZ_CHECK(lines == 0);
	else
		FZ_CHECK(lines == 1);
	bool ascii = true;
	for (size_t i = 0; i < mlen; i++)
		ascii &= (unsigned char)msg[i] < 0x80;
	if (lines && ascii && loglen < 900)
		FZ_CHECK(strstr(log, msg)); /* the line carries the message */
	free(head);
	free(body);
	return 0;
}
