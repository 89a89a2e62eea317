/* Smart meter readings: CSV generation, the naive and the streaming sum. */
#include "meters.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* Both buffers are fixed: the generator writes in WRITE_BUF_BYTES chunks,
 * the readers read in READ_BUF_BYTES chunks, which is also the longest
 * CSV line they accept. */
#define WRITE_BUF_BYTES (1u << 20)
#define READ_BUF_BYTES	(256u * 1024)
/* How often (in lines) long loops look at the cancel flag. */
#define CANCEL_EVERY 65536
/* Credit a request takes from the shared heap counter at a time, so that
 * 100 M small objects do not all contend on one atomic. A request may
 * hold at most this much unspent credit: the cap is exact to within
 * LEASE_CHUNK per concurrent request. */
#define LEASE_CHUNK (1u << 20)
/* A naive sum that took more than this gives memory back to the OS. */
#define TRIM_AFTER_BYTES (16u << 20)
/* Hard cap of the naive loader's pointer array (entries): 16 GiB. */
#define MAX_READINGS (1ull << 31)

/* Sets rep->detail; long paths are truncated, which is fine for a message. */
__attribute__((format(printf, 2, 3))) static void say(struct meters_report *rep,
						      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rep->detail, sizeof(rep->detail), fmt, ap);
	va_end(ap);
}

/* ---- the heap cap ------------------------------------------------------ */

static struct {
	uint64_t cap; /* written once by meters_heap_init, before threads */
	_Atomic uint64_t used;
	_Atomic uint64_t peak;
	_Atomic uint64_t ooms;
} heap;

static atomic_bool cancelled;

/* One request's charges against the shared cap. */
struct heap_lease {
	uint64_t leased;    /* taken from heap.used; given back at the end */
	uint64_t spent;	    /* charged to live allocations (<= leased) */
	bool malloc_failed; /* the last failure was malloc's, not the cap */
};

void meters_heap_init(uint64_t cap_bytes)
{
	heap.cap = cap_bytes;
}

void meters_heap_stats(struct meters_heap_stats *out)
{
	out->cap = heap.cap;
	out->used = atomic_load_explicit(&heap.used, memory_order_relaxed);
	out->peak = atomic_load_explicit(&heap.peak, memory_order_relaxed);
	out->oom_count = atomic_load_explicit(&heap.ooms, memory_order_relaxed);
}

void meters_cancel(void)
{
	atomic_store_explicit(&cancelled, true, memory_order_relaxed);
}

static bool is_cancelled(void)
{
	return atomic_load_explicit(&cancelled, memory_order_relaxed);
}

static void note_peak(uint64_t used)
{
	uint64_t p = atomic_load_explicit(&heap.peak, memory_order_relaxed);
	while (used > p && !atomic_compare_exchange_weak_explicit(
			       &heap.peak, &p, used, memory_order_relaxed,
			       memory_order_relaxed))
		;
}

/* Takes at least need more bytes of credit from the shared counter, or
 * fails with -ENOMEM when that would pass the cap. */
static int lease_more(struct heap_lease *l, uint64_t need)
{
	uint64_t want = need > LEASE_CHUNK ? need : LEASE_CHUNK;
	uint64_t cur = atomic_load_explicit(&heap.used, memory_order_relaxed);

	for (;;) {
		uint64_t take = want;

		if (heap.cap) {
			if (need > heap.cap || cur > heap.cap - need)
				return -ENOMEM;
			if (take > heap.cap - cur)
				take = heap.cap - cur;
		}
		if (atomic_compare_exchange_weak_explicit(
			&heap.used, &cur, cur + take, memory_order_relaxed,
			memory_order_relaxed)) {
			l->leased += take;
			note_peak(cur + take);
			return 0;
		}
	}
}

static int heap_charge(struct heap_lease *l, uint64_t bytes)
{
	uint64_t credit = l->leased - l->spent;

	if (bytes > credit && lease_more(l, bytes - credit) < 0)
		return -ENOMEM;
	l->spent += bytes;
	return 0;
}

/* Charges past the cap: only for the few bytes of rounding malloc added
 * to a block that already exists; the next allocation then fails. */
static void heap_force_charge(struct heap_lease *l, uint64_t bytes)
{
	uint64_t credit = l->leased - l->spent;

	if (bytes > credit) {
		uint64_t more = bytes - credit;
		uint64_t was = atomic_fetch_add_explicit(&heap.used, more,
							 memory_order_relaxed);
		note_peak(was + more);
		l->leased += more;
	}
	l->spent += bytes;
}

static void heap_uncharge(struct heap_lease *l, uint64_t bytes)
{
	l->spent -= bytes;
}

/* Gives every byte of the request's credit back to the shared counter. */
static void heap_release(struct heap_lease *l)
{
	atomic_fetch_sub_explicit(&heap.used, l->leased, memory_order_relaxed);
	l->leased = 0;
	l->spent = 0;
}

/* malloc charged at its usable size. The caller owns the block; free it
 * with heap_free, or free() it and heap_release the whole lease. */
static void *heap_malloc(struct heap_lease *l, size_t size)
{
	void *p;
	size_t usable;

	l->malloc_failed = false;
	if (heap_charge(l, size) < 0)
		return NULL;
	p = malloc(size);
	if (!p) {
		heap_uncharge(l, size);
		l->malloc_failed = true;
		return NULL;
	}
	usable = malloc_usable_size(p);
	if (usable > size && heap_charge(l, usable - size) < 0) {
		free(p);
		heap_uncharge(l, size);
		return NULL;
	}
	return p;
}

/* realloc charged at the usable size; on failure old is still valid. */
static void *heap_realloc(struct heap_lease *l, void *old, size_t size)
{
	size_t old_usable = old ? malloc_usable_size(old) : 0;
	size_t charged = size > old_usable ? size : old_usable;
	size_t usable;
	void *p;

	l->malloc_failed = false;
	if (size > old_usable && heap_charge(l, size - old_usable) < 0)
		return NULL;
	p = realloc(old, size);
	if (!p) {
		heap_uncharge(l, charged - old_usable);
		l->malloc_failed = true;
		return NULL;
	}
	usable = malloc_usable_size(p);
	if (usable > charged)
		heap_force_charge(l, usable - charged);
	else
		heap_uncharge(l, charged - usable);
	return p;
}

static void heap_free(struct heap_lease *l, void *p)
{
	if (!p)
		return;
	heap_uncharge(l, malloc_usable_size(p));
	free(p);
}

static void format_mib(char *buf, size_t len, uint64_t bytes)
{
	if (bytes % (1u << 20) == 0)
		snprintf(buf, len, "%llu MiB",
			 (unsigned long long)(bytes >> 20));
	else
		snprintf(buf, len, "%.1f MiB", (double)bytes / (1 << 20));
}

/* Fills rep and logs the JVM-style line for a request out of memory. */
static int out_of_memory(const struct heap_lease *l, const char *where,
			 uint64_t readings, struct meters_report *rep)
{
	char cap[48], used[48];

	atomic_fetch_add_explicit(&heap.ooms, 1, memory_order_relaxed);
	if (heap.cap)
		format_mib(cap, sizeof(cap), heap.cap);
	else
		snprintf(cap, sizeof(cap), "none");
	format_mib(used, sizeof(used),
		   atomic_load_explicit(&heap.used, memory_order_relaxed));
	if (l->malloc_failed)
		say(rep,
		    "%s: malloc failed after %llu readings (heap cap %s, "
		    "%s in use)",
		    where, (unsigned long long)readings, cap, used);
	else
		say(rep,
		    "%s: heap cap of %s reached after %llu readings "
		    "(use ?mode=streaming or raise --max-heap)",
		    where, cap, (unsigned long long)readings);
	rep->readings = readings;
	fprintf(stderr,
		"aggregator: out of memory in %s after %llu readings "
		"(heap cap %s%s)\n",
		where, (unsigned long long)readings, cap,
		l->malloc_failed ? ", malloc returned NULL" : "");
	return -ENOMEM;
}

/* ---- generation -------------------------------------------------------- */

/* xoshiro256**, seeded through splitmix64: fast, and the same seed gives
 * the same file on every machine. */
struct rng {
	uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

/* Uniform in [0, range) without modulo bias (multiply and reject). */
static inline uint64_t rng_below(struct rng *r, uint64_t range)
{
	unsigned __int128 m = (unsigned __int128)rng_next(r) * range;
	uint64_t low = (uint64_t)m;

	if (low < range) {
		uint64_t threshold = -range % range;

		while (low < threshold) {
			m = (unsigned __int128)rng_next(r) * range;
			low = (uint64_t)m;
		}
	}
	return (uint64_t)(m >> 64);
}

static const char digit_pairs[201] = "00010203040506070809"
				     "10111213141516171819"
				     "20212223242526272829"
				     "30313233343536373839"
				     "40414243444546474849"
				     "50515253545556575859"
				     "60616263646566676869"
				     "70717273747576777879"
				     "80818283848586878889"
				     "90919293949596979899";

static inline char *put_uint(char *p, uint32_t v)
{
	char tmp[10];
	char *t = tmp + sizeof(tmp);
	size_t n;

	while (v >= 100) {
		t -= 2;
		memcpy(t, digit_pairs + (v % 100) * 2, 2);
		v /= 100;
	}
	if (v >= 10) {
		t -= 2;
		memcpy(t, digit_pairs + v * 2, 2);
	} else {
		*--t = (char)('0' + v);
	}
	n = (size_t)(tmp + sizeof(tmp) - t);
	memcpy(p, t, n);
	return p + n;
}

/* "meter_id,kwh\n" with kwh as exactly three decimals. */
static inline char *put_reading(char *p, uint32_t meter, uint32_t milli)
{
	uint32_t frac = milli % 1000;

	p = put_uint(p, meter);
	*p++ = ',';
	p = put_uint(p, milli / 1000);
	*p++ = '.';
	*p++ = (char)('0' + frac / 100);
	memcpy(p, digit_pairs + (frac % 100) * 2, 2);
	p += 2;
	*p++ = '\n';
	return p;
}

static unsigned decimal_digits(uint64_t v)
{
	unsigned n = 1;

	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

static uint64_t max_line_bytes(void)
{
	/* id, comma, whole kWh, dot, three decimals, newline */
	return decimal_digits(METERS_METER_POPULATION) + 1 +
	       decimal_digits(METERS_MAX_MILLI_KWH / 1000) + 1 + 3 + 1;
}

uint64_t meters_file_size_bound(uint64_t count)
{
	return sizeof(METERS_CSV_HEADER) + count * max_line_bytes();
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* mkdir -p; dir is modified in place and restored. */
static int make_dirs(char *dir)
{
	struct stat st;

	if (stat(dir, &st) == 0)
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
			int err = -errno;

			*p = '/';
			return err;
		}
		*p = '/';
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Splits path into its directory ("." when none) and base name. */
static int split_path(const char *path, char *dir, size_t dir_len,
		      const char **base)
{
	const char *slash = strrchr(path, '/');
	size_t n;

	if (!*path || (slash && !slash[1]))
		return -EISDIR;
	if (!slash) {
		*base = path;
		return snprintf(dir, dir_len, ".") < (int)dir_len
			   ? 0
			   : -ENAMETOOLONG;
	}
	*base = slash + 1;
	n = slash == path ? 1 : (size_t)(slash - path);
	if (n >= dir_len)
		return -ENAMETOOLONG;
	memcpy(dir, path, n);
	dir[n] = '\0';
	return 0;
}

static int generate_body(int fd, uint64_t count, uint64_t seed, char *buf,
			 struct meters_report *rep)
{
	const uint64_t line_max = max_line_bytes();
	char *p = buf;
	char *limit = buf + WRITE_BUF_BYTES - line_max;
	struct rng rng;
	int err;

	rng_seed(&rng, seed);
	memcpy(p, METERS_CSV_HEADER "\n", sizeof(METERS_CSV_HEADER));
	p += sizeof(METERS_CSV_HEADER);
	for (uint64_t i = 0; i < count; i++) {
		uint32_t meter =
		    1 + (uint32_t)rng_below(&rng, METERS_METER_POPULATION);
		uint32_t milli =
		    METERS_MIN_MILLI_KWH +
		    (uint32_t)rng_below(&rng, METERS_MAX_MILLI_KWH -
						  METERS_MIN_MILLI_KWH + 1);

		p = put_reading(p, meter, milli);
		if (p > limit) {
			err = write_all(fd, buf, (size_t)(p - buf));
			if (err < 0)
				return err;
			p = buf;
			rep->readings = i + 1;
			if (is_cancelled())
				return -ECANCELED;
		}
	}
	rep->readings = count;
	return write_all(fd, buf, (size_t)(p - buf));
}

int meters_generate(const char *path, uint64_t count, uint64_t seed,
		    struct meters_report *rep)
{
	char dir[PATH_MAX], tmp[PATH_MAX];
	const char *base;
	struct statvfs vfs;
	struct heap_lease lease = {0};
	char *buf = NULL;
	int fd = -1, dfd, err;

	memset(rep, 0, sizeof(*rep));
	if (count == 0 || count > METERS_MAX_COUNT) {
		say(rep, "meterCount must be between 1 and %llu",
		    METERS_MAX_COUNT);
		return -EINVAL;
	}
	err = split_path(path, dir, sizeof(dir), &base);
	if (err < 0) {
		say(rep, "bad data file path %s: %s", path, strerror(-err));
		return err;
	}
	err = make_dirs(dir);
	if (err < 0) {
		say(rep, "cannot create directory %s: %s", dir, strerror(-err));
		return err;
	}
	if (statvfs(dir, &vfs) == 0) {
		uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		uint64_t need = meters_file_size_bound(count);

		if (need > avail) {
			say(rep,
			    "meterCount=%llu needs up to %.1f MiB but "
			    "only %.1f MiB are free in %s",
			    (unsigned long long)count, (double)need / (1 << 20),
			    (double)avail / (1 << 20), dir);
			return -EFBIG;
		}
	}
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", dir, base) >=
	    (int)sizeof(tmp)) {
		say(rep, "data file path too long");
		return -ENAMETOOLONG;
	}
	buf = heap_malloc(&lease, WRITE_BUF_BYTES);
	if (!buf) {
		err = out_of_memory(&lease, "meters_generate", 0, rep);
		goto out;
	}
	/* A unique name per request: concurrent generations never share a
	 * file, and the last rename wins. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		say(rep, "cannot create a temporary file in %s: %s", dir,
		    strerror(errno));
		goto out;
	}
	if (fchmod(fd, 0644) < 0) {
		err = -errno;
		say(rep, "fchmod %s: %s", tmp, strerror(errno));
		goto out_unlink;
	}
	err = generate_body(fd, count, seed, buf, rep);
	if (err == -ECANCELED) {
		say(rep,
		    "shutting down: generation stopped after %llu readings",
		    (unsigned long long)rep->readings);
		goto out_unlink;
	}
	if (err < 0) {
		say(rep, "writing %s: %s", tmp, strerror(-err));
		/* A file size limit met while writing is a storage failure,
		 * not the request's fault like the -EFBIG checked above. */
		if (err == -EFBIG)
			err = -ENOSPC;
		goto out_unlink;
	}
	/* Durable before visible: a crash never leaves a short file under
	 * the real name. */
	err = fdatasync(fd) < 0 ? -errno : 0;
	if (close(fd) < 0 && err == 0)
		err = -errno;
	fd = -1;
	if (err < 0) {
		say(rep, "writing %s: %s", tmp, strerror(-err));
		goto out_unlink;
	}
	if (rename(tmp, path) < 0) {
		err = -errno;
		say(rep, "renaming %s to %s: %s", tmp, path, strerror(errno));
		goto out_unlink;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd); /* best effort: the data is already safe */
		close(dfd);
	}
	err = 0;
	goto out;

out_unlink:
	if (fd >= 0)
		close(fd);
	fd = -1;
	unlink(tmp);
out:
	if (fd >= 0)
		close(fd);
	heap_free(&lease, buf);
	heap_release(&lease);
	return err;
}

/* ---- reading the CSV --------------------------------------------------- */

/* Line reader over one open file and one fixed buffer. */
struct csv_reader {
	int fd;
	char *buf; /* READ_BUF_BYTES, charged to the request */
	size_t len;
	size_t pos;
	bool eof;
	uint64_t line; /* number of the line last returned */
};

static void report_line(struct meters_report *rep, uint64_t line,
			const char *why, const char *text, size_t len)
{
	char excerpt[48];
	size_t n = len < sizeof(excerpt) - 1 ? len : sizeof(excerpt) - 1;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)text[i];

		excerpt[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	excerpt[n] = '\0';
	rep->line = line;
	say(rep, "line %llu: %s: \"%s%s\"", (unsigned long long)line, why,
	    excerpt, len > n ? "..." : "");
}

/* Returns 1 and the next line (without '\n'), 0 at end of file, or a
 * negative errno (-EBADMSG for a line longer than the buffer). */
static int reader_next(struct csv_reader *r, const char **line, size_t *len,
		       struct meters_report *rep)
{
	for (;;) {
		char *start = r->buf + r->pos;
		size_t avail = r->len - r->pos;
		char *nl = memchr(start, '\n', avail);
		ssize_t n;

		if (nl) {
			*line = start;
			*len = (size_t)(nl - start);
			r->pos += *len + 1;
			r->line++;
			return 1;
		}
		if (r->eof) {
			if (!avail)
				return 0;
			*line = start;
			*len = avail;
			r->pos = r->len;
			r->line++;
			return 1;
		}
		if (avail == READ_BUF_BYTES) {
			report_line(rep, r->line + 1, "line too long", start,
				    avail);
			return -EBADMSG;
		}
		memmove(r->buf, start, avail);
		r->len = avail;
		r->pos = 0;
		n = read(r->fd, r->buf + r->len, READ_BUF_BYTES - r->len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			say(rep, "reading line %llu: %s",
			    (unsigned long long)r->line + 1, strerror(errno));
			return -errno;
		}
		if (n == 0)
			r->eof = true;
		r->len += (size_t)n;
	}
}

static inline bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Parses "meter_id,kwh" (a trailing '\r' allowed). Returns NULL, or why
 * the line is malformed. kwh is exact: at most three decimals. */
static const char *parse_reading(const char *s, size_t n, uint64_t *meter,
				 int64_t *milli)
{
	static const int64_t scale[4] = {1000, 100, 10, 1};
	const char *p = s, *end, *d0;
	uint64_t id = 0;
	int64_t whole = 0, frac = 0;
	int decimals = 0;

	if (n && s[n - 1] == '\r')
		n--;
	end = s + n;
	if (p == end)
		return "empty line";
	for (d0 = p; p < end && is_digit(*p); p++) {
		if (p - d0 >= 19)
			return "meter_id is too long";
		id = id * 10 + (uint64_t)(*p - '0');
	}
	if (p == d0)
		return "meter_id is not a non-negative integer";
	if (p == end)
		return "expected meter_id,kwh";
	if (*p != ',')
		return "meter_id is not a non-negative integer";
	p++;
	for (d0 = p; p < end && is_digit(*p); p++) {
		if (p - d0 >= 12)
			return "kwh is too large";
		whole = whole * 10 + (*p - '0');
	}
	if (p == d0)
		return p == end ? "kwh is missing"
				: "kwh is not a non-negative decimal number";
	if (p < end && *p == '.') {
		for (p++; p < end && is_digit(*p); p++) {
			if (decimals == 3)
				return "kwh has more than 3 decimals";
			frac = frac * 10 + (*p - '0');
			decimals++;
		}
		if (!decimals)
			return "kwh is not a non-negative decimal number";
	}
	if (p != end)
		return *p == ',' ? "too many fields (expected meter_id,kwh)"
				 : "kwh is not a non-negative decimal number";
	*meter = id;
	*milli = whole * 1000 + frac * scale[decimals];
	return NULL;
}

/* Opens path for one sum, takes the read buffer and checks the header.
 * The file is opened exactly once: a generation renaming a new file over
 * it meanwhile does not change what this sum reads. */
static int reader_open(struct csv_reader *r, struct heap_lease *l,
		       const char *path, const char *who,
		       struct meters_report *rep)
{
	static const char bom[3] = {'\xef', '\xbb', '\xbf'};
	const char *line;
	size_t len;
	int err;

	memset(r, 0, sizeof(*r));
	r->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0) {
		err = -errno;
		if (err == -ENOENT)
			say(rep,
			    "no readings at %s: POST "
			    "/smartMeters/randomSmartMeterValues first",
			    path);
		else
			say(rep, "cannot open %s: %s", path, strerror(errno));
		return err;
	}
	posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	r->buf = heap_malloc(l, READ_BUF_BYTES);
	if (!r->buf)
		return out_of_memory(l, who, 0, rep);
	err = reader_next(r, &line, &len, rep);
	if (err < 0)
		return err;
	if (err == 0) {
		report_line(rep, 1, "empty file, expected the header",
			    METERS_CSV_HEADER, sizeof(METERS_CSV_HEADER) - 1);
		return -EBADMSG;
	}
	if (len >= 3 && !memcmp(line, bom, 3)) {
		line += 3;
		len -= 3;
	}
	if (len && line[len - 1] == '\r')
		len--;
	if (len != sizeof(METERS_CSV_HEADER) - 1 ||
	    memcmp(line, METERS_CSV_HEADER, len)) {
		report_line(rep, 1, "expected the header " METERS_CSV_HEADER,
			    line, len);
		return -EBADMSG;
	}
	return 0;
}

static void reader_close(struct csv_reader *r, struct heap_lease *l)
{
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
	heap_free(l, r->buf);
	r->buf = NULL;
}

static int overflow(struct meters_report *rep, uint64_t line)
{
	rep->line = line;
	say(rep, "line %llu: the sum overflows 64-bit milli-kWh",
	    (unsigned long long)line);
	return -EOVERFLOW;
}

/* ---- the naive sum ------------------------------------------------------ */

/* One reading as a heap object, like the Java SmartMeterValue: 32 bytes,
 * a 48-byte glibc chunk, plus its slot in the pointer array. */
struct reading {
	uint64_t meter_id;
	int64_t milli_kwh;
	int64_t loaded_at_ms; /* wall clock when the file was loaded */
	uint64_t line;	      /* source line, for error messages */
};

/* The growing List<SmartMeterValue>: an array of pointers that doubles. */
struct readings {
	struct reading **items;
	size_t count;
	size_t capacity;
};

/* These functions are deliberately never inlined or cloned: the demo's
 * heap and CPU profiles must name them. */
#define PROFILED __attribute__((noinline, noclone))

static PROFILED struct reading *reading_new(struct heap_lease *l,
					    uint64_t meter_id, int64_t milli,
					    int64_t at_ms, uint64_t line)
{
	struct reading *r = heap_malloc(l, sizeof(*r));

	if (!r)
		return NULL;
	r->meter_id = meter_id;
	r->milli_kwh = milli;
	r->loaded_at_ms = at_ms;
	r->line = line;
	return r;
}

static PROFILED int grow_readings(struct heap_lease *l, struct readings *rs)
{
	size_t capacity = rs->capacity ? rs->capacity * 2 : 1024;
	struct reading **items;

	if (capacity > MAX_READINGS)
		return -E2BIG;
	items = heap_realloc(l, rs->items, capacity * sizeof(*items));
	if (!items)
		return -ENOMEM;
	rs->items = items;
	rs->capacity = capacity;
	return 0;
}

/* Loads every reading of the file into its own heap object. */
static PROFILED int load_readings(struct csv_reader *r, struct heap_lease *l,
				  struct readings *rs,
				  struct meters_report *rep)
{
	struct timespec now;
	int64_t at_ms;
	const char *line;
	size_t len;
	int err;

	clock_gettime(CLOCK_REALTIME, &now);
	at_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	while ((err = reader_next(r, &line, &len, rep)) == 1) {
		uint64_t meter;
		int64_t milli;
		const char *why = parse_reading(line, len, &meter, &milli);
		struct reading *reading;

		if (why) {
			report_line(rep, r->line, why, line, len);
			return -EBADMSG;
		}
		if (rs->count == rs->capacity) {
			err = grow_readings(l, rs);
			if (err == -E2BIG) {
				say(rep, "more than %llu readings",
				    MAX_READINGS);
				return -ENOMEM;
			}
			if (err < 0)
				return out_of_memory(l, "load_readings",
						     rs->count, rep);
		}
		reading = reading_new(l, meter, milli, at_ms, r->line);
		if (!reading)
			return out_of_memory(l, "load_readings", rs->count,
					     rep);
		rs->items[rs->count++] = reading;
		if (rs->count % CANCEL_EVERY == 0 && is_cancelled())
			return -ECANCELED;
	}
	rep->readings = rs->count;
	return err;
}

static PROFILED int sum_readings(const struct readings *rs,
				 struct meters_sum *out,
				 struct meters_report *rep)
{
	int64_t sum = 0;

	for (size_t i = 0; i < rs->count; i++)
		if (__builtin_add_overflow(sum, rs->items[i]->milli_kwh, &sum))
			return overflow(rep, rs->items[i]->line);
	out->milli_kwh = sum;
	out->readings = rs->count;
	return 0;
}

static PROFILED void free_readings(struct readings *rs)
{
	for (size_t i = 0; i < rs->count; i++)
		free(rs->items[i]);
	free(rs->items);
	rs->items = NULL;
	rs->count = 0;
	rs->capacity = 0;
}

static void report_cancel(struct meters_report *rep, uint64_t readings)
{
	say(rep, "shutting down: sum stopped after %llu readings",
	    (unsigned long long)readings);
}

int meters_sum_naive(const char *path, struct meters_sum *out,
		     struct meters_report *rep)
{
	struct heap_lease lease = {0};
	struct csv_reader reader;
	struct readings rs = {0};
	int err;

	memset(rep, 0, sizeof(*rep));
	err = reader_open(&reader, &lease, path, "load_readings", rep);
	if (err == 0)
		err = load_readings(&reader, &lease, &rs, rep);
	if (err == -ECANCELED)
		report_cancel(rep, rs.count);
	/* The file is done with before the reduction, as the original does. */
	reader_close(&reader, &lease);
	if (err == 0)
		err = sum_readings(&rs, out, rep);
	/* Objects are freed in bulk: the whole lease goes back at once. */
	free_readings(&rs);
	/* Give the pages back now. With the one arena main.c sets, glibc's
	 * free would mostly do it on its own; with a user's
	 * MALLOC_ARENA_MAX, millions of freed 48-byte chunks would stay in
	 * fastbins and the process would keep the memory. */
	if (lease.leased > TRIM_AFTER_BYTES)
		malloc_trim(0);
	heap_release(&lease);
	return err;
}

/* ---- the streaming sum -------------------------------------------------- */

static PROFILED int sum_stream(struct csv_reader *r, struct meters_sum *out,
			       struct meters_report *rep)
{
	const char *line;
	size_t len;
	int64_t sum = 0;
	uint64_t count = 0;
	int err;

	while ((err = reader_next(r, &line, &len, rep)) == 1) {
		uint64_t meter;
		int64_t milli;
		const char *why = parse_reading(line, len, &meter, &milli);

		if (why) {
			report_line(rep, r->line, why, line, len);
			return -EBADMSG;
		}
		if (__builtin_add_overflow(sum, milli, &sum))
			return overflow(rep, r->line);
		if (++count % CANCEL_EVERY == 0 && is_cancelled()) {
			report_cancel(rep, count);
			return -ECANCELED;
		}
	}
	rep->readings = count;
	if (err < 0)
		return err;
	out->milli_kwh = sum;
	out->readings = count;
	return 0;
}

int meters_sum_streaming(const char *path, struct meters_sum *out,
			 struct meters_report *rep)
{
	struct heap_lease lease = {0};
	struct csv_reader reader;
	int err;

	memset(rep, 0, sizeof(*rep));
	err = reader_open(&reader, &lease, path, "meters_sum_streaming", rep);
	if (err == 0)
		err = sum_stream(&reader, out, rep);
	reader_close(&reader, &lease);
	heap_release(&lease);
	return err;
}
