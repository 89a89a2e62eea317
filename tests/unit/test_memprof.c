/* The memory profile: alloc totals per stack, inuse from the live table
 * and the region table (partial munmap, split, mremap grow/move/shrink,
 * MAP_FIXED), stacks kept across intervals and collected, bounded tables
 * with counted drops. Profiles are decoded as a consumer reads them. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <zlib.h>

#include "heap.h"
#include "live.h"
#include "memprof.h"
#include "modules.h"
#include "pprof.h"
#include "profile.pb-c.h"
#include "stacks.h"
#include "symbols.h"
#include "unit.h"

typedef Perftools__Profiles__Profile Profile;

enum {
	AO,
	AS,
	IO,
	IS
}; /* alloc_objects, alloc_space, inuse_objects, inuse_space */

static const struct pa_pprof_type mp_types[] = {
    {"alloc_objects", "count"},
    {"alloc_space", "bytes"},
    {"inuse_objects", "count"},
    {"inuse_space", "bytes"},
};

struct mp {
	struct pa_memprof *m;
	struct pa_pprof *p;
	struct pa_modules *mods;
	struct pa_symbols *syms;
	struct pa_sample *s; /* one sample, reused */
	Profile *last;
};

static struct mp mp_new(bool live)
{
	struct mp t;
	memset(&t, 0, sizeof(t));
	if (live)
		CHECK_EQ_INT(pa_live_new(&pa_heap.live, 1u << 12), 0);
	struct pa_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.alloc_rate = 4096;
	cfg.alloc_live = live;
	CHECK_EQ_INT(pa_memprof_new(&t.m, &cfg), 0);
	struct pa_pprof_desc d = {
	    .sample_types = mp_types,
	    .ntypes = 4,
	    .period_type = {"space", "bytes"},
	    .period = 4096,
	    .max_samples = 15000,
	    .max_bytes = 1800 * 1024,
	    .max_stacks = 50000,
	};
	CHECK_EQ_INT(pa_pprof_new(&t.p, &d), 0);
	CHECK_EQ_INT(pa_modules_new(&t.mods), 0);
	CHECK_EQ_INT(pa_modules_refresh(t.mods, true), 0);
	CHECK_EQ_INT(pa_symbols_new(&t.syms), 0);
	t.s = calloc(1, sizeof(*t.s));
	CHECK(t.s);
	return t;
}

static Profile *decode(const uint8_t *gz, size_t len)
{
	size_t cap = 16 << 20;
	uint8_t *raw = malloc(cap);
	CHECK(raw);
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	CHECK_EQ_INT(inflateInit2(&zs, 15 + 16), Z_OK);
	zs.next_in = (Bytef *)(uintptr_t)gz;
	zs.avail_in = (uInt)len;
	zs.next_out = raw;
	zs.avail_out = (uInt)cap;
	CHECK_EQ_INT(inflate(&zs, Z_FINISH), Z_STREAM_END);
	Profile *pr =
	    perftools__profiles__profile__unpack(NULL, zs.total_out, raw);
	inflateEnd(&zs);
	free(raw);
	CHECK(pr);
	return pr;
}

/* Builds this interval's profile, decoded. */
static Profile *profile(struct mp *t)
{
	if (t->last)
		perftools__profiles__profile__free_unpacked(t->last, NULL);
	t->last = NULL;
	CHECK_EQ_INT(pa_memprof_profile(t->m, t->p), 0);
	uint8_t *gz;
	size_t len;
	CHECK_EQ_INT(pa_pprof_encode(t->p, t->mods, t->syms, 1, 1, &gz, &len),
		     0);
	pa_pprof_reset(t->p);
	t->last = decode(gz, len);
	free(gz);
	return t->last;
}

static const Perftools__Profiles__Location *loc(const Profile *pr, uint64_t id)
{
	CHECK(id >= 1 && id <= pr->n_location);
	return pr->location[id - 1];
}

static const char *loc_name(const Profile *pr, uint64_t id)
{
	const Perftools__Profiles__Location *l = loc(pr, id);
	uint64_t f = l->line[0]->function_id;
	return pr->string_table[pr->function[f - 1]->name];
}

/* Sum of value type v over samples whose stack holds address addr (and,
 * if leaf is set, whose leaf frame is that synthetic name). */
static int64_t sum(const Profile *pr, uint64_t addr, const char *leaf, int v)
{
	if (!pr)
		return 0;
	int64_t total = 0;
	for (size_t i = 0; i < pr->n_sample; i++) {
		const Perftools__Profiles__Sample *s = pr->sample[i];
		int hit = addr == 0;
		for (size_t k = 0; k < s->n_location_id; k++)
			hit |= loc(pr, s->location_id[k])->address == addr;
		if (leaf && strcmp(loc_name(pr, s->location_id[0]), leaf) != 0)
			hit = 0;
		if (hit)
			total += s->value[v];
	}
	return total;
}

static int has_comment(const Profile *pr, const char *part)
{
	for (size_t i = 0; pr && i < pr->n_comment; i++)
		if (strstr(pr->string_table[pr->comment[i]], part))
			return 1;
	return 0;
}

/* Fake call sites: addresses outside every module, kept as they are. */
#define SITE_A 0x10000100ULL
#define SITE_B 0x10000200ULL
#define ROOT   0x10000f00ULL

static void alloc(struct mp *t, uint64_t site, uint64_t addr, uint64_t size,
		  uint64_t weight, uint32_t seq, bool live)
{
	struct pa_sample *s = t->s;
	s->kind = PA_SAMPLE_ALLOC;
	s->flags = 0;
	s->addr = addr;
	s->size = size;
	s->seq = seq;
	s->values[0] = (int64_t)(weight / size);
	s->values[1] = (int64_t)weight;
	if (live) {
		struct pa_live_entry e = {addr, size, weight, seq, 0};
		CHECK_EQ_INT(pa_live_insert(pa_heap.live, &e), 0);
	}
	uint64_t pcs[2] = {site, ROOT};
	pa_memprof_consume(t->m, s, pcs, 2);
}

TEST(memprof_alloc_and_inuse_per_stack)
{
	struct mp t = mp_new(true);
	/* Site A: two blocks (100 B standing for 1000 B; 10 B for 2000 B),
	 * one still live. Site B: one live block. */
	alloc(&t, SITE_A, 0x50000, 100, 1000, 1, true);
	alloc(&t, SITE_A, 0x60000, 10, 2000, 2, false);
	alloc(&t, SITE_B, 0x70000, 64, 640, 3, true);
	Profile *pr = profile(&t);
	CHECK(pr);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, AS), 3000);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, AO), 210); /* 1000/100 + 2000/10 */
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, IS), 1000);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, IO), 10);
	CHECK_EQ_INT(sum(pr, SITE_B, NULL, IS), 640);
	CHECK_EQ_INT(sum(pr, ROOT, NULL, AS), 3640);
	/* Next interval: nothing allocated, the live blocks still there
	 * under their stacks. */
	pr = profile(&t);
	CHECK(pr);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, AS), 0);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, IS), 1000);
	CHECK_EQ_INT(sum(pr, SITE_B, NULL, IO), 10);
	/* Freed: gone from inuse. Nothing left at all: an empty profile
	 * still goes out, saying so. */
	CHECK_EQ_INT(pa_live_remove(pa_heap.live, (void *)0x50000, NULL), 1);
	CHECK_EQ_INT(pa_live_remove(pa_heap.live, (void *)0x70000, NULL), 1);
	pr = profile(&t);
	CHECK(pr);
	CHECK_EQ_INT(pr->n_sample, 0);
}

TEST(memprof_fractional_objects_not_biased_by_rounding)
{
	struct mp t = mp_new(false);
	/* 1,000 samples of 3 B each standing for 4 B: 1.33 objects each.
	 * Rounded per sample that would be 1,000; the sum is 1,333. */
	for (uint32_t i = 0; i < 1000; i++)
		alloc(&t, SITE_A, 0x100000 + i * 16, 3, 4, i, false);
	Profile *pr = profile(&t);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, AO), 1333);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, AS), 4000);
}

TEST(memprof_late_sample_of_a_freed_block)
{
	struct mp t = mp_new(true);
	/* Block freed (entry removed) and its address reused by another
	 * sampled block before the agent thread saw the first sample: the
	 * first sample must not claim the second block's entry. */
	struct pa_live_entry e2 = {0x9000, 50, 500, 8, 0};
	CHECK_EQ_INT(pa_live_insert(pa_heap.live, &e2), 0);
	alloc(&t, SITE_A, 0x9000, 50, 500, 7, false);
	alloc(&t, SITE_B, 0x9000, 50, 500, 8, false);
	Profile *pr = profile(&t);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, IS), 0);
	CHECK_EQ_INT(sum(pr, SITE_B, NULL, IS), 500);
	CHECK_EQ_INT(sum(pr, SITE_A, NULL, AS), 500);
}

TEST(memprof_pending_live_entries_counted)
{
	struct mp t = mp_new(true);
	/* Inserted by a hook, sample not consumed yet. */
	struct pa_live_entry e = {0xa000, 50, 500, 9, 0};
	CHECK_EQ_INT(pa_live_insert(pa_heap.live, &e), 0);
	Profile *pr = profile(&t);
	CHECK(pr);
	CHECK(has_comment(pr, "1 live samples not unwound yet"));
	CHECK_EQ_INT(sum(pr, 0, NULL, IS), 0);
}

TEST(memprof_no_stack_goes_to_a_named_frame)
{
	struct mp t = mp_new(false);
	struct pa_sample *s = t.s;
	s->kind = PA_SAMPLE_ALLOC;
	s->addr = 0x1000;
	s->size = 8;
	s->values[1] = 4096;
	pa_memprof_consume(t.m, s, NULL, 0);
	Profile *pr = profile(&t);
	CHECK_EQ_INT(sum(pr, 0, "[no stack]", AS), 4096);
	CHECK(has_comment(pr, "1 samples without a stack"));
}

/* ---- mappings ------------------------------------------------------------ */

#define MiB (1024ULL * 1024)

static void map_event(struct mp *t, uint32_t kind, uint64_t site, uint64_t addr,
		      uint64_t len, uint32_t flags)
{
	struct pa_sample *s = t->s;
	s->kind = kind;
	s->flags = flags;
	s->addr = addr;
	s->size = len;
	s->seq = 0;
	s->values[0] = 1;
	s->values[1] = (int64_t)len;
	uint64_t pcs[2] = {site, ROOT};
	if (kind == PA_SAMPLE_MMAP)
		pa_heap_regions_add(1); /* as the hook does before its commit */
	pa_memprof_consume(t->m, s, kind == PA_SAMPLE_MMAP ? pcs : NULL,
			   kind == PA_SAMPLE_MMAP ? 2 : 0);
}

static void mremap_event(struct mp *t, uint64_t old, uint64_t old_len,
			 uint64_t addr, uint64_t len, int flags)
{
	struct pa_sample *s = t->s;
	s->kind = PA_SAMPLE_MREMAP;
	s->flags = PA_SAMPLE_NO_STACK;
	s->addr = old;
	s->size = old_len;
	s->seq = (uint64_t)flags;
	s->values[0] = (int64_t)addr;
	s->values[1] = (int64_t)len;
	pa_memprof_consume(t->m, s, NULL, 0);
}

static int64_t mmap_inuse(struct mp *t, uint64_t site, int v)
{
	return sum(t->last, site, "[anonymous mmap]", v);
}

TEST(memprof_regions_exact)
{
	struct mp t = mp_new(false);
	const uint64_t B = 0x7f0000000000ULL;
	/* Four 4 MiB mappings at site A, one 1 MiB at site B. */
	for (int i = 0; i < 4; i++)
		map_event(&t, PA_SAMPLE_MMAP, SITE_A, B + (uint64_t)i * 8 * MiB,
			  4 * MiB, 0);
	map_event(&t, PA_SAMPLE_MMAP, SITE_B, B + 64 * MiB, MiB, 0);
	CHECK_EQ_INT(pa_heap.regions, 5);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 16 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IO), 4);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, AS), 16 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, AO), 4);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_B, IS), MiB);
	/* Region 0: its first MiB unmapped. Region 1: its last MiB. Region 2:
	 * a hole in the middle (split in two). */
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B, MiB, PA_SAMPLE_NO_STACK);
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B + 8 * MiB + 3 * MiB, MiB,
		  PA_SAMPLE_NO_STACK);
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B + 16 * MiB + MiB, 2 * MiB,
		  PA_SAMPLE_NO_STACK);
	/* A failed munmap changes nothing. */
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B + 24 * MiB, 4 * MiB,
		  PA_SAMPLE_NO_STACK | PA_SAMPLE_FAILED);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 12 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IO), 5);
	/* Nothing new this interval. */
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, AS), 0);
	CHECK_EQ_INT(pa_heap.regions, 6);
	/* One munmap over several regions and the gaps between them. */
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B, 20 * MiB, PA_SAMPLE_NO_STACK);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 4 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IO), 1);
	CHECK_EQ_INT(pa_heap.regions, 2);
	/* Lengths are page-rounded as the kernel does. */
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B + 24 * MiB, 1, PA_SAMPLE_NO_STACK);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 4 * MiB - 4096);
}

TEST(memprof_mremap_grow_move_shrink)
{
	struct mp t = mp_new(false);
	const uint64_t B = 0x7f0000000000ULL;
	map_event(&t, PA_SAMPLE_MMAP, SITE_A, B, 2 * MiB, 0);
	map_event(&t, PA_SAMPLE_MMAP, SITE_B, B + 16 * MiB, 2 * MiB, 0);
	profile(&t);
	/* Grow in place: the growth is allocated at the creating stack. */
	mremap_event(&t, B, 2 * MiB, B, 3 * MiB, 0);
	/* Grow and move. */
	mremap_event(&t, B + 16 * MiB, 2 * MiB, B + 64 * MiB, 6 * MiB,
		     MREMAP_MAYMOVE);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 3 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, AS), MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, AO), 0);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_B, IS), 6 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_B, AS), 4 * MiB);
	/* The old place is free: a munmap there changes nothing. */
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B + 16 * MiB, 2 * MiB,
		  PA_SAMPLE_NO_STACK);
	/* Shrink. */
	mremap_event(&t, B + 64 * MiB, 6 * MiB, B + 64 * MiB, MiB, 0);
	/* An untracked mapping moved onto part of a tracked one (FIXED):
	 * what it covers is gone. */
	mremap_event(&t, B + 200 * MiB, MiB, B + 2 * MiB, MiB,
		     MREMAP_MAYMOVE | MREMAP_FIXED);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_B, IS), MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 2 * MiB);
	/* MREMAP_DONTUNMAP: the old range stays mapped, the new one has the
	 * same stack. */
	mremap_event(&t, B, 2 * MiB, B + 128 * MiB, 2 * MiB,
		     MREMAP_MAYMOVE | 4 /* DONTUNMAP */);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 4 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IO), 2);
	/* A new mapping with MAP_FIXED over tracked ranges replaces them. */
	map_event(&t, PA_SAMPLE_MMAP, SITE_B, B, 256 * MiB, 0);
	profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IS), 0);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_B, IS), 256 * MiB);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_B, IO), 1);
	CHECK_EQ_INT(pa_heap.regions, 1);
	map_event(&t, PA_SAMPLE_MUNMAP, 0, B, 256 * MiB, PA_SAMPLE_NO_STACK);
	CHECK_EQ_INT(pa_heap.regions, 0);
	profile(&t);
	CHECK_EQ_INT(sum(t.last, 0, NULL, IS), 0);
}

TEST(memprof_region_table_bounded)
{
	struct mp t = mp_new(false);
	const uint64_t B = 0x100000000000ULL;
	/* 70,000 one-page mappings: past the table's 65,536 the rest are
	 * counted, not tracked. */
	for (uint64_t i = 0; i < 70000; i++)
		map_event(&t, PA_SAMPLE_MMAP, SITE_A, B + i * 8192, 4096, 0);
	Profile *pr = profile(&t);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, IO), 65536);
	CHECK_EQ_INT(mmap_inuse(&t, SITE_A, AO), 70000);
	CHECK(has_comment(pr, "4464 mappings not tracked"));
	CHECK_EQ_INT(pa_heap.regions, 65536);
}

TEST(memprof_stack_table_full_folds_and_recovers)
{
	struct mp t = mp_new(false);
	/* 20,000 distinct stacks in one interval: past 16,384 they fold into
	 * one named frame, totals kept. */
	for (uint32_t i = 0; i < 20000; i++)
		alloc(&t, 0x20000000ULL + i * 16, 0x1000 + i * 16, 100, 1000, i,
		      false);
	Profile *pr = profile(&t);
	CHECK_EQ_INT(sum(pr, 0, NULL, AS), 20000 * 1000);
	int64_t folded = sum(pr, 0, "[stack table full]", AS);
	CHECK(folded >= 3616 * 1000 && folded <= 3618 * 1000);
	CHECK(has_comment(pr, "stacks folded into [stack table full]"));
	/* Nothing refers to those stacks: two rounds later they are
	 * collected and new stacks fit again. */
	profile(&t);
	profile(&t);
	for (uint32_t i = 0; i < 100; i++)
		alloc(&t, 0x30000000ULL + i * 16, 0x1000 + i * 16, 100, 1000, i,
		      false);
	pr = profile(&t);
	CHECK_EQ_INT(sum(pr, 0, "[stack table full]", AS), 0);
	CHECK_EQ_INT(sum(pr, 0, NULL, AS), 100 * 1000);
	/* Full again, rounds later: the fold still has its frame. */
	for (uint32_t i = 0; i < 20000; i++)
		alloc(&t, 0x40000000ULL + i * 16, 0x1000 + i * 16, 100, 1000, i,
		      false);
	pr = profile(&t);
	CHECK_EQ_INT(sum(pr, 0, NULL, AS), 20000 * 1000);
	CHECK(sum(pr, 0, "[stack table full]", AS) > 0);
}

TEST(memprof_live_overflow_reported)
{
	struct mp t = mp_new(true);
	/* A full window: the 33rd block with the same home is not tracked. */
	struct pa_live *small = NULL;
	CHECK_EQ_INT(pa_live_new(&small, PA_LIVE_WINDOW), 0);
	pa_live_free(pa_heap.live);
	pa_heap.live = small;
	for (uint32_t i = 0; i <= PA_LIVE_WINDOW; i++) {
		struct pa_live_entry e = {0x1000 + i * 16, 16, 160, i, 0};
		pa_live_insert(small, &e);
	}
	Profile *pr = profile(&t);
	CHECK(has_comment(pr, "1 live blocks not tracked (live table full)"));
	/* Reported per interval: not again. */
	pr = profile(&t);
	CHECK(!has_comment(pr, "live table full"));
}

/* ---- the interned stack table -------------------------------------------- */

TEST(stacks_intern_mark_collect)
{
	struct pa_stacks *s;
	CHECK_EQ_INT(pa_stacks_new(&s, 4, 10), 0);
	uint64_t a[3] = {1, 2, 3}, b[3] = {1, 2, 4};
	static const char leaf[] = "[x]";
	uint32_t ia = pa_stacks_intern(s, a, 3, NULL);
	uint32_t ib = pa_stacks_intern(s, b, 3, NULL);
	uint32_t il = pa_stacks_intern(s, a, 3, leaf);
	CHECK(ia && ib && il && ia != ib && ia != il);
	CHECK_EQ_INT(pa_stacks_intern(s, a, 3, NULL), ia);
	int n;
	const char *lf;
	const uint64_t *pcs = pa_stacks_get(s, il, &n, &lf);
	CHECK(pcs && n == 3 && pcs[2] == 3 && lf == leaf);
	/* Frames are capped: 9 used, a 3-frame stack does not fit. */
	uint64_t c[3] = {7, 8, 9};
	CHECK_EQ_INT(pa_stacks_intern(s, c, 3, NULL), 0);
	CHECK_EQ_INT(pa_stacks_refused(s), 1);
	/* Round 1 (interned), round 2 (only ia marked): nothing freed yet;
	 * round 3: ib and il unmarked twice, freed; ia survives. */
	CHECK_EQ_INT(pa_stacks_gc(s), 0);
	pa_stacks_mark(s, ia);
	CHECK_EQ_INT(pa_stacks_gc(s), 0);
	pa_stacks_mark(s, ia);
	CHECK_EQ_INT(pa_stacks_gc(s), 2);
	CHECK_EQ_INT(pa_stacks_count(s), 1);
	CHECK(pa_stacks_get(s, ib, &n, NULL) == NULL);
	CHECK_EQ_INT(pa_stacks_intern(s, a, 3, NULL), ia);
	/* Room again, and b is new now. */
	CHECK(pa_stacks_intern(s, c, 3, NULL) != 0);
	CHECK(pa_stacks_intern(s, b, 3, NULL) != 0);
	/* Count cap: 4 stacks. */
	uint64_t d = 99;
	CHECK(pa_stacks_intern(s, &d, 1, NULL) != 0);
	CHECK_EQ_INT(pa_stacks_intern(s, &d, 0, leaf), 0);
	pa_stacks_free(s);
	pa_stacks_free(NULL);
}
