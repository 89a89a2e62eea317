/* Fuzz target: pa_config_label_name_ok against an independent reference of
 * Pyroscope's label-name rule and the agent's reserved names. */
#include "config.h"
#include "fuzz.h"

static bool reference(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PA_LABEL_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  c == '_' || c == '.' ||
			  (i > 0 && c >= '0' && c <= '9');
		if (!ok)
			return false;
	}
	if (strncmp(s, "__", 2) == 0 || strcmp(s, "service_name") == 0)
		return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fz_cstr(data, size);
	FZ_CHECK(pa_config_label_name_ok(s) == reference(s));
	free(s);
	return 0;
}
