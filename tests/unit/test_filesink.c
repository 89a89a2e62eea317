/* filesink: names, modes, atomic rename, symlinks never followed, directory
 * checks. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "filesink.h"
#include "unit.h"

static char base[64];

static void make_base(void)
{
	snprintf(base, sizeof(base), "/tmp/pa-filesink-XXXXXX");
	CHECK(mkdtemp(base) != NULL);
}

static int rm_one(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st, (void)ftw;
	return flag == FTW_DP ? rmdir(path) : unlink(path);
}

/* Removes base and everything in it (only reached when the test passed). */
static void cleanup(void)
{
	umask(022);
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void pathof(char *out, size_t cap, const char *rel)
{
	snprintf(out, cap, "%s/%s", base, rel);
}

static size_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	ssize_t n = read(fd, buf, cap);
	close(fd);
	CHECK(n >= 0);
	return (size_t)n;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
}

/* Names in dir starting with '.' (other than . and ..). */
static int hidden_entries(const char *dir)
{
	DIR *d = opendir(dir);
	CHECK(d != NULL);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] == '.' && strcmp(e->d_name, ".") &&
		    strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static int mode_of(const char *path)
{
	struct stat st;
	CHECK(lstat(path, &st) == 0);
	return (int)(st.st_mode & 07777);
}

static const uint8_t data[] = "profile bytes \x1f\x8b\x00 and more";

TEST(filesink_names_modes_and_no_temp_left)
{
	make_base();
	CHECK_EQ_INT(pa_filesink_prepare(base), 0);
	umask(0); /* the mode must not depend on the host's umask */
	CHECK_EQ_INT(
	    pa_filesink_write(base, "svc", 1234, "cpu", 1, data, sizeof(data)),
	    0);
	umask(0277);
	CHECK_EQ_INT(pa_filesink_write(base, "svc", 1234, "cpu", 2, data, 5),
		     0);
	CHECK_EQ_INT(pa_filesink_write(base, "svc", 1234, "memory", 1, data, 0),
		     0);
	char p[256], buf[256];
	pathof(p, sizeof(p), "svc.1234.cpu.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	CHECK_EQ_INT(read_file(p, buf, sizeof(buf)), sizeof(data));
	CHECK(memcmp(buf, data, sizeof(data)) == 0);
	pathof(p, sizeof(p), "svc.1234.cpu.2.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	CHECK_EQ_INT(read_file(p, buf, sizeof(buf)), 5);
	pathof(p, sizeof(p), "svc.1234.memory.1.pb.gz");
	CHECK_EQ_INT(read_file(p, buf, sizeof(buf)), 0);
	CHECK_EQ_INT(hidden_entries(base), 0);
	cleanup();
}

TEST(filesink_big_write_is_whole)
{
	make_base();
	size_t n = 8u << 20;
	uint8_t *big = malloc(n), *back = malloc(n);
	for (size_t i = 0; i < n; i++)
		big[i] = (uint8_t)(i * 131 + (i >> 13));
	CHECK_EQ_INT(pa_filesink_write(base, "svc", 7, "cpu", 1, big, n), 0);
	char p[256];
	pathof(p, sizeof(p), "svc.7.cpu.1.pb.gz");
	int fd = open(p, O_RDONLY);
	size_t got = 0;
	ssize_t r;
	while ((r = read(fd, back + got, n - got)) > 0)
		got += (size_t)r;
	close(fd);
	CHECK_EQ_INT(got, n);
	CHECK(memcmp(big, back, n) == 0);
	CHECK_EQ_INT(hidden_entries(base), 0);
	cleanup();
}

TEST(filesink_sanitizes_name_parts)
{
	make_base();
	CHECK_EQ_INT(
	    pa_filesink_write(base, "../a/b\n.c", 1, "cpu", 1, data, 3), 0);
	CHECK_EQ_INT(pa_filesink_write(base, "", 2, "cpu", 1, data, 3), 0);
	CHECK_EQ_INT(pa_filesink_write(base, NULL, 3, "../x", 1, data, 3), 0);
	char p[512];
	pathof(p, sizeof(p), "_._a_b_.c.1.cpu.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	pathof(p, sizeof(p), "_.2.cpu.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	pathof(p, sizeof(p), "_.3._._x.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);

	/* Long names are cut at 128 bytes, never inside a UTF-8 character. */
	char svc[300];
	memset(svc, 'a', 127);
	strcpy(svc + 127, "\xc3\xa9tail");
	CHECK_EQ_INT(pa_filesink_write(base, svc, 4, "cpu", 1, data, 3), 0);
	char name[200];
	memset(name, 'a', 127);
	strcpy(name + 127, ".4.cpu.1.pb.gz");
	pathof(p, sizeof(p), name);
	CHECK_EQ_INT(mode_of(p), 0600);
	memset(svc, 'b', 299);
	svc[299] = 0;
	CHECK_EQ_INT(pa_filesink_write(base, svc, 5, "cpu", 1, data, 3), 0);
	memset(name, 'b', 128);
	strcpy(name + 128, ".5.cpu.1.pb.gz");
	pathof(p, sizeof(p), name);
	CHECK_EQ_INT(mode_of(p), 0600);
	/* Every file is directly in base: nothing escaped upwards. */
	CHECK_EQ_INT(hidden_entries(base), 0);
	cleanup();
}

TEST(filesink_symlink_at_final_name_is_replaced_not_followed)
{
	make_base();
	char victim[256], link[256], buf[64];
	pathof(victim, sizeof(victim), "victim");
	write_file(victim, "precious");
	pathof(link, sizeof(link), "svc.9.cpu.1.pb.gz");
	CHECK(symlink(victim, link) == 0);
	CHECK_EQ_INT(
	    pa_filesink_write(base, "svc", 9, "cpu", 1, data, sizeof(data)), 0);
	CHECK_EQ_INT(read_file(victim, buf, sizeof(buf)), 8);
	CHECK(memcmp(buf, "precious", 8) == 0);
	struct stat st;
	CHECK(lstat(link, &st) == 0 && S_ISREG(st.st_mode));
	CHECK_EQ_INT(st.st_size, sizeof(data));
	cleanup();
}

static unsigned fixed_token;
static int token_calls;

static unsigned planted_then_free(void)
{
	return token_calls++ == 0 ? fixed_token : fixed_token + 1;
}

static unsigned always_planted(void)
{
	token_calls++;
	return fixed_token;
}

TEST(filesink_symlink_at_temp_name_is_not_followed)
{
	make_base();
	char victim[256], tmp[256], buf[64], p[256];
	struct stat st;
	pathof(victim, sizeof(victim), "victim");
	write_file(victim, "precious");
	fixed_token = 0xabc123u;
	pathof(tmp, sizeof(tmp), ".svc.9.cpu.1.pb.gz.tmp00abc123");
	CHECK(symlink(victim, tmp) == 0);

	/* The planted name is skipped for a fresh one. */
	pa_filesink_tmp_token = planted_then_free;
	CHECK_EQ_INT(
	    pa_filesink_write(base, "svc", 9, "cpu", 1, data, sizeof(data)), 0);
	CHECK_EQ_INT(token_calls, 2);
	CHECK_EQ_INT(read_file(victim, buf, sizeof(buf)), 8);
	CHECK(memcmp(buf, "precious", 8) == 0);
	pathof(p, sizeof(p), "svc.9.cpu.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	CHECK_EQ_INT(hidden_entries(base), 1); /* the planted link, untouched */
	CHECK(lstat(tmp, &st) == 0 && S_ISLNK(st.st_mode));

	/* Only the planted name on offer: give up, write nothing through it. */
	pathof(tmp, sizeof(tmp), ".svc.9.cpu.2.pb.gz.tmp00abc123");
	CHECK(symlink(victim, tmp) == 0);
	pa_filesink_tmp_token = always_planted;
	token_calls = 0;
	CHECK_EQ_INT(
	    pa_filesink_write(base, "svc", 9, "cpu", 2, data, sizeof(data)),
	    -EEXIST);
	CHECK(token_calls > 1);
	CHECK_EQ_INT(read_file(victim, buf, sizeof(buf)), 8);
	pathof(p, sizeof(p), "svc.9.cpu.2.pb.gz");
	CHECK(access(p, F_OK) != 0);
	CHECK(lstat(tmp, &st) == 0 && S_ISLNK(st.st_mode));
	CHECK_EQ_INT(hidden_entries(base), 2);
	cleanup();
}

TEST(filesink_failed_rename_leaves_no_temp)
{
	make_base();
	char p[256];
	pathof(p, sizeof(p), "svc.1.cpu.1.pb.gz");
	CHECK(mkdir(p, 0700) == 0); /* a directory where the file must go */
	int rc =
	    pa_filesink_write(base, "svc", 1, "cpu", 1, data, sizeof(data));
	CHECK(rc == -EISDIR || rc == -ENOTEMPTY || rc == -EEXIST);
	CHECK_EQ_INT(hidden_entries(base), 0);
	pathof(p, sizeof(p), "missing/dir");
	CHECK_EQ_INT(
	    pa_filesink_write(p, "svc", 1, "cpu", 1, data, sizeof(data)),
	    -ENOENT);
	cleanup();
}

TEST(filesink_world_writable_refused_sticky_accepted)
{
	make_base();
	char d[256], p[256];
	pathof(d, sizeof(d), "shared");
	CHECK(mkdir(d, 0700) == 0);
	CHECK(chmod(d, 0777) == 0);
	CHECK_EQ_INT(pa_filesink_prepare(d), -EPERM);
	CHECK_EQ_INT(pa_filesink_write(d, "svc", 1, "cpu", 1, data, 3), -EPERM);
	CHECK_EQ_INT(hidden_entries(d), 0);
	CHECK(chmod(d, 01777) == 0);
	CHECK_EQ_INT(pa_filesink_prepare(d), 0);
	CHECK_EQ_INT(pa_filesink_write(d, "svc", 1, "cpu", 1, data, 3), 0);
	pathof(p, sizeof(p), "shared/svc.1.cpu.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	/* A world-writable directory reached through a symlink is still
	 * refused. */
	char l[256];
	pathof(l, sizeof(l), "via-link");
	CHECK(chmod(d, 0777) == 0);
	CHECK(symlink(d, l) == 0);
	CHECK_EQ_INT(pa_filesink_prepare(l), -EPERM);
	cleanup();
}

TEST(filesink_prepare_creates_nested_dirs_0700)
{
	make_base();
	CHECK(chmod(base, 0755) == 0);
	umask(0); /* would give 0777 without the explicit mode fix-up... */
	char d[256], p[256];
	pathof(d, sizeof(d), "a/b//c/");
	CHECK_EQ_INT(pa_filesink_prepare(d), 0);
	pathof(p, sizeof(p), "a");
	CHECK_EQ_INT(mode_of(p), 0700);
	pathof(p, sizeof(p), "a/b");
	CHECK_EQ_INT(mode_of(p), 0700);
	pathof(p, sizeof(p), "a/b/c");
	CHECK_EQ_INT(mode_of(p), 0700);
	CHECK_EQ_INT(mode_of(base), 0755); /* existing parts are left alone */
	umask(0777);			   /* ...and 0000 without it */
	pathof(d, sizeof(d), "x/y");
	CHECK_EQ_INT(pa_filesink_prepare(d), 0);
	pathof(p, sizeof(p), "x");
	CHECK_EQ_INT(mode_of(p), 0700);
	pathof(p, sizeof(p), "x/y");
	CHECK_EQ_INT(mode_of(p), 0700);
	/* Preparing again is fine. */
	CHECK_EQ_INT(pa_filesink_prepare(d), 0);
	cleanup();
}

TEST(filesink_prepare_refuses_non_directories)
{
	make_base();
	char f[256], d[256];
	pathof(f, sizeof(f), "file");
	write_file(f, "x");
	CHECK_EQ_INT(pa_filesink_prepare(f), -ENOTDIR);
	pathof(d, sizeof(d), "file/sub");
	CHECK_EQ_INT(pa_filesink_prepare(d), -ENOTDIR);
	CHECK_EQ_INT(pa_filesink_prepare(""), -EINVAL);
	CHECK_EQ_INT(pa_filesink_prepare(NULL), -EINVAL);
	CHECK_EQ_INT(pa_filesink_write(NULL, "s", 1, "cpu", 1, data, 3),
		     -EINVAL);
	cleanup();
}

TEST(filesink_symlinked_dir_is_followed)
{
	make_base();
	char real[256], l[256], p[256];
	pathof(real, sizeof(real), "real");
	CHECK(mkdir(real, 0700) == 0);
	pathof(l, sizeof(l), "link");
	CHECK(symlink(real, l) == 0);
	CHECK_EQ_INT(pa_filesink_prepare(l), 0);
	CHECK_EQ_INT(pa_filesink_write(l, "svc", 1, "cpu", 1, data, 3), 0);
	pathof(p, sizeof(p), "real/svc.1.cpu.1.pb.gz");
	CHECK_EQ_INT(mode_of(p), 0600);
	cleanup();
}
