/* Unit-test runner: forks each test with a timeout; prints "N passed, N
 * failed". */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "unit.h"

static struct pa_unit_test *tests;

void pa_unit_register(struct pa_unit_test *t)
{
	/* Append, so tests run in file order. */
	struct pa_unit_test **p = &tests;
	while (*p)
		p = &(*p)->next;
	*p = t;
}

static int run_one(struct pa_unit_test *t)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 0;
	}
	if (pid == 0) {
		alarm((unsigned)t->timeout_s);
		t->fn();
		fflush(NULL);
		_exit(0);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 1;
	if (WIFSIGNALED(status))
		fprintf(stderr, "  %s: %s\n", t->name,
			WTERMSIG(status) == SIGALRM
			    ? "timed out"
			    : strsignal(WTERMSIG(status)));
	return 0;
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0;
	for (struct pa_unit_test *t = tests; t; t = t->next) {
		int selected = argc < 2;
		for (int i = 1; i < argc; i++)
			if (strstr(t->name, argv[i]))
				selected = 1;
		if (!selected)
			continue;
		if (run_one(t)) {
			passed++;
			printf("ok   %s\n", t->name);
		} else {
			failed++;
			printf("FAIL %s\n", t->name);
		}
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
