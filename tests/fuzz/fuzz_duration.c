/* Fuzz target: pa_config_parse_duration (PYROSCOPE_UPLOAD_INTERVAL and the
 * other durations): any bytes, checked against properties of the grammar. */
#include <ctype.h>

#include "config.h"
#include "fuzz.h"

/* The unit at p: its length (0: none) and *ns. */
static size_t ref_unit(const char *p, int64_t *ns)
{
	static const struct {
		const char *text;
		int64_t ns;
	} units[] = {{"ns", 1},
		     {"us", 1000},
		     {"\xc2\xb5s", 1000},
		     {"\xce\xbcs", 1000},
		     {"ms", 1000000},
		     {"s", 1000000000LL},
		     {"m", 60000000000LL},
		     {"h", 3600000000000LL}};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		size_t n = strlen(units[i].text), k = 0;
		while (k < n && ref_lower(p[k]) == units[i].text[k])
			k++;
		if (k == n) {
			*ns = units[i].ns;
			return n;
		}
	}
	return 0;
}

/* -1 refused, else the duration: <decimal><unit>..., or one bare decimal
 * of seconds. */
static int64_t ref_duration(const char *s)
{
	const char *p = s;
	unsigned __int128 total = 0;
	if (!*p)
		return -1;
	for (bool first = true; *p; first = false) {
		struct ref_dec d;
		if (!ref_decimal(&p, &d))
			return -1;
		int64_t unit;
		size_t n = ref_unit(p, &unit);
		if (!n) {
			if (*p || !first)
				return -1;
			unit = 1000000000LL;
		}
		p += n;
		total += d.ip * (uint64_t)unit +
			 (unsigned __int128)d.fp * (uint64_t)unit / d.scale;
		if (total > INT64_MAX)
			return -1;
	}
	return (int64_t)total;
}

/* Parses s; FZ_CHECKs the contract common to every call. */
static int parse(const char *s, int64_t *ns)
{
	int64_t v = SENTINEL;
	int rc = pa_config_parse_duration(s, &v);
	FZ_CHECK(rc == 0 || rc == -EINVAL);
	if (rc)
		FZ_CHECK(v == SENTINEL); /* nothing written on error */
	else
		FZ_CHECK(v >= 0);
	*ns = v;
	return rc;
}

static void expect(const char *s, int64_t want)
{
	int64_t got;
	FZ_CHECK(parse(s, &got) == 0);
	FZ_CHECK(got == want);
}

static bool unit_end(const char *s, size_t k)
{
	/* s[k - 1] ends a unit: s (seconds, also ms/us/ns), m, h. */
	char c = (char)tolower((unsigned char)s[k - 1]);
	return c == 's' || c == 'm' || c == 'h';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fz_cstr(data, size);
	size_t len = strlen(s);
	int64_t ns;
	int rc = parse(s, &ns);
	int64_t want = ref_duration(s);
	FZ_CHECK(want < 0 ? rc == -EINVAL : rc == 0 && ns == want);

	/* Units are case-insensitive (the micro sign has no case here). */
	char *up = fz_upper(s, len);
	int64_t ns_up;
	FZ_CHECK(parse(up, &ns_up) == rc);
	if (rc == 0)
		FZ_CHECK(ns_up == ns);
	free(up);

	/* Digits only: a bare number of seconds. */
	if (len && len <= 18 && strspn(s, "0123456789") == len) {
		int64_t secs = strtoll(s, NULL, 10);
		if (secs <= INT64_MAX / 1000000000LL)
			FZ_CHECK(rc == 0 && ns == secs * 1000000000LL);
		else
			FZ_CHECK(rc == -EINVAL);
	}

	if (rc == 0) {
		/* What was read is written back in several forms. */
		char buf[80];
		long long v = ns;
		snprintf(buf, sizeof(buf), "%lldns", v);
		expect(buf, ns);
		snprintf(buf, sizeof(buf), "%lld.%09llds", v / 1000000000LL,
			 v % 1000000000LL);
		expect(buf, ns);
		snprintf(buf, sizeof(buf),
			 "%lldh%lldm%llds%lldms%lld\xc2\xb5s%lldns",
			 v / 3600000000000LL, v / 60000000000LL % 60,
			 v / 1000000000LL % 60, v / 1000000LL % 1000,
			 v / 1000LL % 1000, v % 1000);
		expect(buf, ns);

		/* Terms add up: s = A B at a unit boundary, both with units. */
		for (size_t k = 1; k + 1 < len; k++) {
			if (!unit_end(s, k) ||
			    !(isdigit((unsigned char)s[k]) || s[k] == '.') ||
			    !unit_end(s, len))
				continue;
			char *a = fz_cstr((const uint8_t *)s, k);
			int64_t na, nb;
			if (parse(a, &na) == 0 && parse(s + k, &nb) == 0)
				FZ_CHECK(na <= ns && na + nb == ns);
			free(a);
		}
	}
	free(s);
	return 0;
}
