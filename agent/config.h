/* The environment table: every setting, read once at load into a const struct.
 */
#ifndef PA_CONFIG_H
#define PA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PA_MAX_LABELS	   30 /* Pyroscope's series label limit */
#define PA_MAX_HEADERS	   16
#define PA_LABEL_NAME_MAX  1024 /* Pyroscope: name <= 1024 bytes */
#define PA_LABEL_VALUE_MAX 2048 /* Pyroscope: value <= 2048 bytes */
/* service_name when none can be made (OpenTelemetry's convention). */
#define PA_UNKNOWN_SERVICE "unknown_service"
/* Static labels a user may set: the agent adds __name__, service_name and
 * __delta__ to every series. */
#define PA_MAX_USER_LABELS (PA_MAX_LABELS - 3)

enum pa_event { PA_EVENT_CPU = 0, PA_EVENT_ITIMER = 1 };

struct pa_label {
	const char *name;
	const char *value;
};

struct pa_config {
	const char *server_address; /* base URL without trailing '/' */
	const char *application_name;
	struct pa_label labels[PA_MAX_LABELS]; /* static labels */
	int nlabels;
	int64_t upload_interval_ns;
	int64_t profiling_interval_ns;
	enum pa_event event;
	int64_t alloc_rate; /* mean bytes between heap samples; 0 = off */
	bool alloc_live;
	int log_level; /* enum pa_log_level */
	const char *basic_user, *basic_password;
	const char *auth_token;
	const char *tenant_id;
	struct pa_label headers[PA_MAX_HEADERS]; /* extra HTTP headers */
	int nheaders;
	const char *output_dir; /* NULL: no file sink */
	bool disable;
	/* false when PYROAGENT_OUTPUT_DIR is set and PYROSCOPE_SERVER_ADDRESS
	 * is not: files only, no network. */
	bool upload;
	/* Later issues (defaults in README): */
	const char *process_filter; /* PYROAGENT_PROCESS_FILTER: exe names, ','
				       separated; NULL = all */
	int64_t memory_limit;	 /* PYROAGENT_MEMORY_LIMIT bytes; 0 = detect */
	int oom_guard_pct;	 /* PYROAGENT_OOM_GUARD, default 90; 0 = off */
	int64_t exit_timeout_ns; /* PYROAGENT_EXIT_TIMEOUT, default 2s */
	const char *ca_file;	 /* PYROAGENT_CA_FILE */
	bool tls_insecure; /* PYROAGENT_TLS_INSECURE=1: no verification (logged)
			    */
	const char *spool_dir;	  /* PYROAGENT_SPOOL_DIR; NULL = no spool */
	int64_t spool_max;	  /* PYROAGENT_SPOOL_MAX bytes, default 64m */
	int64_t spool_max_age_ns; /* PYROAGENT_SPOOL_MAX_AGE, default 55m */
	void *arena; /* owned: backs the strings above; see pa_config_free */
};

/* Reads the environment (getenv) into *cfg. Every bad value gets one line
 * on stderr naming the variable, the value (secrets never) and the
 * fallback; the function itself never fails. Strings point into one
 * arena owned by the config, released by pa_config_free. */
void pa_config_load(struct pa_config *cfg);
void pa_config_free(struct pa_config *cfg); /* accepts NULL */

/* PYROAGENT_PROCESS_FILTER semantics: true when filter is NULL or empty,
 * or one of its ','-separated entries (spaces trimmed) is exe or "*". */
bool pa_config_process_selected(const char *filter, const char *exe);
/* The same for this process, by either of its names: argv[0]'s basename
 * or that of /proc/self/exe. The agent profiles, and warns, only then. */
bool pa_config_selects_self(const char *filter);

/* The parsers behind the table, for tests and fuzzers: any bytes in,
 * 0 or -EINVAL out (nothing written on error). Labels and headers are
 * strict here (one bad pair fails the whole string; a repeated name is
 * not an error: the last value wins); the loader instead skips bad pairs
 * one by one with a warning each. They need bufsize >= strlen(s) + 1 at
 * most; max above 64 counts as 64. */
int pa_config_parse_duration(
    const char *s,
    int64_t *ns); /* 10ms, 1.5s, 1m, 250us, bare number = seconds */
int pa_config_parse_size(const char *s, int64_t *bytes); /* 512k, 4m, 1g, 123 */
int pa_config_parse_bool(const char *s,
			 bool *out); /* true/false/1/0/yes/no/on/off */
/* "k=v,k2=v2" into labels (name/value strings written into buf). */
int pa_config_parse_labels(const char *s, struct pa_label *out, int max, int *n,
			   char *buf, size_t bufsize);
/* A flat JSON object of strings {"k":"v",...} into headers. */
int pa_config_parse_headers(const char *s, struct pa_label *out, int max,
			    int *n, char *buf, size_t bufsize);
/* A Pyroscope label name: [a-zA-Z_.][a-zA-Z0-9_.]*, at most
 * PA_LABEL_NAME_MAX bytes, and not reserved: names starting with "__"
 * (__name__, __delta__...) and "service_name" are the agent's. */
bool pa_config_label_name_ok(const char *name);

#endif
