/* The environment table: parsers, defaults, good values, and every bad
 * value giving exactly one warning line, the documented fallback, no
 * secret on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "unit.h"

#define NS_MS 1000000LL
#define NS_S  1000000000LL

/* ---- parsers ------------------------------------------------------------- */

TEST(config_parse_duration_table)
{
	static const struct {
		const char *s;
		int64_t ns;
	} good[] = {
	    {"500ms", 500 * NS_MS},
	    {"10s", 10 * NS_S},
	    {"1m", 60 * NS_S},
	    {"1h", 3600 * NS_S},
	    {"250us", 250000},
	    {"250\xc2\xb5s", 250000},
	    {"250\xce\xbcs", 250000},
	    {"7ns", 7},
	    {"1.5s", 1500 * NS_MS},
	    {".5s", 500 * NS_MS},
	    {"2m30s", 150 * NS_S},
	    {"1h1m1s1ms", 3661001 * NS_MS},
	    {"10", 10 * NS_S},
	    {"0.25", 250 * NS_MS},
	    {"0", 0},
	    {"1MS", NS_MS},
	    {"1S", NS_S},
	    {"0.0000000001s", 0},
	    {"9223372036854775807ns", INT64_MAX},
	    {"1.000000000000000000000001s", NS_S},
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int64_t ns = -1;
		if (pa_config_parse_duration(good[i].s, &ns) != 0 ||
		    ns != good[i].ns)
			FAIL("\"%s\" -> %lld", good[i].s, (long long)ns);
	}
	static const char *const bad[] = {
	    "",
	    "s",
	    "ms",
	    "-5s",
	    "+5s",
	    "1e3",
	    "1e3s",
	    " 5s",
	    "5s ",
	    "5 s",
	    "10 parsecs",
	    "5sec",
	    "5x",
	    "1.5.5s",
	    ".",
	    ".s",
	    "1,5s",
	    "10s10",
	    "9223372036854775808ns",
	    "99999999999999999999",
	    "2562048h",
	    "18446744073709551616ns",
	    "340282366920938463463374607431768211457ns",
	    "340282366920938463463374607431768211457",
	    "0x10s",
	    "1d",
	    "\xc2\xb5s",
	    "5\xc2",
	    "s5",
	    "5mm",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t ns = 12345;
		if (pa_config_parse_duration(bad[i], &ns) != -EINVAL ||
		    ns != 12345)
			FAIL("\"%s\" accepted (%lld)", bad[i], (long long)ns);
	}
	int64_t ns;
	CHECK_EQ_INT(pa_config_parse_duration(NULL, &ns), -EINVAL);
	CHECK_EQ_INT(pa_config_parse_duration("1s", NULL), -EINVAL);
}

TEST(config_parse_size_table)
{
	static const struct {
		const char *s;
		int64_t bytes;
	} good[] = {
	    {"0", 0},
	    {"123", 123},
	    {"123b", 123},
	    {"512k", 512 * 1024},
	    {"512K", 512 * 1024},
	    {"512kb", 512 * 1024},
	    {"512KiB", 512 * 1024},
	    {"4m", 4 << 20},
	    {"4MB", 4 << 20},
	    {"4mib", 4 << 20},
	    {"1g", 1 << 30},
	    {"1GB", 1 << 30},
	    {"2t", 2LL << 40},
	    {"1.5m", 3 << 19},
	    {"0.5k", 512},
	    {"8388607t", 8388607LL << 40},
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int64_t b = -1;
		if (pa_config_parse_size(good[i].s, &b) != 0 ||
		    b != good[i].bytes)
			FAIL("\"%s\" -> %lld", good[i].s, (long long)b);
	}
	static const char *const bad[] = {
	    "",
	    "k",
	    "-1",
	    "+1",
	    "1.5",
	    "1.5b",
	    "12q",
	    "1 k",
	    " 1k",
	    "1k ",
	    "1kk",
	    "1kib2",
	    "1e3",
	    "8388608t",
	    "9223372036854775808",
	    "99999999999999999999",
	    "1p",
	    "0x10",
	    "1,5m",
	    "1ki",
	    "1bb",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t b = 777;
		if (pa_config_parse_size(bad[i], &b) != -EINVAL || b != 777)
			FAIL("\"%s\" accepted (%lld)", bad[i], (long long)b);
	}
}

TEST(config_parse_bool_table)
{
	static const char *const yes[] = {"true", "TRUE", "1", "yes", "On"};
	static const char *const no[] = {"false", "False", "0", "no", "OFF"};
	for (int i = 0; i < 5; i++) {
		bool b = false;
		CHECK_EQ_INT(pa_config_parse_bool(yes[i], &b), 0);
		CHECK(b);
		CHECK_EQ_INT(pa_config_parse_bool(no[i], &b), 0);
		CHECK(!b);
	}
	static const char *const bad[] = {
	    "", "2", "y", "n", "truee", " true", "enabled", "-1", "t"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		bool b = true;
		if (pa_config_parse_bool(bad[i], &b) != -EINVAL || !b)
			FAIL("\"%s\" accepted", bad[i]);
	}
}

TEST(config_label_name_rules)
{
	static const char *const ok[] = {"env",		  "_x",	    ".x",
					 "a.b_c9",	  "Region", "service",
					 "service_name2", "_"};
	static const char *const refused[] = {
	    "",		 "9a",	"a-b",		"a b", "a=b", "__name__",
	    "__delta__", "__x", "service_name", "é",   "a\n",
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (!pa_config_label_name_ok(ok[i]))
			FAIL("\"%s\" refused", ok[i]);
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		if (pa_config_label_name_ok(refused[i]))
			FAIL("\"%s\" accepted", refused[i]);
	CHECK(!pa_config_label_name_ok(NULL));
	static char longname[PA_LABEL_NAME_MAX + 2];
	memset(longname, 'a', PA_LABEL_NAME_MAX);
	CHECK(pa_config_label_name_ok(longname));
	longname[PA_LABEL_NAME_MAX] = 'a';
	CHECK(!pa_config_label_name_ok(longname));
}

TEST(config_parse_labels_strict)
{
	struct pa_label l[8];
	char buf[256];
	int n = -1;
	CHECK_EQ_INT(pa_config_parse_labels(" env = prod , region=eu-west-1,",
					    l, 8, &n, buf, sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, 2);
	CHECK_EQ_STR(l[0].name, "env");
	CHECK_EQ_STR(l[0].value, "prod");
	CHECK_EQ_STR(l[1].name, "region");
	CHECK_EQ_STR(l[1].value, "eu-west-1");
	/* '=' inside a value; UTF-8 values; last of a repeated name wins. */
	CHECK_EQ_INT(pa_config_parse_labels("q=a=b,u=caf\xc3\xa9,q=c", l, 8, &n,
					    buf, sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, 2);
	CHECK_EQ_STR(l[0].value, "c");
	CHECK_EQ_STR(l[1].value, "caf\xc3\xa9");
	CHECK_EQ_INT(pa_config_parse_labels("", l, 8, &n, buf, sizeof(buf)), 0);
	CHECK_EQ_INT(n, 0);
	CHECK_EQ_INT(pa_config_parse_labels(" , ,", l, 8, &n, buf, 0), 0);
	CHECK_EQ_INT(n, 0);

	static const char *const bad[] = {
	    "env",
	    "=x",
	    "env=",
	    "1x=y",
	    "a-b=c",
	    "__name__=x",
	    "service_name=x",
	    "k=\xff",
	    "k=a\tb",
	    "k=a\nb",
	    "k=\xc2\x85",
	    "ok=1,bad",
	    "a=1,b=2,c=3,d=4,e=5,f=6,g=7,h=8,i=9",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = 99;
		memset(buf, 'Z', sizeof(buf));
		l[0].name = NULL;
		if (pa_config_parse_labels(bad[i], l, 8, &n, buf,
					   sizeof(buf)) != -EINVAL ||
		    n != 99 || buf[0] != 'Z' || l[0].name != NULL)
			FAIL("\"%s\" accepted or wrote", bad[i]);
	}
	/* Eight distinct fit in eight, even with a repeat. */
	CHECK_EQ_INT(
	    pa_config_parse_labels("a=1,b=2,c=3,d=4,e=5,f=6,g=7,h=8,a=9", l, 8,
				   &n, buf, sizeof(buf)),
	    0);
	CHECK_EQ_INT(n, 8);
	CHECK_EQ_STR(l[0].value, "9");
	/* The buffer bound: "a=1" takes 4 bytes; 3 is too few, nothing written.
	 */
	memset(buf, 'Z', sizeof(buf));
	CHECK_EQ_INT(pa_config_parse_labels("a=1", l, 8, &n, buf, 3), -EINVAL);
	CHECK(buf[0] == 'Z');
	CHECK_EQ_INT(pa_config_parse_labels("a=1", l, 8, &n, buf, 4), 0);
	CHECK(buf[4] == 'Z');
	/* Value length bounds. */
	static char s[PA_LABEL_VALUE_MAX + 16];
	static char big[PA_LABEL_VALUE_MAX + 16];
	strcpy(s, "k=");
	memset(s + 2, 'v', PA_LABEL_VALUE_MAX);
	CHECK_EQ_INT(pa_config_parse_labels(s, l, 8, &n, big, sizeof(big)), 0);
	CHECK_EQ_INT(strlen(l[0].value), PA_LABEL_VALUE_MAX);
	strcat(s, "v");
	CHECK_EQ_INT(pa_config_parse_labels(s, l, 8, &n, big, sizeof(big)),
		     -EINVAL);
}

TEST(config_parse_headers_json)
{
	struct pa_label h[PA_MAX_HEADERS + 1];
	char buf[512];
	int n = -1;
	CHECK_EQ_INT(pa_config_parse_headers(
			 " {\"X-A\" : \"1\" ,\n\t\"X-B\":\"two words\"}\r\n", h,
			 PA_MAX_HEADERS, &n, buf, sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, 2);
	CHECK_EQ_STR(h[0].name, "X-A");
	CHECK_EQ_STR(h[0].value, "1");
	CHECK_EQ_STR(h[1].name, "X-B");
	CHECK_EQ_STR(h[1].value, "two words");
	/* Escapes, \u to UTF-8, surrogate pairs, raw UTF-8. */
	CHECK_EQ_INT(pa_config_parse_headers(
			 "{\"X-\\u0041\":\"q\\\"b\\\\s\\/"
			 "\\u00e9\\u20ac\\ud83d\\ude00\\t\xc3\xa9\"}",
			 h, PA_MAX_HEADERS, &n, buf, sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, 1);
	CHECK_EQ_STR(h[0].name, "X-A");
	CHECK_EQ_STR(h[0].value,
		     "q\"b\\s/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\t\xc3\xa9");
	/* Names compare case-insensitively; the last value wins. */
	CHECK_EQ_INT(pa_config_parse_headers("{\"X-A\":\"1\",\"x-a\":\"2\"}", h,
					     PA_MAX_HEADERS, &n, buf,
					     sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, 1);
	CHECK_EQ_STR(h[0].value, "2");
	CHECK_EQ_INT(pa_config_parse_headers("{}", h, PA_MAX_HEADERS, &n, buf,
					     sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, 0);
	/* Authorization and X-Scope-OrgID are the user's to set (the loader
	 * drops them only when the dedicated variables are set too). */
	CHECK_EQ_INT(
	    pa_config_parse_headers(
		"{\"Authorization\":\"Token x\",\"X-Scope-OrgID\":\"t\"}", h,
		PA_MAX_HEADERS, &n, buf, sizeof(buf)),
	    0);
	CHECK_EQ_INT(n, 2);

	static const char *const bad[] = {
	    "",
	    "x",
	    "[]",
	    "{",
	    "}",
	    "{\"a\"}",
	    "{\"a\":}",
	    "{\"a\":1}",
	    "{\"a\":true}",
	    "{\"a\":null}",
	    "{\"a\":{}}",
	    "{\"a\":[\"b\"]}",
	    "{\"a\":\"b\",}",
	    "{,}",
	    "{\"a\":\"b\"} x",
	    "{\"a\":\"b\"}}",
	    "{'a':'b'}",
	    "{a:\"b\"}",
	    "{\"a\":\"b\" \"c\":\"d\"}",
	    "{\"a\":\"b",
	    "{\"a\":\"\\x41\"}",
	    "{\"a\":\"\\u12\"}",
	    "{\"a\":\"\\ud800\"}",
	    "{\"a\":\"\\udc00\"}",
	    "{\"a\":\"\\ud800\\u0041\"}",
	    "{\"a\":\"raw\ttab\"}",
	    "{\"a\":\"\xff\"}",
	    "{\"a\":\"\xc0\xaf\"}",
	    /* header rules */
	    "{\"Bad Name\":\"v\"}",
	    "{\"\":\"v\"}",
	    "{\"X(\":\"v\"}",
	    "{\"Host\":\"v\"}",
	    "{\"content-type\":\"v\"}",
	    "{\"Content-Encoding\":\"v\"}",
	    "{\"Connect-Protocol-Version\":\"1\"}",
	    "{\"Transfer-Encoding\":\"v\"}",
	    "{\"X-A\":\"a\\r\\nB: c\"}",
	    "{\"X-A\":\"a\\u0000\"}",
	    "{\"X-A\":\"\"}",
	    "{\"X-\\u00e9\":\"v\"}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = 99;
		memset(buf, 'Z', sizeof(buf));
		if (pa_config_parse_headers(bad[i], h, PA_MAX_HEADERS, &n, buf,
					    sizeof(buf)) != -EINVAL ||
		    n != 99 || buf[0] != 'Z')
			FAIL("'%s' accepted or wrote", bad[i]);
	}
	/* At most max headers. */
	char many[1024] = "{";
	for (int i = 0; i <= PA_MAX_HEADERS; i++)
		snprintf(many + strlen(many), sizeof(many) - strlen(many),
			 "%s\"X-%d\":\"v\"", i ? "," : "", i);
	strcat(many, "}");
	CHECK_EQ_INT(pa_config_parse_headers(many, h, PA_MAX_HEADERS, &n, buf,
					     sizeof(buf)),
		     -EINVAL);
	CHECK_EQ_INT(pa_config_parse_headers(many, h, PA_MAX_HEADERS + 1, &n,
					     buf, sizeof(buf)),
		     0);
	CHECK_EQ_INT(n, PA_MAX_HEADERS + 1);
}

/* Any bytes in: no crash, no write outside the buffers (guards checked;
 * ASan makes it stricter), and what is accepted obeys the rules. Half the
 * inputs are random bytes, half are built from JSON and label fragments so
 * that many get deep into the parsers. */
static uint64_t fuzz_next(uint64_t *r)
{
	*r ^= *r << 13;
	*r ^= *r >> 7;
	*r ^= *r << 17;
	return *r;
}

static void fuzz_input(uint64_t *r, char *s, size_t cap)
{
	static const char alphabet[] =
	    "kv=,{}\":\\u0dD8Ce9 \t\n\xff\xc3\xa9.-_sSmh1";
	static const char *const frag[] = {
	    "{",
	    "}",
	    ",",
	    ":",
	    " ",
	    "\"X-A\"",
	    "\"x-a\"",
	    "\"v\"",
	    "\"Host\"",
	    "\"\\u00e9\"",
	    "\"\\ud83d\\ude00\"",
	    "\"\\ud800\"",
	    "\"a\\r\"",
	    "\"\\\"\"",
	    "\"\"",
	    "k=v",
	    "=",
	    "__x=1",
	    "a.b=c",
	    "1",
	    "ms",
	    "s",
	    ".5",
	    "k",
	    "\xc3\xa9",
	    "\xff",
	    "\"X-B\":\"w\"",
	    "\"X-A\":\"v\"",
	};
	static const char *const hname[] = {
	    "\"X-A\"", "\"x-a\"", "\"Host\"",	  "\"X-\\u0042\"",
	    "\"B C\"", "\"\"",	  "\"X-\\u00e9\""};
	static const char *const hvalue[] = {
	    "\"v\"",	   "\"\\u00e9\"",  "\"\\ud83d\\ude00\"",
	    "\"a\\r\"",	   "\"\\\"\\\\\"", "\"\"",
	    "\"\\ud800\"", "\"\xc3\xa9\"", "1"};
	size_t len = 0;
	unsigned mode = (unsigned)(fuzz_next(r) % 3);
	if (mode == 2) { /* a JSON object, sometimes slightly broken */
		int pairs = (int)(fuzz_next(r) % 5);
		len = (size_t)snprintf(s, cap, "{");
		for (int i = 0; i < pairs && len < cap; i++)
			len += (size_t)snprintf(
			    s + len, cap - len, "%s%s:%s", i ? "," : "",
			    hname[fuzz_next(r) %
				  (sizeof(hname) / sizeof(hname[0]))],
			    hvalue[fuzz_next(r) %
				   (sizeof(hvalue) / sizeof(hvalue[0]))]);
		if (len < cap)
			len += (size_t)snprintf(s + len, cap - len, "}");
		if (len >= cap)
			len = cap - 1;
		if (len && fuzz_next(r) % 4 == 0)
			s[fuzz_next(r) % len] =
			    alphabet[fuzz_next(r) % (sizeof(alphabet) - 1)];
		s[len] = '\0';
		return;
	}
	if (mode == 1) {
		size_t n = fuzz_next(r) % cap;
		for (; len < n; len++)
			s[len] =
			    alphabet[fuzz_next(r) % (sizeof(alphabet) - 1)];
	} else {
		int parts = (int)(fuzz_next(r) % 12);
		for (int i = 0; i < parts; i++) {
			const char *f = frag[fuzz_next(r) %
					     (sizeof(frag) / sizeof(frag[0]))];
			size_t fl = strlen(f);
			if (len + fl >= cap)
				break;
			memcpy(s + len, f, fl);
			len += fl;
		}
	}
	s[len] = '\0';
}

TEST(config_parsers_take_any_bytes)
{
	uint64_t rng = 88172645463325252ULL;
	char s[64];
	struct {
		char buf[48];
		char guard[16];
	} b;
	struct pa_label l[4];
	int accepted_headers = 0, accepted_labels = 0;
	for (int iter = 0; iter < 200000; iter++) {
		fuzz_input(&rng, s, sizeof(s));
		memset(b.guard, 'G', sizeof(b.guard));
		int n = 0;
		int64_t x;
		bool bl;
		(void)pa_config_parse_duration(s, &x);
		(void)pa_config_parse_size(s, &x);
		(void)pa_config_parse_bool(s, &bl);
		if (pa_config_parse_labels(s, l, 3, &n, b.buf, sizeof(b.buf)) ==
		    0) {
			CHECK(n >= 0 && n <= 3);
			accepted_labels += n > 0;
			for (int i = 0; i < n; i++)
				CHECK(pa_config_label_name_ok(l[i].name) &&
				      *l[i].value);
		}
		if (pa_config_parse_headers(s, l, 3, &n, b.buf,
					    sizeof(b.buf)) == 0) {
			CHECK(n >= 0 && n <= 3);
			accepted_headers += n > 0;
			for (int i = 0; i < n; i++)
				CHECK(*l[i].name && *l[i].value &&
				      !strpbrk(l[i].value, "\r\n"));
		}
		for (size_t i = 0; i < sizeof(b.guard); i++)
			CHECK(b.guard[i] == 'G');
	}
	/* The generator reaches the interesting paths. */
	CHECK(accepted_headers > 1000);
	CHECK(accepted_labels > 1000);
}

/* ---- the loader ---------------------------------------------------------- */

/* The environment holds only what a test sets. */
static void clean_env(void)
{
	extern char **environ;
	for (int again = 1; again;) {
		again = 0;
		for (char **e = environ; e && *e; e++) {
			if (strncmp(*e, "PYROSCOPE_", 10) == 0 ||
			    strncmp(*e, "PYROAGENT_", 10) == 0) {
				char name[256];
				size_t n = strcspn(*e, "=");
				if (n >= sizeof(name))
					n = sizeof(name) - 1;
				memcpy(name, *e, n);
				name[n] = '\0';
				unsetenv(name);
				again = 1;
				break;
			}
		}
	}
}

static char captured[1 << 16];

/* Loads with fd 2 sent to a temporary file; captured gets what was
 * written. */
static void load(struct pa_config *cfg)
{
	char path[] = "/tmp/pa-config-test-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	unlink(path);
	fflush(stderr);
	int saved = dup(2);
	CHECK(dup2(fd, 2) == 2);
	pa_config_load(cfg);
	CHECK(dup2(saved, 2) == 2);
	close(saved);
	ssize_t n = pread(fd, captured, sizeof(captured) - 1, 0);
	captured[n > 0 ? n : 0] = '\0';
	close(fd);
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static const char *exe_name(void)
{
	return program_invocation_short_name;
}

TEST(config_defaults)
{
	clean_env();
	struct pa_config c;
	memset(&c, 0xa5, sizeof(c));
	load(&c);
	CHECK_EQ_STR(captured, "");
	CHECK_EQ_STR(c.server_address, "http://localhost:4040");
	CHECK_EQ_STR(c.application_name, exe_name());
	CHECK_EQ_INT(c.nlabels, 0);
	CHECK_EQ_INT(c.upload_interval_ns, 15 * NS_S);
	CHECK_EQ_INT(c.profiling_interval_ns, 10 * NS_MS);
	CHECK_EQ_INT(c.event, PA_EVENT_CPU);
	CHECK_EQ_INT(c.alloc_rate, 512 * 1024);
	CHECK(c.alloc_live);
	CHECK_EQ_INT(c.log_level, PA_LOG_INFO);
	CHECK_EQ_INT(pa_log_level, PA_LOG_INFO);
	CHECK(!c.basic_user && !c.basic_password && !c.auth_token);
	CHECK(!c.tenant_id);
	CHECK_EQ_INT(c.nheaders, 0);
	CHECK(!c.output_dir);
	CHECK(!c.disable);
	CHECK(c.upload);
	CHECK(!c.process_filter);
	CHECK_EQ_INT(c.memory_limit, 0);
	CHECK_EQ_INT(c.oom_guard_pct, 90);
	CHECK_EQ_INT(c.exit_timeout_ns, 2 * NS_S);
	CHECK(!c.ca_file);
	CHECK(!c.tls_insecure);
	CHECK(!c.spool_dir);
	CHECK_EQ_INT(c.spool_max, 64 << 20);
	CHECK_EQ_INT(c.spool_max_age_ns, 55 * 60 * NS_S);
	pa_config_free(&c);
	CHECK(c.arena == NULL && c.server_address == NULL);
	pa_config_free(&c);
	pa_config_free(NULL);
	pa_config_load(NULL);
}

TEST(config_every_variable_good)
{
	clean_env();
	setenv("PYROSCOPE_SERVER_ADDRESS",
	       "HTTPS://pyro.example.com:4443/base//", 1);
	setenv("PYROSCOPE_APPLICATION_NAME", "meter-aggregator \xc3\xa9", 1);
	setenv("PYROSCOPE_LABELS", "env=prod, region = eu-west-1", 1);
	setenv("PYROSCOPE_UPLOAD_INTERVAL", "1m30s", 1);
	setenv("PYROSCOPE_PROFILING_INTERVAL", "1ms", 1);
	setenv("PYROSCOPE_PROFILER_EVENT", "ITIMER", 1);
	setenv("PYROSCOPE_PROFILER_ALLOC", "2m", 1);
	setenv("PYROSCOPE_ALLOC_LIVE", "off", 1);
	setenv("PYROSCOPE_LOG_LEVEL", "WARNING", 1);
	setenv("PYROSCOPE_BASIC_AUTH_USER", "alice", 1);
	setenv("PYROSCOPE_BASIC_AUTH_PASSWORD", "p@ss:w0rd", 1);
	setenv("PYROSCOPE_TENANT_ID", "team-a", 1);
	setenv("PYROSCOPE_HTTP_HEADERS",
	       "{\"X-Team\":\"core\",\"X-Env\":\"p\"}", 1);
	setenv("PYROAGENT_OUTPUT_DIR", "profiles/out", 1);
	setenv("PYROAGENT_DISABLE", "no", 1);
	setenv("PYROAGENT_PROCESS_FILTER", "nginx, *", 1);
	setenv("PYROAGENT_MEMORY_LIMIT", "2g", 1);
	setenv("PYROAGENT_OOM_GUARD", "80%", 1);
	setenv("PYROAGENT_EXIT_TIMEOUT", "500ms", 1);
	setenv("PYROAGENT_CA_FILE", "/etc/ssl/ca.pem", 1);
	setenv("PYROAGENT_TLS_INSECURE", "1", 1);
	setenv("PYROAGENT_SPOOL_DIR", "/var/spool/pyroagent", 1);
	setenv("PYROAGENT_SPOOL_MAX", "1g", 1);
	setenv("PYROAGENT_SPOOL_MAX_AGE", "30m", 1);
	struct pa_config c;
	load(&c);
	CHECK_EQ_STR(captured, "");
	CHECK_EQ_STR(c.server_address, "https://pyro.example.com:4443/base");
	CHECK_EQ_STR(c.application_name, "meter-aggregator \xc3\xa9");
	CHECK_EQ_INT(c.nlabels, 2);
	CHECK_EQ_STR(c.labels[1].name, "region");
	CHECK_EQ_STR(c.labels[1].value, "eu-west-1");
	CHECK_EQ_INT(c.upload_interval_ns, 90 * NS_S);
	CHECK_EQ_INT(c.profiling_interval_ns, NS_MS);
	CHECK_EQ_INT(c.event, PA_EVENT_ITIMER);
	CHECK_EQ_INT(c.alloc_rate, 2 << 20);
	CHECK(!c.alloc_live);
	CHECK_EQ_INT(c.log_level, PA_LOG_WARN);
	CHECK_EQ_INT(pa_log_level, PA_LOG_WARN);
	CHECK_EQ_STR(c.basic_user, "alice");
	CHECK_EQ_STR(c.basic_password, "p@ss:w0rd");
	CHECK(!c.auth_token);
	CHECK_EQ_STR(c.tenant_id, "team-a");
	CHECK_EQ_INT(c.nheaders, 2);
	CHECK_EQ_STR(c.headers[0].name, "X-Team");
	CHECK_EQ_STR(c.headers[0].value, "core");
	CHECK_EQ_STR(c.output_dir, "profiles/out");
	CHECK(!c.disable);
	CHECK(c.upload); /* a server was given too */
	CHECK_EQ_STR(c.process_filter, "nginx, *");
	CHECK_EQ_INT(c.memory_limit, 1LL << 31);
	CHECK_EQ_INT(c.oom_guard_pct, 80);
	CHECK_EQ_INT(c.exit_timeout_ns, 500 * NS_MS);
	CHECK_EQ_STR(c.ca_file, "/etc/ssl/ca.pem");
	CHECK(c.tls_insecure);
	CHECK_EQ_STR(c.spool_dir, "/var/spool/pyroagent");
	CHECK_EQ_INT(c.spool_max, 1 << 30);
	CHECK_EQ_INT(c.spool_max_age_ns, 30 * 60 * NS_S);
	pa_config_free(&c);
}

TEST(config_more_good_values)
{
	clean_env();
	setenv("PYROSCOPE_AUTH_TOKEN", "glc_eyJvIjoiMTIzIn0=", 1);
	setenv("PYROSCOPE_SERVER_ADDRESS", "http://[::1]:4040", 1);
	setenv("PYROSCOPE_PROFILER_EVENT", "ctimer", 1);
	setenv("PYROSCOPE_PROFILER_ALLOC", "0", 1);
	setenv("PYROAGENT_MEMORY_LIMIT", "0", 1);
	setenv("PYROAGENT_OOM_GUARD", "0", 1);
	setenv("PYROAGENT_EXIT_TIMEOUT", "0", 1);
	setenv("PYROSCOPE_UPLOAD_INTERVAL", "100ms", 1);
	setenv("PYROSCOPE_PROFILING_INTERVAL", "100us", 1);
	setenv("PYROSCOPE_HTTP_HEADERS", "{\"Authorization\":\"Token abc\"}",
	       1);
	setenv("PYROSCOPE_LABELS", "", 1); /* empty = unset, silently */
	setenv("PYROSCOPE_TENANT_ID", "", 1);
	struct pa_config c;
	load(&c);
	CHECK_EQ_INT(count_lines(captured), 1);
	CHECK(strstr(captured, "skipping header \"Authorization\""));
	CHECK_EQ_STR(c.auth_token, "glc_eyJvIjoiMTIzIn0=");
	CHECK_EQ_STR(c.server_address, "http://[::1]:4040");
	CHECK_EQ_INT(c.event, PA_EVENT_CPU);
	CHECK_EQ_INT(c.alloc_rate, 0);
	CHECK_EQ_INT(c.memory_limit, 0);
	CHECK_EQ_INT(c.oom_guard_pct, 0);
	CHECK_EQ_INT(c.exit_timeout_ns, 0);
	CHECK_EQ_INT(c.upload_interval_ns, 100 * NS_MS);
	CHECK_EQ_INT(c.profiling_interval_ns, 100000);
	CHECK(!c.tenant_id);
	CHECK_EQ_INT(c.nlabels, 0);
	/* With a token, an Authorization header is dropped (warned). */
	CHECK_EQ_INT(c.nheaders, 0);
	pa_config_free(&c);
	/* Without one, Authorization through headers is the user's call. */
	unsetenv("PYROSCOPE_AUTH_TOKEN");
	load(&c);
	CHECK_EQ_STR(captured, "");
	CHECK_EQ_INT(c.nheaders, 1);
	CHECK_EQ_STR(c.headers[0].value, "Token abc");
	pa_config_free(&c);
}

TEST(config_upload_only_without_output_dir_alone)
{
	clean_env();
	struct pa_config c;
	setenv("PYROAGENT_OUTPUT_DIR", "/tmp/p", 1);
	load(&c);
	CHECK(!c.upload);
	CHECK_EQ_STR(c.output_dir, "/tmp/p");
	pa_config_free(&c);
	setenv("PYROSCOPE_SERVER_ADDRESS", "http://pyro:4040", 1);
	load(&c);
	CHECK(c.upload);
	pa_config_free(&c);
	unsetenv("PYROAGENT_OUTPUT_DIR");
	load(&c);
	CHECK(c.upload);
	CHECK(!c.output_dir);
	pa_config_free(&c);
}

TEST(config_log_level_silences_warnings)
{
	clean_env();
	setenv("PYROSCOPE_LOG_LEVEL", "error", 1);
	setenv("PYROSCOPE_UPLOAD_INTERVAL", "10 parsecs", 1);
	struct pa_config c;
	load(&c);
	CHECK_EQ_STR(captured, "");
	CHECK_EQ_INT(pa_log_level, PA_LOG_ERROR);
	CHECK_EQ_INT(c.upload_interval_ns, 15 * NS_S);
	pa_config_free(&c);
	setenv("PYROSCOPE_LOG_LEVEL", "debug", 1);
	load(&c);
	CHECK_EQ_INT(count_lines(captured), 1);
	pa_config_free(&c);
}

TEST(config_no_op_processes_stay_silent)
{
	clean_env();
	setenv("PYROSCOPE_UPLOAD_INTERVAL", "bad", 1);
	setenv("PYROAGENT_DISABLE", "1", 1);
	struct pa_config c;
	load(&c);
	CHECK_EQ_STR(captured, "");
	CHECK(c.disable);
	CHECK_EQ_INT(c.upload_interval_ns, 15 * NS_S);
	pa_config_free(&c);
	setenv("PYROAGENT_DISABLE", "false", 1);
	setenv("PYROAGENT_PROCESS_FILTER", "nginx,postgres", 1);
	load(&c);
	CHECK_EQ_STR(captured, "");
	CHECK(!pa_config_process_selected(c.process_filter, exe_name()));
	pa_config_free(&c);
	/* The same settings in a selected process do warn. */
	char filter[300];
	snprintf(filter, sizeof(filter), "nginx, %s ,postgres", exe_name());
	setenv("PYROAGENT_PROCESS_FILTER", filter, 1);
	load(&c);
	CHECK_EQ_INT(count_lines(captured), 1);
	CHECK(pa_config_process_selected(c.process_filter, exe_name()));
	pa_config_free(&c);
}

TEST(config_process_filter_matching)
{
	CHECK(pa_config_process_selected(NULL, "a"));
	CHECK(pa_config_process_selected("", "a"));
	CHECK(pa_config_process_selected("*", "a"));
	CHECK(pa_config_process_selected("b, a", "a"));
	CHECK(pa_config_process_selected(" a ,b", "a"));
	CHECK(!pa_config_process_selected("ab,b", "a"));
	CHECK(!pa_config_process_selected("a", "ab"));
	CHECK(!pa_config_process_selected(",,", "a"));
	CHECK(!pa_config_process_selected("a", ""));
}

/* The one field a variable sets, as text, to compare with the fallback. */
static void render(const struct pa_config *c, const char *var, char *out,
		   size_t cap)
{
#define IS(name) (strcmp(var, name) == 0)
#define S(x)	 ((x) ? (x) : "(null)")
	out[0] = '\0';
	if (IS("PYROSCOPE_SERVER_ADDRESS"))
		snprintf(out, cap, "%s", S(c->server_address));
	else if (IS("PYROSCOPE_APPLICATION_NAME"))
		snprintf(out, cap, "%s", S(c->application_name));
	else if (IS("PYROSCOPE_LABELS"))
		for (int i = 0; i < c->nlabels; i++)
			snprintf(out + strlen(out), cap - strlen(out),
				 "%s%s=%s", i ? "," : "", c->labels[i].name,
				 c->labels[i].value);
	else if (IS("PYROSCOPE_HTTP_HEADERS"))
		for (int i = 0; i < c->nheaders; i++)
			snprintf(out + strlen(out), cap - strlen(out),
				 "%s%s:%s", i ? "," : "", c->headers[i].name,
				 c->headers[i].value);
	else if (IS("PYROSCOPE_UPLOAD_INTERVAL"))
		snprintf(out, cap, "%lld", (long long)c->upload_interval_ns);
	else if (IS("PYROSCOPE_PROFILING_INTERVAL"))
		snprintf(out, cap, "%lld", (long long)c->profiling_interval_ns);
	else if (IS("PYROSCOPE_PROFILER_EVENT"))
		snprintf(out, cap, "%d", (int)c->event);
	else if (IS("PYROSCOPE_PROFILER_ALLOC"))
		snprintf(out, cap, "%lld", (long long)c->alloc_rate);
	else if (IS("PYROSCOPE_ALLOC_LIVE"))
		snprintf(out, cap, "%d", c->alloc_live);
	else if (IS("PYROSCOPE_LOG_LEVEL"))
		snprintf(out, cap, "%d", c->log_level);
	else if (IS("PYROSCOPE_BASIC_AUTH_USER") ||
		 IS("PYROSCOPE_BASIC_AUTH_PASSWORD") ||
		 IS("PYROSCOPE_AUTH_TOKEN"))
		snprintf(out, cap, "%s|%s|%s", S(c->basic_user),
			 S(c->basic_password), S(c->auth_token));
	else if (IS("PYROSCOPE_TENANT_ID"))
		snprintf(out, cap, "%s", S(c->tenant_id));
	else if (IS("PYROAGENT_OUTPUT_DIR"))
		snprintf(out, cap, "%s upload=%d", S(c->output_dir), c->upload);
	else if (IS("PYROAGENT_DISABLE"))
		snprintf(out, cap, "%d", c->disable);
	else if (IS("PYROAGENT_PROCESS_FILTER"))
		snprintf(out, cap, "%s", S(c->process_filter));
	else if (IS("PYROAGENT_MEMORY_LIMIT"))
		snprintf(out, cap, "%lld", (long long)c->memory_limit);
	else if (IS("PYROAGENT_OOM_GUARD"))
		snprintf(out, cap, "%d", c->oom_guard_pct);
	else if (IS("PYROAGENT_EXIT_TIMEOUT"))
		snprintf(out, cap, "%lld", (long long)c->exit_timeout_ns);
	else if (IS("PYROAGENT_CA_FILE"))
		snprintf(out, cap, "%s", S(c->ca_file));
	else if (IS("PYROAGENT_TLS_INSECURE"))
		snprintf(out, cap, "%d", c->tls_insecure);
	else if (IS("PYROAGENT_SPOOL_DIR"))
		snprintf(out, cap, "%s", S(c->spool_dir));
	else if (IS("PYROAGENT_SPOOL_MAX"))
		snprintf(out, cap, "%lld", (long long)c->spool_max);
	else if (IS("PYROAGENT_SPOOL_MAX_AGE"))
		snprintf(out, cap, "%lld", (long long)c->spool_max_age_ns);
	else
		FAIL("no renderer for %s", var);
#undef IS
#undef S
}

struct bad_case {
	const char *env[6];  /* name, value pairs; env[0] is the one named */
	const char *want;    /* render() of the field after loading */
	const char *secret;  /* must not appear on stderr */
	const char *named;   /* the variable the line names, if not env[0] */
	const char *mention; /* more text the line must hold */
};

static char long_value[3000];
static char long_label[3100];
static char many_labels[1024];
static char many_headers[2048];

#define EXE "@exe" /* stands for the executable's name */

static const struct bad_case bad_cases[] = {
    /* durations */
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "10 parsecs"},
     .want = "15000000000",
     .mention =
	 "=\"10 parsecs\" is not a duration (e.g. 15s, 500ms, 1m); using 15s"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "-5s"}, .want = "15000000000"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "1e3"}, .want = "15000000000"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "99999999999999999999h"},
     .want = "15000000000"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", " 15s"}, .want = "15000000000"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "10ms"},
     .want = "100000000",
     .mention = "is below the minimum 100ms; using 100ms"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "0"}, .want = "100000000"},
    {.env = {"PYROAGENT_SPOOL_MAX", "0"}, .want = "1048576"},
    {.env = {"PYROSCOPE_UPLOAD_INTERVAL", "2h"},
     .want = "3600000000000",
     .mention = "is above the maximum 1h; using 1h"},
    {.env = {"PYROSCOPE_PROFILING_INTERVAL", "10us"},
     .want = "100000",
     .mention = "100us"},
    {.env = {"PYROSCOPE_PROFILING_INTERVAL", "2s"}, .want = "1000000000"},
    {.env = {"PYROSCOPE_PROFILING_INTERVAL", "5kg"},
     .want = "10000000",
     .mention = "using 10ms"},
    {.env = {"PYROAGENT_EXIT_TIMEOUT", "2m"},
     .want = "60000000000",
     .mention = "using 1m"},
    {.env = {"PYROAGENT_EXIT_TIMEOUT", "soon"}, .want = "2000000000"},
    {.env = {"PYROAGENT_SPOOL_MAX_AGE", "2h"},
     .want = "3540000000000",
     .mention = "using 59m"},
    {.env = {"PYROAGENT_SPOOL_MAX_AGE", "10s"}, .want = "60000000000"},
    /* sizes and numbers */
    {.env = {"PYROSCOPE_PROFILER_ALLOC", "12q"},
     .want = "524288",
     .mention = "using 512k"},
    {.env = {"PYROSCOPE_PROFILER_ALLOC", "-1"}, .want = "524288"},
    {.env = {"PYROSCOPE_PROFILER_ALLOC", "2g"},
     .want = "1073741824",
     .mention = "using 1g"},
    {.env = {"PYROSCOPE_PROFILER_ALLOC", "99999999999999999999"},
     .want = "524288"},
    {.env = {"PYROAGENT_MEMORY_LIMIT", "lots"}, .want = "0"},
    {.env = {"PYROAGENT_MEMORY_LIMIT", "100k"},
     .want = "1048576",
     .mention = "(0 = detect)"},
    {.env = {"PYROAGENT_OOM_GUARD", "150"}, .want = "99"},
    {.env = {"PYROAGENT_OOM_GUARD", "ninety"}, .want = "90"},
    {.env = {"PYROAGENT_OOM_GUARD", "-1"}, .want = "90"},
    {.env = {"PYROAGENT_SPOOL_MAX", "10k"}, .want = "1048576"},
    {.env = {"PYROAGENT_SPOOL_MAX", "100g"},
     .want = "68719476736",
     .mention = "using 64g"},
    /* booleans and enums */
    {.env = {"PYROSCOPE_ALLOC_LIVE", "maybe"},
     .want = "1",
     .mention = "using true"},
    {.env = {"PYROAGENT_TLS_INSECURE", "sure"}, .want = "0"},
    {.env = {"PYROAGENT_DISABLE", "perhaps"}, .want = "0"},
    {.env = {"PYROSCOPE_LOG_LEVEL", "verbose"},
     .want = "1",
     .mention = "using info"},
    {.env = {"PYROSCOPE_PROFILER_EVENT", "wall"},
     .want = "0",
     .mention = "is not supported by this agent; using cpu"},
    {.env = {"PYROSCOPE_PROFILER_EVENT", "cpu,alloc"}, .want = "0"},
    /* the server address */
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "pyroscope:4040"},
     .want = "http://pyroscope:4040",
     .mention = "has no scheme; using http://pyroscope:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "ftp://host"},
     .want = "http://localhost:4040",
     .mention = "unsupported scheme"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "://"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http:///x"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://host name:4040"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://host:99999"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://host:"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://h/?q=1"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://h\xc3\xa9st"},
     .want = "http://localhost:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://user:s3cr3t-pw@host:4040/"},
     .want = "http://host:4040",
     .secret = "s3cr3t-pw",
     .mention = "credentials in PYROSCOPE_SERVER_ADDRESS are ignored; use "
		"PYROSCOPE_BASIC_AUTH_USER/PASSWORD; using http://host:4040"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "user:s3cr3t-pw@pyro:4040"},
     .want = "http://pyro:4040",
     .secret = "s3cr3t-pw"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "ftp://u:s3cr3t-pw@host"},
     .want = "http://localhost:4040",
     .secret = "s3cr3t-pw"},
    {.env = {"PYROSCOPE_SERVER_ADDRESS", "http://u:s3cr3t/pw@host"},
     .want = "http://localhost:4040",
     .secret = "s3cr3t"},
    /* the application name */
    {.env = {"PYROSCOPE_APPLICATION_NAME", "\xff\xfe"},
     .want = EXE,
     .mention =
	 "=\"\\xff\\xfe\" is not valid UTF-8; using the executable name"},
    {.env = {"PYROSCOPE_APPLICATION_NAME", "a\nb"},
     .want = EXE,
     .mention = "\"a\\nb\""},
    {.env = {"PYROSCOPE_APPLICATION_NAME", long_value},
     .want = EXE,
     .mention = "xxx...\" is longer than 2048 bytes"},
    /* labels: bad pairs skipped one by one */
    {.env = {"PYROSCOPE_LABELS", "env=prod,1bad=x"},
     .want = "env=prod",
     .mention = "skipping label \"1bad=x\""},
    {.env = {"PYROSCOPE_LABELS", "env=prod,noequals"},
     .want = "env=prod",
     .mention = "name=value"},
    {.env = {"PYROSCOPE_LABELS", "__name__=x,env=prod"},
     .want = "env=prod",
     .mention = "reserved"},
    {.env = {"PYROSCOPE_LABELS", "service_name=x"},
     .want = "",
     .mention = "PYROSCOPE_APPLICATION_NAME"},
    {.env = {"PYROSCOPE_LABELS", "env=,a=b"},
     .want = "a=b",
     .mention = "empty"},
    {.env = {"PYROSCOPE_LABELS", long_label},
     .want = "",
     .mention = "vvv...\": the value is longer than 2048 bytes"},
    {.env = {"PYROSCOPE_LABELS", "env=a,env=b,x=1,env=c"},
     .want = "env=c,x=1",
     .mention = "label \"env\" is given more than once; the last value wins"},
    {.env = {"PYROSCOPE_LABELS", "k=\xff,a=b"},
     .want = "a=b",
     .mention = "UTF-8"},
    {.env = {"PYROSCOPE_LABELS", "k=a\x01"
				 "b"},
     .want = "",
     .mention = "control"},
    {.env = {"PYROSCOPE_LABELS", many_labels},
     .want = NULL,
     .mention = "at most 27 labels; skipping \"k27=v\" and 2 more"},
    /* basic auth, token, tenant */
    {.env = {"PYROSCOPE_BASIC_AUTH_USER", "alice"},
     .want = "(null)|(null)|(null)",
     .mention = "PYROSCOPE_BASIC_AUTH_USER is set but "
		"PYROSCOPE_BASIC_AUTH_PASSWORD is not; basic auth off"},
    {.env = {"PYROSCOPE_BASIC_AUTH_PASSWORD", "hunter2-secret"},
     .want = "(null)|(null)|(null)",
     .secret = "hunter2-secret"},
    {.env = {"PYROSCOPE_BASIC_AUTH_USER", "a:b-secret",
	     "PYROSCOPE_BASIC_AUTH_PASSWORD", "pw-secret-1"},
     .want = "(null)|(null)|(null)",
     .secret = "secret",
     .mention = "must not contain ':'"},
    {.env = {"PYROSCOPE_BASIC_AUTH_PASSWORD", "pw\nsecret-2",
	     "PYROSCOPE_BASIC_AUTH_USER", "alice"},
     .want = "(null)|(null)|(null)",
     .secret = "secret-2"},
    {.env = {"PYROSCOPE_AUTH_TOKEN", "tok en-secret"},
     .want = "(null)|(null)|(null)",
     .secret = "en-secret"},
    {.env = {"PYROSCOPE_AUTH_TOKEN", "Bearer tok-secret-9"},
     .want = "(null)|(null)|tok-secret-9",
     .secret = "tok-secret-9"},
    {.env = {"PYROSCOPE_AUTH_TOKEN", "tok-secret-3",
	     "PYROSCOPE_BASIC_AUTH_USER", "alice",
	     "PYROSCOPE_BASIC_AUTH_PASSWORD", "pw-secret-4"},
     .want = "alice|pw-secret-4|(null)",
     .secret = "secret",
     .mention = "take precedence"},
    {.env = {"PYROSCOPE_TENANT_ID", "a\x01"
				    "b"},
     .want = "(null)"},
    {.env = {"PYROSCOPE_TENANT_ID", long_value},
     .want = "(null)",
     .mention = "is longer than 256 bytes"},
    /* headers */
    {.env = {"PYROSCOPE_HTTP_HEADERS", "not json"},
     .want = "",
     .mention = "expected '{' at byte 0; using no extra headers"},
    {.env = {"PYROSCOPE_HTTP_HEADERS", "{\"X-A\":1}"},
     .want = "",
     .mention = "values must be strings"},
    {.env = {"PYROSCOPE_HTTP_HEADERS", "{\"X-A\":\"v-secret\",}"},
     .want = "",
     .secret = "v-secret"},
    {.env = {"PYROSCOPE_HTTP_HEADERS", "{\"X-A\":\"\\ud800-secret\"}"},
     .want = "",
     .secret = "secret"},
    {.env = {"PYROSCOPE_HTTP_HEADERS",
	     "{\"Bad Name\":\"v-secret\",\"X-B\":\"ok\"}"},
     .want = "X-B:ok",
     .secret = "v-secret",
     .mention = "skipping header \"Bad...\": not a valid HTTP header name"},
    {.env = {"PYROSCOPE_HTTP_HEADERS",
	     "{\"Authorization: Bearer tok-secret-7\":\"x\"}"},
     .want = "",
     .secret = "tok-secret-7",
     .mention = "skipping header \"Authorization...\""},
    {.env = {"PYROSCOPE_HTTP_HEADERS", "{\"Host\":\"v-secret\"}"},
     .want = "",
     .secret = "v-secret"},
    {.env = {"PYROSCOPE_HTTP_HEADERS",
	     "{\"X-A\":\"a\\r\\nInjected-secret: 1\",\"X-B\":\"2\"}"},
     .want = "X-B:2",
     .secret = "Injected-secret",
     .mention = "control characters"},
    {.env = {"PYROSCOPE_HTTP_HEADERS",
	     "{\"X-A\":\"1-secret\",\"x-a\":\"2-secret\"}"},
     .want = "X-A:2-secret",
     .secret = "secret",
     .mention = "the last value wins"},
    {.env = {"PYROSCOPE_HTTP_HEADERS", "{\"Authorization\":\"Token h-secret\"}",
	     "PYROSCOPE_AUTH_TOKEN", "tok-secret-5"},
     .want = "",
     .secret = "secret",
     .mention = "PYROSCOPE_AUTH_TOKEN takes precedence"},
    {.env = {"PYROSCOPE_HTTP_HEADERS", "{\"X-Scope-OrgID\":\"h-secret\"}",
	     "PYROSCOPE_TENANT_ID", "t1"},
     .want = "",
     .secret = "h-secret",
     .mention = "PYROSCOPE_TENANT_ID takes precedence"},
    {.env = {"PYROSCOPE_HTTP_HEADERS", many_headers},
     .want = NULL,
     .secret = "hv-secret",
     .mention = "at most 16 headers"},
    /* paths and lists */
    {.env = {"PYROAGENT_OUTPUT_DIR", "/tmp/a\rb"},
     .want = "(null) upload=0",
     .mention = "contains control characters; no profile files"},
    {.env = {"PYROAGENT_CA_FILE", "/etc/ca\n.pem"}, .want = "(null)"},
    {.env = {"PYROAGENT_SPOOL_DIR", "/var/\x7fspool"}, .want = "(null)"},
    {.env = {"PYROAGENT_PROCESS_FILTER", "nginx\x01"}, .want = "(null)"},
};

static void fill_long_values(void)
{
	memset(long_value, 'x', sizeof(long_value) - 1);
	strcpy(long_label, "kk=");
	memset(long_label + 3, 'v', 3000);
	many_labels[0] = '\0';
	for (int i = 0; i < 30; i++)
		snprintf(many_labels + strlen(many_labels),
			 sizeof(many_labels) - strlen(many_labels), "%sk%d=v",
			 i ? "," : "", i);
	strcpy(many_headers, "{");
	for (int i = 0; i < 18; i++)
		snprintf(many_headers + strlen(many_headers),
			 sizeof(many_headers) - strlen(many_headers),
			 "%s\"X-%d\":\"hv-secret\"", i ? "," : "", i);
	strcat(many_headers, "}");
}

TEST(config_bad_values_one_line_each)
{
	fill_long_values();
	int ncases = (int)(sizeof(bad_cases) / sizeof(bad_cases[0]));
	CHECK(ncases >= 35);
	for (int i = 0; i < ncases; i++) {
		const struct bad_case *b = &bad_cases[i];
		clean_env();
		for (int j = 0; j < 6 && b->env[j]; j += 2)
			setenv(b->env[j], b->env[j + 1], 1);
		struct pa_config c;
		load(&c);
		const char *named = b->named ? b->named : b->env[0];
		char got[4096];
		render(&c, named, got, sizeof(got));
		const char *want = b->want;
		if (want && strcmp(want, EXE) == 0)
			want = exe_name();
		if (count_lines(captured) != 1 ||
		    !strstr(captured, ": warn: ") || !strstr(captured, named))
			FAIL("case %d (%s): expected one warning naming it, "
			     "got:\n%s",
			     i, named, captured);
		if (want && strcmp(got, want) != 0)
			FAIL("case %d (%s): got \"%s\", expected \"%s\"", i,
			     named, got, want);
		if (b->secret && strstr(captured, b->secret))
			FAIL("case %d (%s): the secret is on stderr:\n%s", i,
			     named, captured);
		if (b->mention && !strstr(captured, b->mention))
			FAIL("case %d (%s): \"%s\" missing from:\n%s", i, named,
			     b->mention, captured);
		/* Always one clean line, quoted values cut short. */
		if (strlen(captured) > 400)
			FAIL("case %d (%s): line too long (%zu)", i, named,
			     strlen(captured));
		pa_config_free(&c);
	}
}

TEST(config_capped_collections)
{
	fill_long_values();
	clean_env();
	setenv("PYROSCOPE_LABELS", many_labels, 1);
	setenv("PYROSCOPE_HTTP_HEADERS", many_headers, 1);
	struct pa_config c;
	load(&c);
	CHECK_EQ_INT(count_lines(captured), 2);
	CHECK_EQ_INT(c.nlabels, PA_MAX_USER_LABELS);
	CHECK_EQ_STR(c.labels[26].name, "k26");
	CHECK_EQ_INT(c.nheaders, PA_MAX_HEADERS);
	CHECK_EQ_STR(c.headers[15].name, "X-15");
	CHECK(!strstr(captured, "hv-secret"));
	pa_config_free(&c);
}

TEST(config_several_bad_values_one_line_each)
{
	clean_env();
	setenv("PYROSCOPE_UPLOAD_INTERVAL", "x", 1);
	setenv("PYROSCOPE_PROFILER_ALLOC", "y", 1);
	setenv("PYROSCOPE_LABELS", "a=1,2=b,c=3,d", 1);
	setenv("PYROAGENT_OOM_GUARD", "z", 1);
	struct pa_config c;
	load(&c);
	CHECK_EQ_INT(count_lines(captured), 5);
	CHECK_EQ_INT(c.nlabels, 2);
	pa_config_free(&c);
}

TEST(config_default_name_is_sanitized)
{
	clean_env();
	char *saved = program_invocation_short_name;
	program_invocation_short_name = (char *)"we\xff"
						"ird\nname";
	struct pa_config c;
	load(&c);
	CHECK_EQ_STR(c.application_name, "we_ird_name");
	pa_config_free(&c);
	program_invocation_short_name = (char *)"";
	load(&c);
	CHECK_EQ_STR(c.application_name, "unknown_service");
	pa_config_free(&c);
	program_invocation_short_name = saved;
}
