/* Fixed CPU work for overhead ratios. Usage: cpu_burn THREADS MILLION_ITERS.
 * Prints the wall time in seconds. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long iters;
static volatile unsigned long sink;

static __attribute__((noinline)) unsigned long mix(unsigned long x, long n)
{
	for (long i = 0; i < n; i++)
		x = (x ^ (x >> 29)) * 0xbf58476d1ce4e5b9ul + (unsigned long)i;
	return x;
}

static void *burn(void *arg)
{
	unsigned long x = (unsigned long)(long)arg;
	for (long done = 0; done < iters; done += 10000)
		x = mix(x, 10000);
	sink = x;
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 1;
	iters = (argc > 2 ? atol(argv[2]) : 200) * 1000000L;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	pthread_t t[64];
	for (int i = 1; i < threads && i < 64; i++)
		pthread_create(&t[i], NULL, burn, (void *)(long)i);
	burn(NULL);
	for (int i = 1; i < threads && i < 64; i++)
		pthread_join(t[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
