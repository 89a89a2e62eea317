/* The environment table: every setting read once at load from one static
 * table, validated, one warning line per bad value, strings in one arena. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* Longest header name and value accepted from PYROSCOPE_HTTP_HEADERS. */
#define HEADER_NAME_MAX	 256
#define HEADER_VALUE_MAX 8192
/* The strict parsers track at most this many distinct names. */
#define KV_MAX 64
/* A value quoted in a warning is cut after this many bytes. */
#define SHOW_MAX      80
#define SHOW_PAIR_MAX 40

_Static_assert(sizeof(enum pa_event) == sizeof(int), "enum fields are ints");

/* ---- small text helpers (ASCII only: no locale) -------------------------- */

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool ieq(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

/* Length of the well-formed UTF-8 sequence at s (n bytes readable), 0 if
 * none; *cp gets the code point. Overlong forms, surrogates and values
 * above U+10FFFF are not well formed. */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		*cp = c & 0x0f;
		lo = c == 0xe0 ? 0xa0 : 0x80;
		hi = c == 0xed ? 0x9f : 0xbf;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		*cp = c & 0x07;
		lo = c == 0xf0 ? 0x90 : 0x80;
		hi = c == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 0;
	}
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if (i > 1 && (s[i] < 0x80 || s[i] > 0xbf))
			return 0;
		*cp = (*cp << 6) | (s[i] & 0x3f);
	}
	return len;
}

static size_t utf8_put(uint32_t cp, char *dst)
{
	if (cp < 0x80) {
		dst[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		dst[0] = (char)(0xc0 | (cp >> 6));
		dst[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		dst[0] = (char)(0xe0 | (cp >> 12));
		dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		dst[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	dst[0] = (char)(0xf0 | (cp >> 18));
	dst[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	dst[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	dst[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

static size_t utf8_len(uint32_t cp)
{
	return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

static bool is_control(uint32_t cp)
{
	return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f);
}

enum text_problem { TEXT_OK, TEXT_NOT_UTF8, TEXT_CONTROL };

/* Checks a text value: control characters (C0, DEL; C1 too when it must
 * be UTF-8) and, when asked, UTF-8 validity. Paths need not be UTF-8. */
static enum text_problem text_check(const char *s, size_t n, bool need_utf8)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t len = utf8_seq(u + i, n - i, &cp);
		if (!len) {
			if (need_utf8)
				return TEXT_NOT_UTF8;
			cp = u[i];
			len = 1;
		}
		if (is_control(cp) && (cp < 0x80 || need_utf8))
			return TEXT_CONTROL;
		i += len;
	}
	return TEXT_OK;
}

static const char *text_why(enum text_problem t)
{
	return t == TEXT_NOT_UTF8  ? "is not valid UTF-8"
	       : t == TEXT_CONTROL ? "contains control characters"
				   : NULL;
}

/* How many bytes of s to quote in a warning: at most max, not cutting a
 * UTF-8 sequence in two. */
static int show_len(const char *s, size_t n, size_t max)
{
	if (n <= max)
		return (int)n;
	size_t cut = max;
	for (int i = 0;
	     i < 3 && cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80; i++)
		cut--;
	return (int)cut;
}

static const char *show_tail(size_t n, size_t max)
{
	return n > max ? "..." : "";
}

/* "15s", "500ms", "1m": the largest unit that divides ns exactly. */
static void fmt_duration(int64_t ns, char *buf, size_t cap)
{
	static const struct {
		int64_t ns;
		const char *unit;
	} units[] = {{3600000000000LL, "h"}, {60000000000LL, "m"},
		     {1000000000LL, "s"},    {1000000LL, "ms"},
		     {1000LL, "us"},	     {1LL, "ns"}};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (ns != 0 && ns % units[i].ns == 0) {
			snprintf(buf, cap, "%lld%s",
				 (long long)(ns / units[i].ns), units[i].unit);
			return;
		}
	}
	snprintf(buf, cap, "0s");
}

/* "512k", "64m", "1g" when exact, else bytes. */
static void fmt_size(int64_t bytes, char *buf, size_t cap)
{
	static const char units[] = "tgmk";
	for (int i = 0; i < 4; i++) {
		int64_t m = (int64_t)1 << (10 * (4 - i));
		if (bytes != 0 && bytes % m == 0) {
			snprintf(buf, cap, "%lld%c", (long long)(bytes / m),
				 units[i]);
			return;
		}
	}
	snprintf(buf, cap, "%lld", (long long)bytes);
}

/* ---- the scalar parsers -------------------------------------------------- */

/* Reads digits[.digits] at *pp. int128 keeps the arithmetic exact:
 * an integer part below 2^64 times a unit below 2^42 fits. */
struct decimal {
	unsigned __int128 ip; /* integer part */
	uint64_t fp, scale;   /* fraction = fp / scale */
	bool frac;	      /* a '.' was given */
};

static int read_decimal(const char **pp, struct decimal *d)
{
	const char *p = *pp;
	bool digits = false;
	*d = (struct decimal){.scale = 1};
	for (; is_digit(*p); p++) {
		d->ip = d->ip * 10 + (unsigned)(*p - '0');
		if (d->ip > (unsigned __int128)UINT64_MAX)
			return -EINVAL;
		digits = true;
	}
	if (*p == '.') {
		d->frac = true;
		for (p++; is_digit(*p); p++) {
			/* Digits beyond 10^-18 cannot matter: dropped. */
			if (d->scale < 1000000000000000000ULL) {
				d->fp = d->fp * 10 + (uint64_t)(*p - '0');
				d->scale *= 10;
			}
			digits = true;
		}
	}
	if (!digits)
		return -EINVAL;
	*pp = p;
	return 0;
}

/* d times unit, truncated to an integer; -EINVAL above INT64_MAX. */
static int scale_decimal(const struct decimal *d, int64_t unit,
			 unsigned __int128 *out)
{
	unsigned __int128 v =
	    d->ip * (unsigned __int128)unit +
	    (unsigned __int128)d->fp * (uint64_t)unit / d->scale;
	if (v > (unsigned __int128)INT64_MAX)
		return -EINVAL;
	*out = v;
	return 0;
}

/* The duration unit at p (case-insensitive; µ as U+00B5 or U+03BC):
 * returns its length and sets *ns, 0 when there is none. */
static size_t duration_unit(const char *p, int64_t *ns)
{
	const unsigned char *u = (const unsigned char *)p;
	size_t micro = 0;
	if (u[0] == 0xc2 && u[1] == 0xb5)
		micro = 2;
	else if (u[0] == 0xce && u[1] == 0xbc)
		micro = 2;
	else if (lower(u[0]) == 'u')
		micro = 1;
	if (micro && lower(u[micro]) == 's') {
		*ns = 1000;
		return micro + 1;
	}
	switch (lower(u[0])) {
	case 'n':
		if (lower(u[1]) != 's')
			return 0;
		*ns = 1;
		return 2;
	case 'm':
		if (lower(u[1]) == 's') {
			*ns = 1000000;
			return 2;
		}
		*ns = 60000000000LL;
		return 1;
	case 's':
		*ns = 1000000000LL;
		return 1;
	case 'h':
		*ns = 3600000000000LL;
		return 1;
	}
	return 0;
}

/* One or more <decimal><unit> ("1.5s", "2m30s"; units ns us µs ms s m h),
 * or one bare decimal = seconds (pyroscope-java reads "10" as 10s).
 * Fractions below 1 ns are dropped. */
int pa_config_parse_duration(const char *s, int64_t *ns)
{
	if (!s || !ns || !*s)
		return -EINVAL;
	const char *p = s;
	unsigned __int128 total = 0;
	bool first = true;
	while (*p) {
		struct decimal d;
		if (read_decimal(&p, &d))
			return -EINVAL;
		int64_t unit;
		size_t ulen = duration_unit(p, &unit);
		if (!ulen) {
			if (*p || !first)
				return -EINVAL;
			unit = 1000000000LL;
		}
		p += ulen;
		unsigned __int128 v;
		if (scale_decimal(&d, unit, &v))
			return -EINVAL;
		total += v;
		if (total > (unsigned __int128)INT64_MAX)
			return -EINVAL;
		first = false;
	}
	*ns = (int64_t)total;
	return 0;
}

/* A decimal and an optional binary unit: b, k/kb/kib, m/mb/mib, g/gb/gib,
 * t/tb/tib, any case (k = 1024, as pyroscope-java and async-profiler
 * read them). A fraction needs a unit ("1.5m"); the result is truncated
 * to whole bytes. */
int pa_config_parse_size(const char *s, int64_t *bytes)
{
	if (!s || !bytes || !*s)
		return -EINVAL;
	const char *p = s;
	struct decimal d;
	if (read_decimal(&p, &d))
		return -EINVAL;
	int64_t unit = 1;
	int shift = 0;
	switch (lower(*p)) {
	case 'k':
		shift = 10;
		break;
	case 'm':
		shift = 20;
		break;
	case 'g':
		shift = 30;
		break;
	case 't':
		shift = 40;
		break;
	}
	if (shift) {
		unit = (int64_t)1 << shift;
		p++;
		if (lower(p[0]) == 'i' && lower(p[1]) == 'b')
			p += 2;
		else if (lower(p[0]) == 'b')
			p++;
	} else if (lower(*p) == 'b') {
		p++;
	}
	if (*p || (d.frac && unit == 1))
		return -EINVAL;
	unsigned __int128 v;
	if (scale_decimal(&d, unit, &v))
		return -EINVAL;
	*bytes = (int64_t)v;
	return 0;
}

int pa_config_parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"true", "1", "yes", "on"};
	static const char *const no[] = {"false", "0", "no", "off"};
	if (!s || !out)
		return -EINVAL;
	for (int i = 0; i < 4; i++) {
		if (ieq(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (ieq(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

/* A whole number with an optional '%' ("90", "90%"). */
static int parse_int(const char *s, int64_t *out)
{
	int64_t v = 0;
	const char *p = s;
	if (!is_digit(*p))
		return -EINVAL;
	for (; is_digit(*p); p++) {
		if (v > (INT64_MAX - 9) / 10)
			return -EINVAL;
		v = v * 10 + (*p - '0');
	}
	if (*p == '%')
		p++;
	if (*p)
		return -EINVAL;
	*out = v;
	return 0;
}

/* ---- string views: raw bytes or the inside of a validated JSON string ---- */

struct sv {
	const char *p;
	size_t n;
	bool json;
};

static int hex4(const char *p)
{
	int v = 0;
	for (int i = 0; i < 4; i++) {
		int c = lower((unsigned char)p[i]), d;
		if (is_digit(c))
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* Next code point of a view (raw views yield bytes); -1 at the end. JSON
 * views were validated by json_string, so escapes are well formed. */
static int32_t sv_next(struct sv *it)
{
	if (!it->n)
		return -1;
	const unsigned char *s = (const unsigned char *)it->p;
	size_t adv = 1;
	uint32_t cp = s[0];
	if (it->json && s[0] == '\\') {
		adv = 2;
		switch (s[1]) {
		case 'b':
			cp = '\b';
			break;
		case 'f':
			cp = '\f';
			break;
		case 'n':
			cp = '\n';
			break;
		case 'r':
			cp = '\r';
			break;
		case 't':
			cp = '\t';
			break;
		case 'u':
			adv = 6;
			cp = (uint32_t)hex4(it->p + 2);
			if (cp >= 0xd800 && cp <= 0xdbff) {
				uint32_t lo = (uint32_t)hex4(it->p + 8);
				cp = 0x10000 + ((cp - 0xd800) << 10) +
				     (lo - 0xdc00);
				adv = 12;
			}
			break;
		default: /* " \ / */
			cp = s[1];
		}
	} else if (it->json && s[0] >= 0x80) {
		adv = utf8_seq(s, it->n, &cp);
		if (!adv) {
			adv = 1;
			cp = s[0];
		}
	}
	it->p += adv;
	it->n -= adv;
	return (int32_t)cp;
}

/* Bytes the view takes once decoded (UTF-8). */
static size_t sv_len(struct sv v)
{
	if (!v.json)
		return v.n;
	size_t n = 0;
	int32_t cp;
	while ((cp = sv_next(&v)) >= 0)
		n += utf8_len((uint32_t)cp);
	return n;
}

static size_t sv_write(struct sv v, char *dst)
{
	if (!v.json) {
		memcpy(dst, v.p, v.n);
		return v.n;
	}
	size_t n = 0;
	int32_t cp;
	while ((cp = sv_next(&v)) >= 0)
		n += utf8_put((uint32_t)cp, dst + n);
	return n;
}

static bool sv_eq(struct sv a, struct sv b, bool icase)
{
	for (;;) {
		int32_t x = sv_next(&a), y = sv_next(&b);
		if (icase && x >= 0 && x < 0x80 && y >= 0 && y < 0x80) {
			x = lower(x);
			y = lower(y);
		}
		if (x != y)
			return false;
		if (x < 0)
			return true;
	}
}

static bool sv_eq_cstr(struct sv a, const char *s, bool icase)
{
	return sv_eq(a, (struct sv){s, strlen(s), false}, icase);
}

static struct sv sv_trim(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	return (struct sv){p, (size_t)(end - p), false};
}

/* ---- the loader's state and its one warning line ------------------------- */

enum var_id {
	V_LOG_LEVEL,
	V_DISABLE,
	V_PROCESS_FILTER,
	V_SERVER_ADDRESS,
	V_APPLICATION_NAME,
	V_LABELS,
	V_UPLOAD_INTERVAL,
	V_PROFILING_INTERVAL,
	V_PROFILER_EVENT,
	V_PROFILER_ALLOC,
	V_ALLOC_LIVE,
	V_BASIC_USER,
	V_BASIC_PASSWORD,
	V_AUTH_TOKEN,
	V_TENANT_ID,
	V_HTTP_HEADERS,
	V_OUTPUT_DIR,
	V_MEMORY_LIMIT,
	V_OOM_GUARD,
	V_EXIT_TIMEOUT,
	V_CA_FILE,
	V_TLS_INSECURE,
	V_SPOOL_DIR,
	V_SPOOL_MAX,
	V_SPOOL_MAX_AGE,
	NVARS
};

struct loader {
	struct pa_config *cfg;
	bool quiet; /* disabled or filtered out: a no-op says nothing */
	char *arena;
	size_t arena_cap, arena_used;
	bool set[NVARS];      /* given, non-empty */
	bool rejected[NVARS]; /* given and refused (already warned) */
};

__attribute__((format(printf, 2, 3))) static void say(struct loader *L,
						      const char *fmt, ...)
{
	if (L->quiet || PA_LOG_WARN < pa_log_level)
		return;
	va_list ap;
	va_start(ap, fmt);
	pa_log_vwrite(PA_LOG_WARN, fmt, ap);
	va_end(ap);
}

/* Copies n bytes (NUL added) into the arena; NULL when it is full (only
 * when its allocation failed: it is sized for every value up front). */
static char *arena_dup(struct loader *L, const char *s, size_t n)
{
	if (!L->arena || n + 1 > L->arena_cap - L->arena_used)
		return NULL;
	char *d = L->arena + L->arena_used;
	memcpy(d, s, n);
	d[n] = '\0';
	L->arena_used += n + 1;
	return d;
}

static char *arena_alloc(struct loader *L, size_t n)
{
	if (!L->arena || n > L->arena_cap - L->arena_used)
		return NULL;
	char *d = L->arena + L->arena_used;
	L->arena_used += n;
	return d;
}

/* ---- name=value collections (labels, headers) ---------------------------- */

/* Where parsed pairs go. Strict (L == NULL): the first problem fails the
 * whole string. Lenient (the loader): a bad pair is skipped with one
 * warning. A dry run validates and counts without writing. */
struct kv {
	struct pa_label *out;
	int max, n;
	char *buf;
	size_t cap, used;
	bool dry;
	bool icase;		 /* names compare case-insensitively */
	struct sv names[KV_MAX]; /* names[i] names out[i] */
	struct loader *L;	 /* NULL: strict */
	const char *var, *noun;	 /* for warnings: variable, "label" */
	uint64_t dup_warned;	 /* bit i: repeat of names[i] reported */
	int over;		 /* pairs dropped for the cap */
	struct sv first_over;
};

/* A bad pair: fails in strict mode; in lenient mode one warning quoting
 * the first `show` bytes of it ("..." when that is not all). */
static int kv_skip(struct kv *k, struct sv pair, size_t show, const char *why)
{
	if (!k->L)
		return -EINVAL;
	say(k->L, "%s: skipping %s \"%.*s%s\": %s", k->var, k->noun, (int)show,
	    pair.p, show < pair.n ? "..." : "", why);
	return 0;
}

/* The part of a pair a warning may quote. */
static size_t shown(struct sv pair)
{
	return (size_t)show_len(pair.p, pair.n, SHOW_PAIR_MAX);
}

/* Adds a validated pair (last value wins for a repeated name); show is
 * what a warning may quote for it. */
static int kv_add(struct kv *k, struct sv name, struct sv value, struct sv show)
{
	int i;
	for (i = 0; i < k->n; i++)
		if (sv_eq(k->names[i], name, k->icase))
			break;
	size_t nlen = sv_len(name), vlen = sv_len(value);
	size_t need = (i < k->n ? 0 : nlen + 1) + vlen + 1;
	if (i == k->n && k->n >= k->max) {
		if (!k->L)
			return -EINVAL;
		if (k->over++ == 0)
			k->first_over = show;
		return 0;
	}
	if (need > k->cap - k->used)
		return k->L ? kv_skip(k, show, shown(show), "out of room")
			    : -EINVAL;
	if (i < k->n && k->L && !(k->dup_warned & (1ULL << i))) {
		k->dup_warned |= 1ULL << i;
		say(k->L,
		    "%s: %s \"%.*s%s\" is given more than once; the last value "
		    "wins",
		    k->var, k->noun, show_len(name.p, name.n, SHOW_MAX), name.p,
		    show_tail(name.n, SHOW_MAX));
	}
	if (!k->dry) {
		char *d = k->buf + k->used;
		if (i == k->n) {
			d[sv_write(name, d)] = '\0';
			k->out[i].name = d;
			d += nlen + 1;
		}
		d[sv_write(value, d)] = '\0';
		k->out[i].value = d;
	}
	k->used += need;
	if (i == k->n)
		k->names[k->n++] = name;
	return 0;
}

/* The one line for pairs beyond the cap. */
static void kv_finish(struct kv *k)
{
	if (!k->L || !k->over)
		return;
	struct sv f = k->first_over;
	char more[32] = "";
	if (k->over > 1)
		snprintf(more, sizeof(more), " and %d more", k->over - 1);
	say(k->L, "%s: at most %d %ss; skipping \"%.*s%s\"%s", k->var, k->max,
	    k->noun, show_len(f.p, f.n, SHOW_PAIR_MAX), f.p,
	    show_tail(f.n, SHOW_PAIR_MAX), more);
}

/* ---- labels: "k=v,k2=v2" ------------------------------------------------- */

static const char *label_name_problem(const char *p, size_t n)
{
	if (n == 0)
		return "the label name is empty";
	if (n > PA_LABEL_NAME_MAX)
		return "the label name is longer than 1024 bytes";
	if (!(is_alpha(p[0]) || p[0] == '_' || p[0] == '.'))
		return "the label name must match [a-zA-Z_.][a-zA-Z0-9_.]*";
	for (size_t i = 1; i < n; i++)
		if (!(is_alpha(p[i]) || is_digit(p[i]) || p[i] == '_' ||
		      p[i] == '.'))
			return "the label name must match "
			       "[a-zA-Z_.][a-zA-Z0-9_.]*";
	if (n >= 2 && p[0] == '_' && p[1] == '_')
		return "label names starting with __ are reserved";
	if (n == 12 && memcmp(p, "service_name", 12) == 0)
		return "service_name is set from PYROSCOPE_APPLICATION_NAME";
	return NULL;
}

bool pa_config_label_name_ok(const char *name)
{
	return name && !label_name_problem(name, strlen(name));
}

static int label_add(struct kv *k, struct sv pair)
{
	const char *eq = memchr(pair.p, '=', pair.n);
	if (!eq)
		return kv_skip(k, pair, shown(pair),
			       "not in the form name=value");
	struct sv name = sv_trim(pair.p, eq);
	struct sv value = sv_trim(eq + 1, pair.p + pair.n);
	const char *why = label_name_problem(name.p, name.n);
	enum text_problem t;
	if (why)
		;
	else if (value.n == 0)
		why = "the value is empty";
	else if (value.n > PA_LABEL_VALUE_MAX)
		why = "the value is longer than 2048 bytes";
	else if ((t = text_check(value.p, value.n, true)) == TEXT_NOT_UTF8)
		why = "the value is not valid UTF-8";
	else if (t == TEXT_CONTROL)
		why = "the value contains control characters";
	if (why)
		return kv_skip(k, pair, shown(pair), why);
	return kv_add(k, name, value, pair);
}

static int labels_walk(const char *s, size_t len, struct kv *k)
{
	const char *p = s, *end = s + len;
	for (;;) {
		const char *q = memchr(p, ',', (size_t)(end - p));
		if (!q)
			q = end;
		struct sv pair = sv_trim(p, q);
		if (pair.n && label_add(k, pair))
			return -EINVAL;
		if (q == end)
			break;
		p = q + 1;
	}
	kv_finish(k);
	return 0;
}

int pa_config_parse_labels(const char *s, struct pa_label *out, int max, int *n,
			   char *buf, size_t bufsize)
{
	if (!s || !n || max < 0 || (max && !out) || (bufsize && !buf))
		return -EINVAL;
	if (max > KV_MAX)
		max = KV_MAX;
	size_t len = strlen(s);
	struct kv k = {.max = max,
		       .cap = bufsize,
		       .dry = true,
		       .var = "labels",
		       .noun = "label"};
	if (labels_walk(s, len, &k))
		return -EINVAL;
	k = (struct kv){.out = out,
			.max = max,
			.buf = buf,
			.cap = bufsize,
			.var = "labels",
			.noun = "label"};
	if (labels_walk(s, len, &k))
		return -EINVAL;
	*n = k.n;
	return 0;
}

/* ---- headers: a flat JSON object of strings ------------------------------ */

/* Set by the agent (or hop-by-hop): never taken from the user. */
static const char *const refused_headers[] = {
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

static bool is_tchar(int32_t c)
{
	return c >= 0 && c < 0x80 &&
	       (is_alpha(c) || is_digit(c) || strchr("!#$%&'*+-.^_`|~", c)) &&
	       c != 0;
}

struct json_err {
	const char *why;
	size_t at;
};

static void json_ws(const char **pp, const char *end)
{
	const char *p = *pp;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	*pp = p;
}

/* Validates the JSON string at *pp (on its opening quote) and returns a
 * view of its inside. */
static int json_string(const char **pp, const char *end, const char *base,
		       struct sv *out, struct json_err *e)
{
	const char *p = *pp + 1, *start = p;
	while (p < end && *p != '"') {
		const unsigned char c = (unsigned char)*p;
		if (c < 0x20) {
			e->why = "a control character inside a string";
			goto fail;
		}
		if (c >= 0x80) {
			uint32_t cp;
			size_t len = utf8_seq((const unsigned char *)p,
					      (size_t)(end - p), &cp);
			if (!len) {
				e->why = "invalid UTF-8";
				goto fail;
			}
			p += len;
			continue;
		}
		if (c != '\\') {
			p++;
			continue;
		}
		if (end - p < 2 || !strchr("\"\\/bfnrtu", p[1]) || !p[1]) {
			e->why = "an invalid escape";
			goto fail;
		}
		if (p[1] != 'u') {
			p += 2;
			continue;
		}
		int u = end - p >= 6 ? hex4(p + 2) : -1;
		if (u < 0) {
			e->why = "an invalid \\u escape";
			goto fail;
		}
		if (u >= 0xdc00 && u <= 0xdfff) {
			e->why = "a lone surrogate in a \\u escape";
			goto fail;
		}
		if (u >= 0xd800 && u <= 0xdbff) {
			int lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u'
				     ? hex4(p + 8)
				     : -1;
			if (lo < 0xdc00 || lo > 0xdfff) {
				e->why = "a lone surrogate in a \\u escape";
				goto fail;
			}
			p += 12;
		} else {
			p += 6;
		}
	}
	if (p >= end) {
		e->why = "an unterminated string";
		goto fail;
	}
	*out = (struct sv){start, (size_t)(p - start), true};
	*pp = p + 1;
	return 0;
fail:
	e->at = (size_t)(p - base);
	return -EINVAL;
}

static int header_add(struct kv *k, struct sv name, struct sv value)
{
	const char *why = NULL;
	size_t nlen = 0, vlen = 0;
	struct sv it = name;
	int32_t cp;
	while ((cp = sv_next(&it)) >= 0 && !why) {
		if (!is_tchar(cp))
			why = "not a valid HTTP header name";
		nlen++;
	}
	if (!why && nlen == 0)
		why = "the header name is empty";
	if (!why && nlen > HEADER_NAME_MAX)
		why = "the header name is longer than 256 bytes";
	for (size_t i = 0;
	     !why && i < sizeof(refused_headers) / sizeof(refused_headers[0]);
	     i++)
		if (sv_eq_cstr(name, refused_headers[i], true))
			why = "the agent sets this header itself";
	/* Values are secrets: reasons name the header only. */
	it = value;
	while (!why && (cp = sv_next(&it)) >= 0) {
		if ((cp < 0x20 && cp != '\t') || cp == 0x7f)
			why = "its value contains control characters (CR, LF, "
			      "NUL...)";
		vlen += utf8_len((uint32_t)cp);
	}
	if (!why && vlen == 0)
		why = "its value is empty";
	if (!why && vlen > HEADER_VALUE_MAX)
		why = "its value is longer than 8192 bytes";
	if (!why)
		return kv_add(k, name, value, name);
	/* A name that is not a token may hold what belongs in the value
	 * ("Authorization: Bearer ..."): quote only its leading token. */
	size_t show = shown(name);
	for (size_t i = 0; i < show; i++) {
		if (name.p[i] == '\\' || !is_tchar((unsigned char)name.p[i])) {
			show = i;
			break;
		}
	}
	return kv_skip(k, name, show, why);
}

/* Parses s as {"name":"value",...}. With k == NULL only the JSON syntax is
 * checked (e tells what and where). */
static int headers_walk(const char *s, size_t len, struct kv *k,
			struct json_err *e)
{
	const char *p = s, *end = s + len;
	json_ws(&p, end);
	if (p == end || *p != '{') {
		e->why = "expected '{'";
		goto fail;
	}
	p++;
	json_ws(&p, end);
	if (p < end && *p == '}') {
		p++;
		goto tail;
	}
	for (;;) {
		struct sv name, value;
		if (p == end || *p != '"') {
			e->why = "expected a string";
			goto fail;
		}
		if (json_string(&p, end, s, &name, e))
			return -EINVAL;
		json_ws(&p, end);
		if (p == end || *p != ':') {
			e->why = "expected ':'";
			goto fail;
		}
		p++;
		json_ws(&p, end);
		if (p == end || *p != '"') {
			e->why = "values must be strings";
			goto fail;
		}
		if (json_string(&p, end, s, &value, e))
			return -EINVAL;
		if (k && header_add(k, name, value))
			return -EINVAL;
		json_ws(&p, end);
		if (p < end && *p == ',') {
			p++;
			json_ws(&p, end);
			continue;
		}
		if (p < end && *p == '}') {
			p++;
			break;
		}
		e->why = "expected ',' or '}'";
		goto fail;
	}
tail:
	json_ws(&p, end);
	if (p != end) {
		e->why = "unexpected text after the object";
		goto fail;
	}
	if (k)
		kv_finish(k);
	return 0;
fail:
	e->at = (size_t)(p - s);
	return -EINVAL;
}

int pa_config_parse_headers(const char *s, struct pa_label *out, int max,
			    int *n, char *buf, size_t bufsize)
{
	if (!s || !n || max < 0 || (max && !out) || (bufsize && !buf))
		return -EINVAL;
	if (max > KV_MAX)
		max = KV_MAX;
	size_t len = strlen(s);
	struct json_err e;
	struct kv k = {.max = max, .cap = bufsize, .dry = true, .icase = true};
	if (headers_walk(s, len, &k, &e))
		return -EINVAL;
	k = (struct kv){
	    .out = out, .max = max, .buf = buf, .cap = bufsize, .icase = true};
	if (headers_walk(s, len, &k, &e))
		return -EINVAL;
	*n = k.n;
	return 0;
}

/* ---- PYROSCOPE_SERVER_ADDRESS -------------------------------------------- */

#define URL_ADDED_SCHEME  1u
#define URL_STRIPPED_AUTH 2u

static bool host_char(char c)
{
	return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' ||
	       c == '~';
}

/* Normalizes a base URL into out (room for strlen(s) + 8 bytes): scheme
 * lower-cased (http:// added when missing), credentials dropped, trailing
 * '/' removed. Returns 0 (*fixes says what changed) or -EINVAL (*why). */
static int url_normalize(const char *s, char *out, unsigned *fixes,
			 const char **why)
{
	*fixes = 0;
	for (const char *c = s; *c; c++) {
		if ((unsigned char)*c <= 0x20 || *c == 0x7f) {
			*why = "contains spaces or control characters";
			return -EINVAL;
		}
		if ((unsigned char)*c >= 0x80) {
			*why = "contains non-ASCII characters (percent-encode "
			       "them)";
			return -EINVAL;
		}
	}
	const char *rest, *scheme = "http";
	const char *sep = strstr(s, "://");
	if (sep) {
		size_t n = (size_t)(sep - s);
		if (n == 4 && strncasecmp(s, "http", 4) == 0)
			scheme = "http";
		else if (n == 5 && strncasecmp(s, "https", 5) == 0)
			scheme = "https";
		else if (n == 0) {
			*why = "is not a URL";
			return -EINVAL;
		} else {
			*why = "has an unsupported scheme (use http:// or "
			       "https://)";
			return -EINVAL;
		}
		rest = sep + 3;
	} else {
		*fixes |= URL_ADDED_SCHEME;
		rest = s;
	}
	const char *auth_end = rest + strcspn(rest, "/?#");
	const char *host = rest;
	for (const char *c = rest; c < auth_end; c++)
		if (*c == '@')
			host = c + 1;
	if (host != rest)
		*fixes |= URL_STRIPPED_AUTH;
	const char *port = NULL;
	if (*host == '[') { /* IPv6 literal, maybe with a zone */
		const char *close =
		    memchr(host, ']', (size_t)(auth_end - host));
		bool colon = false;
		for (const char *c = host + 1; close && c < close; c++) {
			if (*c == ':')
				colon = true;
			else if (!is_digit(*c) && !is_alpha(*c) && *c != '.' &&
				 *c != '%' && *c != '_' && *c != '-')
				close = NULL;
		}
		if (!close || !colon) {
			*why = "has an invalid IPv6 address";
			return -EINVAL;
		}
		if (close + 1 < auth_end && close[1] != ':') {
			*why = "has an invalid host";
			return -EINVAL;
		}
		if (close + 1 < auth_end)
			port = close + 2;
	} else {
		const char *c = host;
		while (c < auth_end && host_char(*c))
			c++;
		if (c == host) {
			*why = "has no host";
			return -EINVAL;
		}
		if (c < auth_end && *c != ':') {
			*why = "has an invalid host";
			return -EINVAL;
		}
		if (c < auth_end)
			port = c + 1;
	}
	if (port) {
		long v = 0;
		const char *c = port;
		for (; c < auth_end && is_digit(*c) && v <= 65535; c++)
			v = v * 10 + (*c - '0');
		if (c != auth_end || c == port || c - port > 5 || v < 1 ||
		    v > 65535) {
			*why = "has an invalid port";
			return -EINVAL;
		}
	}
	const char *path = auth_end, *path_end = path + strlen(path);
	if (strpbrk(path, "?#")) {
		*why = "must not have a query or a fragment";
		return -EINVAL;
	}
	while (path_end > path && path_end[-1] == '/')
		path_end--;
	for (const char *c = path; c + 1 < path_end; c++) {
		if (c[0] == '/' && c[1] == '/') {
			*why = "has an empty path segment (//)";
			return -EINVAL;
		}
	}
	int n = sprintf(out, "%s://", scheme);
	memcpy(out + n, host, (size_t)(auth_end - host));
	n += (int)(auth_end - host);
	memcpy(out + n, path, (size_t)(path_end - path));
	n += (int)(path_end - path);
	out[n] = '\0';
	return 0;
}

/* ---- the table ----------------------------------------------------------- */

enum vtype {
	T_DURATION,
	T_SIZE,
	T_BOOL,
	T_INT,
	T_ENUM,
	T_STRING,
	T_URL,
	T_NAME, /* the application name: default computed */
	T_LABELS,
	T_HEADERS,
};

#define F_SECRET  1u /* never printed */
#define F_UTF8	  2u /* must be valid UTF-8 */
#define F_NOCOLON 4u /* basic auth user: ':' ends the user in the header */
#define F_TOKEN	  8u /* bearer token: visible ASCII, "Bearer " tolerated */

struct choice {
	const char *word;
	int value;
};

static const struct choice log_levels[] = {
    {"debug", PA_LOG_DEBUG},  {"info", PA_LOG_INFO},   {"warn", PA_LOG_WARN},
    {"warning", PA_LOG_WARN}, {"error", PA_LOG_ERROR}, {NULL, 0}};
/* ctimer is async-profiler's name for what cpu does here. */
static const struct choice events[] = {{"cpu", PA_EVENT_CPU},
				       {"itimer", PA_EVENT_ITIMER},
				       {"ctimer", PA_EVENT_CPU},
				       {NULL, 0}};
/* pyroscope-java events this agent does not have. */
static const char *const foreign_events[] = {"wall", "alloc", "lock",
					     "nativemem", NULL};

struct var {
	const char *name;
	enum vtype type;
	unsigned flags;
	size_t off;	 /* field in struct pa_config */
	const char *def; /* default in the variable's own syntax; NULL: unset */
	int64_t min, max; /* bounds; for text, the longest value in bytes */
	const char *zero; /* numbers: what 0 means when below min, else NULL */
	const struct choice *choices;
	const char *hint; /* "is not ..." for a value that does not parse */
	const char *none; /* text: what an unset value means in a warning */
};

#define NS_US	1000LL
#define NS_MS	1000000LL
#define NS_S	1000000000LL
#define NS_MIN	(60 * NS_S)
#define KIB	1024LL
#define MIB	(1024 * KIB)
#define GIB	(1024 * MIB)
#define OFF(f)	offsetof(struct pa_config, f)
#define PATHLEN (PATH_MAX - 1)

static const struct var vars[NVARS] = {
    [V_LOG_LEVEL] = {"PYROSCOPE_LOG_LEVEL", T_ENUM, 0, OFF(log_level), "info",
		     .choices = log_levels,
		     .hint = "is not one of debug, info, warn, error"},
    [V_DISABLE] = {"PYROAGENT_DISABLE", T_BOOL, 0, OFF(disable), "false"},
    [V_PROCESS_FILTER] = {"PYROAGENT_PROCESS_FILTER", T_STRING, 0,
			  OFF(process_filter), NULL, 0, 4096,
			  .none = "profiling every process"},
    [V_SERVER_ADDRESS] = {"PYROSCOPE_SERVER_ADDRESS", T_URL, 0,
			  OFF(server_address), "http://localhost:4040", 0,
			  4096},
    [V_APPLICATION_NAME] = {"PYROSCOPE_APPLICATION_NAME", T_NAME, F_UTF8,
			    OFF(application_name), NULL, 0, PA_LABEL_VALUE_MAX},
    [V_LABELS] = {"PYROSCOPE_LABELS", T_LABELS, 0, OFF(labels), NULL, 0,
		  128 * 1024},
    [V_UPLOAD_INTERVAL] = {"PYROSCOPE_UPLOAD_INTERVAL", T_DURATION, 0,
			   OFF(upload_interval_ns), "15s", 100 * NS_MS,
			   60 * NS_MIN},
    [V_PROFILING_INTERVAL] = {"PYROSCOPE_PROFILING_INTERVAL", T_DURATION, 0,
			      OFF(profiling_interval_ns), "10ms", 100 * NS_US,
			      NS_S},
    [V_PROFILER_EVENT] = {"PYROSCOPE_PROFILER_EVENT", T_ENUM, 0, OFF(event),
			  "cpu", .choices = events,
			  .hint = "is not one of cpu, itimer"},
    [V_PROFILER_ALLOC] = {"PYROSCOPE_PROFILER_ALLOC", T_SIZE, 0,
			  OFF(alloc_rate), "512k", 0, GIB},
    [V_ALLOC_LIVE] = {"PYROSCOPE_ALLOC_LIVE", T_BOOL, 0, OFF(alloc_live),
		      "true"},
    [V_BASIC_USER] = {"PYROSCOPE_BASIC_AUTH_USER", T_STRING,
		      F_SECRET | F_UTF8 | F_NOCOLON, OFF(basic_user), NULL, 0,
		      4096, .none = "basic auth off"},
    [V_BASIC_PASSWORD] = {"PYROSCOPE_BASIC_AUTH_PASSWORD", T_STRING,
			  F_SECRET | F_UTF8, OFF(basic_password), NULL, 0, 4096,
			  .none = "basic auth off"},
    [V_AUTH_TOKEN] = {"PYROSCOPE_AUTH_TOKEN", T_STRING, F_SECRET | F_TOKEN,
		      OFF(auth_token), NULL, 0, 16384,
		      .none = "no bearer token"},
    [V_TENANT_ID] = {"PYROSCOPE_TENANT_ID", T_STRING, F_UTF8, OFF(tenant_id),
		     NULL, 0, 256, .none = "no X-Scope-OrgID"},
    [V_HTTP_HEADERS] = {"PYROSCOPE_HTTP_HEADERS", T_HEADERS, F_SECRET,
			OFF(headers), NULL, 0, 160 * 1024},
    [V_OUTPUT_DIR] = {"PYROAGENT_OUTPUT_DIR", T_STRING, 0, OFF(output_dir),
		      NULL, 0, PATHLEN, .none = "no profile files"},
    [V_MEMORY_LIMIT] = {"PYROAGENT_MEMORY_LIMIT", T_SIZE, 0, OFF(memory_limit),
			"0", MIB, (int64_t)1 << 50, .zero = "detect"},
    [V_OOM_GUARD] = {"PYROAGENT_OOM_GUARD", T_INT, 0, OFF(oom_guard_pct), "90",
		     0, 99, .hint = "is not a percentage (0-99)"},
    [V_EXIT_TIMEOUT] = {"PYROAGENT_EXIT_TIMEOUT", T_DURATION, 0,
			OFF(exit_timeout_ns), "2s", 0, 60 * NS_S},
    [V_CA_FILE] = {"PYROAGENT_CA_FILE", T_STRING, 0, OFF(ca_file), NULL, 0,
		   PATHLEN, .none = "the system CA store"},
    [V_TLS_INSECURE] = {"PYROAGENT_TLS_INSECURE", T_BOOL, 0, OFF(tls_insecure),
			"false"},
    [V_SPOOL_DIR] = {"PYROAGENT_SPOOL_DIR", T_STRING, 0, OFF(spool_dir), NULL,
		     0, PATHLEN, .none = "no spool"},
    [V_SPOOL_MAX] = {"PYROAGENT_SPOOL_MAX", T_SIZE, 0, OFF(spool_max), "64m",
		     MIB, 64 * GIB},
    [V_SPOOL_MAX_AGE] = {"PYROAGENT_SPOOL_MAX_AGE", T_DURATION, 0,
			 OFF(spool_max_age_ns), "55m", NS_MIN, 59 * NS_MIN},
};

static void *field(struct loader *L, const struct var *v)
{
	return (char *)L->cfg + v->off;
}

/* One line for a refused or corrected value: the variable, the value
 * (quoted, escaped by the log writer, cut; never for secrets), why, and
 * what is used instead. */
static void bad(struct loader *L, int id, const char *raw, const char *why,
		const char *instead)
{
	const struct var *v = &vars[id];
	size_t n = strlen(raw);
	if (v->flags & F_SECRET)
		say(L, "%s %s; %s", v->name, why, instead);
	else
		say(L, "%s=\"%.*s%s\" %s; %s", v->name,
		    show_len(raw, n, SHOW_MAX), raw, show_tail(n, SHOW_MAX),
		    why, instead);
}

static const char *type_hint(const struct var *v)
{
	if (v->hint)
		return v->hint;
	switch (v->type) {
	case T_DURATION:
		return "is not a duration (e.g. 15s, 500ms, 1m)";
	case T_SIZE:
		return "is not a size (e.g. 512k, 4m, 1g)";
	case T_BOOL:
		return "is not a boolean (true/false, 1/0, yes/no, on/off)";
	default:
		return "is not valid";
	}
}

static int parse_number(const struct var *v, const char *s, int64_t *out)
{
	switch (v->type) {
	case T_DURATION:
		return pa_config_parse_duration(s, out);
	case T_SIZE:
		return pa_config_parse_size(s, out);
	default:
		return parse_int(s, out);
	}
}

static void fmt_number(const struct var *v, int64_t x, char *buf, size_t cap)
{
	if (v->type == T_DURATION)
		fmt_duration(x, buf, cap);
	else if (v->type == T_SIZE)
		fmt_size(x, buf, cap);
	else
		snprintf(buf, cap, "%lld", (long long)x);
}

static void store_number(struct loader *L, const struct var *v, int64_t x)
{
	if (v->type == T_INT)
		*(int *)field(L, v) = (int)x;
	else
		*(int64_t *)field(L, v) = x;
}

static void load_number(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	int64_t x, def = 0;
	char instead[64], bound[32], why[96];
	/* Defaults parse and lie within bounds (config_defaults). */
	(void)parse_number(v, v->def, &def);
	if (parse_number(v, raw, &x)) {
		snprintf(instead, sizeof(instead), "using %s", v->def);
		bad(L, id, raw, type_hint(v), instead);
		L->rejected[id] = true;
		x = def;
	} else if (x == 0 && v->zero) {
		/* 0 has its own meaning (detect, off) */
	} else if (x < v->min || x > v->max) {
		int64_t b = x < v->min ? v->min : v->max;
		fmt_number(v, b, bound, sizeof(bound));
		snprintf(why, sizeof(why), "is %s the %s %s%s%s%s",
			 x < v->min ? "below" : "above",
			 x < v->min ? "minimum" : "maximum", bound,
			 v->zero ? " (0 = " : "", v->zero ? v->zero : "",
			 v->zero ? ")" : "");
		snprintf(instead, sizeof(instead), "using %s", bound);
		bad(L, id, raw, why, instead);
		L->rejected[id] = true;
		x = b;
	}
	store_number(L, v, x);
}

static const struct choice *find_choice(const struct choice *c, const char *s)
{
	for (; c->word; c++)
		if (ieq(c->word, s))
			return c;
	return NULL;
}

static void load_enum(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	const struct choice *c = find_choice(v->choices, raw);
	char instead[64];
	snprintf(instead, sizeof(instead), "using %s", v->def);
	if (!c) {
		bool foreign = false;
		for (int i = 0; id == V_PROFILER_EVENT && foreign_events[i];
		     i++)
			foreign |= ieq(foreign_events[i], raw);
		bad(L, id, raw,
		    foreign ? "is not supported by this agent" : type_hint(v),
		    instead);
		L->rejected[id] = true;
		c = find_choice(v->choices, v->def);
	}
	*(int *)field(L, v) = c->value;
}

static void load_bool(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	bool b;
	if (pa_config_parse_bool(raw, &b)) {
		char instead[64];
		snprintf(instead, sizeof(instead), "using %s", v->def);
		bad(L, id, raw, type_hint(v), instead);
		L->rejected[id] = true;
		(void)pa_config_parse_bool(v->def, &b);
	}
	*(bool *)field(L, v) = b;
}

/* "is longer than N bytes" for a value over the variable's cap. */
static const char *too_long(const struct var *v, char *buf, size_t cap)
{
	snprintf(buf, cap, "is longer than %lld bytes", (long long)v->max);
	return buf;
}

/* Why a text value (length already checked) is refused, or NULL. */
static const char *string_problem(const struct var *v, const char *s, size_t n)
{
	if (v->flags & F_TOKEN) {
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] <= 0x20 ||
			    (unsigned char)s[i] >= 0x7f)
				return "contains spaces, control or non-ASCII "
				       "characters";
		return NULL;
	}
	const char *why = text_why(text_check(s, n, v->flags & F_UTF8));
	if (why)
		return why;
	if ((v->flags & F_NOCOLON) && memchr(s, ':', n))
		return "must not contain ':'";
	return NULL;
}

static void load_string(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	size_t n = strlen(raw);
	const char **dst = field(L, v);
	if (n > (size_t)v->max) {
		char why[48];
		bad(L, id, raw, too_long(v, why, sizeof(why)), v->none);
		L->rejected[id] = true;
		return;
	}
	if (v->flags & F_TOKEN && strncasecmp(raw, "Bearer ", 7) == 0) {
		/* A common slip: the value is the token alone. */
		const char *t = raw + 7;
		while (*t == ' ')
			t++;
		const char *why = *t ? string_problem(v, t, strlen(t))
				     : "holds only \"Bearer \"";
		if (why) {
			bad(L, id, raw, why, v->none);
			L->rejected[id] = true;
			return;
		}
		*dst = arena_dup(L, t, strlen(t));
		bad(L, id, raw, "starts with \"Bearer \": the agent adds it",
		    "using the rest as the token");
		return;
	}
	const char *why = string_problem(v, raw, n);
	if (why) {
		bad(L, id, raw, why, v->none);
		L->rejected[id] = true;
		return;
	}
	*dst = arena_dup(L, raw, n);
}

static void load_url(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	size_t n = strlen(raw);
	const char **dst = field(L, v);
	char *out = n <= (size_t)v->max ? arena_alloc(L, n + 8) : NULL;
	unsigned fixes = 0;
	char buf[48];
	const char *why = too_long(v, buf, sizeof(buf));
	char instead[4096 + 64];
	if (out && url_normalize(raw, out, &fixes, &why) == 0) {
		*dst = out;
		snprintf(instead, sizeof(instead), "using %s", out);
		if (fixes & URL_STRIPPED_AUTH)
			say(L,
			    "credentials in %s are ignored; use "
			    "PYROSCOPE_BASIC_AUTH_USER/PASSWORD%s; %s",
			    v->name,
			    fixes & URL_ADDED_SCHEME ? " (and it has no scheme)"
						     : "",
			    instead);
		else if (fixes & URL_ADDED_SCHEME)
			bad(L, id, raw, "has no scheme", instead);
		return;
	}
	if (n <= (size_t)v->max && !out)
		return; /* no arena: the default stays */
	L->rejected[id] = true;
	snprintf(instead, sizeof(instead), "using %s", v->def);
	if (strchr(raw, '@'))
		say(L, "%s (not shown: it may hold credentials) %s; %s",
		    v->name, why, instead);
	else
		bad(L, id, raw, why, instead);
}

/* The executable's name made a valid service_name: bad bytes become '_'. */
static const char *default_name(struct loader *L)
{
	const char *exe = program_invocation_short_name;
	size_t n = exe ? strlen(exe) : 0;
	if (n == 0)
		return PA_UNKNOWN_SERVICE;
	bool cut = n > PA_LABEL_VALUE_MAX;
	if (cut)
		n = PA_LABEL_VALUE_MAX;
	char *d = arena_alloc(L, n + 1);
	if (!d)
		return cut || text_check(exe, n, true) ? PA_UNKNOWN_SERVICE
						       : exe;
	size_t o = 0;
	const unsigned char *s = (const unsigned char *)exe;
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t len = utf8_seq(s + i, n - i, &cp);
		if (!len || is_control(cp)) {
			d[o++] = '_';
			i += len ? len : 1;
		} else {
			memcpy(d + o, s + i, len);
			o += len;
			i += len;
		}
	}
	d[o] = '\0';
	return d;
}

static void load_name(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	size_t n = strlen(raw);
	char buf[48];
	const char *why = n > (size_t)v->max
			      ? too_long(v, buf, sizeof(buf))
			      : text_why(text_check(raw, n, true));
	if (why) {
		char instead[PA_LABEL_VALUE_MAX + 64];
		snprintf(instead, sizeof(instead),
			 "using the executable name (%s)",
			 L->cfg->application_name);
		bad(L, id, raw, why, instead);
		L->rejected[id] = true;
		return;
	}
	const char *d = arena_dup(L, raw, n);
	if (d)
		L->cfg->application_name = d;
}

static void load_labels(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	size_t n = strlen(raw);
	if (n > (size_t)v->max) {
		char why[48];
		bad(L, id, raw, too_long(v, why, sizeof(why)),
		    "using no labels");
		L->rejected[id] = true;
		return;
	}
	struct kv k = {.out = L->cfg->labels,
		       .max = PA_MAX_USER_LABELS,
		       .buf = arena_alloc(L, n + 1),
		       .cap = n + 1,
		       .L = L,
		       .var = v->name,
		       .noun = "label"};
	if (!k.buf)
		return;
	labels_walk(raw, n, &k);
	L->cfg->nlabels = k.n;
}

static void load_headers(struct loader *L, int id, const char *raw)
{
	const struct var *v = &vars[id];
	size_t n = strlen(raw);
	struct json_err e = {0};
	if (n > (size_t)v->max) {
		char why[48];
		bad(L, id, raw, too_long(v, why, sizeof(why)),
		    "using no extra headers");
		L->rejected[id] = true;
		return;
	}
	if (headers_walk(raw, n, NULL, &e)) {
		/* The text is not shown: header values are secrets. */
		say(L,
		    "%s is not a flat JSON object of strings "
		    "({\"Name\":\"value\",...}): %s at byte %zu; using no "
		    "extra headers",
		    v->name, e.why, e.at);
		L->rejected[id] = true;
		return;
	}
	struct kv k = {.out = L->cfg->headers,
		       .max = PA_MAX_HEADERS,
		       .buf = arena_alloc(L, n + 1),
		       .cap = n + 1,
		       .icase = true,
		       .L = L,
		       .var = v->name,
		       .noun = "header"};
	if (!k.buf)
		return;
	headers_walk(raw, n, &k, &e);
	L->cfg->nheaders = k.n;
}

static void set_default(struct loader *L, int id)
{
	const struct var *v = &vars[id];
	int64_t x = 0;
	bool b = false;
	switch (v->type) {
	case T_DURATION:
	case T_SIZE:
	case T_INT:
		(void)parse_number(v, v->def, &x);
		store_number(L, v, x);
		break;
	case T_BOOL:
		(void)pa_config_parse_bool(v->def, &b);
		*(bool *)field(L, v) = b;
		break;
	case T_ENUM:
		*(int *)field(L, v) = find_choice(v->choices, v->def)->value;
		break;
	case T_URL:
	case T_STRING:
		*(const char **)field(L, v) = v->def;
		break;
	case T_NAME:
		L->cfg->application_name = default_name(L);
		break;
	case T_LABELS:
	case T_HEADERS:
		break;
	}
}

static void load_var(struct loader *L, int id)
{
	const struct var *v = &vars[id];
	const char *raw = getenv(v->name);
	set_default(L, id);
	if (!raw || !*raw)
		return; /* VAR= is the same as unset */
	L->set[id] = true;
	switch (v->type) {
	case T_DURATION:
	case T_SIZE:
	case T_INT:
		load_number(L, id, raw);
		break;
	case T_BOOL:
		load_bool(L, id, raw);
		break;
	case T_ENUM:
		load_enum(L, id, raw);
		break;
	case T_STRING:
		load_string(L, id, raw);
		break;
	case T_URL:
		load_url(L, id, raw);
		break;
	case T_NAME:
		load_name(L, id, raw);
		break;
	case T_LABELS:
		load_labels(L, id, raw);
		break;
	case T_HEADERS:
		load_headers(L, id, raw);
		break;
	}
}

static void drop_header(struct pa_config *cfg, int i)
{
	memmove(&cfg->headers[i], &cfg->headers[i + 1],
		(size_t)(cfg->nheaders - i - 1) * sizeof(cfg->headers[0]));
	cfg->nheaders--;
}

/* Rules between variables, once each has been read. */
static void cross_checks(struct loader *L)
{
	struct pa_config *cfg = L->cfg;
	/* Basic auth needs both halves; a half already refused has had its
	 * warning, which said "basic auth off". */
	if (!cfg->basic_user != !cfg->basic_password) {
		int have = cfg->basic_user ? V_BASIC_USER : V_BASIC_PASSWORD;
		int miss =
		    have == V_BASIC_USER ? V_BASIC_PASSWORD : V_BASIC_USER;
		if (!L->rejected[miss])
			say(L, "%s is set but %s is not; basic auth off",
			    vars[have].name, vars[miss].name);
		cfg->basic_user = cfg->basic_password = NULL;
	}
	/* pyroscope-go's rule: basic auth wins over a bearer token. */
	if (cfg->basic_user && cfg->auth_token) {
		say(L,
		    "%s is ignored: PYROSCOPE_BASIC_AUTH_USER/PASSWORD take "
		    "precedence",
		    vars[V_AUTH_TOKEN].name);
		cfg->auth_token = NULL;
	}
	for (int i = 0; i < cfg->nheaders;) {
		const char *h = cfg->headers[i].name;
		const char *by = NULL;
		if (ieq(h, "Authorization") &&
		    (cfg->basic_user || cfg->auth_token))
			by = cfg->basic_user
				 ? "PYROSCOPE_BASIC_AUTH_USER/PASSWORD take"
				 : "PYROSCOPE_AUTH_TOKEN takes";
		else if (ieq(h, "X-Scope-OrgID") && cfg->tenant_id)
			by = "PYROSCOPE_TENANT_ID takes";
		if (!by) {
			i++;
			continue;
		}
		say(L, "%s: skipping header \"%s\": %s precedence",
		    vars[V_HTTP_HEADERS].name, h, by);
		drop_header(cfg, i);
	}
	/* Files only when a directory and no server were asked for. */
	cfg->upload = !(L->set[V_OUTPUT_DIR] && !L->set[V_SERVER_ADDRESS]);
}

bool pa_config_process_selected(const char *filter, const char *exe)
{
	if (!filter || !*filter)
		return true;
	size_t len = exe ? strlen(exe) : 0;
	for (const char *p = filter;;) {
		const char *q = strchrnul(p, ',');
		struct sv e = sv_trim(p, q);
		if ((e.n == 1 && e.p[0] == '*') ||
		    (len && e.n == len && memcmp(e.p, exe, len) == 0))
			return true;
		if (!*q)
			return false;
		p = q + 1;
	}
}

/*
 * PYROAGENT_PROCESS_FILTER matches the program's name as it was invoked
 * (program_invocation_short_name: argv[0]'s basename) or the file that
 * runs (the basename of /proc/self/exe): "python3" selects a script run
 * as "python3 app.py", and a program started through a symlink or with a
 * rewritten argv[0] is still found by its file name.
 */
bool pa_config_selects_self(const char *filter)
{
	if (pa_config_process_selected(filter, program_invocation_short_name))
		return true;
	char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	if (n <= 0)
		return false;
	path[n] = 0;
	static const char deleted[] = " (deleted)";
	size_t dl = sizeof(deleted) - 1;
	if ((size_t)n > dl && strcmp(path + n - dl, deleted) == 0)
		path[n - dl] = 0;
	const char *base = strrchr(path, '/');
	return pa_config_process_selected(filter, base ? base + 1 : path);
}

/* A process that is disabled or filtered out stays silent: every child of
 * a profiled shell inherits LD_PRELOAD and these variables. */
static bool will_be_quiet(void)
{
	const char *d = getenv(vars[V_DISABLE].name);
	bool off = false;
	if (d && *d && pa_config_parse_bool(d, &off) == 0 && off)
		return true;
	const char *f = getenv(vars[V_PROCESS_FILTER].name);
	if (!f || !*f || strlen(f) > (size_t)vars[V_PROCESS_FILTER].max ||
	    string_problem(&vars[V_PROCESS_FILTER], f, strlen(f)))
		return false;
	return !pa_config_selects_self(f);
}

void pa_config_load(struct pa_config *cfg)
{
	if (!cfg)
		return;
	memset(cfg, 0, sizeof(*cfg));
	struct loader L = {.cfg = cfg};
	/* One allocation for every string: each value's length (or its cap)
	 * plus the extras (URL scheme, executable name). */
	size_t need = (PA_LABEL_VALUE_MAX + 1) /* executable name */ +
		      8 /* "http://" */ + 64 /* slack */;
	for (int id = 0; id < NVARS; id++) {
		const char *raw = getenv(vars[id].name);
		size_t n = raw ? strlen(raw) : 0;
		if (n > (size_t)vars[id].max && vars[id].type >= T_STRING)
			n = 0; /* refused before anything is copied */
		need += n + 1;
	}
	L.arena = malloc(need);
	L.arena_cap = L.arena ? need : 0;
	cfg->arena = L.arena;

	/* The log level first, so PYROSCOPE_LOG_LEVEL=error silences the
	 * warnings below (agent.c sets it again from cfg: same value). */
	L.quiet = true;
	load_var(&L, V_LOG_LEVEL);
	pa_log_level = cfg->log_level;
	L.quiet = will_be_quiet();
	L.rejected[V_LOG_LEVEL] = false;
	load_var(&L, V_LOG_LEVEL);
	if (!L.arena)
		say(&L, "no memory for the configuration: text settings use "
			"their defaults");
	for (int id = V_LOG_LEVEL + 1; id < NVARS; id++)
		load_var(&L, id);
	cross_checks(&L);
}

void pa_config_free(struct pa_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->arena);
	memset(cfg, 0, sizeof(*cfg));
}
