/* Allocation sites with known sizes, counts and lifetimes, for the memory
 * profile's accuracy tests. Prints the truth per site as JSON:
 * {"site": {"alloc_objects": N, "alloc_space": B, "inuse_objects": N,
 * "inuse_space": B}, ...}; inuse is what is still live at exit.
 * Usage: alloc_sites [RATE_BYTES]  (RATE paces the program so the agent's
 * sample buffer never overflows: about 10,000 samples a second.) */
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MiB (1024L * 1024)

struct truth {
	const char *site;
	long alloc_objects, alloc_space, inuse_objects, inuse_space;
};

static struct truth truths[16];
static int ntruths;
static long rate = 32 * 1024;
static double paced; /* expected samples since the last pause */

static struct truth *site(const char *name)
{
	struct truth *t = &truths[ntruths++];
	t->site = name;
	return t;
}

/* About 100 expected samples per 10 ms (a block of n bytes is sampled
 * with probability 1 - e^(-n/rate)): the agent drains its sample buffer
 * every few milliseconds under load, so it never overflows, even with the agent
 * thread held up for 50 ms. */
static void pace(long bytes)
{
	paced += -expm1(-(double)bytes / (double)rate);
	if (paced >= 100) {
		paced = 0;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static void touch(void *p, size_t n)
{
	/* The first and the last byte: the block is really there; faulting
	 * every page in would only slow the run down. */
	((volatile char *)p)[0] = 1;
	((volatile char *)p)[n - 1] = 1;
}

/* 4M x 32 B, every other one freed: tiny blocks, the prefilter's common
 * case (free of an unsampled block). */
__attribute__((noinline)) static void site_tiny(void)
{
	struct truth *t = site("site_tiny");
	enum { N = 4 * 1024 * 1024, SIZE = 32 };
	static void
	    *v[N]; /* not malloc'd: only the blocks belong to the site */
	for (long i = 0; i < N; i++) {
		v[i] = malloc(SIZE);
		((volatile char *)v[i])[0] = 1;
		pace(SIZE);
	}
	for (long i = 0; i < N; i += 2)
		free(v[i]);
	t->alloc_objects = N;
	t->alloc_space = (long)N * SIZE;
	t->inuse_objects = N / 2;
	t->inuse_space = (long)N / 2 * SIZE;
}

/* One call site, three sizes of 64 MiB each: every 64-byte block kept,
 * every other larger one. */
__attribute__((noinline)) static void site_mixed(void)
{
	struct truth *t = site("site_mixed");
	static const size_t sizes[] = {64, 4096, 1024 * 1024};
	for (int k = 0; k < 3; k++) {
		long n = 64 * MiB / (long)sizes[k];
		for (long i = 0; i < n; i++) {
			void *p = malloc(sizes[k]);
			touch(p, sizes[k]);
			pace((long)sizes[k]);
			if (k > 0 && i % 2)
				free(p);
			else {
				t->inuse_objects++;
				t->inuse_space += (long)sizes[k];
			}
			t->alloc_objects++;
			t->alloc_space += (long)sizes[k];
		}
	}
}

/* 64 x 4 MiB, 16 kept (glibc maps these itself: no [anonymous mmap]). */
__attribute__((noinline)) static void site_large(void)
{
	struct truth *t = site("site_large");
	for (int i = 0; i < 64; i++) {
		void *p = malloc(4 * MiB);
		touch(p, 4 * MiB);
		pace(4 * MiB);
		if (i % 4)
			free(p);
	}
	t->alloc_objects = 64;
	t->alloc_space = 64 * 4 * MiB;
	t->inuse_objects = 16;
	t->inuse_space = 16 * 4 * MiB;
}

/* 128 chains 16 KiB -> 1 MiB by doubling realloc; each realloc is a new
 * block of the new size (the old one is gone). All final blocks kept. */
__attribute__((noinline)) static void site_realloc(void)
{
	struct truth *t = site("site_realloc");
	for (int c = 0; c < 128; c++) {
		size_t size = 16 * 1024;
		char *p = malloc(size);
		t->alloc_objects++;
		t->alloc_space += (long)size;
		while (size < 1024 * 1024) {
			size *= 2;
			p = realloc(p, size);
			touch(p, size);
			pace((long)size);
			t->alloc_objects++;
			t->alloc_space += (long)size;
		}
		t->inuse_objects++;
		t->inuse_space += (long)size;
	}
}

/* calloc, posix_memalign, aligned_alloc, memalign, valloc: 16 MiB each
 * of 8 KiB blocks, all kept (64 MiB+). */
__attribute__((noinline)) static void site_aligned(void)
{
	struct truth *t = site("site_aligned");
	for (int kind = 0; kind < 5; kind++) {
		for (int i = 0; i < 2048; i++) {
			void *p = NULL;
			switch (kind) {
			case 0:
				p = calloc(1024, 8);
				break;
			case 1:
				if (posix_memalign(&p, 64, 8192))
					p = NULL;
				break;
			case 2:
				p = aligned_alloc(256, 8192);
				break;
			case 3:
				p = memalign(4096, 8192);
				break;
			case 4:
				p = valloc(8192);
				break;
			}
			if (!p)
				abort();
			touch(p, 8192);
			pace(8192);
		}
	}
	t->alloc_objects = t->inuse_objects = 5 * 2048;
	t->alloc_space = t->inuse_space = 5 * 2048 * 8192L;
}

/* Blocks allocated here and freed by another thread: half of them. */
#define XN (1024 * 1024)
static void *xblocks[XN];

__attribute__((noinline)) static void site_xthread(void)
{
	struct truth *t = site("site_xthread");
	for (long i = 0; i < XN; i++) {
		xblocks[i] = malloc(128);
		((volatile char *)xblocks[i])[0] = 1;
		pace(128);
	}
	t->alloc_objects = XN;
	t->alloc_space = XN * 128L;
	t->inuse_objects = XN / 2;
	t->inuse_space = XN / 2 * 128L;
}

static void *xfree(void *arg)
{
	(void)arg;
	for (long i = 1; i < XN; i += 2)
		free(xblocks[i]);
	return NULL;
}

/* Anonymous mappings, tracked exactly: 32 x 2 MiB; 8 unmapped; 4 split
 * by unmapping their middle MiB; 4 grown to 6 MiB by mremap (growth is
 * allocated space); 4 shrunk to 1 MiB. Plus what must not count: a
 * PROT_NONE reservation and a file mapping. */
__attribute__((noinline)) static void site_mmap(void)
{
	struct truth *t = site("site_mmap");
	char *r[32];
	for (int i = 0; i < 32; i++) {
		r[i] = mmap(NULL, 2 * MiB, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (r[i] == MAP_FAILED)
			abort();
		touch(r[i], 2 * MiB);
	}
	for (int i = 0; i < 8; i++)
		munmap(r[i], 2 * MiB);
	for (int i = 8; i < 12; i++)
		munmap(r[i] + MiB / 2, MiB);
	for (int i = 12; i < 16; i++) {
		r[i] = mremap(r[i], 2 * MiB, 6 * MiB, MREMAP_MAYMOVE);
		if (r[i] == MAP_FAILED)
			abort();
		touch(r[i], 6 * MiB);
	}
	for (int i = 16; i < 20; i++)
		if (mremap(r[i], 2 * MiB, MiB, 0) == MAP_FAILED)
			abort();
	void *res = mmap(NULL, 64 * MiB, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	int fd =
	    open("/proc/self/exe", O_RDONLY); /* not fopen: no malloc here */
	void *file = fd >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0)
			     : MAP_FAILED;
	(void)res;
	(void)file;
	t->alloc_objects = 32;
	t->alloc_space = 64 * MiB + 4 * 4 * MiB;
	t->inuse_objects = 32 - 8 + 4;
	t->inuse_space =
	    64 * MiB - 8 * 2 * MiB - 4 * MiB + 4 * 4 * MiB - 4 * MiB;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		rate = atol(argv[1]);
	site_tiny();
	site_mixed();
	site_large();
	site_realloc();
	site_aligned();
	site_xthread();
	pthread_t th;
	pthread_create(&th, NULL, xfree, NULL);
	pthread_join(th, NULL);
	site_mmap();
	printf("{");
	for (int i = 0; i < ntruths; i++)
		printf(
		    "%s\"%s\": {\"alloc_objects\": %ld, \"alloc_space\": %ld, "
		    "\"inuse_objects\": %ld, \"inuse_space\": %ld}",
		    i ? ", " : "", truths[i].site, truths[i].alloc_objects,
		    truths[i].alloc_space, truths[i].inuse_objects,
		    truths[i].inuse_space);
	printf("}\n");
	fflush(stdout);
	return 0;
}
