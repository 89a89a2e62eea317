/* Heap sampling: the countdown's distribution, the weights, unbiased
 * totals through the real hooks' core, live upkeep across free/realloc,
 * errno, the bootstrap pool, and anonymous-mapping events. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "heap.h"
#include "live.h"
#include "ring.h"
#include "unit.h"

/* Each test runs in its own process: this sets the agent up as the
 * constructor would, with a small ring drained by the test. */
static struct pa_ring *heap_ring;
static int heap_state = PA_STATE_RUNNING;

static void heap_setup(int64_t rate, bool live)
{
	struct pa_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.alloc_rate = rate;
	cfg.alloc_live = live;
	CHECK_EQ_INT(pa_ring_new(&heap_ring, 256), 0);
	pa_heap_start(&cfg, heap_ring, &heap_state);
	/* This thread's placeholder countdown ends at its next crossing. */
	pa_self.alloc_countdown = 0;
	pa_self.rng = 0;
	pa_heap_free(pa_heap_malloc(1));
}

struct tally {
	double bytes, objects;
	long samples, mmaps, unmaps, mremaps, failed;
	struct pa_sample last;
};

static void drain(struct tally *t)
{
	struct pa_sample *s;
	while ((s = pa_ring_next(heap_ring))) {
		if (s->kind == PA_SAMPLE_ALLOC) {
			t->samples++;
			t->bytes += (double)s->values[1];
			t->objects += (double)s->values[1] / (double)s->size;
		} else if (s->kind == PA_SAMPLE_MMAP) {
			t->mmaps++;
		} else if (s->kind == PA_SAMPLE_MUNMAP) {
			t->unmaps++;
		} else if (s->kind == PA_SAMPLE_MREMAP) {
			t->mremaps++;
		}
		if (s->flags & PA_SAMPLE_FAILED)
			t->failed++;
		/* Header only: the stack copy is 16 KiB. */
		memcpy(&t->last, s, offsetof(struct pa_sample, regs));
		pa_ring_release(heap_ring, s);
	}
}

/* Seams: the real functions as they fail (glibc's behaviour), for
 * requests a sanitizer's allocator would abort on instead. */
static void *failing_realloc(void *p, size_t n)
{
	(void)p;
	(void)n;
	errno = ENOMEM;
	return NULL;
}

static void *overflowing_calloc(size_t n, size_t m)
{
	size_t t;
	CHECK(__builtin_mul_overflow(n, m, &t));
	errno = ENOMEM;
	return NULL;
}

static size_t live_count(void)
{
	size_t n = 0;
	struct pa_live_entry e;
	for (size_t i = 0; i < pa_live_nslots(pa_heap.live); i++)
		n += (size_t)pa_live_read(pa_heap.live, i, &e);
	return n;
}

static int is_live(const void *p)
{
	struct pa_live_entry e;
	for (size_t i = 0; i < pa_live_nslots(pa_heap.live); i++)
		if (pa_live_read(pa_heap.live, i, &e) &&
		    e.addr == (uint64_t)(uintptr_t)p)
			return 1;
	return 0;
}

TEST(heap_draw_mean_and_shape)
{
	uint64_t rng = 12345;
	const double rate = 512 * 1024;
	const int n = 2000000;
	double sum = 0;
	int below_rate = 0, below_tenth = 0;
	for (int i = 0; i < n; i++) {
		int64_t d = pa_heap_draw(&rng, rate);
		CHECK(d >= 1);
		sum += (double)d;
		below_rate += d <= (int64_t)rate;
		below_tenth += d <= (int64_t)(rate / 10);
	}
	/* Exponential: mean = rate (+0.5 from rounding up), sd of the mean
	 * = rate/sqrt(n) = 0.07%: 0.5% is 7 sigma. */
	double mean = sum / n;
	CHECK(fabs(mean / rate - 1) < 0.005);
	/* P(D <= rate) = 1 - 1/e, P(D <= rate/10) = 1 - e^-0.1. */
	CHECK(fabs((double)below_rate / n - (1 - exp(-1))) < 0.003);
	CHECK(fabs((double)below_tenth / n - (1 - exp(-0.1))) < 0.002);
}

TEST(heap_weight_formula)
{
	const double r = 512 * 1024;
	/* n << rate: one sample stands for ~rate bytes (+ n/2). */
	CHECK(fabs(pa_heap_weight(16, r) - (r + 8)) < 0.01);
	/* n == rate: n / (1 - 1/e). */
	CHECK(fabs(pa_heap_weight((size_t)r, r) / (r / (1 - exp(-1))) - 1) <
	      1e-12);
	/* n >> rate: always sampled, weight -> n. */
	CHECK(fabs(pa_heap_weight(64 * (size_t)r, r) / (64 * r) - 1) < 1e-12);
	CHECK(pa_heap_weight(0, r) == 0);
}

/* Sum of weights over many allocations: unbiased within a few sigma. */
static void check_unbiased(size_t size, long count, int64_t rate)
{
	heap_setup(rate, false);
	struct tally t = {0};
	for (long i = 0; i < count; i++) {
		void *p = pa_heap_malloc(size);
		CHECK(p);
		pa_heap_free(p);
		if ((i & 255) == 0)
			drain(&t);
	}
	drain(&t);
	double truth = (double)size * (double)count;
	/* Relative sd of the estimate: sqrt((1-p)/(p N)). */
	double p = -expm1(-(double)size / (double)rate);
	double sd = sqrt((1 - p) / (p * (double)count));
	double err = t.bytes / truth - 1;
	if (fabs(err) > 4 * sd + 1e-9)
		FAIL("size %zu: estimate %.0f vs truth %.0f (%.2f%%, 4 sigma = "
		     "%.2f%%, %ld samples)",
		     size, t.bytes, truth, 100 * err, 400 * sd, t.samples);
	CHECK(fabs(t.objects / (double)count - 1) <= 4 * sd + 1e-9);
	CHECK_EQ_INT(pa_heap.stats.ring_full_alloc, 0);
}

TEST_TIMEOUT(heap_unbiased_tiny_blocks, 60)
{
	/* 1M x 64 B at 1 KiB: ~65,000 samples, sd 0.4%. */
	check_unbiased(64, 1000000, 1024);
}

TEST_TIMEOUT(heap_unbiased_smallest_blocks, 60)
{
	/* 16 B (glibc's smallest chunk) at 1 KiB: ~15,500 samples, sd 0.8%. */
	check_unbiased(16, 1000000, 1024);
}

TEST_TIMEOUT(heap_unbiased_near_rate_blocks, 60)
{
	/* Blocks of the rate's size: each sampled with p = 63%. */
	check_unbiased(4096, 100000, 4096);
}

TEST(heap_large_blocks_always_sampled_at_face_value)
{
	heap_setup(1024, false);
	struct tally t = {0};
	for (int i = 0; i < 100; i++) {
		pa_heap_free(pa_heap_malloc(1 << 20));
		drain(&t);
	}
	CHECK_EQ_INT(t.samples, 100);
	CHECK(fabs(t.bytes - 100.0 * (1 << 20)) < 100);
	CHECK_EQ_INT(t.last.size, 1 << 20);
}

TEST(heap_live_follows_free_and_realloc)
{
	heap_setup(1, true); /* every block of 16+ bytes is sampled */
	struct tally t = {0};
	void *p[100];
	for (int i = 0; i < 100; i++) {
		p[i] = pa_heap_malloc(64 + (size_t)i);
		drain(&t);
	}
	CHECK_EQ_INT(t.samples, 100);
	CHECK_EQ_INT(live_count(), 100);
	for (int i = 0; i < 50; i++)
		pa_heap_free(p[i]);
	CHECK_EQ_INT(live_count(), 50);
	CHECK(!is_live(p[0]) && is_live(p[50]));
	/* realloc: the old block leaves, the new one is a new sample. */
	for (int i = 50; i < 60; i++) {
		void *q = pa_heap_realloc(p[i], 100000);
		CHECK(q);
		CHECK(!is_live(p[i]) || q == p[i]);
		CHECK(is_live(q));
		p[i] = q;
		drain(&t);
	}
	CHECK_EQ_INT(live_count(), 50);
	/* A failing realloc keeps the old block: back in the table, and the
	 * guard hears about the NULL. (Through the seam: sanitizers abort on
	 * a really huge request.) */
	CHECK(!pa_heap_take_null());
	errno = 0;
	void *(*realloc_fn)(void *, size_t) = pa_heap.real.realloc;
	pa_heap.real.realloc = failing_realloc;
	void *fail = pa_heap_realloc(p[60], (size_t)1 << 62);
	pa_heap.real.realloc = realloc_fn;
	CHECK(fail == NULL);
	CHECK_EQ_INT(errno, ENOMEM);
	CHECK(is_live(p[60]));
	CHECK(pa_heap_take_null());
	CHECK(!pa_heap_take_null());
	/* realloc(p, 0) frees (glibc returns NULL): out of the table. */
	CHECK(pa_heap_realloc(p[61], 0) == NULL);
	CHECK(!is_live(p[61]));
	CHECK(!pa_heap_take_null());
	CHECK_EQ_INT(live_count(), 49);
	for (int i = 50; i < 100; i++)
		if (i != 61)
			pa_heap_free(p[i]);
	CHECK_EQ_INT(live_count(), 0);
}

TEST(heap_every_entry_point_counts_once)
{
	heap_setup(1, true);
	struct tally t = {0};
	void *v[8];
	v[0] = pa_heap_calloc(10, 100);
	CHECK(v[0] && ((char *)v[0])[999] == 0);
	CHECK_EQ_INT(pa_heap_posix_memalign(&v[1], 64, 1000), 0);
	v[2] = pa_heap_aligned_alloc(256, 1024);
	v[3] = pa_heap_memalign(4096, 1000);
	v[4] = pa_heap_valloc(1000);
	v[5] = pa_heap_pvalloc(1000);
	v[6] = pa_heap_reallocarray(NULL, 10, 100);
	v[7] = pa_heap_malloc(1000);
	drain(&t);
	CHECK_EQ_INT(t.samples, 8);
	CHECK_EQ_INT(live_count(), 8);
	CHECK(((uintptr_t)v[1] & 63) == 0 && ((uintptr_t)v[3] & 4095) == 0);
	pa_heap_free_sized(v[0], 1000);
	pa_heap_free_aligned_sized(v[1], 64, 1000);
	for (int i = 2; i < 8; i++)
		pa_heap_free(v[i]);
	CHECK_EQ_INT(live_count(), 0);
	/* Overflowing sizes fail like libc, and count nothing. */
	errno = 0;
	void *(*calloc_fn)(size_t, size_t) = pa_heap.real.calloc;
	pa_heap.real.calloc = overflowing_calloc;
	CHECK(pa_heap_calloc(SIZE_MAX, 2) == NULL);
	pa_heap.real.calloc = calloc_fn;
	CHECK_EQ_INT(errno, ENOMEM);
	errno = 0;
	CHECK(pa_heap_reallocarray(NULL, SIZE_MAX, 2) == NULL);
	CHECK_EQ_INT(errno, ENOMEM);
	drain(&t);
	CHECK_EQ_INT(t.samples, 8);
}

TEST(heap_errno_preserved_on_the_sampled_path)
{
	heap_setup(1, true);
	errno = EBADF;
	void *p = pa_heap_malloc(100);
	CHECK(p);
	CHECK_EQ_INT(errno, EBADF);
	pa_heap_free(p);
	CHECK_EQ_INT(errno, EBADF);
	struct tally t = {0};
	drain(&t);
	CHECK_EQ_INT(t.samples, 1);
}

/* Sample ids (the live table matches entries to samples by them) are
 * unique across threads, though threads take them in batches. */
#define ID_THREADS 4
#define ID_EACH	   40

static void *id_worker(void *arg)
{
	void **keep = arg;
	pa_self.alloc_countdown = 0;
	pa_heap_free(pa_heap_malloc(1)); /* the placeholder ends */
	for (int i = 0; i < ID_EACH; i++)
		keep[i] = pa_heap_malloc(64);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

TEST(heap_sample_ids_unique_across_threads)
{
	heap_setup(1, true); /* every allocation is sampled */
	static void *keep[ID_THREADS][ID_EACH];
	pthread_t w[ID_THREADS];
	for (int i = 0; i < ID_THREADS; i++)
		CHECK_EQ_INT(pthread_create(&w[i], NULL, id_worker, keep[i]),
			     0);
	for (int i = 0; i < ID_THREADS; i++)
		pthread_join(w[i], NULL);
	static uint64_t ids[ID_THREADS * ID_EACH + 16];
	size_t n = 0;
	struct pa_sample *s;
	while ((s = pa_ring_next(heap_ring))) {
		if (s->kind == PA_SAMPLE_ALLOC && s->size == 64 &&
		    n < sizeof(ids) / sizeof(ids[0]))
			ids[n++] = s->seq;
		pa_ring_release(heap_ring, s);
	}
	CHECK_EQ_INT(pa_ring_dropped(heap_ring), 0);
	CHECK_EQ_INT(n, ID_THREADS * ID_EACH);
	qsort(ids, n, sizeof(ids[0]), cmp_u64);
	for (size_t i = 1; i < n; i++)
		if (ids[i] == ids[i - 1])
			FAIL("sample id %llu given twice",
			     (unsigned long long)ids[i]);
	for (int i = 0; i < ID_THREADS; i++)
		for (int j = 0; j < ID_EACH; j++)
			pa_heap_free(keep[i][j]);
}

TEST(heap_agent_and_busy_threads_not_sampled)
{
	heap_setup(1, true);
	struct tally t = {0};
	pa_self.busy = 1;
	pa_heap_free(pa_heap_malloc(100));
	pa_self.busy = 0;
	pa_self.is_agent = 1;
	for (int i = 0; i < 1000; i++)
		pa_heap_free(pa_heap_malloc(100));
	pa_self.is_agent = 0;
	drain(&t);
	CHECK_EQ_INT(t.samples, 0);
	/* Not running (before load, after fork, at exit): nothing either. */
	heap_state = PA_STATE_OFF;
	pa_heap_free(pa_heap_malloc(100));
	drain(&t);
	CHECK_EQ_INT(t.samples, 0);
}

TEST(heap_off_when_rate_zero)
{
	heap_setup(0, true);
	CHECK(pa_heap.live == NULL);
	struct tally t = {0};
	for (int i = 0; i < 1000; i++)
		pa_heap_free(pa_heap_malloc(100000));
	drain(&t);
	CHECK_EQ_INT(t.samples, 0);
	CHECK(pa_self.alloc_countdown > (int64_t)1 << 60);
}

TEST(heap_boot_pool)
{
	void *a = pa_heap_boot_alloc(100, 16);
	void *b = pa_heap_boot_alloc(10, 4096);
	CHECK(a && b && pa_heap_is_boot(a) && pa_heap_is_boot(b));
	CHECK(((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 4095) == 0);
	CHECK(!pa_heap_is_boot(&a));
	memset(a, 'x', 100);
	/* Freeing a pool block is a no-op; realloc moves it to the real
	 * allocator with its contents. */
	pa_heap_free(a);
	char *c = pa_heap_realloc(a, 200);
	CHECK(c && !pa_heap_is_boot(c));
	CHECK(c[0] == 'x' && c[99] == 'x');
	pa_heap_free(c);
	/* Bounded: a request beyond the pool fails with ENOMEM. */
	errno = 0;
	CHECK(pa_heap_boot_alloc(PA_HEAP_BOOT_SIZE, 16) == NULL);
	CHECK_EQ_INT(errno, ENOMEM);
	CHECK(pa_heap.stats.boot_exhausted >= 1);
}

/* free() has no test for the pool: the prefilter in use says "maybe" for
 * its blocks, whether they were handed out before the live table's filter
 * took over (marked when it is published) or after (marked by the pool).
 * A pool block reaching the real free would abort the process. */
TEST(heap_boot_blocks_free_under_every_filter)
{
	void *before = pa_heap_boot_alloc(3000, 16);
	CHECK(before && pa_heap.filter == pa_heap_boot_filter);
	CHECK(pa_heap_maybe_live(before));
	CHECK(pa_heap_maybe_live((char *)before + 2999));
	heap_setup(4096, true);
	CHECK(pa_heap.filter != pa_heap_boot_filter);
	void *after = pa_heap_boot_alloc(100, 16);
	CHECK(pa_heap_maybe_live(before) && pa_heap_maybe_live(after));
	CHECK(pa_heap_maybe_live((char *)before + 2999));
	pa_heap_free(before);
	pa_heap_free(after);
	/* The marks stay through sampled blocks coming and going. */
	for (int i = 0; i < 20000; i++)
		pa_heap_free(pa_heap_malloc(64));
	CHECK(pa_heap_maybe_live(before) && pa_heap_maybe_live(after));
	/* An ordinary block is not "maybe" because of the pool. */
	void *plain = pa_heap_malloc(1 << 20);
	int maybe = 0;
	for (size_t o = 0; o < (1 << 20); o += 64)
		maybe += pa_heap_maybe_live((char *)plain + o);
	CHECK(maybe < 64);
	pa_heap_free(plain);
}

TEST(heap_mmap_events)
{
	heap_setup(4096, true);
	struct tally t = {0};
	const size_t mib = 1 << 20;
	CHECK_EQ_INT(pa_heap.regions, 0);
	/* No tracked region yet: munmap sends nothing. */
	void *plain =
	    mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pa_heap_munmap(plain, 4096, NULL);
	drain(&t);
	CHECK_EQ_INT(t.unmaps, 0);
	/* A tracked mapping: now munmap does. */
	void *small =
	    pa_heap_mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			 0, NULL, false);
	CHECK_EQ_INT(pa_heap.regions, 1);
	pa_heap_munmap(small, 4096, NULL);
	drain(&t);
	CHECK_EQ_INT(t.mmaps, 1);
	CHECK_EQ_INT(t.unmaps, 1);
	/* The agent thread's part: the region is gone. */
	pa_heap_regions_add(-1);
	char *a = pa_heap_mmap(NULL, 4 * mib, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, NULL, false);
	CHECK(a != MAP_FAILED);
	drain(&t);
	CHECK_EQ_INT(t.mmaps, 2);
	CHECK_EQ_INT(t.last.addr, (uint64_t)(uintptr_t)a);
	CHECK_EQ_INT(t.last.size, 4 * mib);
	CHECK_EQ_INT(pa_heap.regions, 1);
	/* Reservations are not memory. */
	void *res =
	    pa_heap_mmap(NULL, 64 * mib, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0, NULL, false);
	drain(&t);
	CHECK_EQ_INT(t.mmaps, 2);
	/* MAP_FIXED over part of a tracked mapping, not itself tracked: an
	 * unmap event for the range it replaces. */
	void *fx = pa_heap_mmap(a, mib, PROT_NONE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0,
				NULL, false);
	CHECK(fx == a);
	drain(&t);
	CHECK_EQ_INT(t.unmaps, 2);
	CHECK_EQ_INT(t.last.kind, PA_SAMPLE_MUNMAP);
	CHECK_EQ_INT(t.last.addr, (uint64_t)(uintptr_t)a);
	/* mremap: old range in addr/size, the new one in values. */
	char *b = pa_heap_mremap(a + mib, 3 * mib, 8 * mib, MREMAP_MAYMOVE,
				 NULL, NULL);
	CHECK(b != MAP_FAILED);
	drain(&t);
	CHECK_EQ_INT(t.mremaps, 1);
	CHECK_EQ_INT(t.last.addr, (uint64_t)(uintptr_t)(a + mib));
	CHECK_EQ_INT(t.last.size, 3 * mib);
	CHECK_EQ_INT(t.last.values[0], (int64_t)(uintptr_t)b);
	CHECK_EQ_INT(t.last.values[1], 8 * mib);
	CHECK(!(t.last.flags & PA_SAMPLE_FAILED));
	/* A failing munmap still commits its slot, marked failed, and keeps
	 * the call's errno. */
	errno = 0;
	CHECK_EQ_INT(pa_heap_munmap((void *)1, 4096, NULL), -1);
	CHECK_EQ_INT(errno, EINVAL);
	drain(&t);
	CHECK_EQ_INT(t.failed, 1);
	/* From inside an allocator's own code (by call site): not the
	 * program's mappings. */
	long before = t.mmaps + t.unmaps;
	pa_heap.foreign_lo = 0x1000;
	pa_heap.foreign_hi = 0x2000;
	void *c = pa_heap_mmap(NULL, mib, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0,
			       (void *)0x1800, false);
	pa_heap_munmap(c, mib, (void *)0x1800);
	drain(&t);
	CHECK_EQ_INT(t.mmaps + t.unmaps, before);
	/* The agent's own mappings neither. */
	pa_self.busy = 1;
	c = pa_heap_mmap(NULL, mib, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, NULL, false);
	pa_heap_munmap(c, mib, NULL);
	pa_self.busy = 0;
	drain(&t);
	CHECK_EQ_INT(t.mmaps + t.unmaps, before);
	pa_heap_munmap(b, 8 * mib, NULL);
	pa_heap_munmap(res, 64 * mib, NULL);
}

/* Many threads allocating, reallocating and freeing each other's blocks
 * while a consumer drains: at the end the live table holds exactly the
 * blocks still allocated (every block is sampled at this rate). */
#define ST_THREADS 4
#define ST_SLOTS   512
#define ST_ROUNDS  20000

static uintptr_t st_slots[ST_SLOTS]; /* block | recorded */
static pthread_mutex_t st_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tally st_tally;

static void *st_worker(void *arg)
{
	uint64_t x = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL + 1;
	/* A thread's first crossing only starts its countdown. */
	pa_heap_free(pa_heap_malloc(1));
	for (int r = 0; r < ST_ROUNDS; r++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		int slot = (int)(x % ST_SLOTS);
		void *mine = pa_heap_malloc(64 + (x >> 32) % 4096);
		/* Recorded? (Not if the ring was full: a producer preempted
		 * between reserve and commit holds up the consumer.) Kept in
		 * the pointer's low bit. */
		uintptr_t tagged =
		    (uintptr_t)mine |
		    (uintptr_t)pa_live_find(pa_heap.live,
					    (uint64_t)(uintptr_t)mine, NULL);
		void *old =
		    (void *)(__atomic_exchange_n(&st_slots[slot], tagged,
						 __ATOMIC_ACQ_REL) &
			     ~(uintptr_t)1);
		if (old && (x & 7) == 0) {
			void *q = pa_heap_realloc(old, 8192);
			pa_heap_free(q);
		} else {
			pa_heap_free(old);
		}
		/* Every block is sampled: the workers take turns as the one
		 * consumer, so the ring never fills and the check below can
		 * be exact. */
		pthread_mutex_lock(&st_mu);
		drain(&st_tally);
		pthread_mutex_unlock(&st_mu);
	}
	return NULL;
}

TEST_TIMEOUT(heap_threads_cross_free_exact_live_set, 120)
{
	heap_setup(1, true);
	pthread_t w[ST_THREADS];
	for (long i = 0; i < ST_THREADS; i++)
		CHECK_EQ_INT(
		    pthread_create(&w[i], NULL, st_worker, (void *)(i + 1)), 0);
	for (int i = 0; i < ST_THREADS; i++)
		pthread_join(w[i], NULL);
	drain(&st_tally);
	/* Exactly the recorded blocks still allocated: none lost to the
	 * other threads' frees and reallocs, no phantom. */
	size_t recorded = 0;
	for (int i = 0; i < ST_SLOTS; i++) {
		uint64_t p = st_slots[i] & ~(uintptr_t)1;
		if (!p)
			continue;
		CHECK_EQ_INT(pa_live_find(pa_heap.live, p, NULL),
			     (int)(st_slots[i] & 1));
		recorded += st_slots[i] & 1;
	}
	CHECK_EQ_INT(live_count(), recorded);
	/* Not vacuous, whatever the scheduler did. */
	CHECK(recorded > 0);
	CHECK(st_tally.samples > 1000);
	for (int i = 0; i < ST_SLOTS; i++)
		pa_heap_free((void *)(st_slots[i] & ~(uintptr_t)1));
	CHECK_EQ_INT(live_count(), 0);
	CHECK_EQ_INT(pa_live_overflow(pa_heap.live), 0);
}
