/* An executable with its own allocator linked in (as a statically linked
 * jemalloc or tcmalloc would be): LD_PRELOAD cannot interpose it, and the
 * agent must say so instead of showing an empty heap profile silently.
 * A thread-safe bump allocator over one reserved mapping; free is a no-op.
 * Prints "ok". */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define ARENA (1UL << 30)

static char *arena;
static size_t used;

static void *bump(size_t n, size_t align)
{
	if (!arena) {
		void *m =
		    mmap(NULL, ARENA, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED)
			return NULL;
		char *expect = NULL;
		if (!__atomic_compare_exchange_n(&arena, &expect, m, 0,
						 __ATOMIC_ACQ_REL,
						 __ATOMIC_ACQUIRE))
			munmap(m, ARENA);
	}
	if (align < 16)
		align = 16;
	size_t off = __atomic_load_n(&used, __ATOMIC_RELAXED), start, end;
	do {
		start = (off + 16 + align - 1) & ~(align - 1);
		end = start + n;
		if (n > ARENA || end > ARENA) {
			errno = ENOMEM;
			return NULL;
		}
	} while (!__atomic_compare_exchange_n(
	    &used, &off, end, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	memcpy(arena + start - 16, &n, sizeof(n));
	return arena + start;
}

void *malloc(size_t n)
{
	return bump(n, 16);
}

void free(void *p)
{
	(void)p;
}

void *calloc(size_t n, size_t m)
{
	size_t t;
	if (__builtin_mul_overflow(n, m, &t)) {
		errno = ENOMEM;
		return NULL;
	}
	return bump(t, 16); /* fresh pages are zero */
}

void *realloc(void *p, size_t n)
{
	void *q = bump(n, 16);
	if (p && q) {
		size_t old;
		memcpy(&old, (char *)p - 16, sizeof(old));
		memcpy(q, p, old < n ? old : n);
	}
	return q;
}

int posix_memalign(void **out, size_t align, size_t n)
{
	void *p = bump(n, align);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
	return bump(n, align);
}

void *memalign(size_t align, size_t n)
{
	return bump(n, align);
}

void *valloc(size_t n)
{
	return bump(n, 4096);
}

size_t malloc_usable_size(void *p)
{
	size_t n;
	memcpy(&n, (char *)p - 16, sizeof(n));
	return n;
}

int main(void)
{
	unsigned long sum = 0;
	for (int i = 0; i < 100000; i++) {
		char *p = malloc(100);
		p[0] = (char)i;
		sum += (unsigned char)p[0];
		free(p);
	}
	printf("ok %lu\n", sum);
	return 0;
}
