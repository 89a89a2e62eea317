/* The signal-safe log writer: its formatter, escaping, cuts, the one line. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "unit.h"

static char out[2048];

__attribute__((format(printf, 2, 3))) static const char *fmt(int cap,
							     const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	memset(out, 'Z', sizeof(out));
	int n = pa_log_format(out, cap, f, ap);
	va_end(ap);
	if (cap > 0 && (n < 0 || n >= cap || out[n] != '\0'))
		FAIL("pa_log_format returned %d for cap %d", n, cap);
	if (cap > 0 && (int)strlen(out) != n)
		FAIL("length %d but strlen %zu", n, strlen(out));
	return out;
}

#define BIG ((int)sizeof(out))

/* The same without the compiler's format check, for formats it rejects
 * on purpose (unknown conversions, a NULL %s). */
static const char *fmt_nocheck(int cap, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = pa_log_format(out, cap, f, ap);
	va_end(ap);
	CHECK((int)strlen(out) == n);
	return out;
}

__attribute__((format(printf, 3, 4))) static int fmt_into(char *buf, int cap,
							  const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = pa_log_format(buf, cap, f, ap);
	va_end(ap);
	return n;
}

TEST(log_format_conversions)
{
	CHECK_EQ_STR(fmt(BIG, "a%sb", "xyz"), "axyzb");
	CHECK_EQ_STR(fmt(BIG, "%.*s|", 3, "abcdef"), "abc|");
	CHECK_EQ_STR(fmt(BIG, "%c%c", 'o', 'k'), "ok");
	CHECK_EQ_STR(fmt(BIG, "%d %i %d", 42, -7, 0), "42 -7 0");
	CHECK_EQ_STR(fmt(BIG, "%d %d", INT_MAX, INT_MIN),
		     "2147483647 -2147483648");
	CHECK_EQ_STR(fmt(BIG, "%u %x %X", 4000000000u, 0xbeefu, 0xbeefu),
		     "4000000000 beef BEEF");
	CHECK_EQ_STR(fmt(BIG, "%ld %lu %lx", -5L, 5UL, 255UL), "-5 5 ff");
	CHECK_EQ_STR(fmt(BIG, "%lld %llu", (long long)INT64_MIN,
			 (unsigned long long)UINT64_MAX),
		     "-9223372036854775808 18446744073709551615");
	CHECK_EQ_STR(
	    fmt(BIG, "%zu %zd %zx", (size_t)123, (ssize_t)-4, (size_t)0x10),
	    "123 -4 10");
	CHECK_EQ_STR(
	    fmt(BIG, "%hhd %hu", (signed char)-1, (unsigned short)65535),
	    "-1 65535");
	CHECK_EQ_STR(fmt(BIG, "%p", (void *)0x1234), "0x1234");
	CHECK_EQ_STR(fmt(BIG, "100%%"), "100%");
	CHECK_EQ_STR(fmt(BIG, "%s", ""), "");
	CHECK_EQ_STR(fmt(BIG, "plain"), "plain");
}

TEST(log_format_width_and_flags)
{
	CHECK_EQ_STR(fmt(BIG, "%08x", 0xabcu), "00000abc");
	CHECK_EQ_STR(fmt(BIG, "%5d|%-5d|", 42, 42), "   42|42   |");
	CHECK_EQ_STR(fmt(BIG, "%05d", -42), "-0042");
	CHECK_EQ_STR(fmt(BIG, "%+d % d", 3, 3), "+3  3");
	CHECK_EQ_STR(fmt(BIG, "%#x %#x", 255u, 0u), "0xff 0");
	CHECK_EQ_STR(fmt(BIG, "%.3d|%.0d|", 7, 0), "007||");
	CHECK_EQ_STR(fmt(BIG, "%6s|%-6s|", "ab", "ab"), "    ab|ab    |");
	CHECK_EQ_STR(fmt(BIG, "%*d|%-*d|", 4, 1, 4, 1), "   1|1   |");
	CHECK_EQ_STR(fmt(BIG, "%*d|", -3, 1), "1  |");
	CHECK_EQ_STR(fmt(BIG, "%016llx", 0x1ULL), "0000000000000001");
	/* Widths are capped: no huge padding, no overflow. */
	const char *s = fmt(BIG, "%99999d", 1);
	CHECK(strlen(s) == 1024);
}

TEST(log_format_null_and_nil)
{
	CHECK_EQ_STR(fmt_nocheck(BIG, "%s", (char *)NULL), "(null)");
	CHECK_EQ_STR(fmt(BIG, "[%p]", (void *)NULL), "[(nil)]");
}

TEST(log_format_precision_never_reads_past)
{
	/* Not NUL-terminated: %.*s must stop at the precision. */
	char raw[4] = {'a', 'b', 'c', 'd'};
	CHECK_EQ_STR(fmt(BIG, "%.*s", 4, raw), "abcd");
	CHECK_EQ_STR(fmt(BIG, "%.2s", "abcdef"), "ab");
	/* A cut inside a UTF-8 sequence shows the partial bytes escaped. */
	CHECK_EQ_STR(fmt(BIG, "%.*s", 1, "\xc3\xa9"), "\\xc3");
}

TEST(log_format_escapes_untrusted_text)
{
	CHECK_EQ_STR(fmt(BIG, "%s", "a\nb\rc\td"), "a\\nb\\rc\\td");
	CHECK_EQ_STR(fmt(BIG, "%s", "\x01\x1f\x7f"), "\\x01\\x1f\\x7f");
	CHECK_EQ_STR(fmt(BIG, "%s", "\xff"), "\\xff");
	CHECK_EQ_STR(
	    fmt(BIG, "%s", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
	    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	/* Overlong, surrogate, truncated and out-of-range sequences. */
	CHECK_EQ_STR(fmt(BIG, "%s", "\xc0\xaf"), "\\xc0\\xaf");
	CHECK_EQ_STR(fmt(BIG, "%s", "\xe0\x80\xaf"), "\\xe0\\x80\\xaf");
	CHECK_EQ_STR(fmt(BIG, "%s", "\xf0\x8f\xbf\xbf"),
		     "\\xf0\\x8f\\xbf\\xbf");
	CHECK_EQ_STR(fmt(BIG, "%s", "\xed\xa0\x80"), "\\xed\\xa0\\x80");
	CHECK_EQ_STR(fmt(BIG, "%s", "\xe2\x82"), "\\xe2\\x82");
	CHECK_EQ_STR(fmt(BIG, "%s", "\xf4\x90\x80\x80"),
		     "\\xf4\\x90\\x80\\x80");
	/* C1 controls and line separators are escaped as code points. */
	CHECK_EQ_STR(fmt(BIG, "%s", "\xc2\x85|\xe2\x80\xa8"),
		     "\\u0085|\\u2028");
	CHECK_EQ_STR(fmt(BIG, "%c%c", '\n', 0xe9), "\\n\\xe9");
	/* The format's own text gets the same treatment. */
	CHECK_EQ_STR(fmt(BIG, "x\ny"), "x\\ny");
}

TEST(log_format_cuts_whole_units)
{
	CHECK_EQ_STR(fmt(10, "%s", "abcdefghijklmnop"), "abcdefghi");
	CHECK_EQ_STR(fmt(1, "%s", "abc"), "");
	/* é needs 2 bytes: only 1 left, so it is left out whole. */
	CHECK_EQ_STR(fmt(10, "aaaaaaaa%s", "\xc3\xa9"), "aaaaaaaa");
	/* An escape is never cut in half. */
	CHECK_EQ_STR(fmt(8, "abcde%s", "\x01"), "abcde");
	/* A number is whole or absent, and nothing after a cut shows. */
	CHECK_EQ_STR(fmt(6, "abc%d%s", 12345, "x"), "abc");
	CHECK_EQ_STR(fmt(6, "ab%sc", "xxxxxxxxx"), "abxxx");
	char small[4] = "zzz";
	CHECK_EQ_INT(fmt_into(small, 0, "abc"), 0);
	CHECK_EQ_STR(small, "zzz");
	CHECK_EQ_INT(fmt_into(NULL, 10, "abc"), 0);
}

TEST(log_format_unknown_conversion_stops)
{
	/* %n is never honoured; after an unknown conversion the argument
	 * types are unknown, so the rest is text. */
	CHECK_EQ_STR(fmt_nocheck(BIG, "a%d %q %d", 1, 2), "a1 %q %d");
	int n = 0;
	CHECK_EQ_STR(fmt_nocheck(BIG, "x%ny", &n), "x%ny");
	CHECK_EQ_INT(n, 0);
	CHECK_EQ_STR(fmt_nocheck(BIG, "end%"), "end%");
}

/* fd 2 as a SOCK_SEQPACKET socket: every write(2) is one record, so the
 * test sees how many writes a line took. */
static int seq[2];

static void capture_start(void)
{
	CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, seq), 0);
	CHECK(dup2(seq[1], 2) == 2);
}

/* The next record, or "" when none is waiting. */
static const char *next_record(void)
{
	static char rec[4096];
	ssize_t n = recv(seq[0], rec, sizeof(rec) - 1, MSG_DONTWAIT);
	rec[n > 0 ? n : 0] = '\0';
	return rec;
}

TEST(log_write_one_line_one_write)
{
	capture_start();
	errno = 1234;
	pa_log_write(PA_LOG_WARN, "hello %s %d", "world", 7);
	CHECK_EQ_INT(errno, 1234);
	char want[128];
	snprintf(want, sizeof(want), "pyroagent[%d]: warn: hello world 7\n",
		 (int)getpid());
	CHECK_EQ_STR(next_record(), want);
	CHECK_EQ_STR(next_record(), "");

	const char *words[] = {"debug", "info", "warn", "error"};
	for (int lvl = PA_LOG_DEBUG; lvl <= PA_LOG_ERROR; lvl++) {
		pa_log_write(lvl, "x");
		snprintf(want, sizeof(want), "pyroagent[%d]: %s: x\n",
			 (int)getpid(), words[lvl]);
		CHECK_EQ_STR(next_record(), want);
	}
	/* errno survives a failing write too (fd 2 closed: EBADF). */
	int saved = dup(2);
	close(2);
	errno = 4321;
	pa_log_write(PA_LOG_WARN, "lost");
	CHECK_EQ_INT(errno, 4321);
	CHECK(dup2(saved, 2) == 2);
	close(saved);
	CHECK_EQ_STR(next_record(), "");
	/* A multi-line message stays one line. */
	pa_log_write(PA_LOG_ERROR, "%s", "a\nb");
	const char *r = next_record();
	CHECK(strstr(r, "a\\nb\n") != NULL);
	CHECK(strchr(r, '\n') == r + strlen(r) - 1);
}

TEST(log_write_cut_at_1k)
{
	capture_start();
	static char big[5000];
	memset(big, 'q', sizeof(big) - 1);
	pa_log_write(PA_LOG_ERROR, "%s tail", big);
	const char *r = next_record();
	size_t n = strlen(r);
	CHECK(n <= 1024);
	CHECK(n >= 1000);
	CHECK(strcmp(r + n - 4, "...\n") == 0);
	CHECK(strstr(r, "tail") == NULL);
	CHECK_EQ_STR(next_record(), "");
	/* Exactly at the limit nothing is marked. */
	pa_log_write(PA_LOG_ERROR, "%.*s", 100, big);
	r = next_record();
	CHECK(strstr(r, "...") == NULL);
}

TEST(log_macros_check_the_level)
{
	capture_start();
	pa_log_level = PA_LOG_WARN;
	pa_debug("no");
	pa_info("no");
	pa_warn("yes %d", 1);
	pa_error("yes %d", 2);
	CHECK(strstr(next_record(), "warn: yes 1") != NULL);
	CHECK(strstr(next_record(), "error: yes 2") != NULL);
	CHECK_EQ_STR(next_record(), "");
	for (int i = 0; i < 3; i++)
		pa_log_once(PA_LOG_ERROR, "once");
	CHECK(strstr(next_record(), "once") != NULL);
	CHECK_EQ_STR(next_record(), "");
}

static volatile int handler_ran;

static void on_usr1(int sig)
{
	(void)sig;
	pa_log_write(PA_LOG_INFO, "from a handler %d", 5);
	handler_ran = 1;
}

TEST(log_write_from_a_signal_handler)
{
	capture_start();
	signal(SIGUSR1, on_usr1);
	errno = 77;
	raise(SIGUSR1);
	CHECK(handler_ran);
	CHECK_EQ_INT(errno, 77);
	CHECK(strstr(next_record(), "info: from a handler 5\n") != NULL);
}
