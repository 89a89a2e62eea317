/* Minimal unit-test framework: tests register themselves, the runner forks
 * each. */
#ifndef PA_UNIT_H
#define PA_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pa_unit_test {
	const char *name;
	void (*fn)(void);
	int timeout_s;
	struct pa_unit_test *next;
};

void pa_unit_register(struct pa_unit_test *t);

/* TEST(name) { ... } defines and registers a test that runs in its own
 * child process with a 20 s timeout; a crash or hang fails only it. */
#define TEST_TIMEOUT(name, secs)                                               \
	static void test_##name(void);                                         \
	static struct pa_unit_test reg_##name = {#name, test_##name, secs, 0}; \
	__attribute__((constructor)) static void register_##name(void)         \
	{                                                                      \
		pa_unit_register(&reg_##name);                                 \
	}                                                                      \
	static void test_##name(void)
#define TEST(name) TEST_TIMEOUT(name, 20)

#define FAIL(...)                                                              \
	do {                                                                   \
		fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);              \
		fprintf(stderr, __VA_ARGS__);                                  \
		fprintf(stderr, "\n");                                         \
		exit(1);                                                       \
	} while (0)

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond))                                                   \
			FAIL("check failed: %s", #cond);                       \
	} while (0)

#define CHECK_EQ_INT(a, b)                                                     \
	do {                                                                   \
		long long a_ = (long long)(a), b_ = (long long)(b);            \
		if (a_ != b_)                                                  \
			FAIL("%s == %lld, expected %s == %lld", #a, a_, #b,    \
			     b_);                                              \
	} while (0)

#define CHECK_EQ_STR(a, b)                                                     \
	do {                                                                   \
		const char *a_ = (a), *b_ = (b);                               \
		if (!a_ || !b_ || strcmp(a_, b_) != 0)                         \
			FAIL("%s == \"%s\", expected \"%s\"", #a,              \
			     a_ ? a_ : "(null)", b_ ? b_ : "(null)");          \
	} while (0)

#endif
