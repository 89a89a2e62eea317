/* Fuzz target: pa_config_parse_bool against an independent reference. */
#include <strings.h>

#include "config.h"
#include "fuzz.h"

/* Equal under ASCII case folding (no locale). */
static bool fold_eq(const char *a, const char *b)
{
	for (;; a++, b++) {
		char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
		char y = *b >= 'A' && *b <= 'Z' ? (char)(*b + 32) : *b;
		if (x != y)
			return false;
		if (!x)
			return true;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fz_cstr(data, size);
	static const char *const yes[] = {"true", "1", "yes", "on"};
	static const char *const no[] = {"false", "0", "no", "off"};
	int want = -1;
	for (int i = 0; i < 4 && want < 0; i++) {
		if (fold_eq(s, yes[i]))
			want = 1;
		else if (fold_eq(s, no[i]))
			want = 0;
	}
	for (int start = 0; start < 2; start++) {
		bool b = start;
		int rc = pa_config_parse_bool(s, &b);
		FZ_CHECK(rc == 0 || rc == -EINVAL);
		if (want < 0)
			FZ_CHECK(rc == -EINVAL && b == (bool)start);
		else
			FZ_CHECK(rc == 0 && b == (bool)want);
	}
	free(s);
	return 0;
}
