/* The OOM guard: memory limits from cgroups and rlimits, usage polled from
 * the agent thread, and the decision to send the memory profile now. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "heap.h"
#include "log.h"
#include "oom.h"

#define POLL_NS (250 * 1000000LL) /* usage is read 4 times a second */
/* ... and every 20 ms within NEAR_PCT points of the threshold: a heap
 * that grows from there to the limit in a quarter of a second (the
 * aggregator's loader does) must not fail, and free what it held, in
 * between two reads. */
#define POLL_NEAR_NS (20 * 1000000LL)
#define NEAR_PCT     20
/* Limits are looked for this long after start, not at once: a short-lived
 * process (a shell) never sees the agent open its cgroup files. */
#define DETECT_DELAY_NS (1000 * 1000000LL)
#define REARM_PCT	5 /* fires again after falling this far below */
/* cgroup v1 says "no limit" with a huge page-rounded number. */
#define UNLIMITED (1LL << 62)

/* A usage file kept open between reads (pread at 0 regenerates /proc and
 * cgroup files), so the agent does not open a file 4 times a second in a
 * host that may be shuffling its own descriptors (an open racing the
 * host's dup2 makes the dup2 fail with EBUSY). The device and inode tell
 * if the host closed the descriptor and reused its number: then it is
 * the host's, left alone, and the file is opened again. */
struct watch {
	int fd; /* -1: not open */
	dev_t dev;
	ino_t ino;
};

struct pa_oom {
	char *root;
	int detected;
	int64_t detect_at; /* CLOCK_MONOTONIC; 0: set at the first poll */
	int64_t memory_limit;
	struct watch watch[PA_OOM_MAX_LIMITS];
	int pct;
	int64_t interval_ns;
	struct pa_oom_limit limits[PA_OOM_MAX_LIMITS];
	int nlimits;
	int64_t next_read;
	int64_t last_fire; /* 0: never */
	int armed;
	/* The latest reading, kept for an event fired by a NULL return. */
	int best;
	int64_t best_usage;
	double best_ratio;
	int best_pct; /* rounded, for logs */
};

const char *pa_oom_source_name(int source)
{
	switch (source) {
	case PA_OOM_OVERRIDE:
		return "PYROAGENT_MEMORY_LIMIT";
	case PA_OOM_CGROUP2:
		return "cgroup v2 memory.max";
	case PA_OOM_CGROUP1:
		return "cgroup v1 memory.limit_in_bytes";
	case PA_OOM_RLIMIT_AS:
		return "RLIMIT_AS";
	case PA_OOM_RLIMIT_DATA:
		return "RLIMIT_DATA";
	}
	return "unknown";
}

/* ---- small file helpers -------------------------------------------------- */

/* Reads up to cap-1 bytes of root/path into buf, NUL-terminated. */
static int read_file(const char *root, const char *path, char *buf, size_t cap)
{
	char full[1024];
	int n = snprintf(full, sizeof(full), "%s%s", root, path);
	if (n < 0 || (size_t)n >= sizeof(full))
		return -ENAMETOOLONG;
	int fd = open(full, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t len = 0;
	while (len < cap - 1) {
		ssize_t r = read(fd, buf + len, cap - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	return (int)len;
}

/* A limit or usage file's value: bytes, or -1 for "max", unlimited or
 * unparsable. */
static int64_t parse_bytes(const char *buf)
{
	if (strncmp(buf, "max", 3) == 0)
		return -1;
	char *end;
	errno = 0;
	long long v = strtoll(buf, &end, 10);
	if (errno || end == buf || v < 0 || v >= UNLIMITED)
		return -1;
	return (int64_t)v;
}

static int64_t read_limit(const char *dir, const char *file)
{
	char path[1200], buf[64];
	int n = snprintf(path, sizeof(path), "%s/%s", dir, file);
	if (n < 0 || (size_t)n >= sizeof(path) ||
	    read_file("", path, buf, sizeof(buf)) <= 0)
		return -1;
	int64_t v = parse_bytes(buf);
	return v > 0 ? v : -1;
}

/* mountinfo escapes blanks and backslashes as \ooo. */
static void unescape(char *s)
{
	char *w = s;
	for (char *r = s; *r;) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' &&
		    r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 +
				      (r[3] - '0'));
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
}

static int has_token(const char *list, const char *tok)
{
	size_t n = strlen(tok);
	for (const char *p = list; p && *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == n && memcmp(p, tok, n) == 0)
			return 1;
		p = end ? end + 1 : NULL;
	}
	return 0;
}

/* The mount of a cgroup hierarchy: v2 (fstype cgroup2) or the v1 one
 * carrying the memory controller. Fills mount point and mount root. */
static int find_mount(const char *root, int v2, char *mnt, size_t mcap,
		      char *mroot, size_t rcap)
{
	static char buf[64 * 1024];
	if (read_file(root, "/proc/self/mountinfo", buf, sizeof(buf)) <= 0)
		return -ENOENT;
	for (char *line = buf, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *f[12];
		int nf = 0;
		char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		*sep = '\0';
		char *tail = sep + 3;
		for (char *tok = strtok(line, " "); tok && nf < 12;
		     tok = strtok(NULL, " "))
			f[nf++] = tok;
		char *fstype = strtok(tail, " ");
		strtok(NULL, " "); /* source */
		char *superopts = strtok(NULL, " ");
		if (nf < 5 || !fstype)
			continue;
		if (v2 ? strcmp(fstype, "cgroup2") != 0
		       : (strcmp(fstype, "cgroup") != 0 ||
			  !has_token(superopts, "memory")))
			continue;
		unescape(f[3]);
		unescape(f[4]);
		snprintf(mnt, mcap, "%s", f[4]);
		snprintf(mroot, rcap, "%s", f[3]);
		return 0;
	}
	return -ENOENT;
}

/* This process's cgroup path in hierarchy v2 ("0::/path") or in the v1
 * hierarchy with the memory controller ("N:...memory...:/path"). */
static int find_cgroup(const char *root, int v2, char *path, size_t cap)
{
	char buf[8192];
	if (read_file(root, "/proc/self/cgroup", buf, sizeof(buf)) <= 0)
		return -ENOENT;
	for (char *line = buf, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *c1 = strchr(line, ':');
		char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c1 = *c2 = '\0';
		int match = v2 ? strcmp(line, "0") == 0 && c1[1] == '\0'
			       : has_token(c1 + 1, "memory");
		if (match) {
			snprintf(path, cap, "%s", c2 + 1);
			return 0;
		}
	}
	return -ENOENT;
}

/* The smallest limit from the process's cgroup up to the hierarchy's
 * root (a parent's limit binds its children too). */
static int cgroup_limit(const char *root, int v2, struct pa_oom_limit *out)
{
	char mnt[512], mroot[512], cg[512];
	if (find_mount(root, v2, mnt, sizeof(mnt), mroot, sizeof(mroot)) ||
	    find_cgroup(root, v2, cg, sizeof(cg)))
		return -ENOENT;
	/* The cgroup path is relative to the namespace root; the mount shows
	 * the hierarchy from mroot down. */
	const char *rel = cg;
	size_t rl = strlen(mroot);
	if (strcmp(mroot, "/") != 0 && strncmp(cg, mroot, rl) == 0 &&
	    (cg[rl] == '/' || cg[rl] == '\0'))
		rel = cg + rl;
	char base[1024], dir[1024];
	snprintf(base, sizeof(base), "%s%s", root, mnt);
	int n = snprintf(dir, sizeof(dir), "%s%s%s", base,
			 *rel == '/' ? "" : "/", rel);
	if (n < 0 || (size_t)n >= sizeof(dir))
		return -ENAMETOOLONG;
	while (n > 1 && dir[n - 1] == '/')
		dir[--n] = '\0';
	size_t blen = strlen(base);
	while (blen > 1 && base[blen - 1] == '/')
		base[--blen] = '\0';
	const char *file = v2 ? "memory.max" : "memory.limit_in_bytes";
	int64_t best = -1;
	for (;;) {
		int64_t v = read_limit(dir, file);
		if (v > 0 && (best < 0 || v < best)) {
			best = v;
			snprintf(out->dir, sizeof(out->dir), "%s", dir);
		}
		if (strlen(dir) <= blen)
			break;
		char *slash = strrchr(dir, '/');
		if (!slash || (size_t)(slash - dir) < blen)
			break;
		*slash = '\0';
	}
	if (best < 0)
		return -ENOENT;
	out->source = v2 ? PA_OOM_CGROUP2 : PA_OOM_CGROUP1;
	out->limit = best;
	return 0;
}

int pa_oom_detect(const char *root, int64_t override, struct pa_oom_limit *out,
		  int max)
{
	int n = 0;
	if (!root)
		root = "";
	if (max <= 0)
		return 0;
	memset(out, 0, sizeof(*out) * (size_t)max);
	if (override > 0) {
		out[0].source = PA_OOM_OVERRIDE;
		out[0].limit = override;
		return 1;
	}
	if (n < max && cgroup_limit(root, 1, &out[n]) == 0)
		n++;
	if (n < max && cgroup_limit(root, 0, &out[n]) == 0)
		n++;
	struct rlimit rl;
	if (n < max && getrlimit(RLIMIT_AS, &rl) == 0 &&
	    rl.rlim_cur != RLIM_INFINITY) {
		out[n].source = PA_OOM_RLIMIT_AS;
		out[n].limit = (int64_t)rl.rlim_cur;
		n++;
	}
	if (n < max && getrlimit(RLIMIT_DATA, &rl) == 0 &&
	    rl.rlim_cur != RLIM_INFINITY) {
		out[n].source = PA_OOM_RLIMIT_DATA;
		out[n].limit = (int64_t)rl.rlim_cur;
		n++;
	}
	return n;
}

/* "Name:   1234 kB" from /proc/self/status text, in bytes. */
static int parse_status(const char *buf, const char *name, int64_t *bytes)
{
	size_t nl = strlen(name);
	for (const char *line = buf; line && *line;) {
		if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
			long long kb = strtoll(line + nl + 1, NULL, 10);
			*bytes = (int64_t)kb * 1024;
			return 0;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return -ENOENT;
}

static int status_field(const char *root, const char *name, int64_t *bytes)
{
	char buf[4096];
	if (read_file(root, "/proc/self/status", buf, sizeof(buf)) <= 0)
		return -ENOENT;
	return parse_status(buf, name, bytes);
}

int pa_oom_usage(const char *root, const struct pa_oom_limit *l, int64_t *usage)
{
	if (!root)
		root = "";
	switch (l->source) {
	case PA_OOM_OVERRIDE:
		return status_field(root, "VmRSS", usage);
	case PA_OOM_RLIMIT_AS:
		return status_field(root, "VmSize", usage);
	case PA_OOM_RLIMIT_DATA:
		return status_field(root, "VmData", usage);
	case PA_OOM_CGROUP2:
	case PA_OOM_CGROUP1: {
		/* l->dir already carries the root prefix. */
		int64_t v = read_limit(l->dir, l->source == PA_OOM_CGROUP2
						   ? "memory.current"
						   : "memory.usage_in_bytes");
		if (v < 0)
			return -ENOENT;
		*usage = v;
		return 0;
	}
	}
	return -EINVAL;
}

/* ---- the guard ----------------------------------------------------------- */

/* The watched descriptor, if it is still the file we opened. */
static int watch_fd(struct watch *w)
{
	struct stat st;
	if (w->fd < 0)
		return -1;
	if (fstat(w->fd, &st) != 0 || st.st_dev != w->dev ||
	    st.st_ino != w->ino)
		w->fd = -1; /* closed by the host, maybe reused: not ours */
	return w->fd;
}

static int read_watched(struct watch *w, const char *path, char *buf,
			size_t cap)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		int fd = watch_fd(w);
		if (fd < 0) {
			struct stat st;
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				return -errno;
			if (fstat(fd, &st) != 0) {
				close(fd);
				return -EIO;
			}
			*w = (struct watch){fd, st.st_dev, st.st_ino};
		}
		ssize_t r = pread(fd, buf, cap - 1, 0);
		if (r > 0) {
			buf[r] = '\0';
			return (int)r;
		}
		w->fd = -1; /* unreadable now: open it afresh */
		close(fd);
	}
	return -EIO;
}

/* pa_oom_usage, through the kept descriptors. */
static int usage_of(struct pa_oom *o, int i, int64_t *usage)
{
	const struct pa_oom_limit *l = &o->limits[i];
	char path[1200], buf[4096];
	const char *field = NULL;
	switch (l->source) {
	case PA_OOM_OVERRIDE:
		field = "VmRSS";
		break;
	case PA_OOM_RLIMIT_AS:
		field = "VmSize";
		break;
	case PA_OOM_RLIMIT_DATA:
		field = "VmData";
		break;
	}
	if (field)
		snprintf(path, sizeof(path), "%s/proc/self/status", o->root);
	else
		snprintf(path, sizeof(path), "%s/%s", l->dir,
			 l->source == PA_OOM_CGROUP2 ? "memory.current"
						     : "memory.usage_in_bytes");
	if (read_watched(&o->watch[i], path, buf, sizeof(buf)) <= 0)
		return -ENOENT;
	if (field)
		return parse_status(buf, field, usage);
	int64_t v = parse_bytes(buf);
	if (v < 0)
		return -ENOENT;
	*usage = v;
	return 0;
}

static void detect(struct pa_oom *o)
{
	o->detected = 1;
	if (o->pct <= 0)
		return;
	o->nlimits = pa_oom_detect(o->root, o->memory_limit, o->limits,
				   PA_OOM_MAX_LIMITS);
	for (int i = 0; i < o->nlimits; i++)
		pa_debug("OOM guard: limit %lld MiB (%s%s%s), fires at %d%%",
			 (long long)(o->limits[i].limit >> 20),
			 pa_oom_source_name(o->limits[i].source),
			 o->limits[i].dir[0] ? " of " : "", o->limits[i].dir,
			 o->pct);
	if (!o->nlimits)
		pa_debug("OOM guard: no memory limit found; fires on "
			 "allocation failures only");
}

int pa_oom_new(struct pa_oom **out, const struct pa_config *cfg,
	       const char *root)
{
	*out = NULL;
	struct pa_oom *o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->root = strdup(root ? root : "");
	if (!o->root) {
		free(o);
		return -ENOMEM;
	}
	o->pct = cfg->oom_guard_pct;
	o->interval_ns = cfg->upload_interval_ns;
	o->memory_limit = cfg->memory_limit;
	o->armed = 1;
	o->best = -1;
	for (int i = 0; i < PA_OOM_MAX_LIMITS; i++)
		o->watch[i].fd = -1;
	/* A given root is a test's tree: look at once. */
	if (root)
		detect(o);
	*out = o;
	return 0;
}

void pa_oom_free(struct pa_oom *o)
{
	if (!o)
		return;
	for (int i = 0; i < PA_OOM_MAX_LIMITS; i++)
		if (watch_fd(&o->watch[i]) >= 0)
			close(o->watch[i].fd);
	free(o->root);
	free(o);
}

int pa_oom_limits(struct pa_oom *o, const struct pa_oom_limit **out)
{
	if (!o->detected)
		detect(o);
	*out = o->limits;
	return o->nlimits;
}

static void read_usage(struct pa_oom *o)
{
	o->best = -1;
	o->best_pct = 0;
	o->best_usage = 0;
	for (int i = 0; i < o->nlimits; i++) {
		int64_t u;
		if (usage_of(o, i, &u) != 0)
			continue;
		double ratio = (double)u / (double)o->limits[i].limit;
		if (o->best < 0 || ratio > o->best_ratio) {
			o->best = i;
			o->best_ratio = ratio;
			o->best_pct = (int)(ratio * 100 + 0.5);
			o->best_usage = u;
		}
	}
}

bool pa_oom_poll(struct pa_oom *o, int64_t now_ns, struct pa_oom_event *ev)
{
	bool null_alloc = pa_heap_take_null();
	if (o->pct <= 0)
		return false;
	if (!o->detected) {
		if (!o->detect_at)
			o->detect_at = now_ns + DETECT_DELAY_NS;
		if (now_ns >= o->detect_at)
			detect(o);
	}
	bool over = false;
	if (o->nlimits && now_ns >= o->next_read) {
		read_usage(o);
		bool near =
		    o->best >= 0 && o->best_ratio * 100 >= o->pct - NEAR_PCT;
		o->next_read = now_ns + (near ? POLL_NEAR_NS : POLL_NS);
		if (o->best >= 0 && o->best_ratio * 100 >= o->pct)
			over = o->armed;
		else if (o->best >= 0 &&
			 o->best_ratio * 100 < o->pct - REARM_PCT)
			o->armed = 1;
	}
	if (!over && !null_alloc)
		return false;
	/* At most once per interval; a crossing stays armed meanwhile. */
	if (o->last_fire && now_ns - o->last_fire < o->interval_ns)
		return false;
	o->last_fire = now_ns;
	if (over)
		o->armed = 0;
	memset(ev, 0, sizeof(*ev));
	ev->null_alloc = null_alloc && !over;
	if (o->best >= 0) {
		ev->limit = &o->limits[o->best];
		ev->usage = o->best_usage;
		ev->pct = o->best_pct;
	}
	const struct pa_oom_limit *l = ev->limit;
	if (over)
		pa_warn("OOM guard: memory use is %d%% of the limit (%lld MiB "
			"of %lld MiB, %s%s%s): "
			"sending the memory profile now",
			ev->pct, (long long)(ev->usage >> 20),
			(long long)(l->limit >> 20),
			pa_oom_source_name(l->source), l->dir[0] ? " of " : "",
			l->dir);
	else if (l)
		pa_warn("OOM guard: an allocation failed (out of memory) at "
			"%d%% of the limit "
			"(%lld MiB of %lld MiB, %s%s%s): sending the memory "
			"profile now",
			ev->pct, (long long)(ev->usage >> 20),
			(long long)(l->limit >> 20),
			pa_oom_source_name(l->source), l->dir[0] ? " of " : "",
			l->dir);
	else
		pa_warn("OOM guard: an allocation failed (out of memory; no "
			"memory limit found): "
			"sending the memory profile now");
	return true;
}
