/* The disk spool: format, order, caps, age, corrupt files, locking, modes. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spool.h"
#include "unit.h"

#define MINUTE_NS (60LL * 1000000000LL)

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char *temp_dir(void)
{
	static char path[64];
	strcpy(path, "/tmp/pa-spool-XXXXXX");
	CHECK(mkdtemp(path));
	return path;
}

static uint8_t payload[3000];

static struct pa_spool_record record(int64_t time_ns, const char *name)
{
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7 + (size_t)time_ns);
	struct pa_spool_record r = {
	    .time_ns = time_ns, .gz = payload, .len = sizeof(payload)};
	r.labels[0] = (struct pa_label){"__name__", name};
	r.labels[1] = (struct pa_label){"service_name", "svc"};
	r.nlabels = 2;
	return r;
}

TEST(spool_format_round_trip)
{
	struct pa_spool_record r = record(123456789, "memory"), back;
	uint8_t *buf, *out;
	size_t len;
	CHECK_EQ_INT(pa_spool_encode(&r, &buf, &len), 0);
	CHECK_EQ_INT(pa_spool_decode(buf, len, &back, &out), 0);
	CHECK_EQ_INT(back.time_ns, 123456789);
	CHECK_EQ_INT(back.nlabels, 2);
	CHECK_EQ_STR(back.labels[0].name, "__name__");
	CHECK_EQ_STR(back.labels[0].value, "memory");
	CHECK_EQ_STR(back.labels[1].value, "svc");
	CHECK_EQ_INT(back.len, sizeof(payload));
	CHECK(memcmp(back.gz, payload, sizeof(payload)) == 0);
	free(out);
	free(buf);
}

TEST(spool_format_rejects_every_damage)
{
	struct pa_spool_record r = record(42, "process_cpu"), back;
	uint8_t *buf, *out;
	size_t len;
	CHECK_EQ_INT(pa_spool_encode(&r, &buf, &len), 0);
	/* Every truncation, and a flipped bit in every byte. */
	for (size_t cut = 0; cut < len; cut++)
		CHECK(pa_spool_decode(buf, cut, &back, &out) == -EINVAL);
	for (size_t i = 0; i < len; i++) {
		buf[i] ^= 0x10;
		int rc = pa_spool_decode(buf, len, &back, &out);
		buf[i] ^= 0x10;
		if (rc == 0)
			FAIL("a flipped bit at byte %zu of %zu was not noticed",
			     i, len);
	}
	free(buf);
}

TEST(spool_replays_oldest_first_and_removes_delivered)
{
	char *dir = temp_dir();
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	int64_t t = now_ns();
	struct pa_spool_record a = record(t - 3000, "a"),
			       b = record(t - 2000, "b"),
			       c = record(t - 1000, "c"), got;
	CHECK_EQ_INT(pa_spool_put(s, &b), 0);
	CHECK_EQ_INT(pa_spool_put(s, &c), 0);
	CHECK_EQ_INT(pa_spool_put(s, &a), 0);
	CHECK_EQ_INT(pa_spool_count(s), 3);
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "a");
	pa_spool_release(s); /* not delivered: stays first */
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "a");
	pa_spool_done(s);
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "b");
	pa_spool_done(s);
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "c");
	pa_spool_done(s);
	CHECK_EQ_INT(pa_spool_next(s, &got), -ENOENT);
	CHECK_EQ_INT(pa_spool_count(s), 0);
	pa_spool_close(s);
}

/* "api." starts "api.v2.<time>...": one service never takes, replays or
 * caps away another's files, whatever their names share. */
TEST(spool_services_sharing_a_prefix_stay_apart)
{
	char *dir = temp_dir();
	struct pa_spool *api, *v2;
	CHECK_EQ_INT(pa_spool_open(&api, dir, "api", 64 << 20, 55 * MINUTE_NS),
		     0);
	CHECK_EQ_INT(
	    pa_spool_open(&v2, dir, "api.v2", 64 << 20, 55 * MINUTE_NS), 0);
	struct pa_spool_record r = record(now_ns(), "mine"), got;
	CHECK_EQ_INT(pa_spool_put(v2, &r), 0);
	CHECK_EQ_INT(pa_spool_count(api), 0);
	CHECK_EQ_INT(pa_spool_next(api, &got), -ENOENT);
	CHECK_EQ_INT(pa_spool_count(v2), 1);
	CHECK_EQ_INT(pa_spool_next(v2, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "mine");
	pa_spool_done(v2);
	pa_spool_close(api);
	pa_spool_close(v2);
}

TEST(spool_files_are_private_and_atomic)
{
	char *dir = temp_dir();
	char sub[128];
	snprintf(sub, sizeof(sub), "%s/a/b", dir);
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, sub, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	struct stat st;
	CHECK_EQ_INT(stat(sub, &st), 0);
	CHECK_EQ_INT(st.st_mode & 0777, 0700);
	struct pa_spool_record r = record(now_ns(), "x");
	CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "test \"$(stat -c %%a %s/svc.*.zst)\" = 600",
		 sub);
	CHECK_EQ_INT(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "! ls -a %s | grep -q tmp", sub);
	CHECK_EQ_INT(system(cmd), 0);
	pa_spool_close(s);
}

TEST(spool_refuses_world_writable_directory)
{
	char *dir = temp_dir();
	CHECK_EQ_INT(chmod(dir, 0777), 0);
	struct pa_spool *s = NULL;
	CHECK(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS) < 0);
	CHECK(s == NULL);
	CHECK_EQ_INT(chmod(dir, 01777), 0); /* sticky, like /tmp: accepted */
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	pa_spool_close(s);
}

TEST(spool_cap_drops_oldest_and_counts)
{
	char *dir = temp_dir();
	struct pa_spool *s;
	/* Payloads are incompressible enough that each file is ~1-3 KiB. */
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)rand();
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 10000, 55 * MINUTE_NS), 0);
	int64_t t = now_ns();
	for (int i = 0; i < 10; i++) {
		char *name = malloc(8);
		snprintf(name, 8, "p%d", i);
		struct pa_spool_record r = record(t + i, name);
		for (size_t k = 0; k < sizeof(payload); k++)
			payload[k] = (uint8_t)rand();
		CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	}
	struct pa_spool_stats st;
	pa_spool_stats(s, &st);
	CHECK(st.dropped_full >= 6);
	CHECK_EQ_INT(st.dropped_full + (uint64_t)pa_spool_count(s), 10);
	struct pa_spool_record got;
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	char want[8];
	snprintf(want, sizeof(want), "p%d", (int)st.dropped_full);
	CHECK_EQ_STR(got.labels[0].value, want); /* the newest survive */
	pa_spool_close(s);
}

/* Small profiles must not pile up past what a scan reads: a file cap
 * too, oldest first, whatever the size cap leaves room for. */
TEST(spool_file_cap_drops_oldest)
{
	char *dir = temp_dir();
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	pa_spool_set_max_files(s, 5);
	int64_t t = now_ns();
	char names[8][8];
	for (int i = 0; i < 8; i++) {
		snprintf(names[i], sizeof(names[i]), "r%d", i);
		struct pa_spool_record r = record(t - 8000 + i * 1000, names[i]);
		CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	}
	CHECK_EQ_INT(pa_spool_count(s), 5);
	struct pa_spool_stats st;
	pa_spool_stats(s, &st);
	CHECK_EQ_INT(st.dropped_full, 3);
	struct pa_spool_record got;
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "r3");
	pa_spool_done(s);
	pa_spool_close(s);
}

TEST(spool_never_replays_past_the_ingestion_window)
{
	char *dir = temp_dir();
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	struct pa_spool_record old = record(now_ns() - 56 * MINUTE_NS, "old"),
			       fresh = record(now_ns() - MINUTE_NS, "fresh"),
			       got;
	CHECK_EQ_INT(pa_spool_put(s, &old), 0);
	CHECK_EQ_INT(pa_spool_put(s, &fresh), 0);
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "fresh");
	struct pa_spool_stats st;
	pa_spool_stats(s, &st);
	CHECK_EQ_INT(st.dropped_old, 1);
	pa_spool_close(s);
}

TEST(spool_skips_and_removes_corrupt_files)
{
	char *dir = temp_dir();
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	int64_t t = now_ns();
	struct pa_spool_record good = record(t, "good"), got;
	CHECK_EQ_INT(pa_spool_put(s, &good), 0);
	/* Older names, so they come first: garbage, empty, truncated. */
	const char *bad[] = {"garbage", "", "PYROSPL1\x10"};
	for (int i = 0; i < 3; i++) {
		char path[256];
		snprintf(path, sizeof(path), "%s/svc.%020d.1.%020d.zst", dir, i,
			 i);
		int fd = open(path, O_WRONLY | O_CREAT, 0600);
		CHECK(fd >= 0);
		CHECK(write(fd, bad[i], strlen(bad[i])) ==
		      (ssize_t)strlen(bad[i]));
		close(fd);
	}
	CHECK_EQ_INT(pa_spool_count(s), 4);
	CHECK_EQ_INT(pa_spool_next(s, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "good");
	struct pa_spool_stats st;
	pa_spool_stats(s, &st);
	CHECK_EQ_INT(st.corrupt, 3);
	CHECK_EQ_INT(pa_spool_count(s), 1);
	pa_spool_close(s);
}

TEST(spool_record_held_by_one_process_is_skipped_by_another)
{
	char *dir = temp_dir();
	struct pa_spool *a, *b;
	CHECK_EQ_INT(pa_spool_open(&a, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	CHECK_EQ_INT(pa_spool_open(&b, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	int64_t t = now_ns();
	struct pa_spool_record r1 = record(t - 10, "one"),
			       r2 = record(t, "two"), got;
	CHECK_EQ_INT(pa_spool_put(a, &r1), 0);
	CHECK_EQ_INT(pa_spool_put(a, &r2), 0);
	CHECK_EQ_INT(pa_spool_next(a, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "one");
	/* flock locks belong to the open file description, so a second
	 * spool in this process stands for another process. */
	CHECK_EQ_INT(pa_spool_next(b, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "two");
	pa_spool_done(a);
	pa_spool_done(b);
	CHECK_EQ_INT(pa_spool_next(a, &got), -ENOENT);
	/* Another service's files are not ours. */
	struct pa_spool *other;
	CHECK_EQ_INT(
	    pa_spool_open(&other, dir, "other", 64 << 20, 55 * MINUTE_NS), 0);
	struct pa_spool_record r3 = record(t, "three");
	CHECK_EQ_INT(pa_spool_put(other, &r3), 0);
	CHECK_EQ_INT(pa_spool_next(a, &got), -ENOENT);
	pa_spool_close(a);
	pa_spool_close(b);
	pa_spool_close(other);
}

TEST(spool_keeps_write_order_for_equal_times)
{
	char *dir = temp_dir();
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	/* A CPU and a memory profile of one interval share their time; the
	 * 10th write must not sort before the 9th. */
	int64_t t = now_ns();
	static char names[12][8];
	for (int i = 0; i < 12; i++) {
		snprintf(names[i], sizeof(names[i]), "n%d", i);
		struct pa_spool_record r = record(t, names[i]);
		CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	}
	struct pa_spool_record got;
	for (int i = 0; i < 12; i++) {
		CHECK_EQ_INT(pa_spool_next(s, &got), 0);
		CHECK_EQ_STR(got.labels[0].value, names[i]);
		pa_spool_done(s);
	}
	pa_spool_close(s);
}

TEST(spool_open_removes_stale_temporary_files_only)
{
	char *dir = temp_dir();
	char stale[256], fresh[256], other[256];
	/* As pa_spool_put names them: <service>.<time>.<pid>.<seq>.zst */
#define REC(t) "%s/." t ".00000000000000000001.1.00000000000000000001.zst.tmp"
	snprintf(stale, sizeof(stale), REC("svc"), dir);
	snprintf(fresh, sizeof(fresh), REC("svc"), dir);
	fresh[strlen(dir) + 6] = '2'; /* another time */
	snprintf(other, sizeof(other), REC("svc.web"), dir);
#undef REC
	const char *paths[] = {stale, fresh, other};
	for (int i = 0; i < 3; i++) {
		int fd = open(paths[i], O_WRONLY | O_CREAT, 0600);
		CHECK(fd >= 0);
		close(fd);
	}
	/* A writer killed 11 minutes ago; fresh may still be being written;
	 * other belongs to another service. */
	struct timespec old[2] = {{time(NULL) - 660, 0}, {time(NULL) - 660, 0}};
	CHECK_EQ_INT(utimensat(AT_FDCWD, stale, old, 0), 0);
	CHECK_EQ_INT(utimensat(AT_FDCWD, other, old, 0), 0);
	struct pa_spool *s;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	CHECK(access(stale, F_OK) != 0);
	CHECK(access(fresh, F_OK) == 0);
	CHECK(access(other, F_OK) == 0);
	pa_spool_close(s);
}

TEST(spool_forked_child_drops_its_copy_of_the_lock)
{
	char *dir = temp_dir();
	struct pa_spool *s, *again;
	CHECK_EQ_INT(pa_spool_open(&s, dir, "svc", 64 << 20, 55 * MINUTE_NS),
		     0);
	struct pa_spool_record r = record(now_ns(), "one"), got;
	CHECK_EQ_INT(pa_spool_put(s, &r), 0);
	CHECK_EQ_INT(pa_spool_next(s, &got), 0); /* held and locked */
	int p[2];
	CHECK_EQ_INT(pipe(p), 0);
	pid_t pid = fork();
	if (pid == 0) {
		pa_spool_atfork_child(s);
		close(p[1]);
		char c;
		/* Live on while the parent retries (EOF if it dies). */
		(void)!read(p[0], &c, 1);
		_exit(0);
	}
	close(p[0]);
	/* The parent gives the record back and takes it again while the
	 * child lives: the child's descriptor must not hold the lock. */
	usleep(100000);
	pa_spool_release(s);
	CHECK_EQ_INT(
	    pa_spool_open(&again, dir, "svc", 64 << 20, 55 * MINUTE_NS), 0);
	CHECK_EQ_INT(pa_spool_next(again, &got), 0);
	CHECK_EQ_STR(got.labels[0].value, "one");
	(void)!write(p[1], "x", 1);
	waitpid(pid, NULL, 0);
	pa_spool_close(again);
	pa_spool_close(s);
}
