/* The live-block table: insert/remove/replace, the prefilter, overflow,
 * stacks by seq, and concurrent threads with no lost or phantom entries. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "live.h"
#include "unit.h"

static struct pa_live *live_new(unsigned nslots)
{
	struct pa_live *t = NULL;
	CHECK_EQ_INT(pa_live_new(&t, nslots), 0);
	CHECK(t);
	return t;
}

static struct pa_live_entry entry(uint64_t addr, uint64_t size, uint32_t seq)
{
	struct pa_live_entry e = {addr, size, size * 10, seq, 0};
	return e;
}

static size_t count_entries(const struct pa_live *t)
{
	size_t n = 0;
	struct pa_live_entry e;
	for (size_t i = 0; i < pa_live_nslots(t); i++)
		n += (size_t)pa_live_read(t, i, &e);
	return n;
}

static int filter_all_zero(const struct pa_live *t)
{
	size_t n = pa_live_nslots(t) * 4;
	for (size_t i = 0; i < n; i++)
		if (t->filter[i])
			return 0;
	return 1;
}

TEST(live_rejects_bad_sizes)
{
	struct pa_live *t = NULL;
	CHECK_EQ_INT(pa_live_new(&t, 1000), -EINVAL);
	CHECK_EQ_INT(pa_live_new(&t, 16), -EINVAL);
	CHECK(t == NULL);
	pa_live_free(NULL);
}

TEST(live_insert_remove_roundtrip)
{
	struct pa_live *t = live_new(1024);
	CHECK(!pa_live_maybe(t, (void *)0x10000));
	for (uint64_t i = 1; i <= 100; i++) {
		struct pa_live_entry e =
		    entry(0x100000 + i * 48, i, (uint32_t)i);
		CHECK_EQ_INT(pa_live_insert(t, &e), 0);
	}
	CHECK_EQ_INT(count_entries(t), 100);
	for (uint64_t i = 1; i <= 100; i++)
		CHECK(pa_live_maybe(t, (void *)(uintptr_t)(0x100000 + i * 48)));
	struct pa_live_entry out;
	CHECK_EQ_INT(
	    pa_live_remove(t, (void *)(uintptr_t)(0x100000 + 7 * 48), &out), 1);
	CHECK_EQ_INT(out.addr, 0x100000 + 7 * 48);
	CHECK_EQ_INT(out.size, 7);
	CHECK_EQ_INT(out.weight, 70);
	CHECK_EQ_INT(out.seq, 7);
	/* Gone: a second free of the same address finds nothing. */
	CHECK_EQ_INT(
	    pa_live_remove(t, (void *)(uintptr_t)(0x100000 + 7 * 48), &out), 0);
	/* An address never inserted. */
	CHECK_EQ_INT(pa_live_remove(t, (void *)0x999990, NULL), 0);
	CHECK_EQ_INT(pa_live_remove(t, NULL, NULL), 0);
	for (uint64_t i = 1; i <= 100; i++)
		pa_live_remove(t, (void *)(uintptr_t)(0x100000 + i * 48), NULL);
	CHECK_EQ_INT(count_entries(t), 0);
	/* Every counter back to zero: free of anything is one load again. */
	CHECK(filter_all_zero(t));
	pa_live_free(t);
}

/* Pages of [p, p + len) in memory. */
static size_t resident_pages(const void *p, size_t len)
{
	static unsigned char vec[1 << 12];
	size_t pages = (len + 4095) / 4096, n = 0;
	CHECK(pages <= sizeof(vec));
	CHECK_EQ_INT(mincore((void *)(uintptr_t)p, len, vec), 0);
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	return n;
}

/* The agent's table is mapped whole before it is used: a sampled
 * allocation never takes a page fault in it. It still starts empty. */
TEST(live_populate_maps_every_page)
{
	struct pa_live *t = live_new(PA_LIVE_SLOTS);
	size_t pages = (t->map_len + 4095) / 4096;
	CHECK(resident_pages(t, t->map_len) < pages / 2);
	CHECK_EQ_INT(pa_live_populate(t), 0);
	CHECK_EQ_INT(resident_pages(t, t->map_len), pages);
	CHECK_EQ_INT(count_entries(t), 0);
	CHECK(filter_all_zero(t));
	struct pa_live_entry e = entry(0x100040, 5, 1);
	CHECK_EQ_INT(pa_live_insert(t, &e), 0);
	CHECK_EQ_INT(pa_live_remove(t, (void *)0x100040, NULL), 1);
	pa_live_free(t);
}

TEST(live_prefilter_says_no_for_unsampled)
{
	struct pa_live *t = live_new(PA_LIVE_SLOTS);
	/* 1,000 sampled blocks; 100,000 other addresses: the filter may say
	 * maybe for a few (a shared counter), never no for an inserted one. */
	for (uint64_t i = 0; i < 1000; i++) {
		struct pa_live_entry e =
		    entry(0x7f0000000000ULL + i * 4096 * 7, 64, (uint32_t)i);
		CHECK_EQ_INT(pa_live_insert(t, &e), 0);
	}
	int maybes = 0;
	for (uint64_t i = 0; i < 100000; i++)
		maybes += pa_live_maybe(
		    t, (void *)(uintptr_t)(0x550000000000ULL + i * 16));
	/* 1,000 of 131,072 counters used: expect ~0.8% false maybes. */
	CHECK(maybes < 2000);
	for (uint64_t i = 0; i < 1000; i++)
		CHECK(pa_live_maybe(
		    t, (void *)(uintptr_t)(0x7f0000000000ULL + i * 4096 * 7)));
	pa_live_free(t);
}

TEST(live_overflow_counted_not_crashing)
{
	/* Every slot is in every window. */
	struct pa_live *t = live_new(PA_LIVE_WINDOW);
	for (uint64_t i = 0; i < PA_LIVE_WINDOW; i++) {
		struct pa_live_entry e =
		    entry(0x1000 + i * 16, 16, (uint32_t)i);
		CHECK_EQ_INT(pa_live_insert(t, &e), 0);
	}
	struct pa_live_entry e = entry(0x900000, 16, 99);
	CHECK_EQ_INT(pa_live_insert(t, &e), -ENOSPC);
	CHECK_EQ_INT(pa_live_overflow(t), 1);
	CHECK_EQ_INT(pa_live_remove(t, (void *)0x900000, NULL), 0);
	/* A free slot makes room again. */
	CHECK_EQ_INT(pa_live_remove(t, (void *)0x1000, NULL), 1);
	CHECK_EQ_INT(pa_live_insert(t, &e), 0);
	CHECK_EQ_INT(pa_live_overflow(t), 1);
	pa_live_free(t);
}

TEST(live_same_address_replaced_not_duplicated)
{
	struct pa_live *t = live_new(1024);
	struct pa_live_entry a = entry(0x5000, 100, 1),
			     b = entry(0x5000, 200, 2);
	CHECK_EQ_INT(pa_live_insert(t, &a), 0);
	/* The free of a went unseen: the new block at the same address
	 * replaces it, so inuse does not grow from the stale one. */
	CHECK_EQ_INT(pa_live_insert(t, &b), 0);
	CHECK_EQ_INT(count_entries(t), 1);
	struct pa_live_entry out;
	CHECK_EQ_INT(pa_live_remove(t, (void *)0x5000, &out), 1);
	CHECK_EQ_INT(out.size, 200);
	CHECK_EQ_INT(out.seq, 2);
	CHECK_EQ_INT(pa_live_remove(t, (void *)0x5000, &out), 0);
	CHECK(filter_all_zero(t));
	pa_live_free(t);
}

TEST(live_stack_set_only_for_matching_seq)
{
	struct pa_live *t = live_new(1024);
	struct pa_live_entry a = entry(0x8000, 64, 41);
	CHECK_EQ_INT(pa_live_insert(t, &a), 0);
	/* A late sample of an older block at the same address. */
	CHECK_EQ_INT(pa_live_set_stack(t, 0x8000, 40, 7), 0);
	CHECK_EQ_INT(pa_live_set_stack(t, 0x8000, 41, 9), 1);
	/* Set once: the sample is consumed once. */
	CHECK_EQ_INT(pa_live_set_stack(t, 0x8000, 41, 11), 0);
	CHECK_EQ_INT(pa_live_set_stack(t, 0x9000, 41, 9), 0);
	struct pa_live_entry out;
	int found = 0;
	for (size_t i = 0; i < pa_live_nslots(t); i++)
		if (pa_live_read(t, i, &out)) {
			found++;
			CHECK_EQ_INT(out.addr, 0x8000);
			CHECK_EQ_INT(out.stack, 9);
			CHECK_EQ_INT(out.weight, 640);
		}
	CHECK_EQ_INT(found, 1);
	pa_live_free(t);
}

/* Addresses that all land on one prefilter counter. */
static int same_bucket(struct pa_live *t, uint64_t *out, int want)
{
	size_t target = pa_live_filter_index(t, (void *)0x10000);
	int n = 0;
	for (uint64_t a = 0x10000; n < want && a < 0x10000 + (1ULL << 36);
	     a += 16)
		if (pa_live_filter_index(t, (void *)(uintptr_t)a) == target)
			out[n++] = a;
	return n;
}

TEST(live_prefilter_saturates_and_stays_maybe)
{
	struct pa_live *t = live_new(1u << 12);
	uint64_t addrs[300];
	CHECK_EQ_INT(same_bucket(t, addrs, 300), 300);
	for (int i = 0; i < 300; i++) {
		struct pa_live_entry e = entry(addrs[i], 16, (uint32_t)i);
		CHECK_EQ_INT(pa_live_insert(t, &e), 0);
	}
	size_t b = pa_live_filter_index(t, (void *)(uintptr_t)addrs[0]);
	CHECK_EQ_INT(t->filter[b], 255);
	for (int i = 0; i < 300; i++)
		CHECK_EQ_INT(
		    pa_live_remove(t, (void *)(uintptr_t)addrs[i], NULL), 1);
	/* Sticky: it cannot tell how many are left, so it keeps saying maybe;
	 * the table itself is exact. */
	CHECK_EQ_INT(t->filter[b], 255);
	CHECK_EQ_INT(count_entries(t), 0);
	pa_live_free(t);
}

/* Concurrency: threads insert and remove their own addresses, and scan
 * the table as the agent thread does, at the same time. */
#define LT_THREADS 4
#define LT_KEEP	   512
#define LT_ROUNDS  200000

struct lt_arg {
	struct pa_live *t;
	int id;
	uint64_t kept[LT_KEEP]; /* 0: empty */
};

static void *lt_worker(void *p)
{
	struct lt_arg *a = p;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(a->id + 1);
	uint64_t next = 1;
	for (int r = 0; r < LT_ROUNDS; r++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		int slot = (int)(x % LT_KEEP);
		if (a->kept[slot]) {
			if (pa_live_remove(a->t,
					   (void *)(uintptr_t)a->kept[slot],
					   NULL) != 1)
				abort(); /* lost entry */
			a->kept[slot] = 0;
		} else {
			/* Unique per thread: id in the top bits. */
			uint64_t addr =
			    ((uint64_t)(a->id + 1) << 40) | (next++ << 4);
			struct pa_live_entry e = {addr, 16, 160, (uint32_t)r,
						  0};
			if (pa_live_insert(a->t, &e) == 0)
				a->kept[slot] = addr;
		}
	}
	return NULL;
}

static int lt_stop;

static void *lt_scanner(void *p)
{
	struct pa_live *t = p;
	struct pa_live_entry e;
	while (!__atomic_load_n(&lt_stop, __ATOMIC_RELAXED))
		for (size_t i = 0; i < pa_live_nslots(t); i++)
			if (pa_live_read(t, i, &e) &&
			    (e.size != 16 || e.weight != 160))
				abort(); /* torn read */
	return NULL;
}

TEST_TIMEOUT(live_concurrent_no_lost_or_phantom, 60)
{
	struct pa_live *t = live_new(1u << 13);
	static struct lt_arg args[LT_THREADS];
	pthread_t th[LT_THREADS], scan;
	__atomic_store_n(&lt_stop, 0, __ATOMIC_RELAXED);
	CHECK_EQ_INT(pthread_create(&scan, NULL, lt_scanner, t), 0);
	for (int i = 0; i < LT_THREADS; i++) {
		memset(&args[i], 0, sizeof(args[i]));
		args[i].t = t;
		args[i].id = i;
		CHECK_EQ_INT(pthread_create(&th[i], NULL, lt_worker, &args[i]),
			     0);
	}
	for (int i = 0; i < LT_THREADS; i++)
		pthread_join(th[i], NULL);
	__atomic_store_n(&lt_stop, 1, __ATOMIC_RELAXED);
	pthread_join(scan, NULL);
	/* The table holds exactly what the threads kept. */
	size_t expected = 0;
	for (int i = 0; i < LT_THREADS; i++)
		for (int k = 0; k < LT_KEEP; k++)
			if (args[i].kept[k]) {
				expected++;
				CHECK(pa_live_maybe(
				    t, (void *)(uintptr_t)args[i].kept[k]));
			}
	CHECK_EQ_INT(count_entries(t), expected);
	struct pa_live_entry e;
	for (size_t s = 0; s < pa_live_nslots(t); s++) {
		if (!pa_live_read(t, s, &e))
			continue;
		int owner = (int)(e.addr >> 40) - 1;
		CHECK(owner >= 0 && owner < LT_THREADS);
		int found = 0;
		for (int k = 0; k < LT_KEEP; k++)
			found |= args[owner].kept[k] == e.addr;
		CHECK(found);
	}
	for (int i = 0; i < LT_THREADS; i++)
		for (int k = 0; k < LT_KEEP; k++)
			if (args[i].kept[k])
				CHECK_EQ_INT(
				    pa_live_remove(
					t, (void *)(uintptr_t)args[i].kept[k],
					NULL),
				    1);
	CHECK_EQ_INT(count_entries(t), 0);
	CHECK(filter_all_zero(t));
	CHECK_EQ_INT(pa_live_overflow(t), 0);
	pa_live_free(t);
}
