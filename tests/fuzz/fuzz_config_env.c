/* Fuzz target: pa_config_load driven by a fuzzed environment. Input: pieces
 * separated by 0xff; a piece's first byte picks a variable, the rest is its
 * value. Checks the resulting config against the table's bounds, the
 * warnings against the log format, and that no secret is ever printed. */
#include <strings.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"

extern char **environ;

static const char *const names[] = {
    "PYROSCOPE_LOG_LEVEL",
    "PYROAGENT_DISABLE",
    "PYROAGENT_PROCESS_FILTER",
    "PYROSCOPE_SERVER_ADDRESS",
    "PYROSCOPE_APPLICATION_NAME",
    "PYROSCOPE_LABELS",
    "PYROSCOPE_UPLOAD_INTERVAL",
    "PYROSCOPE_PROFILING_INTERVAL",
    "PYROSCOPE_PROFILER_EVENT",
    "PYROSCOPE_PROFILER_ALLOC",
    "PYROSCOPE_ALLOC_LIVE",
    "PYROSCOPE_BASIC_AUTH_USER",
    "PYROSCOPE_BASIC_AUTH_PASSWORD",
    "PYROSCOPE_AUTH_TOKEN",
    "PYROSCOPE_TENANT_ID",
    "PYROSCOPE_HTTP_HEADERS",
    "PYROAGENT_OUTPUT_DIR",
    "PYROAGENT_MEMORY_LIMIT",
    "PYROAGENT_OOM_GUARD",
    "PYROAGENT_EXIT_TIMEOUT",
    "PYROAGENT_CA_FILE",
    "PYROAGENT_TLS_INSECURE",
    "PYROAGENT_SPOOL_DIR",
    "PYROAGENT_SPOOL_MAX",
    "PYROAGENT_SPOOL_MAX_AGE",
};
#define NNAMES		 (int)(sizeof(names) / sizeof(names[0]))
#define V_LOG_LEVEL	 0
#define V_DISABLE	 1
#define V_FILTER	 2
#define V_SERVER_ADDRESS 3
#define V_USER		 11
#define V_PASSWORD	 12
#define V_TOKEN		 13
#define V_HEADERS	 15
#define V_OUTPUT_DIR	 16
#define MAX_PIECES	 64
#define CANARY		 "Zq7Kp9Wx"
#define NS_MS		 1000000LL
#define NS_S		 1000000000LL
#define LOG_CAP		 (1u << 20)

static bool is_secret(int v)
{
	return v == V_USER || v == V_PASSWORD || v == V_TOKEN;
}

/* The first value given for variable v (getenv's answer), or NULL. */
static const char *first(char *const *env, int v)
{
	size_t n = strlen(names[v]);
	for (; *env; env++)
		if (strncmp(*env, names[v], n) == 0 && (*env)[n] == '=')
			return *env + n + 1;
	return NULL;
}

/* Every occurrence of the canary in the headers JSON opens a string value
 * (right after ':' and '"'): only then is each one a secret. */
static bool canary_only_in_values(const char *json)
{
	for (const char *p = strstr(json, CANARY); p;
	     p = strstr(p + 1, CANARY)) {
		const char *q = p;
		if (q == json || *--q != '"')
			return false;
		while (q > json && (q[-1] == ' ' || q[-1] == '\t' ||
				    q[-1] == '\n' || q[-1] == '\r'))
			q--;
		if (q == json || q[-1] != ':')
			return false;
	}
	return true;
}

/* pa_config_process_selected, written apart. */
static bool selected_ref(const char *filter, const char *exe)
{
	if (!filter || !*filter)
		return true;
	const char *p = filter;
	for (;;) {
		const char *q = strchr(p, ',');
		if (!q)
			q = p + strlen(p);
		while (p < q && (*p == ' ' || *p == '\t'))
			p++;
		const char *e = q;
		while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		size_t n = (size_t)(e - p);
		if ((n == 1 && *p == '*') ||
		    (exe && *exe && n == strlen(exe) && !memcmp(p, exe, n)))
			return true;
		if (!*q)
			return false;
		p = q + 1;
	}
}

static bool text_ok(const char *s, bool utf8)
{
	if (!s)
		return true;
	size_t n = strlen(s);
	if (utf8 && !fz_utf8_ok(s, n))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

static bool streq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static void check_config(const struct pa_config *c)
{
	const char *u = c->server_address;
	FZ_CHECK(u && (strncmp(u, "http://", 7) == 0 ||
		       strncmp(u, "https://", 8) == 0));
	size_t un = strlen(u);
	FZ_CHECK(u[un - 1] != '/' && !strpbrk(u, "?# ") && text_ok(u, true));
	/* No credentials left in the authority, and a host. */
	const char *host = strstr(u, "://") + 3;
	size_t hn = strcspn(host, "/");
	FZ_CHECK(hn && !memchr(host, '@', hn) && *host != ':');

	const char *a = c->application_name;
	FZ_CHECK(a && *a && strlen(a) <= PA_LABEL_VALUE_MAX);
	FZ_CHECK(fz_utf8_ok(a, strlen(a)));

	FZ_CHECK(c->nlabels >= 0 && c->nlabels <= PA_MAX_USER_LABELS);
	for (int i = 0; i < c->nlabels; i++) {
		FZ_CHECK(pa_config_label_name_ok(c->labels[i].name));
		const char *v = c->labels[i].value;
		FZ_CHECK(v && *v && strlen(v) <= PA_LABEL_VALUE_MAX);
		FZ_CHECK(text_ok(v, true));
		for (int j = 0; j < i; j++)
			FZ_CHECK(strcmp(c->labels[i].name, c->labels[j].name));
	}
	FZ_CHECK(c->nheaders >= 0 && c->nheaders <= PA_MAX_HEADERS);
	for (int i = 0; i < c->nheaders; i++) {
		const struct pa_label *h = &c->headers[i];
		FZ_CHECK(h->name && *h->name && h->value && *h->value);
		FZ_CHECK(!strpbrk(h->value, "\r\n") &&
			 !strpbrk(h->name, " :\r\n"));
		for (int j = 0; j < i; j++)
			FZ_CHECK(strcasecmp(h->name, c->headers[j].name));
		/* The dedicated variables win over the same header. */
		if (c->basic_user || c->auth_token)
			FZ_CHECK(strcasecmp(h->name, "Authorization"));
		if (c->tenant_id)
			FZ_CHECK(strcasecmp(h->name, "X-Scope-OrgID"));
	}
	FZ_CHECK(c->upload_interval_ns >= 100 * NS_MS &&
		 c->upload_interval_ns <= 3600 * NS_S);
	FZ_CHECK(c->profiling_interval_ns >= 100000 &&
		 c->profiling_interval_ns <= NS_S);
	FZ_CHECK(c->event == PA_EVENT_CPU || c->event == PA_EVENT_ITIMER);
	FZ_CHECK(c->alloc_rate >= 0 && c->alloc_rate <= (1LL << 30));
	FZ_CHECK(c->log_level >= PA_LOG_DEBUG && c->log_level <= PA_LOG_ERROR);
	FZ_CHECK(pa_log_level == c->log_level);
	/* Basic auth needs both halves, and wins over a token. */
	FZ_CHECK(!c->basic_user == !c->basic_password);
	FZ_CHECK(!(c->basic_user && c->auth_token));
	if (c->basic_user)
		FZ_CHECK(!strchr(c->basic_user, ':') &&
			 text_ok(c->basic_user, true));
	if (c->auth_token)
		for (const char *p = c->auth_token; *p; p++)
			FZ_CHECK(*p > 0x20 && *p < 0x7f);
	FZ_CHECK(text_ok(c->basic_password, true));
	FZ_CHECK(text_ok(c->tenant_id, true));
	FZ_CHECK(!c->tenant_id || strlen(c->tenant_id) <= 256);
	FZ_CHECK(text_ok(c->output_dir, false) && text_ok(c->ca_file, false) &&
		 text_ok(c->spool_dir, false) &&
		 text_ok(c->process_filter, false));
	FZ_CHECK(c->memory_limit == 0 || (c->memory_limit >= (1LL << 20) &&
					  c->memory_limit <= (1LL << 50)));
	FZ_CHECK(c->oom_guard_pct >= 0 && c->oom_guard_pct <= 99);
	FZ_CHECK(c->exit_timeout_ns >= 0 && c->exit_timeout_ns <= 60 * NS_S);
	FZ_CHECK(c->spool_max >= (1LL << 20) && c->spool_max <= (64LL << 30));
	FZ_CHECK(c->spool_max_age_ns >= 60 * NS_S &&
		 c->spool_max_age_ns <= 59 * 60 * NS_S);
	/* Process filter semantics. */
	static const char *const exes[] = {"nginx", "a b", "*", ""};
	for (int i = 0; i < 4; i++)
		FZ_CHECK(
		    pa_config_process_selected(c->process_filter, exes[i]) ==
		    selected_ref(c->process_filter, exes[i]));
}

static bool same_config(const struct pa_config *a, const struct pa_config *b)
{
	bool same =
	    streq(a->server_address, b->server_address) &&
	    streq(a->application_name, b->application_name) &&
	    a->nlabels == b->nlabels && a->nheaders == b->nheaders &&
	    a->upload_interval_ns == b->upload_interval_ns &&
	    a->profiling_interval_ns == b->profiling_interval_ns &&
	    a->event == b->event && a->alloc_rate == b->alloc_rate &&
	    a->alloc_live == b->alloc_live && a->log_level == b->log_level &&
	    streq(a->basic_user, b->basic_user) &&
	    streq(a->basic_password, b->basic_password) &&
	    streq(a->auth_token, b->auth_token) &&
	    streq(a->tenant_id, b->tenant_id) &&
	    streq(a->output_dir, b->output_dir) && a->disable == b->disable &&
	    a->upload == b->upload &&
	    streq(a->process_filter, b->process_filter) &&
	    a->memory_limit == b->memory_limit &&
	    a->oom_guard_pct == b->oom_guard_pct &&
	    a->exit_timeout_ns == b->exit_timeout_ns &&
	    streq(a->ca_file, b->ca_file) &&
	    a->tls_insecure == b->tls_insecure &&
	    streq(a->spool_dir, b->spool_dir) && a->spool_max == b->spool_max &&
	    a->spool_max_age_ns == b->spool_max_age_ns;
	for (int i = 0; same && i < a->nlabels; i++)
		same = streq(a->labels[i].name, b->labels[i].name) &&
		       streq(a->labels[i].value, b->labels[i].value);
	for (int i = 0; same && i < a->nheaders; i++)
		same = streq(a->headers[i].name, b->headers[i].name) &&
		       streq(a->headers[i].value, b->headers[i].value);
	return same;
}

/* One clean line each: "pyroagent[pid]: warn: ...\n", at most 1 KiB,
 * UTF-8 without control characters. */
static void check_log(const char *log, size_t len)
{
	const char *p = log, *end = log + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		FZ_CHECK(nl);
		size_t n = (size_t)(nl - p) + 1;
		FZ_CHECK(n <= 1024);
		FZ_CHECK(strncmp(p, "pyroagent[", 10) == 0);
		FZ_CHECK(strstr(p, "]: warn: ") && strstr(p, "]: warn: ") < nl);
		FZ_CHECK(fz_utf8_ok(p, n - 1));
		for (const unsigned char *c = (const unsigned char *)p;
		     c < (const unsigned char *)nl; c++) {
			FZ_CHECK(*c >= 0x20 && *c != 0x7f);
			/* C1 controls, U+2028, U+2029 */
			FZ_CHECK(
			    !(c[0] == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f));
			FZ_CHECK(!(c[0] == 0xe2 && c[1] == 0x80 &&
				   (c[2] == 0xa8 || c[2] == 0xa9)));
		}
		p = nl + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	char *env[MAX_PIECES + 1];
	int var[MAX_PIECES];
	int n = 0;
	while (in.n && n < MAX_PIECES) {
		int v = fz_u8(&in) % NNAMES;
		/* A secret's first byte places the canary in it. */
		size_t at = is_secret(v) ? fz_u8(&in) : 0;
		size_t len;
		char *value = fz_piece(&in, &len);
		len = strlen(value);
		if (at > len)
			at = len;
		size_t cap = strlen(names[v]) + len + sizeof(CANARY) + 2;
		env[n] = malloc(cap);
		if (!env[n])
			abort();
		if (is_secret(v))
			snprintf(env[n], cap, "%s=%.*s%s%s", names[v], (int)at,
				 value, CANARY, value + at);
		else
			snprintf(env[n], cap, "%s=%s", names[v], value);
		var[n++] = v;
		free(value);
	}
	env[n] = NULL;

	/* Where the canary may show up legitimately, no leak check. */
	bool check_secrets = true;
	for (int i = 0; i < n; i++) {
		const char *v = strchr(env[i], '=') + 1;
		if (var[i] == V_HEADERS
			? !canary_only_in_values(v)
			: !is_secret(var[i]) && strstr(v, CANARY))
			check_secrets = false;
	}

	/* Loaded twice: the same config and the same warnings. */
	static char log[LOG_CAP], log2[LOG_CAP];
	struct pa_config cfg, again;
	char **saved = environ;
	environ = env;
	fz_capture_begin();
	pa_config_load(&cfg);
	size_t loglen = fz_capture_end(log, sizeof(log));
	fz_capture_begin();
	pa_config_load(&again);
	size_t loglen2 = fz_capture_end(log2, sizeof(log2));
	environ = saved;

	FZ_CHECK(loglen == loglen2 && strcmp(log, log2) == 0);
	check_config(&cfg);
	FZ_CHECK(same_config(&cfg, &again));
	if (loglen < LOG_CAP) {
		check_log(log, loglen);
		if (check_secrets)
			FZ_CHECK(!fz_contains(log, loglen, CANARY));
	}
	/* Silence where promised. */
	const char *d = first(env, V_DISABLE);
	bool off = false;
	if (d && pa_config_parse_bool(d, &off) == 0 && off)
		FZ_CHECK(loglen == 0 && cfg.disable);
	const char *lvl = first(env, V_LOG_LEVEL);
	if (lvl && strcasecmp(lvl, "error") == 0)
		FZ_CHECK(loglen == 0);
	const char *f = first(env, V_FILTER);
	if (f && cfg.process_filter &&
	    !pa_config_process_selected(f, program_invocation_short_name))
		FZ_CHECK(loglen == 0);
	/* Files only when a directory and no server are given. */
	const char *od = first(env, V_OUTPUT_DIR),
		   *sa = first(env, V_SERVER_ADDRESS);
	FZ_CHECK(cfg.upload == !((od && *od) && !(sa && *sa)));

	pa_config_free(&cfg);
	pa_config_free(&again);
	FZ_CHECK(cfg.arena == NULL && cfg.server_address == NULL);
	for (int i = 0; i < n; i++)
		free(env[i]);
	return 0;
}
