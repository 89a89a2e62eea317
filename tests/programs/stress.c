/* A hostile host: many threads, short-lived threads, dlopen/dlclose in a
 * loop, its own signals and timers. Its output is deterministic, so a run
 * under the agent must print exactly what a run without it prints.
 * Usage: stress SECONDS */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 8

static double seconds;
static volatile sig_atomic_t usr1_seen;
static unsigned long results[WORKERS];
static unsigned long dl_loops_ok;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_usr1(int sig)
{
	(void)sig;
	usr1_seen = 1;
}

static void on_alarm(int sig)
{
	(void)sig;
}

/* Deterministic work: the checksum of round r of worker w. */
static unsigned long work(int w, unsigned long r)
{
	unsigned long x = (unsigned long)w * 7919 + r;
	char *buf = malloc(64 + (r % 512));
	for (int i = 0; i < 2000; i++)
		x = x * 2862933555777941757ul + 3037000493ul;
	memset(buf, (int)(x & 0xff), 64 + (r % 512));
	x ^= (unsigned long)buf[r % 64];
	free(buf);
	return x;
}

static void *short_thread(void *arg)
{
	unsigned long *out = arg;
	*out = work(99, *out);
	return NULL;
}

static void *worker(void *arg)
{
	int w = (int)(long)arg;
	unsigned long acc = 0, r = 0;
	double end = now() + seconds;
	/* A fixed number of rounds, at least: output must not depend on speed.
	 */
	while (r < 2000 || now() < end) {
		if (r >= 2000 && r % 100 == 0 && now() >= end)
			break;
		acc += work(w, r);
		if (r % 64 == 0) {
			pthread_t t;
			unsigned long v = r;
			if (pthread_create(&t, NULL, short_thread, &v) == 0)
				pthread_join(t, NULL);
			acc += v;
		}
		r++;
	}
	/* Only the first 2000 rounds count for the printed result. */
	unsigned long check = 0;
	for (unsigned long i = 0; i < 2000; i++)
		check += work(w, i) + (i % 64 == 0 ? work(99, i) : 0);
	results[w] = check;
	(void)acc;
	return NULL;
}

static void *dl_loop(void *arg)
{
	(void)arg;
	double end = now() + seconds;
	while (now() < end) {
		void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
		if (h) {
			if (dlsym(h, "crc32"))
				__atomic_add_fetch(&dl_loops_ok, 1,
						   __ATOMIC_RELAXED);
			dlclose(h);
		}
		void *m = dlopen("libm.so.6", RTLD_LAZY);
		if (m)
			dlclose(m);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	seconds = argc > 1 ? atof(argv[1]) : 2.0;
	signal(SIGUSR1, on_usr1);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm; /* no SA_RESTART: the host copes with EINTR */
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 5000}, {0, 5000}};
	setitimer(ITIMER_REAL, &it, NULL);

	pthread_t t[WORKERS], dl;
	for (long i = 0; i < WORKERS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	pthread_create(&dl, NULL, dl_loop, NULL);
	raise(SIGUSR1);
	for (int i = 0; i < WORKERS; i++)
		while (pthread_join(t[i], NULL) == EINTR)
			;
	pthread_join(dl, NULL);
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	for (int i = 0; i < WORKERS; i++)
		printf("worker %d: %lx\n", i, results[i]);
	printf("usr1: %d, dlopen loops: %s\n", (int)usr1_seen,
	       dl_loops_ok > 0 ? "yes" : "no");
	return 0;
}
