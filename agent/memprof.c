/* The memory profile on the agent thread: per-stack allocation totals for
 * the interval, live sampled blocks (from the live table) and anonymous
 * mappings (an exact region table fed by mmap/munmap/mremap events). */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "heap.h"
#include "live.h"
#include "memprof.h"
#include "stacks.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

/* Stacks that live blocks and mappings may refer to across intervals,
 * and their frames: at most 2 MiB of frames (16 per stack on average
 * when the table is full) plus ~1 MiB of tables. */
#define MAX_STACKS 16384
#define MAX_FRAMES (256 * 1024)
/* Distinct tracked mappings (24 bytes each, grown on demand). */
#define MAX_REGIONS (1 << 16)

static const char LEAF_MMAP[] = "[anonymous mmap]";
static const char LEAF_NO_STACK[] = "[no stack]";
static const char LEAF_FULL[] = "[stack table full]";

struct acc {
	double alloc_obj, alloc_bytes, inuse_obj, inuse_bytes;
};

struct region {
	uint64_t start, end;
	uint32_t stack;
};

struct pa_memprof {
	struct pa_stacks *stacks;
	struct acc *acc; /* [max_stacks + 1], by stack id */
	struct region *regions;
	size_t nregions, cap;
	uint32_t full_stack; /* where values go when the stack table is full */
	uint64_t page;
	/* Counted here, reported (per interval) in the profile comment. */
	uint64_t regions_full, nostack;
	uint64_t pending; /* live entries not unwound yet at the last profile */
	/* Cumulative counters as of the last profile, for deltas. */
	uint64_t last_refused, last_overflow, last_regions_full, last_nostack;
	struct pa_heap_stats last_stats;
};

int pa_memprof_new(struct pa_memprof **out, const struct pa_config *cfg)
{
	(void)cfg; /* rate and live tracking are applied by pa_heap_start */
	*out = NULL;
	struct pa_memprof *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	int rc = pa_stacks_new(&m->stacks, MAX_STACKS, MAX_FRAMES);
	if (rc != 0) {
		free(m);
		return rc;
	}
	m->acc = calloc((size_t)MAX_STACKS + 1, sizeof(*m->acc));
	if (!m->acc) {
		pa_memprof_free(m);
		return -ENOMEM;
	}
	long page = sysconf(_SC_PAGESIZE);
	m->page = page > 0 ? (uint64_t)page : 4096;
	m->full_stack = pa_stacks_intern(m->stacks, NULL, 0, LEAF_FULL);
	*out = m;
	return 0;
}

void pa_memprof_free(struct pa_memprof *m)
{
	if (!m)
		return;
	pa_stacks_free(m->stacks);
	free(m->acc);
	free(m->regions);
	free(m);
}

static uint32_t stack_id(struct pa_memprof *m, const uint64_t *pcs, int n,
			 const char *leaf)
{
	if (n <= 0) {
		m->nostack++;
		n = 0;
		if (!leaf)
			leaf = LEAF_NO_STACK;
	}
	uint32_t id = pa_stacks_intern(m->stacks, pcs, n, leaf);
	return id ? id : m->full_stack;
}

/* ---- the region table: sorted, non-overlapping [start, end) -------------- */

/* First region whose end is above addr. */
static size_t region_find(const struct pa_memprof *m, uint64_t addr)
{
	size_t lo = 0, hi = m->nregions;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->regions[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int region_insert_at(struct pa_memprof *m, size_t i, uint64_t start,
			    uint64_t end, uint32_t stack)
{
	if (m->nregions == m->cap) {
		if (m->cap >= MAX_REGIONS) {
			m->regions_full++;
			return -ENOSPC;
		}
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct region *r = realloc(m->regions, cap * sizeof(*r));
		if (!r) {
			m->regions_full++;
			return -ENOMEM;
		}
		m->regions = r;
		m->cap = cap;
	}
	memmove(&m->regions[i + 1], &m->regions[i],
		(m->nregions - i) * sizeof(*m->regions));
	m->regions[i] = (struct region){start, end, stack};
	m->nregions++;
	return 0;
}

/* Unmaps [lo, hi): whole regions go, partly covered ones are trimmed, a
 * region with the hole in its middle splits in two. */
static void region_remove(struct pa_memprof *m, uint64_t lo, uint64_t hi)
{
	if (hi <= lo)
		return;
	size_t i = region_find(m, lo);
	if (i < m->nregions && m->regions[i].start < lo) {
		struct region r = m->regions[i];
		if (r.end > hi) {
			m->regions[i].end = lo;
			/* Past the cap the right part is forgotten (counted).
			 */
			region_insert_at(m, i + 1, hi, r.end, r.stack);
			return;
		}
		m->regions[i].end = lo;
		i++;
	}
	size_t j = i;
	while (j < m->nregions && m->regions[j].end <= hi)
		j++;
	if (j > i) {
		memmove(&m->regions[i], &m->regions[j],
			(m->nregions - j) * sizeof(*m->regions));
		m->nregions -= j - i;
	}
	if (i < m->nregions && m->regions[i].start < hi)
		m->regions[i].start = hi;
}

static void region_add(struct pa_memprof *m, uint64_t start, uint64_t end,
		       uint32_t stack)
{
	region_remove(m, start, end);
	region_insert_at(m, region_find(m, start), start, end, stack);
}

static uint64_t page_up(const struct pa_memprof *m, uint64_t len)
{
	return (len + m->page - 1) & ~(m->page - 1);
}

/* The stack of the region holding addr, or 0. */
static uint32_t region_stack(const struct pa_memprof *m, uint64_t addr)
{
	size_t i = region_find(m, addr);
	if (i < m->nregions && m->regions[i].start <= addr)
		return m->regions[i].stack;
	return 0;
}

static void on_mremap(struct pa_memprof *m, const struct pa_sample *s)
{
	uint64_t old = s->addr, old_len = page_up(m, s->size);
	uint64_t addr = (uint64_t)s->values[0];
	uint64_t len = page_up(m, (uint64_t)s->values[1]);
	int flags = (int)s->seq;
	uint32_t stack = region_stack(m, old);
	if (!(flags & MREMAP_DONTUNMAP))
		region_remove(m, old, old + old_len);
	if (!stack) {
		/* Not ours; with MREMAP_FIXED it still replaced the target. */
		region_remove(m, addr, addr + len);
		return;
	}
	/* The mapping keeps the stack that created it; growth is new
	 * memory, counted as allocated there. */
	region_add(m, addr, addr + len, stack);
	if (len > old_len)
		m->acc[stack].alloc_bytes += (double)(len - old_len);
}

/* ---- consuming samples --------------------------------------------------- */

void pa_memprof_consume(struct pa_memprof *m, const struct pa_sample *s,
			const uint64_t *pcs, int n)
{
	size_t before = m->nregions;
	int64_t consumed_mmap = 0;
	switch (s->kind) {
	case PA_SAMPLE_ALLOC: {
		uint32_t id = stack_id(m, pcs, n, NULL);
		double w = (double)s->values[1];
		m->acc[id].alloc_bytes += w;
		m->acc[id].alloc_obj += s->size ? w / (double)s->size : 0;
		struct pa_live *t = pa_heap.live;
		if (t)
			pa_live_set_stack(t, s->addr, (uint32_t)s->seq, id);
		return;
	}
	case PA_SAMPLE_MMAP: {
		uint64_t len = page_up(m, s->size);
		uint32_t id = stack_id(m, pcs, n, LEAF_MMAP);
		if (len) /* a region that starts a stack's life marks it */
			region_add(m, s->addr, s->addr + len, id);
		m->acc[id].alloc_obj += 1;
		m->acc[id].alloc_bytes += (double)len;
		consumed_mmap = 1;
		break;
	}
	case PA_SAMPLE_MUNMAP:
		if (!(s->flags & PA_SAMPLE_FAILED))
			region_remove(m, s->addr,
				      s->addr + page_up(m, s->size));
		break;
	case PA_SAMPLE_MREMAP:
		if (!(s->flags & PA_SAMPLE_FAILED) && s->size)
			on_mremap(m, s);
		break;
	default:
		return;
	}
	/* pa_heap.regions = mmap events in flight + regions held here. */
	int64_t delta = (int64_t)m->nregions - (int64_t)before - consumed_mmap;
	if (delta)
		pa_heap_regions_add(delta);
}

/* ---- the profile --------------------------------------------------------- */

static int64_t rounded(double v)
{
	return (int64_t)llround(v);
}

static int add_comment(struct pa_memprof *m, struct pa_pprof *p)
{
	struct pa_heap_stats st;
	st.ring_full_alloc =
	    __atomic_load_n(&pa_heap.stats.ring_full_alloc, __ATOMIC_RELAXED);
	st.ring_full_mmap =
	    __atomic_load_n(&pa_heap.stats.ring_full_mmap, __ATOMIC_RELAXED);
	st.ring_full_unmap =
	    __atomic_load_n(&pa_heap.stats.ring_full_unmap, __ATOMIC_RELAXED);
	uint64_t refused = pa_stacks_refused(m->stacks);
	uint64_t overflow = pa_heap.live ? pa_live_overflow(pa_heap.live) : 0;
	struct {
		uint64_t now, *last;
		const char *what;
	} items[] = {
	    {st.ring_full_alloc, &m->last_stats.ring_full_alloc,
	     "sampled allocations lost (sample buffer full)"},
	    {st.ring_full_mmap, &m->last_stats.ring_full_mmap,
	     "mmap events lost (sample buffer full)"},
	    {st.ring_full_unmap, &m->last_stats.ring_full_unmap,
	     "munmap/mremap events lost (live mmap bytes may be overstated)"},
	    {overflow, &m->last_overflow,
	     "live blocks not tracked (live table full)"},
	    {refused, &m->last_refused,
	     "stacks folded into [stack table full]"},
	    {m->regions_full, &m->last_regions_full,
	     "mappings not tracked (region table full)"},
	    {m->nostack, &m->last_nostack, "samples without a stack"},
	};
	char text[512];
	int len = 0;
	for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
		uint64_t d = items[i].now - *items[i].last;
		*items[i].last = items[i].now;
		if (!d || len >= (int)sizeof(text) - 1)
			continue;
		len += snprintf(text + len, sizeof(text) - (size_t)len,
				"%s%llu %s", len ? ", " : "pyroagent: memory: ",
				(unsigned long long)d, items[i].what);
	}
	if (m->pending && len < (int)sizeof(text) - 1)
		len += snprintf(
		    text + len, sizeof(text) - (size_t)len,
		    "%s%llu live samples not unwound yet (in the next profile)",
		    len ? ", " : "pyroagent: memory: ",
		    (unsigned long long)m->pending);
	if (len)
		pa_pprof_comment(p, text);
	return len;
}

int pa_memprof_profile(struct pa_memprof *m, struct pa_pprof *p)
{
	uint32_t max = pa_stacks_max(m->stacks);
	/* inuse: sampled blocks still live, each with its unbiased weight. */
	m->pending = 0;
	struct pa_live *t = pa_heap.live;
	if (t) {
		size_t ns = pa_live_nslots(t);
		struct pa_live_entry e;
		for (size_t i = 0; i < ns; i++) {
			if (!pa_live_read(t, i, &e))
				continue;
			if (!e.stack || e.stack > max) {
				m->pending++;
				continue;
			}
			m->acc[e.stack].inuse_bytes += (double)e.weight;
			m->acc[e.stack].inuse_obj +=
			    e.size ? (double)e.weight / (double)e.size : 0;
		}
	}
	/* ... and every tracked mapping, exactly. */
	for (size_t i = 0; i < m->nregions; i++) {
		struct region *r = &m->regions[i];
		m->acc[r->stack].inuse_obj += 1;
		m->acc[r->stack].inuse_bytes += (double)(r->end - r->start);
	}
	for (uint32_t id = 1; id <= max; id++) {
		struct acc *a = &m->acc[id];
		if (a->alloc_bytes == 0 && a->inuse_bytes == 0 &&
		    a->alloc_obj == 0 && a->inuse_obj == 0)
			continue;
		/* Rounded once per stack from exact sums: per-sample rounding
		 * of fractional object counts would bias the totals. */
		int64_t v[4] = {rounded(a->alloc_obj), rounded(a->alloc_bytes),
				rounded(a->inuse_obj), rounded(a->inuse_bytes)};
		int n;
		const char *leaf;
		const uint64_t *pcs = pa_stacks_get(m->stacks, id, &n, &leaf);
		if (pcs && (v[0] || v[1] || v[2] || v[3]))
			pa_pprof_add(p, pcs, n, leaf, v);
		pa_stacks_mark(m->stacks, id);
		memset(a, 0, sizeof(*a));
	}
	int len = add_comment(m, p);
	pa_stacks_mark(m->stacks, m->full_stack);
	pa_stacks_gc(m->stacks);
	/* Delivered even when empty: an interval after which nothing is
	 * live says so (inuse fell to zero), like the CPU profile does. */
	(void)len;
	return 0;
}
