/* Signal-safe log writer (placeholder until the config/log module lands). */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

int pa_log_level = PA_LOG_INFO;

void pa_log_vwrite(int level, const char *fmt, va_list ap)
{
	(void)level;
	char buf[1024];
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	if (n > 0)
		(void)!write(2, buf, (size_t)n);
}

void pa_log_write(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pa_log_vwrite(level, fmt, ap);
	va_end(ap);
}
