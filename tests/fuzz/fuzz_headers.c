/* Fuzz target: pa_config_parse_headers (PYROSCOPE_HTTP_HEADERS, a flat JSON
 * object of strings), its bounds, JSON round trips and its agreement with
 * the loader. Input: byte 0 picks max, byte 1 the buffer size, the rest
 * is the JSON text. */
#include "config.h"
#include "fuzz_pairs.h"

extern char **environ;

static const char *const refused[] = {
    "Host",
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Transfer-Encoding",
    "Connection",
    "Connect-Protocol-Version",
    "Connect-Timeout-Ms",
    "Expect",
    "TE",
    "Trailer",
    "Upgrade",
    "Keep-Alive",
    "Proxy-Connection",
};

static bool tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool ieq(const char *a, const char *b)
{
	for (;; a++, b++) {
		int x = *a >= 'A' && *a <= 'Z' ? *a + 32 : *a;
		int y = *b >= 'A' && *b <= 'Z' ? *b + 32 : *b;
		if (x != y)
			return false;
		if (!x)
			return true;
	}
}

static void check_headers(const struct pa_label *h, int n, int max,
			  const char *buf, size_t cap)
{
	FZ_CHECK(n >= 0 && n <= max && n <= 64);
	for (int i = 0; i < n; i++) {
		FZ_CHECK(fz_inside(h[i].name, buf, cap));
		FZ_CHECK(fz_inside(h[i].value, buf, cap));
		const char *k = h[i].name, *v = h[i].value;
		size_t kn = strlen(k), vn = strlen(v);
		FZ_CHECK(kn > 0 && kn <= 256);
		for (size_t j = 0; j < kn; j++)
			FZ_CHECK(tchar((unsigned char)k[j]));
		for (size_t j = 0; j < sizeof(refused) / sizeof(refused[0]);
		     j++)
			FZ_CHECK(!ieq(k, refused[j]));
		FZ_CHECK(vn > 0 && vn <= 8192);
		FZ_CHECK(fz_utf8_ok(v, vn));
		for (size_t j = 0; j < vn; j++) {
			unsigned char c = (unsigned char)v[j];
			FZ_CHECK((c >= 0x20 || c == '\t') && c != 0x7f);
		}
		for (int j = 0; j < i; j++)
			FZ_CHECK(!ieq(k, h[j].name));
	}
}

/* Next code point of valid UTF-8. */
static uint32_t next_cp(const unsigned char **p)
{
	const unsigned char *s = *p;
	uint32_t cp;
	int k;
	if (s[0] < 0x80)
		cp = s[0], k = 0;
	else if (s[0] < 0xe0)
		cp = s[0] & 0x1f, k = 1;
	else if (s[0] < 0xf0)
		cp = s[0] & 0x0f, k = 2;
	else
		cp = s[0] & 0x07, k = 3;
	for (int i = 1; i <= k; i++)
		cp = cp << 6 | (s[i] & 0x3f);
	*p = s + k + 1;
	return cp;
}

/* JSON text of one string: raw (only '"', '\\' and controls escaped) or
 * with every character as a \u escape (surrogate pairs past U+FFFF). */
static char *put_json(char *o, const char *s, bool all_u)
{
	const unsigned char *p = (const unsigned char *)s;
	*o++ = '"';
	while (*p) {
		const unsigned char *start = p;
		uint32_t cp = next_cp(&p);
		if (all_u && cp >= 0x10000) {
			cp -= 0x10000;
			o += sprintf(o, "\\u%04X\\u%04x", 0xd800 + (cp >> 10),
				     0xdc00 + (cp & 0x3ff));
		} else if (all_u || cp < 0x20) {
			o += sprintf(o, "\\u%04x", cp);
		} else if (cp == '"' || cp == '\\') {
			*o++ = '\\';
			*o++ = (char)cp;
		} else {
			memcpy(o, start, (size_t)(p - start));
			o += p - start;
		}
	}
	*o++ = '"';
	return o;
}

static void round_trip(const struct pa_label *h, int n, bool all_u)
{
	size_t cap = 3;
	for (int i = 0; i < n; i++)
		cap += 12 * (strlen(h[i].name) + strlen(h[i].value)) + 8;
	char *t = malloc(cap), *o = t;
	*o++ = '{';
	for (int i = 0; i < n; i++) {
		if (i)
			*o++ = all_u ? ',' : ' ', *o++ = all_u ? ' ' : ',';
		o = put_json(o, h[i].name, all_u);
		*o++ = ':';
		o = put_json(o, h[i].value, all_u);
	}
	*o++ = '}';
	*o = 0;
	struct pa_label again[64];
	char *abuf = malloc(cap);
	int an = -1;
	FZ_CHECK(pa_config_parse_headers(t, again, 64, &an, abuf, cap) == 0);
	FZ_CHECK(fz_pairs_same(h, n, again, an));
	free(abuf);
	free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	int max = fz_u8(&in) % 67;
	unsigned mode = fz_u8(&in);
	char *s = fz_cstr(in.p, in.n);
	size_t len = strlen(s);
	struct fz_pairs r =
	    fz_pairs_call(pa_config_parse_headers, s, max, mode);
	int rc = r.rc, n = r.n;
	struct pa_label *out = r.out;
	if (rc == 0)
		check_headers(out, n, max, r.buf, r.cap);

	struct pa_label full[64];
	char *fbuf = malloc(len + 1);
	int fn = -1;
	int frc = pa_config_parse_headers(s, full, 64, &fn, fbuf, len + 1);
	FZ_CHECK(frc == 0 || frc == -EINVAL);
	if (rc == 0)
		FZ_CHECK(frc == 0 && fz_pairs_same(out, n, full, fn));
	if (frc == 0) {
		check_headers(full, fn, 64, fbuf, len + 1);
		round_trip(full, fn, false);
		round_trip(full, fn, true);
		if (fn <= PA_MAX_HEADERS && len <= 160 * 1024) {
			size_t en = len + sizeof("PYROSCOPE_HTTP_HEADERS=");
			char *e = malloc(en);
			snprintf(e, en, "PYROSCOPE_HTTP_HEADERS=%s", s);
			char *env[] = {e, "PYROSCOPE_LOG_LEVEL=error", NULL};
			char **saved = environ;
			struct pa_config cfg;
			environ = env;
			pa_config_load(&cfg);
			environ = saved;
			FZ_CHECK(
			    fz_pairs_same(cfg.headers, cfg.nheaders, full, fn));
			pa_config_free(&cfg);
			free(e);
		}
	}
	free(fbuf);
	fz_pairs_free(&r);
	free(s);
	return 0;
}
