/* The allocation worst case: 2 threads, each doing N small malloc/free
 * pairs. Usage: malloc_pairs MILLION_PAIRS. Prints the wall time, then the
 * bytes and the blocks allocated (the truth a memory profile estimates). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long pairs;
static unsigned long long total_bytes[2];

static void *churn(void *arg)
{
	unsigned long x = (unsigned long)(long)arg * 2654435761u + 1;
	void *keep[64] = {0};
	unsigned long long bytes = 0;
	for (long i = 0; i < pairs; i++) {
		x = x * 6364136223846793005ul + 1442695040888963407ul;
		size_t size = 16 + (x >> 58) * 8; /* 16..520 bytes */
		bytes += size;
		unsigned slot = (unsigned)(x >> 20) & 63;
		free(keep[slot]);
		keep[slot] = malloc(size);
		((volatile char *)keep[slot])[0] = 1;
	}
	for (int i = 0; i < 64; i++)
		free(keep[i]);
	total_bytes[(long)arg - 1] = bytes;
	return NULL;
}

int main(int argc, char **argv)
{
	pairs = (argc > 1 ? atol(argv[1]) : 20) * 1000000L;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	pthread_t t;
	pthread_create(&t, NULL, churn, (void *)1L);
	churn((void *)2L);
	pthread_join(t, NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f %llu %ld\n",
	       (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9,
	       total_bytes[0] + total_bytes[1], 2 * pairs);
	return 0;
}
