/* The disk spool: one zstd file per undelivered profile, replayed oldest
 * first. Files are written atomically (temp + rename, 0600, O_NOFOLLOW)
 * and locked with flock while a process replays them, so two processes of
 * one service sharing the directory never send a profile twice. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "filesink.h"
#include "log.h"
#include "spool.h"

#define MAGIC	  "PYROSPL1"
#define MAGIC_LEN 8
#define FIXED_HEADER                                                           \
	(MAGIC_LEN + 4 + 4) /* magic, header length, header crc                \
			     */
#define MAX_HEADER (64u << 10)
#define MAX_FILE   (PA_SPOOL_MAX_PROFILE + MAX_HEADER + 4096)
/* Entries a scan reads at most (a directory someone filled with other
 * files must not cost unbounded memory), and files one service keeps:
 * far fewer, so a scan always sees every one of them, oldest first. */
#define SCAN_MAX   65536
#define SUFFIX	   ".zst"
#define ZSTD_LEVEL 3
/* A temporary file this old belongs to a writer that died. */
#define STALE_TEMP_NS (10LL * 60 * 1000000000LL)

struct pa_spool {
	char *dir;
	char *prefix; /* "<service>." */
	int64_t max_bytes, max_age_ns;
	int max_files; /* PA_SPOOL_MAX_FILES; tests lower it */
	uint64_t seq;
	struct pa_spool_stats st;
	/* The record handed out by pa_spool_next. */
	int held_fd;
	char *held_name;
	uint8_t *held_buf, *held_payload;
};

static int64_t wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- the file format ------------------------------------------------------
 */

static void put_u16(uint8_t **p, uint16_t v)
{
	(*p)[0] = (uint8_t)v;
	(*p)[1] = (uint8_t)(v >> 8);
	*p += 2;
}

static void put_u32(uint8_t **p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		(*p)[i] = (uint8_t)(v >> (8 * i));
	*p += 4;
}

static void put_u64(uint8_t **p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		(*p)[i] = (uint8_t)(v >> (8 * i));
	*p += 8;
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int pa_spool_encode(const struct pa_spool_record *r, uint8_t **out, size_t *len)
{
	if (r->nlabels < 0 || r->nlabels > PA_SPOOL_MAX_LABELS || !r->gz ||
	    r->len == 0 || r->len > PA_SPOOL_MAX_PROFILE)
		return -EINVAL;
	size_t hlen = 8 + 4 + 2;
	for (int i = 0; i < r->nlabels; i++) {
		size_t n = strlen(r->labels[i].name) + 1;
		size_t v = strlen(r->labels[i].value) + 1;
		if (n > UINT16_MAX || v > UINT16_MAX)
			return -EINVAL;
		hlen += 4 + n + v;
	}
	if (hlen > MAX_HEADER)
		return -EINVAL;
	size_t zcap = ZSTD_compressBound(r->len);
	uint8_t *buf = malloc(FIXED_HEADER + hlen + zcap + 4);
	if (!buf)
		return -ENOMEM;
	uint8_t *p = buf;
	memcpy(p, MAGIC, MAGIC_LEN);
	p += MAGIC_LEN;
	put_u32(&p, (uint32_t)hlen);
	uint8_t *crc_at = p;
	p += 4;
	uint8_t *h = p;
	put_u64(&p, (uint64_t)r->time_ns);
	put_u32(&p, (uint32_t)r->len);
	put_u16(&p, (uint16_t)r->nlabels);
	for (int i = 0; i < r->nlabels; i++) {
		const char *s[2] = {r->labels[i].name, r->labels[i].value};
		for (int k = 0; k < 2; k++) {
			size_t n = strlen(s[k]) + 1;
			put_u16(&p, (uint16_t)n);
			memcpy(p, s[k], n);
			p += n;
		}
	}
	put_u32(&crc_at, (uint32_t)crc32(0, h, (uInt)hlen));
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	size_t z = cctx ? 0 : (size_t)-1;
	if (cctx) {
		ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel,
				       ZSTD_LEVEL);
		ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
		z = ZSTD_compress2(cctx, p, zcap, r->gz, r->len);
		ZSTD_freeCCtx(cctx);
	}
	if (ZSTD_isError(z) || !cctx) {
		free(buf);
		return -ENOMEM;
	}
	/* A CRC of the whole file: zstd's own checksum leaves its frame
	 * header unguarded. */
	p += z;
	put_u32(&p, (uint32_t)crc32(0, buf, (uInt)(p - buf)));
	*out = buf;
	*len = (size_t)(p - buf);
	return 0;
}

/* A NUL-terminated string of n bytes (NUL included) at *p, inside end. */
static const char *get_str(const uint8_t **p, const uint8_t *end)
{
	if (end - *p < 2)
		return NULL;
	size_t n = (size_t)get_le(*p, 2);
	*p += 2;
	if (n == 0 || (size_t)(end - *p) < n || (*p)[n - 1] != 0 ||
	    memchr(*p, 0, n - 1))
		return NULL;
	const char *s = (const char *)*p;
	*p += n;
	return s;
}

int pa_spool_decode(const uint8_t *buf, size_t len, struct pa_spool_record *r,
		    uint8_t **payload)
{
	if (len < FIXED_HEADER + 4 || len > MAX_FILE ||
	    memcmp(buf, MAGIC, MAGIC_LEN) != 0)
		return -EINVAL;
	len -= 4;
	if ((uint32_t)crc32(0, buf, (uInt)len) !=
	    (uint32_t)get_le(buf + len, 4))
		return -EINVAL;
	size_t hlen = (size_t)get_le(buf + MAGIC_LEN, 4);
	uint32_t crc = (uint32_t)get_le(buf + MAGIC_LEN + 4, 4);
	if (hlen < 14 || hlen > MAX_HEADER || hlen > len - FIXED_HEADER)
		return -EINVAL;
	const uint8_t *h = buf + FIXED_HEADER, *end = h + hlen;
	if ((uint32_t)crc32(0, h, (uInt)hlen) != crc)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	r->time_ns = (int64_t)get_le(h, 8);
	size_t plen = (size_t)get_le(h + 8, 4);
	int n = (int)get_le(h + 12, 2);
	if (plen == 0 || plen > PA_SPOOL_MAX_PROFILE || n > PA_SPOOL_MAX_LABELS)
		return -EINVAL;
	const uint8_t *p = h + 14;
	for (int i = 0; i < n; i++) {
		r->labels[i].name = get_str(&p, end);
		r->labels[i].value =
		    r->labels[i].name ? get_str(&p, end) : NULL;
		if (!r->labels[i].value)
			return -EINVAL;
	}
	if (p != end)
		return -EINVAL;
	r->nlabels = n;
	const uint8_t *z = end;
	size_t zlen = len - FIXED_HEADER - hlen;
	unsigned long long content = ZSTD_getFrameContentSize(z, zlen);
	if (content != plen || ZSTD_findFrameCompressedSize(z, zlen) != zlen)
		return -EINVAL;
	uint8_t *out = malloc(plen);
	if (!out)
		return -ENOMEM;
	size_t got = ZSTD_decompress(out, plen, z, zlen);
	if (ZSTD_isError(got) || got != plen) {
		free(out);
		return -EINVAL;
	}
	r->gz = out;
	r->len = plen;
	*payload = out;
	return 0;
}

/* ---- the directory ----------------------------------------------------------
 */

/* The service as it appears in file names: no '/', no leading '.', no
 * control characters. */
static char *file_prefix(const char *service)
{
	size_t n = strlen(service);
	if (n > 200)
		n = 200;
	char *p = malloc(n + 2);
	if (!p)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)service[i];
		p[i] =
		    (c < 0x20 || c == 0x7f || c == '/' || (i == 0 && c == '.'))
			? '_'
			: (char)c;
	}
	p[n] = '.';
	p[n + 1] = 0;
	return p;
}

static bool digits(const char **p, const char *end, size_t min, size_t max)
{
	size_t n = 0;
	while (*p < end && **p >= '0' && **p <= '9' && n < max)
		(*p)++, n++;
	return n >= min;
}

/* What follows the service's prefix in one of its record names (n bytes):
 * "<20-digit time>.<pid>.<20-digit seq>.zst". Anything else is another
 * service's: "api." is also the start of "api.v2.<time>...". */
static bool record_tail(const char *p, size_t n)
{
	const char *end = p + n;
	return digits(&p, end, 20, 20) && p < end && *p++ == '.' &&
	       digits(&p, end, 1, 10) && p < end && *p++ == '.' &&
	       digits(&p, end, 20, 20) && (size_t)(end - p) == strlen(SUFFIX) &&
	       memcmp(p, SUFFIX, strlen(SUFFIX)) == 0;
}

/* A process killed between writing a temporary file and renaming it
 * leaves ".<service>.*.tmp" behind; nothing else would ever remove it.
 * Only old ones: another live process of the service may be writing. */
static void remove_stale_temps(struct pa_spool *s)
{
	DIR *d = opendir(s->dir);
	if (!d)
		return;
	int dfd = dirfd(d);
	size_t plen = strlen(s->prefix);
	int64_t before = wall_ns() - STALE_TEMP_NS;
	struct dirent *de;
	for (int seen = 0; (de = readdir(d)) && seen < SCAN_MAX; seen++) {
		size_t len = strlen(de->d_name);
		if (len <= 1 + plen + 4 || de->d_name[0] != '.' ||
		    strncmp(de->d_name + 1, s->prefix, plen) != 0 ||
		    strcmp(de->d_name + len - 4, ".tmp") != 0 ||
		    !record_tail(de->d_name + 1 + plen, len - 1 - plen - 4))
			continue;
		struct stat st;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000LL +
				st.st_mtim.tv_nsec;
		if (mtime < before)
			unlinkat(dfd, de->d_name, 0);
	}
	closedir(d);
}

int pa_spool_open(struct pa_spool **out, const char *dir, const char *service,
		  int64_t max_bytes, int64_t max_age_ns)
{
	int rc = pa_filesink_prepare(dir);
	if (rc != 0)
		return rc;
	struct pa_spool *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dir = strdup(dir);
	s->prefix = file_prefix(service);
	if (!s->dir || !s->prefix) {
		pa_spool_close(s);
		return -ENOMEM;
	}
	s->max_bytes = max_bytes;
	s->max_age_ns = max_age_ns;
	s->max_files = PA_SPOOL_MAX_FILES;
	s->held_fd = -1;
	remove_stale_temps(s);
	*out = s;
	return 0;
}

void pa_spool_atfork_child(struct pa_spool *s)
{
	/* The descriptor is shared with the parent, and so is its flock:
	 * closing this copy keeps the parent's lock and lets the parent
	 * lock the file again after it releases it. Nothing is freed: the
	 * parent's thread may have been inside the spool at fork. */
	if (s && s->held_fd >= 0) {
		close(s->held_fd);
		s->held_fd = -1;
	}
}

static void drop_held(struct pa_spool *s)
{
	if (s->held_fd >= 0)
		close(s->held_fd); /* releases the flock */
	s->held_fd = -1;
	free(s->held_name);
	free(s->held_buf);
	free(s->held_payload);
	s->held_name = NULL;
	s->held_buf = s->held_payload = NULL;
}

void pa_spool_close(struct pa_spool *s)
{
	if (!s)
		return;
	drop_held(s);
	free(s->dir);
	free(s->prefix);
	free(s);
}

struct entry {
	char *name;
	off_t size;
};

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct entry *)a)->name,
		      ((const struct entry *)b)->name);
}

/* This service's spool files, oldest first (names start with the
 * zero-padded profile time). *total gets their size. */
static int scan(struct pa_spool *s, struct entry **out, off_t *total)
{
	DIR *d = opendir(s->dir);
	if (!d)
		return -errno;
	int dfd = dirfd(d);
	struct entry *v = NULL;
	int n = 0, cap = 0;
	size_t plen = strlen(s->prefix), slen = strlen(SUFFIX);
	*total = 0;
	struct dirent *de;
	while ((de = readdir(d)) && n < SCAN_MAX) {
		size_t len = strlen(de->d_name);
		if (len <= plen + slen ||
		    strncmp(de->d_name, s->prefix, plen) != 0 ||
		    !record_tail(de->d_name + plen, len - plen))
			continue;
		struct stat st;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			int ncap = cap ? cap * 2 : 32;
			struct entry *nv =
			    realloc(v, (size_t)ncap * sizeof(*v));
			if (!nv)
				break;
			v = nv;
			cap = ncap;
		}
		v[n].name = strdup(de->d_name);
		if (!v[n].name)
			break;
		v[n].size = st.st_size;
		*total += st.st_size;
		n++;
	}
	closedir(d);
	if (n > 1) /* qsort(NULL, 0) is undefined (UBSan) */
		qsort(v, (size_t)n, sizeof(*v), by_name);
	*out = v;
	return n;
}

static void free_entries(struct entry *v, int n)
{
	for (int i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

static void remove_file(struct pa_spool *s, const char *name)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/%s", s->dir, name) <
	    (int)sizeof(path))
		unlink(path);
}

int pa_spool_count(struct pa_spool *s)
{
	struct entry *v = NULL;
	off_t total;
	int n = scan(s, &v, &total);
	if (n > 0)
		free_entries(v, n);
	else
		free(v);
	return n < 0 ? 0 : n;
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

void pa_spool_set_max_files(struct pa_spool *s, int n)
{
	if (s && n > 0)
		s->max_files = n;
}

int pa_spool_put(struct pa_spool *s, const struct pa_spool_record *r)
{
	uint8_t *buf;
	size_t len;
	int rc = pa_spool_encode(r, &buf, &len);
	if (rc != 0)
		return rc;
	if ((int64_t)len > s->max_bytes) {
		free(buf);
		s->st.dropped_full++;
		return -EFBIG;
	}
	/* Make room, in bytes and in files: the oldest go first. */
	struct entry *v = NULL;
	off_t total = 0;
	int n = scan(s, &v, &total);
	int kept = n;
	for (int i = 0; i < n && (total + (off_t)len > s->max_bytes ||
				  kept >= s->max_files);
	     i++) {
		if (s->held_name && strcmp(v[i].name, s->held_name) == 0)
			continue;
		remove_file(s, v[i].name);
		total -= v[i].size;
		kept--;
		s->st.dropped_full++;
	}
	if (n > 0)
		free_entries(v, n);
	else
		free(v);
	char name[512], tmp[600], path[4096], tpath[4096];
	/* Names sort in replay order: profile time, then (zero-padded, so
	 * a CPU and a memory profile of one interval keep their order) the
	 * write sequence. */
	snprintf(name, sizeof(name), "%s%020lld.%d.%020llu%s", s->prefix,
		 (long long)(r->time_ns > 0 ? r->time_ns : 0), (int)getpid(),
		 (unsigned long long)++s->seq, SUFFIX);
	snprintf(tmp, sizeof(tmp), ".%s.tmp", name);
	if (snprintf(path, sizeof(path), "%s/%s", s->dir, name) >=
		(int)sizeof(path) ||
	    snprintf(tpath, sizeof(tpath), "%s/%s", s->dir, tmp) >=
		(int)sizeof(tpath)) {
		free(buf);
		return -ENAMETOOLONG;
	}
	int fd = open(
	    tpath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		free(buf);
		return rc;
	}
	rc = write_all(fd, buf, len);
	free(buf);
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tpath, path) != 0)
		rc = -errno;
	if (rc != 0) {
		unlink(tpath);
		return rc;
	}
	s->st.written++;
	return 0;
}

/* Reads a whole locked file; 0, -EAGAIN (another process holds it or it
 * is gone), or -EINVAL (not a spool file). */
static int read_locked(struct pa_spool *s, const char *name, int *fdp,
		       uint8_t **bufp, size_t *lenp)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/%s", s->dir, name) >=
	    (int)sizeof(path))
		return -EINVAL;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -EAGAIN;
	struct stat st;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fstat(fd, &st) != 0 ||
	    st.st_nlink == 0) {
		/* Locked by another process, or it sent and removed it
		 * while we were opening it. */
		close(fd);
		return -EAGAIN;
	}
	if (!S_ISREG(st.st_mode) || st.st_size <= 0 ||
	    st.st_size > (off_t)MAX_FILE) {
		close(fd);
		return -EINVAL;
	}
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	if (got != len) {
		free(buf);
		close(fd);
		return -EINVAL;
	}
	*fdp = fd;
	*bufp = buf;
	*lenp = len;
	return 0;
}

int pa_spool_next(struct pa_spool *s, struct pa_spool_record *r)
{
	drop_held(s);
	struct entry *v = NULL;
	off_t total;
	int n = scan(s, &v, &total);
	if (n <= 0) {
		free(v);
		return -ENOENT;
	}
	int found = -ENOENT;
	int64_t oldest_ok = wall_ns() - s->max_age_ns;
	for (int i = 0; i < n && found != 0; i++) {
		int fd = -1;
		uint8_t *buf = NULL, *payload = NULL;
		size_t len = 0;
		int rc = read_locked(s, v[i].name, &fd, &buf, &len);
		if (rc == -EAGAIN)
			continue;
		if (rc == 0)
			rc = pa_spool_decode(buf, len, r, &payload);
		if (rc == 0 && r->time_ns < oldest_ok) {
			/* Pyroscope refuses profiles older than its
			 * ingestion window: never replayed. */
			s->st.dropped_old++;
			rc = -ETIME;
		} else if (rc == -EINVAL) {
			s->st.corrupt++;
			pa_log_once(PA_LOG_WARN,
				    "spool: %s/%s is not a readable spool "
				    "file: removed",
				    s->dir, v[i].name);
		}
		if (rc != 0) {
			if (rc != -ENOMEM)
				remove_file(
				    s, v[i].name); /* still locked, if opened */
			free(payload);
			free(buf);
			if (fd >= 0)
				close(fd);
			if (rc == -ENOMEM) {
				found = rc;
				break;
			}
			continue;
		}
		s->held_fd = fd;
		s->held_name = strdup(v[i].name);
		s->held_buf = buf;
		s->held_payload = payload;
		found = 0;
	}
	free_entries(v, n);
	return found;
}

void pa_spool_done(struct pa_spool *s)
{
	if (s->held_name)
		remove_file(s, s->held_name); /* while still locked */
	drop_held(s);
}

void pa_spool_release(struct pa_spool *s)
{
	drop_held(s);
}

void pa_spool_stats(const struct pa_spool *s, struct pa_spool_stats *out)
{
	*out = s->st;
}
