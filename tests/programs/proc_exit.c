/* Ways a process ends while its threads still work.
 *   proc_exit thread   a thread calls exit(3) while others allocate and the
 *                      main thread waits in pthread_join
 *   proc_exit main     main returns (exit 0) while threads still allocate
 *   proc_exit signal   a SIGALRM handler calls exit(4) (not async-signal-
 *                      safe: done by real programs anyway)
 *   proc_exit _exit    _exit(5): no exit handlers, no final profile
 * Each first burns ~0.5 s of CPU in exit_work. Prints one line. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long exit_work(double s)
{
	unsigned long x = 1;
	double end = cpu_now() + s;
	while (cpu_now() < end)
		for (int i = 0; i < 20000; i++)
			x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x;
}

static void *allocating(void *arg)
{
	unsigned long r = (unsigned long)(long)arg;
	for (;;) {
		r = r * 6364136223846793005ul + 1;
		void *p = malloc(16 + (r >> 44));
		free(p);
	}
	return NULL;
}

static void *exiting(void *arg)
{
	(void)arg;
	exit_work(0.5);
	printf("thread exits\n");
	fflush(stdout);
	exit(3);
}

static void on_alarm(int sig)
{
	(void)sig;
	printf("handler exits\n");
	fflush(stdout);
	exit(4);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "main";
	pthread_t t[3];
	for (long i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, allocating, (void *)(i + 1));
	if (strcmp(mode, "thread") == 0) {
		pthread_create(&t[2], NULL, exiting, NULL);
		pthread_join(t[2], NULL); /* never returns: exit(3) */
		return 1;
	}
	exit_work(0.5);
	if (strcmp(mode, "signal") == 0) {
		signal(SIGALRM, on_alarm);
		alarm(1);
		for (;;)
			exit_work(0.1);
	}
	if (strcmp(mode, "_exit") == 0) {
		printf("_exit\n");
		fflush(stdout);
		_exit(5);
	}
	printf("main returns\n");
	return 0;
}
