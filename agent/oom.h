/* The OOM guard: finds the memory limits that apply to this process
 * (cgroup v2/v1, RLIMIT_AS/RLIMIT_DATA, or PYROAGENT_MEMORY_LIMIT), polls
 * the matching usage from the agent thread, and says when the memory
 * profile must go out at once: usage past PYROAGENT_OOM_GUARD percent of
 * a limit, or an allocation that returned NULL. Agent thread only. */
#ifndef PA_OOM_H
#define PA_OOM_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

/* Where a limit comes from, and the usage it is compared with. */
enum pa_oom_source {
	/* PYROAGENT_MEMORY_LIMIT: VmRSS. */
	PA_OOM_OVERRIDE = 1,
	/* memory.max, the minimum over the cgroup and its ancestors: that
	 * cgroup's memory.current. */
	PA_OOM_CGROUP2,
	/* memory.limit_in_bytes, likewise: memory.usage_in_bytes. */
	PA_OOM_CGROUP1,
	PA_OOM_RLIMIT_AS,   /* VmSize */
	PA_OOM_RLIMIT_DATA, /* VmData */
};

#define PA_OOM_MAX_LIMITS 4

struct pa_oom_limit {
	int source;	/* enum pa_oom_source */
	int64_t limit;	/* bytes */
	char dir[1024]; /* cgroup sources: the limiting cgroup's directory */
};

/* Every finite limit that applies, read below root ("" for the real
 * system; tests pass a directory holding a fake proc/self and cgroup
 * tree). A non-zero override is the only limit. RLIMIT_AS/RLIMIT_DATA
 * come from getrlimit. Returns how many were written to out. */
int pa_oom_detect(const char *root, int64_t override, struct pa_oom_limit *out,
		  int max);

/* The usage that compares with l (like with like, see the enum). Returns
 * 0 or a negative errno. */
int pa_oom_usage(const char *root, const struct pa_oom_limit *l,
		 int64_t *usage);

/* "cgroup v2 memory.max", ... for logs and comments. */
const char *pa_oom_source_name(int source);

struct pa_oom;

/* NULL root: the real system, looked at from the first poll a second
 * after start (a shell that exits at once never has the agent open its
 * cgroup files). A root (a test's tree) is looked at at once. Owns a copy
 * of root. */
int pa_oom_new(struct pa_oom **out, const struct pa_config *cfg,
	       const char *root);
void pa_oom_free(struct pa_oom *o); /* accepts NULL */

struct pa_oom_event {
	bool null_alloc; /* an allocation returned NULL */
	/* The limit crossed (or the nearest one), or NULL. */
	const struct pa_oom_limit *limit;
	int64_t usage;
	int pct; /* usage as a percentage of the limit */
};

/* After each drain (every ~20 ms): reads usage every ~250 ms, and returns
 * true when the memory profile should be sent now, at most once per
 * upload interval. A crossing fires once, and again only after usage
 * fell 5 points below the threshold. Logs one line when it fires. */
bool pa_oom_poll(struct pa_oom *o, int64_t now_ns, struct pa_oom_event *ev);

/* The limits found (for tests and the start log). */
int pa_oom_limits(struct pa_oom *o, const struct pa_oom_limit **out);

#endif
