/* The live-block table: sampled heap blocks that are still allocated, in a
 * fixed-size lock-free open-addressing table, with a counting prefilter so
 * that free() of an unsampled block costs one relaxed load. Hot path. */
#ifndef PA_LIVE_H
#define PA_LIVE_H

#include <stddef.h>
#include <stdint.h>

/* Slots probed from an address's home slot; an insert that finds none of
 * them free is an overflow (counted, the block is then alloc-only). */
#define PA_LIVE_WINDOW 32
/* Default size: ~10,000 live samples (about 5 GiB live at 512k) fill 30%
 * of it; 1 MiB of slots plus a 128 KiB prefilter. */
#define PA_LIVE_SLOTS (1u << 15)
/* Prefilter counters per slot: ~n/(4*slots) false "maybe". */
#define PA_LIVE_FILTER_PER_SLOT 4

/* A consistent copy of one live entry. */
struct pa_live_entry {
	uint64_t addr;
	uint64_t size;	 /* requested bytes */
	uint64_t weight; /* unbiased bytes this sample stands for */
	uint32_t seq;	 /* low 32 bits of the sample's seq */
	/* Interned stack id, 0 until the agent thread sets it. */
	uint32_t stack;
};

struct pa_live {
	/* The prefilter first: free() reads only these two fields. One
	 * counter per hash bucket, saturating at 255 (then it stays "maybe"
	 * for good; the filter may say maybe, the table is exact). */
	uint8_t *filter;
	uint64_t filter_mask; /* number of counters - 1 */
	unsigned slot_shift;  /* 64 - log2(number of slots) */
	uint64_t mask;	      /* slots - 1 */
	struct pa_live_slot *slots;
	size_t map_len; /* bytes mapped for slots + filter */
	/* Inserts that found no free slot. Written only then: a counter
	 * every insert and remove updated here would bounce the cache line
	 * the hooks read the fields above from between the cores. */
	uint64_t overflow;
};

/* Maps a table of nslots (a power of two >= PA_LIVE_WINDOW) with mmap:
 * never malloc, so the hooks cannot recurse. Not for the hot path. */
int pa_live_new(struct pa_live **out, unsigned nslots);
void pa_live_free(struct pa_live *t); /* accepts NULL; no hook may use t */

/* Maps all of t's pages now (before it is published: t is empty), so
 * that the threads whose allocations are sampled never take a page fault
 * in it: each page would otherwise cost them two (a read, then the
 * write), and every page is soon used, the slots being hashed. Returns 0,
 * or -errno where the kernel cannot (before Linux 5.14): then pages are
 * mapped on first use, as without this. */
int pa_live_populate(struct pa_live *t);

/* The prefilter counter of p, direct-mapped by 64-byte line: the frees
 * of one heap page read one cache line of the filter (a hashed index
 * would miss the cache on nearly every free). Lines 64 B x counters apart
 * share a counter; four 16-byte blocks share a line. */
static inline size_t pa_live_filter_slot(const void *p, uint64_t mask)
{
	return (size_t)(((uintptr_t)p >> 6) & mask);
}

/* A counter at this value says "maybe" for good: inserts and removes leave
 * it alone. The table's counters saturate here; heap.c pins the lines of
 * blocks that free() must always send to its slow path. */
#define PA_LIVE_FILTER_PINNED 255

static inline void pa_live_filter_pin(uint8_t *filter, uint64_t mask,
				      const void *p)
{
	__atomic_store_n(&filter[pa_live_filter_slot(p, mask)],
			 PA_LIVE_FILTER_PINNED, __ATOMIC_RELAXED);
}

static inline size_t pa_live_filter_index(const struct pa_live *t,
					  const void *p)
{
	return pa_live_filter_slot(p, t->filter_mask);
}

/* Hot path (free, realloc): false means the block is certainly not in the
 * table; true means look. One relaxed load. */
static inline int pa_live_maybe(const struct pa_live *t, const void *p)
{
	return __atomic_load_n(&t->filter[pa_live_filter_index(t, p)],
			       __ATOMIC_RELAXED) != 0;
}

/* Hot path, lock-free, async-signal-safe. Inserts a sampled block; an
 * existing entry for the same address (its free went unseen) is replaced.
 * Returns 0, or -ENOSPC when the probe window is full (counted). */
int pa_live_insert(struct pa_live *t, const struct pa_live_entry *e);

/* Hot path: removes addr's entry, copying it to *out if out is not NULL.
 * Returns 1 if an entry was removed, 0 if none. Call BEFORE the real free
 * (PITFALLS 8): once freed, the address may be handed out again. */
int pa_live_remove(struct pa_live *t, const void *addr,
		   struct pa_live_entry *out);

/* Any thread: copies addr's entry to *out (if not NULL). Returns 1 if
 * found. Scans the probe window only. */
int pa_live_find(const struct pa_live *t, uint64_t addr,
		 struct pa_live_entry *out);

/* Agent thread: records the stack of addr's entry if it is still the one
 * the sample with this seq created. Returns 1 if set. */
int pa_live_set_stack(struct pa_live *t, uint64_t addr, uint32_t seq,
		      uint32_t stack);

/* Agent thread: copies slot i (0 <= i < nslots) if it holds a live entry.
 * The copy is consistent even while hooks insert and remove. */
int pa_live_read(const struct pa_live *t, size_t i, struct pa_live_entry *out);
size_t pa_live_nslots(const struct pa_live *t);
uint64_t pa_live_overflow(const struct pa_live *t);

#endif
