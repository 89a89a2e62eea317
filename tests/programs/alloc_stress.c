/* A hostile allocating host: threads allocate, reallocate and free each
 * other's blocks, map and unmap memory, while the main thread forks
 * children that allocate too. Every block carries a pattern checked by
 * whoever frees it. Output is deterministic: a run under the agent must
 * print exactly what a run without it prints.
 * Usage: alloc_stress [ROUNDS_PER_THREAD [FORKS]] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 8
#define SLOTS	1024

struct block {
	uint32_t size; /* bytes after the header */
	uint32_t seed;
	unsigned char data[];
};

static struct block *slots[SLOTS];
static unsigned long corrupt;
static unsigned long written[THREADS];
static long rounds = 200000;

static void fill(struct block *b, uint32_t size, uint32_t seed)
{
	b->size = size;
	b->seed = seed;
	for (uint32_t i = 0; i < size; i += 61)
		b->data[i] = (unsigned char)(seed + i);
}

static void check_and_free(struct block *b)
{
	if (!b)
		return;
	for (uint32_t i = 0; i < b->size; i += 61)
		if (b->data[i] != (unsigned char)(b->seed + i)) {
			__atomic_add_fetch(&corrupt, 1, __ATOMIC_RELAXED);
			break;
		}
	free(b);
}

static void *worker(void *arg)
{
	long id = (long)arg;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(id + 1);
	unsigned long sum = 0;
	for (long r = 0; r < rounds; r++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint32_t size =
		    (uint32_t)(x >> 40) % (x & 1024 ? 64 : 65536) + 1;
		uint32_t seed = (uint32_t)x;
		struct block *b;
		switch ((x >> 8) & 7) {
		case 0:
			b = calloc(1, sizeof(*b) + size);
			break;
		case 1: {
			void *p = NULL;
			b = posix_memalign(&p, 64, sizeof(*b) + size) ? NULL
								      : p;
			break;
		}
		case 2: {
			/* a realloc chain: grow, check the prefix survived */
			b = malloc(sizeof(*b) + 16);
			fill(b, 16, seed);
			struct block *c = realloc(b, sizeof(*b) + size);
			if (c && c->data[0] != (unsigned char)seed)
				__atomic_add_fetch(&corrupt, 1,
						   __ATOMIC_RELAXED);
			b = c;
			break;
		}
		case 3:
			if (r % 64 == 0) {
				/* an anonymous mapping, partly unmapped, then
				 * gone */
				char *m =
				    mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				if (m != MAP_FAILED) {
					m[0] = m[8192] = 1;
					munmap(m + 4096, 4096);
					munmap(m, 4096);
					munmap(m + 8192, 4096);
				}
			}
			/* fall through */
		default:
			b = malloc(sizeof(*b) + size);
			break;
		}
		if (!b)
			continue;
		fill(b, size, seed);
		sum += size;
		/* Trade with whoever had the slot: frees cross threads. */
		struct block *old = __atomic_exchange_n(
		    &slots[(x >> 20) % SLOTS], b, __ATOMIC_ACQ_REL);
		check_and_free(old);
	}
	written[id] = sum;
	return NULL;
}

/* A child allocates on its own copy of the heap, frees blocks it
 * inherited (the parent's sampled ones among them), and reports. */
static int child(int k)
{
	unsigned long sum = 0;
	for (int i = 0; i < 2000; i++) {
		char *p = malloc((size_t)(i % 500) + 1);
		p[0] = (char)i;
		sum += (unsigned char)p[0];
		free(p);
	}
	for (int i = k; i < SLOTS; i += 16) {
		struct block *b =
		    __atomic_exchange_n(&slots[i], NULL, __ATOMIC_ACQ_REL);
		check_and_free(b);
	}
	return corrupt ? 1 : (int)(sum % 200) + 2;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		rounds = atol(argv[1]);
	int forks = argc > 2 ? atoi(argv[2]) : 8;
	pthread_t t[THREADS];
	for (long i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	int children_ok = 0;
	for (int k = 0; k < forks; k++) {
		usleep(20000);
		pid_t pid = fork();
		if (pid == 0) {
			/* exit, not _exit: atexit handlers (the agent's too)
			 * run */
			exit(child(k));
		}
		int status = 0;
		if (pid > 0 && waitpid(pid, &status, 0) == pid &&
		    WIFEXITED(status) && WEXITSTATUS(status) >= 2)
			children_ok++;
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < SLOTS; i++)
		check_and_free(slots[i]);
	for (int i = 0; i < THREADS; i++)
		printf("thread %d: %lu bytes written\n", i, written[i]);
	printf("children ok: %d of %d\n", children_ok, forks);
	printf("corrupt blocks: %lu\n", corrupt);
	return 0;
}
