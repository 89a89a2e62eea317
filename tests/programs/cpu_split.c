/* Known CPU split: every worker spends 70% of its CPU in spin_seventy and
 * 30% in spin_thirty. Usage: cpu_split THREADS SECONDS. Prints the
 * process's own CPU time (getrusage) as JSON at the end. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static volatile unsigned long sink;
static double seconds;

/* Fixed work per unit. Each phase lasts many sampling periods (~350 ms and
 * ~150 ms), so what decides the measured split is the profiler, not the
 * luck of where single samples land: only the few samples at phase
 * boundaries are left to chance, and the 100 Hz test stays within its
 * +-3 points with a few hundred samples. */
static __attribute__((noinline)) void spin_units(unsigned long units)
{
	unsigned long x = sink;
	for (unsigned long i = 0; i < units * 1000; i++)
		x = x * 6364136223846793005ul + 1442695040888963407ul;
	sink = x;
}

static __attribute__((noinline)) void spin_seventy(void)
{
	spin_units(350000);
	__asm__ volatile("" ::: "memory");
}

static __attribute__((noinline)) void spin_thirty(void)
{
	spin_units(150000);
	__asm__ volatile("" ::: "memory");
}

static double thread_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
	(void)arg;
	while (thread_cpu() < seconds) {
		spin_seventy();
		spin_thirty();
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 1;
	seconds = argc > 2 ? atof(argv[2]) : 2.0;
	if (threads < 1 || threads > 64)
		threads = 1;
	pthread_t t[64];
	for (int i = 1; i < threads; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	worker(NULL);
	for (int i = 1; i < threads; i++)
		pthread_join(t[i], NULL);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		     ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	printf("{\"threads\": %d, \"cpu_seconds\": %.6f}\n", threads, cpu);
	return 0;
}
