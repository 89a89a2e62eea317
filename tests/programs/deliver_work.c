/* A light host for delivery tests: works in short CPU bursts (and a few
 * allocations) for SECONDS of wall time, prints how long the work took as
 * JSON, then exits 0 — or, with "kill", dies of SIGKILL like an OOM kill.
 * Usage: deliver_work SECONDS [kill] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static __attribute__((noinline)) void burst(double seconds)
{
	double end = now() + seconds;
	unsigned long x = sink;
	while (now() < end)
		for (int i = 0; i < 10000; i++)
			x = x * 6364136223846793005ul + 1442695040888963407ul;
	sink = x;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s SECONDS [kill]\n", argv[0]);
		return 2;
	}
	double seconds = atof(argv[1]);
	double start = now();
	while (now() - start < seconds) {
		burst(0.02);
		char *p = malloc(4096);
		if (p) {
			memset(p, 1, 4096);
			sink += (unsigned long)p[100];
			free(p);
		}
		usleep(30000);
	}
	double took = now() - start;
	printf("{\"work_seconds\": %.3f}\n", took);
	fflush(stdout);
	if (argc > 2 && strcmp(argv[2], "kill") == 0)
		raise(SIGKILL);
	return 0;
}
