/* Many distinct allocation stacks and many live blocks, for the agent's
 * memory bound: a recursion picks one of 8 functions at each of 6 levels
 * (262,144 stacks) and allocates at the bottom; 65,536 blocks stay live,
 * replaced at random; now and then an anonymous mapping comes and goes.
 * Usage: alloc_many_stacks SECONDS. Prints "done". */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define LIVE 65536

static void *live[LIVE];
static void *maps[64];
static unsigned long rng = 88172645463325252ul;

static unsigned long next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void step(int depth);

#define LEVEL(n)                                                               \
	static __attribute__((noinline)) void level##n(int depth)              \
	{                                                                      \
		step(depth);                                                   \
		__asm__ volatile("" ::: "memory");                             \
	}
LEVEL(0)
LEVEL(1)
LEVEL(2)
LEVEL(3) LEVEL(4) LEVEL(5) LEVEL(6) LEVEL(7)

    static void (*const levels[8])(int) = {level0, level1, level2, level3,
					   level4, level5, level6, level7};

static __attribute__((noinline)) void step(int depth)
{
	if (depth == 0) {
		unsigned long x = next();
		size_t size = 16 + (x >> 50) % 4096;
		void **slot = &live[(x >> 8) % LIVE];
		free(*slot);
		*slot = malloc(size);
		((volatile char *)*slot)[0] = 1;
		if ((x & 1023) == 0) {
			void **m = &maps[(x >> 20) % 64];
			if (*m)
				munmap(*m, 65536);
			*m = mmap(NULL, 65536, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (*m == MAP_FAILED)
				*m = NULL;
		}
		return;
	}
	levels[next() & 7](depth - 1);
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 10;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	long n = 0;
	do {
		for (int i = 0; i < 1000; i++, n++)
			step(6);
		/* about 2 million allocations a second, whatever the machine */
		struct timespec pause = {0, 500000};
		nanosleep(&pause, NULL);
		clock_gettime(CLOCK_MONOTONIC, &b);
	} while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 <
		 seconds);
	printf("done\n");
	return 0;
}
