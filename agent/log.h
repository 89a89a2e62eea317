/* Signal-safe logging to stderr: format into a stack buffer, one write(2). */
#ifndef PA_LOG_H
#define PA_LOG_H

#include <stdarg.h>

enum pa_log_level { PA_LOG_DEBUG = 0, PA_LOG_INFO, PA_LOG_WARN, PA_LOG_ERROR };

/* Current threshold; set once from PYROSCOPE_LOG_LEVEL. */
extern int pa_log_level;

/* Writes "pyroagent[pid]: <level>: <message>\n" with one write(2).
 * Async-signal-safe: its own formatter (no malloc, no stdio) understands
 * %s %.*s %c %d %i %u %x %p %% with the l/ll/z modifiers. Lines are cut at
 * 1 KiB. Never pass a secret. */
void pa_log_write(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pa_log_vwrite(int level, const char *fmt, va_list ap);

/* The same formatter into a caller's buffer; always NUL-terminates;
 * returns the length written. */
int pa_log_format(char *buf, int cap, const char *fmt, va_list ap);

#define PA_LOG(level, ...)                                                     \
	do {                                                                   \
		if ((level) >= pa_log_level)                                   \
			pa_log_write((level), __VA_ARGS__);                    \
	} while (0)
#define pa_debug(...) PA_LOG(PA_LOG_DEBUG, __VA_ARGS__)
#define pa_info(...)  PA_LOG(PA_LOG_INFO, __VA_ARGS__)
#define pa_warn(...)  PA_LOG(PA_LOG_WARN, __VA_ARGS__)
#define pa_error(...) PA_LOG(PA_LOG_ERROR, __VA_ARGS__)

/* One line per failure kind, not per occurrence: logs only the first time
 * this call site runs. */
#define pa_log_once(level, ...)                                                \
	do {                                                                   \
		static int pa_once_;                                           \
		if (!__atomic_exchange_n(&pa_once_, 1, __ATOMIC_RELAXED))      \
			PA_LOG(level, __VA_ARGS__);                            \
	} while (0)

#endif
