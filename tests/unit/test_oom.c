/* The OOM guard: limits found in a fake /proc + cgroup tree (v2 minimum
 * over ancestors, v1, namespaced mounts), rlimits, the override; usage
 * compared like with like; firing once per crossing and interval. */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "heap.h"
#include "log.h"
#include "oom.h"
#include "unit.h"

#define GiB (1024LL * 1024 * 1024)
#define MS  1000000LL

static char oom_root[256];

static void put(const char *path, const char *text)
{
	char full[1024];
	snprintf(full, sizeof(full), "%s%s", oom_root, path);
	/* mkdir -p of the parent */
	for (char *p = full + strlen(oom_root) + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			mkdir(full, 0755);
			*p = '/';
		}
	FILE *f = fopen(full, "w");
	CHECK(f);
	fputs(text, f);
	fclose(f);
}

static void fake_root(void)
{
	snprintf(oom_root, sizeof(oom_root), "/tmp/pa-oom-XXXXXX");
	CHECK(mkdtemp(oom_root));
	put("/proc/self/status",
	    "Name:\tx\nVmSize:\t 2000000 kB\nVmRSS:\t  100000 kB\n"
	    "VmData:\t   50000 kB\n");
}

static int rm_one(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Each test ends with this (the runner's children leave with _exit). */
static void drop_root(void)
{
	if (oom_root[0])
		nftw(oom_root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	oom_root[0] = '\0';
}

static void no_rlimits(void)
{
	struct rlimit inf = {RLIM_INFINITY, RLIM_INFINITY};
	setrlimit(RLIMIT_AS, &inf);
	setrlimit(RLIMIT_DATA, &inf);
}

static void cgroup2_tree(void)
{
	put("/proc/self/cgroup", "0::/app.slice/svc.service\n");
	put("/proc/self/mountinfo",
	    "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
	    "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 "
	    "rw,nsdelegate\n");
	/* The service has 1.5 GiB of its own; its slice has 1 GiB; above
	 * that, 2 GiB. The minimum binds, wherever it is. */
	put("/sys/fs/cgroup/app.slice/svc.service/memory.max", "1610612736\n");
	put("/sys/fs/cgroup/app.slice/svc.service/memory.current",
	    "300000000\n");
	put("/sys/fs/cgroup/app.slice/memory.max", "1073741824\n");
	put("/sys/fs/cgroup/app.slice/memory.current", "536870912\n");
	put("/sys/fs/cgroup/memory.max", "2147483648\n");
}

TEST(oom_cgroup2_minimum_over_ancestors)
{
	fake_root();
	no_rlimits();
	cgroup2_tree();
	struct pa_oom_limit l[4];
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 1);
	CHECK_EQ_INT(l[0].source, PA_OOM_CGROUP2);
	CHECK_EQ_INT(l[0].limit, GiB);
	CHECK(strstr(l[0].dir, "/sys/fs/cgroup/app.slice") &&
	      !strstr(l[0].dir, "svc"));
	/* Like with like: the limiting cgroup's memory.current. */
	int64_t u = 0;
	CHECK_EQ_INT(pa_oom_usage(oom_root, &l[0], &u), 0);
	CHECK_EQ_INT(u, 536870912);
	CHECK_EQ_STR(pa_oom_source_name(l[0].source), "cgroup v2 memory.max");
	drop_root();
}

TEST(oom_cgroup1_and_unlimited)
{
	fake_root();
	no_rlimits();
	put("/proc/self/cgroup", "5:devices:/docker/abc\n4:cpu,memory:/docker/"
				 "abc\n1:name=systemd:/\n");
	put("/proc/self/mountinfo",
	    "30 22 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
	    "33 30 0:30 / /sys/fs/cgroup/cpu\\054memory rw - cgroup cgroup "
	    "rw,cpu,memory\n");
	/* v1's "no limit" is a huge number: ignored. */
	put("/sys/fs/cgroup/cpu,memory/memory.limit_in_bytes",
	    "9223372036854771712\n");
	put("/sys/fs/cgroup/cpu,memory/docker/memory.limit_in_bytes",
	    "9223372036854771712\n");
	put("/sys/fs/cgroup/cpu,memory/docker/abc/memory.limit_in_bytes",
	    "268435456\n");
	put("/sys/fs/cgroup/cpu,memory/docker/abc/memory.usage_in_bytes",
	    "134217728\n");
	struct pa_oom_limit l[4];
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 1);
	CHECK_EQ_INT(l[0].source, PA_OOM_CGROUP1);
	CHECK_EQ_INT(l[0].limit, 256 << 20);
	int64_t u = 0;
	CHECK_EQ_INT(pa_oom_usage(oom_root, &l[0], &u), 0);
	CHECK_EQ_INT(u, 128 << 20);
	/* Unlimited everywhere: no limit at all. */
	put("/sys/fs/cgroup/cpu,memory/docker/abc/memory.limit_in_bytes",
	    "9223372036854771712\n");
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 0);
	drop_root();
}

TEST(oom_cgroup_namespace_mount_root)
{
	fake_root();
	no_rlimits();
	/* A container's view: the mount shows the hierarchy from /kubepods/pod1
	 * down, and the process sits in /kubepods/pod1/ctr. */
	put("/proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
	put("/proc/self/mountinfo", "40 30 0:37 /kubepods/pod1 /sys/fs/cgroup "
				    "ro,nosuid - cgroup2 cgroup2 rw\n");
	put("/sys/fs/cgroup/ctr/memory.max", "max\n");
	put("/sys/fs/cgroup/memory.max", "209715200\n");
	/* Outside the mount: never read. */
	put("/sys/fs/memory.max", "1048576\n");
	struct pa_oom_limit l[4];
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 1);
	CHECK_EQ_INT(l[0].limit, 200 << 20);
	CHECK(strstr(l[0].dir, "/sys/fs/cgroup") && !strstr(l[0].dir, "ctr"));
	put("/sys/fs/cgroup/ctr/memory.max", "104857600\n");
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 1);
	CHECK_EQ_INT(l[0].limit, 100 << 20);
	CHECK(strstr(l[0].dir, "/sys/fs/cgroup/ctr"));
	drop_root();
}

TEST(oom_override_and_rlimits)
{
	fake_root();
	cgroup2_tree();
	/* Far above what any process here uses, a sanitizer's shadow
	 * memory included: detection only needs them finite. */
	struct rlimit as = {100 * 1024 * GiB, RLIM_INFINITY},
		      data = {64 * 1024 * GiB, RLIM_INFINITY};
	CHECK_EQ_INT(setrlimit(RLIMIT_AS, &as), 0);
	CHECK_EQ_INT(setrlimit(RLIMIT_DATA, &data), 0);
	struct pa_oom_limit l[4];
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 3);
	CHECK_EQ_INT(l[1].source, PA_OOM_RLIMIT_AS);
	CHECK_EQ_INT(l[1].limit, 100 * 1024 * GiB);
	CHECK_EQ_INT(l[2].source, PA_OOM_RLIMIT_DATA);
	int64_t u;
	CHECK_EQ_INT(pa_oom_usage(oom_root, &l[1], &u), 0);
	CHECK_EQ_INT(u, 2000000LL * 1024); /* VmSize */
	CHECK_EQ_INT(pa_oom_usage(oom_root, &l[2], &u), 0);
	CHECK_EQ_INT(u, 50000LL * 1024); /* VmData */
	/* PYROAGENT_MEMORY_LIMIT wins alone, against resident memory. */
	CHECK_EQ_INT(pa_oom_detect(oom_root, 500 << 20, l, 4), 1);
	CHECK_EQ_INT(l[0].source, PA_OOM_OVERRIDE);
	CHECK_EQ_INT(pa_oom_usage(oom_root, &l[0], &u), 0);
	CHECK_EQ_INT(u, 100000LL * 1024); /* VmRSS */
	drop_root();
}

TEST(oom_nothing_found_on_an_empty_root)
{
	fake_root();
	no_rlimits();
	struct pa_oom_limit l[4];
	CHECK_EQ_INT(pa_oom_detect(oom_root, 0, l, 4), 0);
	drop_root();
}

static struct pa_oom *guard(int pct, int64_t interval_ms)
{
	struct pa_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.oom_guard_pct = pct;
	cfg.upload_interval_ns = interval_ms * MS;
	struct pa_oom *o;
	CHECK_EQ_INT(pa_oom_new(&o, &cfg, oom_root), 0);
	pa_log_level = PA_LOG_ERROR; /* the firing line is for users */
	return o;
}

static void usage(long long bytes)
{
	char text[64];
	snprintf(text, sizeof(text), "%lld\n", bytes);
	put("/sys/fs/cgroup/app.slice/memory.current", text);
}

TEST(oom_fires_once_per_crossing_and_interval)
{
	fake_root();
	no_rlimits();
	cgroup2_tree();
	struct pa_oom *o = guard(90, 1000);
	struct pa_oom_event ev;
	int64_t t = 1000 * MS;
	usage(GiB / 2);
	CHECK(!pa_oom_poll(o, t, &ev));
	/* 95%: fires, says how close and which limit. */
	usage(GiB * 95 / 100);
	t += 300 * MS;
	CHECK(pa_oom_poll(o, t, &ev));
	CHECK(!ev.null_alloc);
	CHECK_EQ_INT(ev.pct, 95);
	CHECK(ev.limit && ev.limit->source == PA_OOM_CGROUP2);
	CHECK_EQ_INT(ev.usage, GiB * 95 / 100);
	/* Still there, even two intervals later: once per crossing. */
	t += 2500 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	/* Only 2 points below: still not re-armed. */
	usage(GiB * 88 / 100);
	t += 300 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	usage(GiB * 97 / 100);
	t += 300 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	/* Well below: re-armed; the next crossing fires again. */
	usage(GiB * 70 / 100);
	t += 300 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	usage(GiB * 99 / 100);
	t += 300 * MS;
	CHECK(pa_oom_poll(o, t, &ev));
	CHECK_EQ_INT(ev.pct, 99);
	pa_oom_free(o);
	drop_root();
}

/* Usage is read 4 times a second, not every drain; within 20 points of
 * the threshold, every 20 ms, so a fast climb to the limit is caught. */
TEST(oom_polls_faster_near_the_threshold)
{
	fake_root();
	no_rlimits();
	cgroup2_tree();
	struct pa_oom_event ev;
	int64_t t = 1000 * MS;
	/* 50%: far. A crossing right after a read waits for the next. */
	struct pa_oom *o = guard(90, 1000);
	usage(GiB / 2);
	CHECK(!pa_oom_poll(o, t, &ev));
	usage(GiB * 95 / 100);
	CHECK(!pa_oom_poll(o, t + 20 * MS, &ev));
	CHECK(!pa_oom_poll(o, t + 200 * MS, &ev));
	CHECK(pa_oom_poll(o, t + 250 * MS, &ev));
	pa_oom_free(o);
	/* 75%: near. The crossing is seen 20 ms later. */
	o = guard(90, 1000);
	usage(GiB * 75 / 100);
	CHECK(!pa_oom_poll(o, t, &ev));
	usage(GiB * 99 / 100);
	CHECK(!pa_oom_poll(o, t + 10 * MS, &ev));
	CHECK(pa_oom_poll(o, t + 20 * MS, &ev));
	CHECK_EQ_INT(ev.pct, 99);
	pa_oom_free(o);
	drop_root();
}

TEST(oom_crossing_within_an_interval_waits_for_it)
{
	fake_root();
	no_rlimits();
	cgroup2_tree();
	struct pa_oom *o = guard(90, 10000);
	struct pa_oom_event ev;
	int64_t t = 1000 * MS;
	usage(GiB * 95 / 100);
	CHECK(pa_oom_poll(o, t, &ev));
	usage(GiB / 2);
	t += 300 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	/* Re-armed and crossed again, 0.6 s after the first: held back until
	 * the interval (10 s) has passed, then sent. */
	usage(GiB * 95 / 100);
	t += 300 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	t += 10000 * MS;
	CHECK(pa_oom_poll(o, t, &ev));
	pa_oom_free(o);
	drop_root();
}

TEST(oom_allocation_failure_fires)
{
	fake_root();
	no_rlimits();
	cgroup2_tree();
	usage(GiB / 2);
	struct pa_oom *o = guard(90, 1000);
	struct pa_oom_event ev;
	int64_t t = 1000 * MS;
	CHECK(!pa_oom_poll(o, t, &ev));
	/* What the malloc hook does when the real call returns NULL. */
	pa_heap.null_seen = 1;
	CHECK(pa_oom_poll(o, t + 20 * MS, &ev));
	CHECK(ev.null_alloc);
	CHECK_EQ_INT(ev.pct, 50);
	/* Again within the interval: held back. */
	pa_heap.null_seen = 1;
	CHECK(!pa_oom_poll(o, t + 40 * MS, &ev));
	pa_heap.null_seen = 1;
	CHECK(pa_oom_poll(o, t + 1100 * MS, &ev));
	pa_oom_free(o);
	/* Without any limit, a failed allocation still fires. */
	drop_root();
	fake_root();
	o = guard(90, 1000);
	const struct pa_oom_limit *l;
	CHECK_EQ_INT(pa_oom_limits(o, &l), 0);
	pa_heap.null_seen = 1;
	CHECK(pa_oom_poll(o, t, &ev));
	CHECK(ev.null_alloc && ev.limit == NULL);
	pa_oom_free(o);
	drop_root();
}

TEST(oom_guard_zero_is_off)
{
	fake_root();
	no_rlimits();
	cgroup2_tree();
	usage(GiB);
	struct pa_oom *o = guard(0, 1000);
	struct pa_oom_event ev;
	pa_heap.null_seen = 1;
	CHECK(!pa_oom_poll(o, 1000 * MS, &ev));
	CHECK(!pa_oom_poll(o, 2000 * MS, &ev));
	pa_oom_free(o);
	pa_oom_free(NULL);
	drop_root();
}
