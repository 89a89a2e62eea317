/* Threads that block SIGPROF: some for their whole life, some around a
 * stretch of CPU work, one that unblocks it only at the end. Deterministic
 * output; the agent's ticks stay pending while blocked and must neither
 * crash nor hang the host. Usage: proc_blocked SECONDS */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds;

static double thread_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long blocked_work(unsigned long x,
							    double s)
{
	double end = thread_cpu() + s;
	while (thread_cpu() < end)
		for (int i = 0; i < 20000; i++)
			x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x;
}

/* A fixed amount of work, for the printed result. */
static unsigned long checksum(unsigned long x)
{
	for (int i = 0; i < 1000000; i++)
		x = x * 2862933555777941757ul + 3037000493ul;
	return x;
}

static void block_prof(int how)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGPROF);
	pthread_sigmask(how, &s, NULL);
}

static void *always_blocked(void *arg)
{
	block_prof(SIG_BLOCK);
	blocked_work(1, seconds);
	return (void *)checksum((unsigned long)arg);
}

static void *blocked_in_the_middle(void *arg)
{
	unsigned long x = 3;
	for (int round = 0; round < 4; round++) {
		x = blocked_work(x, seconds / 8);
		block_prof(SIG_BLOCK);
		x = blocked_work(x, seconds / 8);
		block_prof(SIG_UNBLOCK);
	}
	return (void *)checksum((unsigned long)arg);
}

static void *unblocked_at_the_end(void *arg)
{
	block_prof(SIG_BLOCK);
	blocked_work(5, seconds);
	block_prof(SIG_UNBLOCK);
	blocked_work(5, seconds / 10);
	return (void *)checksum((unsigned long)arg);
}

int main(int argc, char **argv)
{
	seconds = argc > 1 ? atof(argv[1]) : 1.0;
	void *(*fns[3])(void *) = {always_blocked, blocked_in_the_middle,
				   unblocked_at_the_end};
	pthread_t t[3];
	for (long i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, fns[i], (void *)(i + 1));
	/* The main thread too, for a while. */
	block_prof(SIG_BLOCK);
	blocked_work(7, seconds / 4);
	block_prof(SIG_UNBLOCK);
	for (int i = 0; i < 3; i++) {
		void *r;
		pthread_join(t[i], &r);
		printf("thread %d: %lx\n", i, (unsigned long)r);
	}
	return 0;
}
