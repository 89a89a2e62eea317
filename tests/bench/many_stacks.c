/* Many distinct stacks for the agent's memory bound: a recursion that picks
 * one of 8 functions at each of 6 levels (262,144 stacks), for SECONDS. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;
static unsigned long rng = 88172645463325252ul;

static void step(int depth);

#define LEVEL(n)                                                               \
	static __attribute__((noinline)) void level##n(int depth)              \
	{                                                                      \
		step(depth);                                                   \
		__asm__ volatile("" ::: "memory");                             \
	}
LEVEL(0) LEVEL(1) LEVEL(2) LEVEL(3) LEVEL(4) LEVEL(5) LEVEL(6) LEVEL(7)

static void (*const levels[8])(int) = {level0, level1, level2, level3,
				       level4, level5, level6, level7};

static __attribute__((noinline)) void step(int depth)
{
	if (depth == 0) {
		unsigned long x = sink;
		for (int i = 0; i < 20000; i++)
			x = x * 6364136223846793005ul + 1;
		sink = x;
		return;
	}
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	levels[rng & 7](depth - 1);
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 10;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do {
		step(6);
		clock_gettime(CLOCK_MONOTONIC, &b);
	} while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < seconds);
	printf("done\n");
	return 0;
}
