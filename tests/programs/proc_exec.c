/* Children that exec inherit LD_PRELOAD. Runs a shell that reports how
 * many threads it and a sleeping child of its own have (1 each when the
 * agent in them is a no-op), through fork+execl and through system()
 * (posix_spawn), while this process burns CPU in exec_parent_work.
 * Usage: proc_exec ROUNDS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SCRIPT                                                                 \
	"sleep 0.3 & s=$!; sleep 0.15; "                                       \
	"echo sleep threads: $(ls /proc/$s/task | wc -l); "                    \
	"echo shell threads: $(ls /proc/$$/task | wc -l); wait; echo x"

__attribute__((noinline)) static unsigned long exec_parent_work(double seconds)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	double end = ts.tv_sec + ts.tv_nsec / 1e9 + seconds, t;
	unsigned long x = 1;
	do {
		for (int i = 0; i < 100000; i++)
			x = x * 6364136223846793005ul + 1442695040888963407ul;
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
		t = ts.tv_sec + ts.tv_nsec / 1e9;
	} while (t < end);
	return x;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	exec_parent_work(0.3);
	for (int i = 0; i < rounds; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			execl("/bin/sh", "sh", "-c", SCRIPT, (char *)NULL);
			_exit(127);
		}
		int st = 0;
		waitpid(pid, &st, 0);
		printf("fork+exec: exit %d\n",
		       WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		st = system(SCRIPT);
		printf("system: exit %d\n",
		       WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		exec_parent_work(0.1);
	}
	return 0;
}
