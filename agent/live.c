/* The live-block table: lock-free open addressing with a bounded probe
 * window and a saturating counting prefilter (hot path: no locks, no
 * malloc, async-signal-safe). */
#include <errno.h>
#include <stdbool.h>
#include <sys/mman.h>

#include "live.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* A slot's addr: 0 empty, CLAIMED while one thread writes or removes it,
 * else the block's address (published last, with release). */
#define CLAIMED 1u

struct pa_live_slot {
	uint64_t addr;
	uint64_t size;
	uint64_t weight;
	uint64_t tag; /* seq << 32 | stack: one word, so set_stack can CAS it */
};

static unsigned log2u(uint64_t v)
{
	unsigned r = 0;
	while (v > 1) {
		v >>= 1;
		r++;
	}
	return r;
}

int pa_live_new(struct pa_live **out, unsigned nslots)
{
	*out = NULL;
	if (nslots < PA_LIVE_WINDOW || (nslots & (nslots - 1)) != 0 ||
	    nslots > (1u << 24))
		return -EINVAL;
	size_t nfilter = (size_t)nslots * PA_LIVE_FILTER_PER_SLOT;
	size_t len = sizeof(struct pa_live) +
		     (size_t)nslots * sizeof(struct pa_live_slot) + nfilter;
	/* mmap, not malloc: hooks may not re-enter the allocator. Pages are
	 * touched only where entries land. */
	void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return -ENOMEM;
	struct pa_live *t = m;
	t->slots = (struct pa_live_slot *)(t + 1);
	t->filter = (uint8_t *)(t->slots + nslots);
	t->filter_mask = nfilter - 1;
	t->slot_shift = 64 - log2u(nslots);
	t->mask = nslots - 1;
	t->map_len = len;
	*out = t;
	return 0;
}

int pa_live_populate(struct pa_live *t)
{
	int saved = errno;
	int rc = madvise(t, t->map_len, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
	errno = saved;
	return rc;
}

void pa_live_free(struct pa_live *t)
{
	if (t)
		munmap(t, t->map_len);
}

size_t pa_live_nslots(const struct pa_live *t)
{
	return (size_t)t->mask + 1;
}

uint64_t pa_live_overflow(const struct pa_live *t)
{
	return __atomic_load_n(&t->overflow, __ATOMIC_RELAXED);
}

static uint64_t home(const struct pa_live *t, uint64_t addr)
{
	return ((addr >> 4) * 0x9e3779b97f4a7c15ULL) >> t->slot_shift;
}

/* Counters saturate at PA_LIVE_FILTER_PINNED and then stay: a saturated bucket
 * always says "maybe", which costs a window scan but never loses a free. */
static void filter_add(struct pa_live *t, uint64_t addr, int delta)
{
	uint8_t *c =
	    &t->filter[pa_live_filter_index(t, (void *)(uintptr_t)addr)];
	uint8_t v = __atomic_load_n(c, __ATOMIC_RELAXED);
	for (;;) {
		if (v == PA_LIVE_FILTER_PINNED || (delta < 0 && v == 0))
			return;
		uint8_t nv = (uint8_t)(v + delta);
		if (__atomic_compare_exchange_n(
			c, &v, nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
			return;
	}
}

static void fill(struct pa_live_slot *s, const struct pa_live_entry *e)
{
	__atomic_store_n(&s->size, e->size, __ATOMIC_RELAXED);
	__atomic_store_n(&s->weight, e->weight, __ATOMIC_RELAXED);
	__atomic_store_n(&s->tag, (uint64_t)e->seq << 32 | e->stack,
			 __ATOMIC_RELAXED);
	/* Publishes the fields with the address. */
	__atomic_store_n(&s->addr, e->addr, __ATOMIC_RELEASE);
}

int pa_live_insert(struct pa_live *t, const struct pa_live_entry *e)
{
	uint64_t addr = e->addr;
	if (addr <= CLAIMED)
		return -EINVAL;
	uint64_t h = home(t, addr);
	int first_empty = -1;
	/* A stale entry for this address (a free we never saw, e.g. through
	 * an allocator entry point that is not interposed) is replaced rather
	 * than duplicated, so inuse cannot grow from it. The prefilter says
	 * when there can be none: the scan of the whole window (16 cache
	 * lines) is then skipped. */
	if (!pa_live_maybe(t, (void *)(uintptr_t)addr))
		first_empty = 0;
	for (int i = 0; first_empty < 0 && i < PA_LIVE_WINDOW; i++) {
		struct pa_live_slot *s = &t->slots[(h + (uint64_t)i) & t->mask];
		uint64_t a = __atomic_load_n(&s->addr, __ATOMIC_ACQUIRE);
		if (a == addr) {
			if (__atomic_compare_exchange_n(&s->addr, &a, CLAIMED,
							false, __ATOMIC_ACQUIRE,
							__ATOMIC_RELAXED)) {
				fill(s, e);
				return 0;
			}
		} else if (a == 0 && first_empty < 0) {
			first_empty = i;
		}
	}
	for (int i = first_empty < 0 ? PA_LIVE_WINDOW : first_empty;
	     i < PA_LIVE_WINDOW; i++) {
		struct pa_live_slot *s = &t->slots[(h + (uint64_t)i) & t->mask];
		uint64_t a = 0;
		if (__atomic_load_n(&s->addr, __ATOMIC_RELAXED) != 0)
			continue;
		if (!__atomic_compare_exchange_n(&s->addr, &a, CLAIMED, false,
						 __ATOMIC_ACQUIRE,
						 __ATOMIC_RELAXED))
			continue;
		filter_add(t, addr, 1);
		fill(s, e);
		return 0;
	}
	__atomic_add_fetch(&t->overflow, 1, __ATOMIC_RELAXED);
	return -ENOSPC;
}

int pa_live_remove(struct pa_live *t, const void *p, struct pa_live_entry *out)
{
	uint64_t addr = (uint64_t)(uintptr_t)p;
	if (addr <= CLAIMED)
		return 0;
	uint64_t h = home(t, addr);
	for (int i = 0; i < PA_LIVE_WINDOW; i++) {
		struct pa_live_slot *s = &t->slots[(h + (uint64_t)i) & t->mask];
		uint64_t a = __atomic_load_n(&s->addr, __ATOMIC_RELAXED);
		if (a != addr)
			continue;
		if (!__atomic_compare_exchange_n(&s->addr, &a, CLAIMED, false,
						 __ATOMIC_ACQUIRE,
						 __ATOMIC_RELAXED))
			continue;
		if (out) {
			uint64_t tag =
			    __atomic_load_n(&s->tag, __ATOMIC_RELAXED);
			out->addr = addr;
			out->size = __atomic_load_n(&s->size, __ATOMIC_RELAXED);
			out->weight =
			    __atomic_load_n(&s->weight, __ATOMIC_RELAXED);
			out->seq = (uint32_t)(tag >> 32);
			out->stack = (uint32_t)tag;
		}
		filter_add(t, addr, -1);
		__atomic_store_n(&s->addr, 0, __ATOMIC_RELEASE);
		return 1;
	}
	return 0;
}

int pa_live_set_stack(struct pa_live *t, uint64_t addr, uint32_t seq,
		      uint32_t stack)
{
	/* Most short-lived blocks are freed before the agent thread gets
	 * to their sample: the prefilter says so without the window scan
	 * (16 cache lines the hooks would then miss). */
	if (addr <= CLAIMED || !pa_live_maybe(t, (void *)(uintptr_t)addr))
		return 0;
	uint64_t h = home(t, addr);
	for (int i = 0; i < PA_LIVE_WINDOW; i++) {
		struct pa_live_slot *s = &t->slots[(h + (uint64_t)i) & t->mask];
		if (__atomic_load_n(&s->addr, __ATOMIC_ACQUIRE) != addr)
			continue;
		/* Only the entry the sample created: a block freed and a new
		 * one sampled at the same address carries another seq. */
		uint64_t expect = (uint64_t)seq << 32;
		if (__atomic_compare_exchange_n(
			&s->tag, &expect, (uint64_t)seq << 32 | stack, false,
			__ATOMIC_RELAXED, __ATOMIC_RELAXED))
			return 1;
	}
	return 0;
}

int pa_live_find(const struct pa_live *t, uint64_t addr,
		 struct pa_live_entry *out)
{
	if (addr <= CLAIMED)
		return 0;
	uint64_t h = home(t, addr);
	struct pa_live_entry e;
	for (int i = 0; i < PA_LIVE_WINDOW; i++) {
		size_t j = (size_t)((h + (uint64_t)i) & t->mask);
		if (pa_live_read(t, j, &e) && e.addr == addr) {
			if (out)
				*out = e;
			return 1;
		}
	}
	return 0;
}

int pa_live_read(const struct pa_live *t, size_t i, struct pa_live_entry *out)
{
	const struct pa_live_slot *s = &t->slots[i & t->mask];
	/* Seqlock-style: the tag changes with every insert (a new seq), so
	 * an address and tag that match before and after mean the fields
	 * between belong together. Acquire loads keep the second look after
	 * the field reads (plain loads on x86; no fence, which TSan cannot
	 * follow). */
	for (int attempt = 0; attempt < 4; attempt++) {
		uint64_t a = __atomic_load_n(&s->addr, __ATOMIC_ACQUIRE);
		if (a <= CLAIMED)
			return 0;
		uint64_t tag = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
		uint64_t size = __atomic_load_n(&s->size, __ATOMIC_ACQUIRE);
		uint64_t weight = __atomic_load_n(&s->weight, __ATOMIC_ACQUIRE);
		if (__atomic_load_n(&s->addr, __ATOMIC_RELAXED) != a ||
		    __atomic_load_n(&s->tag, __ATOMIC_RELAXED) != tag)
			continue;
		out->addr = a;
		out->size = size;
		out->weight = weight;
		out->seq = (uint32_t)(tag >> 32);
		out->stack = (uint32_t)tag;
		return 1;
	}
	return 0;
}
