/* Shared by the fuzz targets of the two "name/value list" parsers
 * (pa_config_parse_labels, pa_config_parse_headers), which take the same
 * arguments: a call into exact-size buffers shaped by the input, and the
 * checks every such call must pass. */
#ifndef PA_FUZZ_PAIRS_H
#define PA_FUZZ_PAIRS_H

#include "config.h"
#include "fuzz.h"

typedef int (*fz_pairs_parser)(const char *s, struct pa_label *out, int max,
			       int *n, char *buf, size_t cap);

/* One call's buffers and results; fz_pairs_free releases them. */
struct fz_pairs {
	int rc, n, max;
	size_t cap;
	char *buf;
	struct pa_label *out;
};

static inline bool fz_pairs_same(const struct pa_label *a, int na,
				 const struct pa_label *b, int nb)
{
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++)
		if (strcmp(a[i].name, b[i].name) ||
		    strcmp(a[i].value, b[i].value))
			return false;
	return true;
}

/* Calls parse on s with room for max pairs and a string buffer whose size
 * mode picks (enough, mode >> 2 bytes, none, half), both allocated to the
 * exact size so that ASan sees any write past them. A refusal must be
 * -EINVAL and must write nothing: not n, not a byte of either buffer. */
static inline struct fz_pairs
fz_pairs_call(fz_pairs_parser parse, const char *s, int max, unsigned mode)
{
	size_t len = strlen(s);
	struct fz_pairs r = {.n = -77, .max = max};
	r.cap = (mode & 3) == 0	  ? len + 1
		: (mode & 3) == 1 ? (mode >> 2)
		: (mode & 3) == 2 ? 0
				  : len / 2 + 1;
	size_t osz = (size_t)max * sizeof(struct pa_label);
	r.buf = r.cap ? malloc(r.cap) : NULL;
	r.out = max ? malloc(osz) : NULL;
	char *buf0 = r.cap ? malloc(r.cap) : NULL;
	struct pa_label *out0 = max ? malloc(osz) : NULL;
	if ((r.cap && (!r.buf || !buf0)) || (max && (!r.out || !out0)))
		abort();
	if (r.cap)
		memset(r.buf, 0xa5, r.cap), memcpy(buf0, r.buf, r.cap);
	if (max)
		memset(r.out, 0x5a, osz), memcpy(out0, r.out, osz);
	r.rc = parse(s, r.out, max, &r.n, r.buf, r.cap);
	FZ_CHECK(r.rc == 0 || r.rc == -EINVAL);
	if (r.rc) {
		FZ_CHECK(r.n == -77);
		FZ_CHECK(!r.cap || memcmp(r.buf, buf0, r.cap) == 0);
		FZ_CHECK(!max || memcmp(r.out, out0, osz) == 0);
	}
	free(buf0);
	free(out0);
	return r;
}

static inline void fz_pairs_free(struct fz_pairs *r)
{
	free(r->buf);
	free(r->out);
}

#endif
