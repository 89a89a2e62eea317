/* CPU-heavy work inside a signal handler running on an alternate signal
 * stack, interrupting a known function. Deterministic output.
 * Usage: proc_altstack ROUNDS */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t handled;
static volatile unsigned long sink;

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long handler_work(unsigned long x)
{
	/* About 50 ms of CPU per signal. */
	double end = cpu_now() + 0.05;
	while (cpu_now() < end)
		for (int i = 0; i < 20000; i++)
			x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x;
}

static void on_usr1(int sig)
{
	(void)sig;
	sink = handler_work(sink + 1);
	handled++;
}

/* Spins until the next signal was handled: the code the handler
 * interrupts. */
__attribute__((noinline)) static void interrupted_loop(int want)
{
	unsigned long x = 0;
	while (handled < want)
		x += (unsigned long)handled * 3 + 1;
	sink ^= x & 1;
}

static volatile int done;

static void *kicker(void *arg)
{
	pthread_t target = *(pthread_t *)arg;
	struct timespec d = {0, 20 * 1000000};
	while (!done) {
		nanosleep(&d, NULL);
		/* One at a time: a handler slower than the signal rate would
		 * never let the main thread run. */
		int before = handled;
		if (!done)
			pthread_kill(target, SIGUSR1);
		while (!done && handled == before)
			nanosleep(&d, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 20;
	stack_t ss;
	ss.ss_size = 256 * 1024;
	ss.ss_sp = malloc(ss.ss_size);
	ss.ss_flags = 0;
	if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0) {
		perror("sigaltstack");
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	/* Another thread interrupts the main thread in interrupted_loop. */
	pthread_t k;
	pthread_t main_thread = pthread_self();
	if (pthread_create(&k, NULL, kicker, &main_thread) != 0)
		return 1;
	for (int i = 1; i <= rounds; i++)
		interrupted_loop(i);
	done = 1;
	pthread_join(k, NULL);
	stack_t cur;
	sigaltstack(NULL, &cur);
	printf("handled %d signals on the alternate stack (%s)\n", rounds,
	       cur.ss_flags & SS_ONSTACK ? "still on it" : "back");
	return 0;
}
