/* The file sink: each profile as DIR/<service>.<pid>.<kind>.<seq>.pb.gz,
 * written under a hidden temporary name and renamed into place. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "filesink.h"
#include "log.h"

/* Name parts are cut so a file name stays far below NAME_MAX (255). */
#define SERVICE_MAX  128
#define KIND_MAX     32
#define TMP_ATTEMPTS 16

/* A name part safe for one path component: no '/', no control bytes, no
 * leading '.', never empty; cut at max bytes on a UTF-8 boundary. */
static void sanitize(const char *in, char *out, size_t max)
{
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)(in ? in : "");
	     *p && n < max; p++) {
		unsigned char c = *p;
		if (c == '/' || c < 0x20 || c == 0x7f || (n == 0 && c == '.'))
			c = '_';
		out[n++] = (char)c;
	}
	/* Do not leave half a multi-byte character at the cut. */
	if (in && strlen(in) > n) {
		size_t k = n;
		while (k && ((unsigned char)out[k - 1] & 0xc0) == 0x80)
			k--;
		if (k && ((unsigned char)out[k - 1] & 0xc0) == 0xc0) {
			unsigned char lead = (unsigned char)out[k - 1];
			size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
			if (n - (k - 1) < need)
				n = k - 1;
		}
	}
	if (!n)
		out[n++] = '_';
	out[n] = 0;
}

/* Files in a directory others may write into without the sticky bit can
 * be renamed or replaced by them: such a directory is refused. */
static int check_dir(int dfd, const char *dir, bool say_why)
{
	struct stat st;
	if (fstat(dfd, &st) != 0)
		return -errno;
	if (!S_ISDIR(st.st_mode)) {
		if (say_why)
			pa_warn("%s is not a directory", dir);
		return -ENOTDIR;
	}
	if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX)) {
		if (say_why)
			pa_warn("directory %s is world-writable without the "
				"sticky bit: refused "
				"(anyone could replace the files); chmod o-w "
				"or +t it",
				dir);
		return -EPERM;
	}
	return 0;
}

static int open_dir(const char *dir)
{
	int fd;
	do
		fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	return fd < 0 ? -errno : fd;
}

/* mkdir for one component; a new one gets exactly 0700 whatever the umask. */
static int make_one(const char *path)
{
	if (mkdir(path, 0700) != 0)
		return errno == EEXIST ? 0 : -errno;
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = 0;
	if (fstat(fd, &st) != 0 ||
	    ((st.st_mode & 07777) != 0700 && fchmod(fd, 0700) != 0))
		rc = -errno;
	close(fd);
	return rc;
}

int pa_filesink_prepare(const char *dir)
{
	if (!dir || !*dir)
		return -EINVAL;
	size_t n = strlen(dir);
	if (n >= PATH_MAX)
		return -ENAMETOOLONG;
	char path[PATH_MAX];
	memcpy(path, dir, n + 1);
	/* mkdir -p: every prefix ending before a '/', then the whole path.
	 * Existing components (symlinks to directories too) are used as they
	 * are: following the configured path is what users expect. */
	for (size_t i = 1; i <= n; i++) {
		if (path[i] != '/' && path[i] != 0)
			continue;
		if (path[i - 1] == '/')
			continue;
		char c = path[i];
		path[i] = 0;
		int rc = make_one(path);
		path[i] = c;
		if (rc != 0) {
			pa_warn("cannot create directory %s (errno %d)", dir,
				-rc);
			return rc;
		}
	}
	int dfd = open_dir(dir);
	if (dfd < 0) {
		if (dfd == -ENOTDIR)
			pa_warn("%s is not a directory", dir);
		return dfd;
	}
	int rc = check_dir(dfd, dir, true);
	close(dfd);
	if (rc == 0 && access(dir, W_OK | X_OK) != 0) {
		rc = -errno;
		pa_warn("directory %s is not writable", dir);
	}
	return rc;
}

static int write_all(int fd, const uint8_t *data, size_t len)
{
	while (len) {
		ssize_t w = write(fd, data, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		data += w;
		len -= (size_t)w;
	}
	return 0;
}

static unsigned random_token(void)
{
	static unsigned counter;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	unsigned x =
	    __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) * 2654435761u;
	x ^= (unsigned)ts.tv_nsec ^ ((unsigned)getpid() << 16);
	x ^= x >> 15;
	x *= 0x2c1b3c6du;
	x ^= x >> 12;
	return x;
}

unsigned (*pa_filesink_tmp_token)(void) = random_token;

int pa_filesink_write(const char *dir, const char *service, pid_t pid,
		      const char *kind, uint64_t seq, const uint8_t *data,
		      size_t len)
{
	if (!dir || !*dir || (!data && len))
		return -EINVAL;
	char svc[SERVICE_MAX + 1], knd[KIND_MAX + 1];
	sanitize(service, svc, SERVICE_MAX);
	sanitize(kind, knd, KIND_MAX);
	/* service.pid.kind.seq.pb.gz: 128 + 11 + 32 + 20 + separators. */
	char final[SERVICE_MAX + KIND_MAX + 48], tmp[sizeof(final) + 16];
	_Static_assert(sizeof(tmp) <= NAME_MAX, "file names within NAME_MAX");
	snprintf(final, sizeof(final), "%s.%d.%s.%llu.pb.gz", svc, (int)pid,
		 knd, (unsigned long long)seq);

	int dfd = open_dir(dir);
	if (dfd < 0)
		return dfd;
	int rc = check_dir(dfd, dir, false);
	if (rc != 0) {
		close(dfd);
		return rc;
	}
	/* O_EXCL|O_NOFOLLOW: whatever sits at the temporary name (a file, a
	 * symlink planted by someone) is never opened; pick another name. */
	int fd = -1;
	for (int i = 0; i < TMP_ATTEMPTS; i++) {
		snprintf(tmp, sizeof(tmp), ".%s.tmp%08x", final,
			 pa_filesink_tmp_token());
		do
			fd = openat(dfd, tmp,
				    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
					O_CLOEXEC,
				    0600);
		while (fd < 0 && errno == EINTR);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	if (fd < 0) {
		rc = -errno;
		close(dfd);
		return rc;
	}
	/* 0600 exactly, whatever the host's umask. */
	if (fchmod(fd, 0600) != 0)
		rc = -errno;
	if (rc == 0)
		rc = write_all(fd, data, len);
	if (close(fd) != 0 && rc == 0)
		rc = -errno; /* delayed write errors (NFS, quota) */
	/* rename replaces whatever is at the final name, a symlink included,
	 * without following it; readers see the old file or the whole new. */
	if (rc == 0 && renameat(dfd, tmp, dfd, final) != 0)
		rc = -errno;
	if (rc != 0)
		unlinkat(dfd, tmp, 0);
	close(dfd);
	return rc;
}
