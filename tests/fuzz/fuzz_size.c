/* Fuzz target: pa_config_parse_size (PYROSCOPE_PROFILER_ALLOC, the spool and
 * memory limits): any bytes, checked against properties of the grammar. */

#include "config.h"
#include "fuzz.h"

/* -1 refused, else the size. */
static int64_t ref_size(const char *s)
{
	const char *p = s;
	struct ref_dec d;
	if (!ref_decimal(&p, &d))
		return -1;
	int shift = 0;
	const char *u = strchr("kmgt", ref_lower(*p));
	if (*p && u) {
		shift = 10 * (int)(u - "kmgt" + 1);
		p++;
		if (ref_lower(p[0]) == 'i' && ref_lower(p[1]) == 'b')
			p += 2;
		else if (ref_lower(p[0]) == 'b')
			p++;
	} else if (ref_lower(*p) == 'b') {
		p++;
	}
	if (*p || (d.frac && !shift))
		return -1;
	unsigned __int128 v =
	    (d.ip << shift) + ((unsigned __int128)d.fp << shift) / d.scale;
	return v > INT64_MAX ? -1 : (int64_t)v;
}

static int parse(const char *s, int64_t *bytes)
{
	int64_t v = SENTINEL;
	int rc = pa_config_parse_size(s, &v);
	FZ_CHECK(rc == 0 || rc == -EINVAL);
	if (rc)
		FZ_CHECK(v == SENTINEL); /* nothing written on error */
	else
		FZ_CHECK(v >= 0);
	*bytes = v;
	return rc;
}

static void expect(const char *s, int64_t want)
{
	int64_t got;
	FZ_CHECK(parse(s, &got) == 0);
	FZ_CHECK(got == want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fz_cstr(data, size);
	size_t len = strlen(s);
	int64_t b;
	int rc = parse(s, &b);
	int64_t want = ref_size(s);
	FZ_CHECK(want < 0 ? rc == -EINVAL : rc == 0 && b == want);

	char *up = fz_upper(s, len);
	int64_t b_up;
	FZ_CHECK(parse(up, &b_up) == rc);
	if (rc == 0)
		FZ_CHECK(b_up == b);
	free(up);

	/* Digits only: bytes. */
	if (len && len <= 18 && strspn(s, "0123456789") == len)
		FZ_CHECK(rc == 0 && b == strtoll(s, NULL, 10));
	/* A fraction needs a unit other than bytes. */
	if (memchr(s, '.', len)) {
		size_t e = len;
		if ((s[e - 1] | 0x20) == 'b')
			e--;
		if (e == 0 || strchr("0123456789.", s[e - 1]))
			FZ_CHECK(rc == -EINVAL);
	}

	if (rc == 0) {
		char buf[64];
		snprintf(buf, sizeof(buf), "%lld", (long long)b);
		expect(buf, b);
		snprintf(buf, sizeof(buf), "%lldB", (long long)b);
		expect(buf, b);
		static const char *const units[] = {"k", "m", "g", "t"};
		for (int i = 0; i < 4; i++) {
			int shift = 10 * (i + 1);
			long long q = b >> shift, r = b & ((1LL << shift) - 1);
			/* Whole units. */
			snprintf(buf, sizeof(buf), "%lld%s", q, units[i]);
			expect(buf, q << shift);
			snprintf(buf, sizeof(buf), "%lld%siB", q, units[i]);
			expect(buf, q << shift);
			/* The remainder as an exact decimal fraction of a
			 * KiB: r/1024 = r * 5^10 / 10^10. */
			if (shift == 10) {
				snprintf(buf, sizeof(buf), "%lld.%010lld%s", q,
					 r * 9765625, units[i]);
				expect(buf, b);
			}
			/* Above INT64_MAX: refused, never wrapped. */
			{
				uint64_t big =
				    ((uint64_t)INT64_MAX >> shift) + 1;
				snprintf(buf, sizeof(buf), "%llu%s",
					 (unsigned long long)big, units[i]);
				int64_t x;
				FZ_CHECK(parse(buf, &x) == -EINVAL);
			}
		}
	}
	free(s);
	return 0;
}
