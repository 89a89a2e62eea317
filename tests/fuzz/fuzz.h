/* Shared helpers for the fuzz targets: input slicing, invariant checks that
 * crash loudly, stderr capture, and an independent UTF-8 checker. */
#ifndef PA_FUZZ_H
#define PA_FUZZ_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The libFuzzer entry points (replay.c calls them the same way). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Sanitizer runtime hook, present only in sanitized builds. */
void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

/* The real stderr while fd 2 is captured (see fz_capture_begin). */
static int fz_stderr_fd = -1;
static int fz_mem_fd = -1;

/* A broken invariant: say which, then abort so that libFuzzer keeps the
 * input as a crash and the replay driver names the file. */
#define FZ_CHECK(cond)                                                         \
	do {                                                                   \
		if (!(cond))                                                   \
			fz_fail(__FILE__, __LINE__, #cond);                    \
	} while (0)

static inline void fz_fail(const char *file, int line, const char *what)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "fuzz invariant failed: %s:%d: %s\n",
			 file, line, what);
	/* fd 2 may be captured: the saved fd is the real stderr. */
	if (n > 0)
		(void)!write(fz_stderr_fd >= 0 ? fz_stderr_fd : 2, buf,
			     (size_t)n < sizeof(buf) ? (size_t)n
						     : sizeof(buf) - 1);
	abort();
}

/* A NUL-terminated copy of the input, allocated to its exact size so
 * that ASan catches a read past the terminator. Owned by the caller. */
static inline char *fz_cstr(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		abort();
	if (size)
		memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

/* An ASCII upper-case copy of s (len bytes), owned by the caller: for
 * checking that a parser ignores case. */
static inline char *fz_upper(const char *s, size_t len)
{
	char *up = fz_cstr((const uint8_t *)s, len);
	for (size_t i = 0; i < len; i++)
		if (up[i] >= 'a' && up[i] <= 'z')
			up[i] = (char)(up[i] - 32);
	return up;
}

/* p is a NUL-terminated string inside buf[0..cap): what a parser that
 * writes into a caller's buffer may hand back. */
static inline bool fz_inside(const char *p, const char *buf, size_t cap)
{
	return buf && p >= buf && p < buf + cap &&
	       memchr(p, 0, cap - (size_t)(p - buf));
}

/* A cursor over the input for structured targets. */
struct fz_in {
	const uint8_t *p;
	size_t n;
};

static inline uint8_t fz_u8(struct fz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static inline uint64_t fz_uint(struct fz_in *in, int bytes)
{
	uint64_t v = 0;
	for (int i = 0; i < bytes; i++)
		v |= (uint64_t)fz_u8(in) << (8 * i);
	return v;
}

/* The next piece: up to the next byte 0xff separator (not included), or
 * the rest. Returns a malloc'd NUL-terminated copy (owned by the caller)
 * of exactly that size; *len gets the length. */
static inline char *fz_piece(struct fz_in *in, size_t *len)
{
	const uint8_t *sep = in->n ? memchr(in->p, 0xff, in->n) : NULL;
	size_t n = sep ? (size_t)(sep - in->p) : in->n;
	char *s = fz_cstr(in->p, n);
	in->p += n + (sep ? 1 : 0);
	in->n -= n + (sep ? 1 : 0);
	if (len)
		*len = n;
	return s;
}

/* Well-formed UTF-8 (no overlongs, surrogates or code points past
 * U+10FFFF), written apart from the agent's own checkers. */
static inline bool fz_utf8_ok(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		int k;
		uint32_t cp, min;
		if ((c & 0xe0) == 0xc0)
			k = 1, cp = c & 0x1f, min = 0x80;
		else if ((c & 0xf0) == 0xe0)
			k = 2, cp = c & 0x0f, min = 0x800;
		else if ((c & 0xf8) == 0xf0)
			k = 3, cp = c & 0x07, min = 0x10000;
		else
			return false;
		if (n - i <= (size_t)k)
			return false;
		for (int j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += (size_t)k + 1;
	}
	return true;
}

static inline bool fz_contains(const char *hay, size_t n, const char *needle)
{
	size_t k = strlen(needle);
	return k && memmem(hay, n, needle, k) != NULL;
}

/* ---- reference grammar for the number parsers ---------------------------
 * Shared by the duration and size targets. */

/* What a parser must leave untouched when it refuses its input. */
#define SENTINEL ((int64_t)0x5a5a5a5a5a5a5a5aLL)

/* The grammar written apart from config.c: digits[.digits] (one digit at
 * least; an integer part past UINT64_MAX is refused; fraction digits past
 * the 18th are dropped, as documented). */
struct ref_dec {
	unsigned __int128 ip;
	uint64_t fp, scale;
	bool frac;
};

static inline bool ref_decimal(const char **pp, struct ref_dec *d)
{
	const char *p = *pp;
	bool digits = false;
	*d = (struct ref_dec){0, 0, 1, false};
	while (*p >= '0' && *p <= '9') {
		d->ip = d->ip * 10 + (unsigned)(*p++ - '0');
		if (d->ip > UINT64_MAX)
			return false;
		digits = true;
	}
	if (*p == '.') {
		d->frac = true;
		for (p++; *p >= '0' && *p <= '9'; p++) {
			if (d->scale < 1000000000000000000ULL) {
				d->fp = d->fp * 10 + (uint64_t)(*p - '0');
				d->scale *= 10;
			}
			digits = true;
		}
	}
	*pp = p;
	return digits;
}

static inline char ref_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* ---- stderr capture ------------------------------------------------------
 * The agent logs with write(2) on fd 2. A target that checks what is
 * logged points fd 2 at a memory file for the call; crash reports still
 * reach the real stderr (fz_stderr_fd, and the sanitizers' report fd). */

static inline void fz_capture_init(void)
{
	if (fz_stderr_fd >= 0)
		return;
	fz_stderr_fd = dup(2);
	fz_mem_fd = memfd_create("fuzz-stderr", MFD_CLOEXEC);
	if (fz_stderr_fd < 0 || fz_mem_fd < 0)
		abort();
	if (__sanitizer_set_report_fd)
		__sanitizer_set_report_fd((void *)(intptr_t)fz_stderr_fd);
}

static inline void fz_capture_begin(void)
{
	fz_capture_init();
	if (ftruncate(fz_mem_fd, 0) != 0 ||
	    lseek(fz_mem_fd, 0, SEEK_SET) != 0 || dup2(fz_mem_fd, 2) < 0)
		abort();
}

/* Restores fd 2; returns what was written (NUL-terminated, at most cap - 1
 * bytes kept) and its full length. */
static inline size_t fz_capture_end(char *buf, size_t cap)
{
	if (dup2(fz_stderr_fd, 2) < 0)
		abort();
	off_t len = lseek(fz_mem_fd, 0, SEEK_END);
	if (len < 0)
		abort();
	size_t want = (size_t)len < cap - 1 ? (size_t)len : cap - 1;
	ssize_t got = pread(fz_mem_fd, buf, want, 0);
	buf[got > 0 ? (size_t)got : 0] = '\0';
	return (size_t)len;
}

#endif
