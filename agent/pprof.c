/* Profile builder: aggregates one interval's stacks, encodes them as the
 * gzipped pprof Pyroscope accepts. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "pprof.h"
#include "profile.pb-c.h"

/* Runs on the agent thread only: it allocates, formats and compresses
 * freely, but every table has a hard cap so a pathological interval
 * (millions of distinct stacks) costs bounded memory and lands in the
 * "[truncated]" sample instead. */

/* Pyroscope cuts stacks deeper than 1000 locations. We cut first, keeping
 * the leaf side as the unwinder does (the synthetic leaf counts). */
#define MAX_DEPTH 1000
/* Hard caps while aggregating. Frames are 4-byte address ids; a distinct
 * address costs 8 bytes + 8 of hash slots. Past a cap a new stack folds
 * into "[truncated]" (counted). Worst case for one profile with 50,000
 * stacks of 4 values: about 9 MiB, held until the next reset. A profile
 * within Pyroscope's 2 MiB carries fewer frames and addresses than this
 * (a location costs at least ~12 bytes encoded). */
#define MAX_FRAMES	(1u << 20)
#define MAX_ADDRS	(1u << 17)
#define HARD_MAX_STACKS (1u << 20)
#define MAX_LEAVES	64
#define MAX_LEAF_LEN	255
#define MAX_COMMENTS	16
#define MAX_COMMENT_LEN 1023
/* Capacity an interval may leave behind for the next one (about 0.75 MiB
 * at most); what a larger interval needed is given back at reset. */
#define RETAIN_STACKS 4096u
#define RETAIN_FRAMES 65536u
#define RETAIN_ADDRS  16384u
/* Encode attempts when folding for max_bytes; the last folds everything. */
#define FOLD_ATTEMPTS 8
/* zlib level, measured on two 10,000-stack x 30-frame CPU profiles
 * (750 KB raw, one with shared call paths): level 1 keeps 48.8% in 10 ms,
 * 3 keeps 45.6% in 11 ms, 6 keeps 43.6% in 18-23 ms, 9 no better for
 * 45 ms. Levels 1-3 share zlib's fast matcher; 3 is the knee. */
#define GZIP_LEVEL 3

#define DEFAULT_MAX_SAMPLES 16000
#define DEFAULT_MAX_BYTES   (1800u * 1024u)
#define DEFAULT_MAX_STACKS  50000

#define UNKNOWN_NAME   "[unknown]"
#define TRUNCATED_NAME "[truncated]"

struct stack {
	uint64_t hash;
	uint32_t off;  /* first frame in p->frames */
	uint16_t n;    /* frames (address ids), leaf first */
	uint16_t leaf; /* synthetic leaf: index into p->leaves + 1; 0 none */
};

struct pa_pprof {
	struct pa_pprof_type types[PA_PPROF_MAX_VALUES];
	int ntypes;
	struct pa_pprof_type period_type;
	int64_t period;
	size_t max_samples, max_bytes, max_stacks;

	struct stack *stacks;
	int64_t *values; /* ntypes per stack */
	uint32_t nstacks, cap_stacks;
	uint32_t *stack_slots; /* open addressing: stack index + 1; 0 empty */
	uint32_t stack_mask;   /* slot count - 1; slots >= 2 x cap_stacks */

	uint32_t *frames; /* address ids */
	uint32_t nframes, cap_frames;

	uint64_t *addrs; /* distinct addresses; the index is the id */
	uint32_t naddrs, cap_addrs;
	uint32_t *addr_slots; /* address id + 1; 0 empty */
	uint32_t addr_mask;

	char *leaves[MAX_LEAVES]; /* owned copies of synthetic leaf names */
	size_t leaf_len[MAX_LEAVES];
	int nleaves;

	int64_t trunc[PA_PPROF_MAX_VALUES]; /* folded while aggregating */
	uint64_t trunc_adds;		    /* adds that went there */
	uint64_t cut;			    /* stacks cut to MAX_DEPTH */

	char *comments[MAX_COMMENTS]; /* owned */
	int ncomments;
	uint64_t comments_dropped;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint64_t hash_stack(const uint64_t *pcs, int n, unsigned leaf)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL * (leaf + 1) + (uint64_t)n;
	for (int i = 0; i < n; i++) {
		h ^= pcs[i];
		h *= 0x100000001b3ULL;
		h ^= h >> 29;
	}
	return mix64(h);
}

static int64_t sat_add(int64_t a, int64_t b)
{
	int64_t r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return r;
}

static void add_values(int64_t *dst, const int64_t *v, int n)
{
	for (int i = 0; i < n; i++)
		dst[i] = sat_add(dst[i], v[i]);
}

static bool all_zero(const int64_t *v, int n)
{
	for (int i = 0; i < n; i++)
		if (v[i] != 0)
			return false;
	return true;
}

static uint32_t slots_for(uint32_t cap)
{
	uint32_t s = 16;
	while (s < 2 * cap)
		s *= 2;
	return s;
}

/* ---- description ---- */

static bool valid_type(const struct pa_pprof_type *t)
{
	/* Pyroscope rejects a sample type containing '-' (400). */
	return t->type && t->unit && t->type[0] && t->unit[0] &&
	       !strchr(t->type, '-');
}

int pa_pprof_new(struct pa_pprof **out, const struct pa_pprof_desc *d)
{
	if (!out || !d || !d->sample_types || d->ntypes < 1 ||
	    d->ntypes > PA_PPROF_MAX_VALUES || !d->period_type.type ||
	    !d->period_type.unit)
		return -EINVAL;
	for (int i = 0; i < d->ntypes; i++)
		if (!valid_type(&d->sample_types[i]))
			return -EINVAL;
	struct pa_pprof *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	memcpy(p->types, d->sample_types,
	       (size_t)d->ntypes * sizeof(p->types[0]));
	p->ntypes = d->ntypes;
	p->period_type = d->period_type;
	p->period = d->period;
	p->max_samples = d->max_samples ? d->max_samples : DEFAULT_MAX_SAMPLES;
	p->max_bytes = d->max_bytes ? d->max_bytes : DEFAULT_MAX_BYTES;
	p->max_stacks = d->max_stacks ? d->max_stacks : DEFAULT_MAX_STACKS;
	if (p->max_stacks > HARD_MAX_STACKS)
		p->max_stacks = HARD_MAX_STACKS;
	*out = p;
	return 0;
}

static void clear_strings(struct pa_pprof *p)
{
	for (int i = 0; i < p->nleaves; i++)
		free(p->leaves[i]);
	p->nleaves = 0;
	for (int i = 0; i < p->ncomments; i++)
		free(p->comments[i]);
	p->ncomments = 0;
}

void pa_pprof_free(struct pa_pprof *p)
{
	if (!p)
		return;
	clear_strings(p);
	free(p->stacks);
	free(p->values);
	free(p->stack_slots);
	free(p->frames);
	free(p->addrs);
	free(p->addr_slots);
	free(p);
}

/* ---- aggregation ---- */

static int grow_stacks(struct pa_pprof *p)
{
	uint32_t cap = p->cap_stacks ? p->cap_stacks * 2 : 256;
	if (cap > p->max_stacks)
		cap = (uint32_t)p->max_stacks;
	if (cap <= p->cap_stacks)
		return -ENOSPC;
	struct stack *s = realloc(p->stacks, cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	p->stacks = s;
	int64_t *v =
	    realloc(p->values, (size_t)cap * (size_t)p->ntypes * sizeof(*v));
	if (!v)
		return -ENOMEM;
	p->values = v;
	uint32_t nslots = slots_for(cap);
	if (nslots - 1 != p->stack_mask || !p->stack_slots) {
		uint32_t *slots = calloc(nslots, sizeof(*slots));
		if (!slots)
			return -ENOMEM;
		for (uint32_t i = 0; i < p->nstacks; i++) {
			uint32_t j = (uint32_t)p->stacks[i].hash & (nslots - 1);
			while (slots[j])
				j = (j + 1) & (nslots - 1);
			slots[j] = i + 1;
		}
		free(p->stack_slots);
		p->stack_slots = slots;
		p->stack_mask = nslots - 1;
	}
	p->cap_stacks = cap;
	return 0;
}

static int grow_frames(struct pa_pprof *p, uint32_t need)
{
	uint32_t cap = p->cap_frames ? p->cap_frames : 4096;
	while (cap < need)
		cap *= 2;
	if (cap > MAX_FRAMES)
		cap = MAX_FRAMES;
	uint32_t *f = realloc(p->frames, cap * sizeof(*f));
	if (!f)
		return -ENOMEM;
	p->frames = f;
	p->cap_frames = cap;
	return 0;
}

static int grow_addrs(struct pa_pprof *p)
{
	uint32_t cap = p->cap_addrs ? p->cap_addrs * 2 : 1024;
	if (cap > MAX_ADDRS)
		cap = MAX_ADDRS;
	if (cap <= p->cap_addrs)
		return -ENOSPC;
	uint64_t *a = realloc(p->addrs, cap * sizeof(*a));
	if (!a)
		return -ENOMEM;
	p->addrs = a;
	uint32_t nslots = slots_for(cap);
	uint32_t *slots = calloc(nslots, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < p->naddrs; i++) {
		uint32_t j = (uint32_t)mix64(p->addrs[i]) & (nslots - 1);
		while (slots[j])
			j = (j + 1) & (nslots - 1);
		slots[j] = i + 1;
	}
	free(p->addr_slots);
	p->addr_slots = slots;
	p->addr_mask = nslots - 1;
	p->cap_addrs = cap;
	return 0;
}

/* The id of addr, inserting it; negative errno when the table is full. */
static int64_t addr_id(struct pa_pprof *p, uint64_t addr)
{
	if (p->addr_slots) {
		uint32_t j = (uint32_t)mix64(addr) & p->addr_mask;
		for (; p->addr_slots[j]; j = (j + 1) & p->addr_mask)
			if (p->addrs[p->addr_slots[j] - 1] == addr)
				return p->addr_slots[j] - 1;
	}
	if (p->naddrs == p->cap_addrs) {
		int rc = grow_addrs(p);
		if (rc)
			return rc;
	}
	uint32_t id = p->naddrs++;
	p->addrs[id] = addr;
	uint32_t j = (uint32_t)mix64(addr) & p->addr_mask;
	while (p->addr_slots[j])
		j = (j + 1) & p->addr_mask;
	p->addr_slots[j] = id + 1;
	return id;
}

/* Interned synthetic leaf (1-based), or a negative errno when full. */
static int leaf_id(struct pa_pprof *p, const char *leaf)
{
	size_t len = strnlen(leaf, MAX_LEAF_LEN);
	for (int i = 0; i < p->nleaves; i++)
		if (p->leaf_len[i] == len &&
		    memcmp(p->leaves[i], leaf, len) == 0)
			return i + 1;
	if (p->nleaves == MAX_LEAVES)
		return -ENOSPC;
	char *copy = strndup(leaf, len);
	if (!copy)
		return -ENOMEM;
	p->leaves[p->nleaves] = copy;
	p->leaf_len[p->nleaves] = len;
	return ++p->nleaves;
}

static int fold(struct pa_pprof *p, const int64_t *values, int rc)
{
	add_values(p->trunc, values, p->ntypes);
	p->trunc_adds++;
	return rc == -ENOMEM ? rc : 0;
}

static bool same_stack(const struct pa_pprof *p, const struct stack *s,
		       uint64_t h, const uint64_t *pcs, int n, unsigned leaf)
{
	if (s->hash != h || s->n != n || s->leaf != leaf)
		return false;
	/* Indexed, not p->frames + s->off: frames is NULL while only
	 * frameless stacks exist, and NULL + 0 is undefined. */
	for (int i = 0; i < n; i++)
		if (p->addrs[p->frames[s->off + (uint32_t)i]] != pcs[i])
			return false;
	return true;
}

int pa_pprof_add(struct pa_pprof *p, const uint64_t *pcs, int n,
		 const char *leaf, const int64_t *values)
{
	if (!p || !values || n < 0 || (n > 0 && !pcs))
		return -EINVAL;
	if (all_zero(values, p->ntypes))
		return 0;
	if (leaf && !leaf[0])
		leaf = NULL; /* a nameless frame would reach the profile */
	if (n == 0 && !leaf)
		leaf = UNKNOWN_NAME; /* a sample needs at least one location */
	int depth = leaf ? MAX_DEPTH - 1 : MAX_DEPTH;
	if (n > depth) {
		n = depth;
		p->cut++;
	}
	int lid = 0;
	if (leaf) {
		lid = leaf_id(p, leaf);
		if (lid < 0)
			return fold(p, values, lid);
	}
	uint64_t h = hash_stack(pcs, n, (unsigned)lid);
	if (p->stack_slots) {
		uint32_t j = (uint32_t)h & p->stack_mask;
		for (; p->stack_slots[j]; j = (j + 1) & p->stack_mask) {
			uint32_t i = p->stack_slots[j] - 1;
			if (same_stack(p, &p->stacks[i], h, pcs, n,
				       (unsigned)lid)) {
				add_values(p->values +
					       (size_t)i * (size_t)p->ntypes,
					   values, p->ntypes);
				return 0;
			}
		}
	}
	/* A new stack. */
	if (p->nstacks >= p->max_stacks ||
	    p->nframes + (uint32_t)n > MAX_FRAMES)
		return fold(p, values, -ENOSPC);
	int rc;
	if (p->nstacks == p->cap_stacks && (rc = grow_stacks(p)))
		return fold(p, values, rc);
	if (p->nframes + (uint32_t)n > p->cap_frames &&
	    (rc = grow_frames(p, p->nframes + (uint32_t)n)))
		return fold(p, values, rc);
	for (int i = 0; i < n; i++) {
		int64_t id = addr_id(p, pcs[i]);
		if (id < 0)
			return fold(p, values, (int)id);
		p->frames[p->nframes + (uint32_t)i] = (uint32_t)id;
	}
	uint32_t idx = p->nstacks++;
	p->stacks[idx] =
	    (struct stack){h, p->nframes, (uint16_t)n, (uint16_t)lid};
	p->nframes += (uint32_t)n;
	memcpy(p->values + (size_t)idx * (size_t)p->ntypes, values,
	       (size_t)p->ntypes * sizeof(*values));
	uint32_t j = (uint32_t)h & p->stack_mask;
	while (p->stack_slots[j])
		j = (j + 1) & p->stack_mask;
	p->stack_slots[j] = idx + 1;
	return 0;
}

size_t pa_pprof_nsamples(const struct pa_pprof *p)
{
	if (!p)
		return 0;
	return p->nstacks + (all_zero(p->trunc, p->ntypes) ? 0 : 1);
}

int pa_pprof_comment(struct pa_pprof *p, const char *text)
{
	if (!p || !text)
		return -EINVAL;
	if (p->ncomments == MAX_COMMENTS) {
		p->comments_dropped++;
		return -ENOSPC;
	}
	char *copy = strndup(text, MAX_COMMENT_LEN);
	if (!copy)
		return -ENOMEM;
	p->comments[p->ncomments++] = copy;
	return 0;
}

/* Shrinks an array to keep elements when it holds more; on failure the
 * bigger block simply stays. */
static void *shrink(void *ptr, uint32_t *cap, uint32_t keep, size_t elem)
{
	if (*cap <= keep)
		return ptr;
	void *q = realloc(ptr, (size_t)keep * elem);
	if (!q)
		return ptr;
	*cap = keep;
	return q;
}

void pa_pprof_reset(struct pa_pprof *p)
{
	if (!p)
		return;
	clear_strings(p);
	memset(p->trunc, 0, sizeof(p->trunc));
	p->trunc_adds = 0;
	p->cut = 0;
	p->comments_dropped = 0;
	p->nstacks = 0;
	p->nframes = 0;
	p->naddrs = 0;
	/* Keep what a typical interval needs, return what a huge one took. */
	if (p->cap_stacks > RETAIN_STACKS) {
		uint32_t cap = p->cap_stacks;
		p->stacks =
		    shrink(p->stacks, &cap, RETAIN_STACKS, sizeof(*p->stacks));
		cap = p->cap_stacks;
		p->values = shrink(p->values, &cap, RETAIN_STACKS,
				   (size_t)p->ntypes * sizeof(*p->values));
		p->cap_stacks = RETAIN_STACKS;
		free(p->stack_slots);
		p->stack_mask = slots_for(RETAIN_STACKS) - 1;
		p->stack_slots = calloc(p->stack_mask + 1, sizeof(uint32_t));
		if (!p->stack_slots) {
			p->cap_stacks = 0; /* grow_stacks starts over */
			p->stack_mask = 0;
		}
	} else if (p->stack_slots) {
		memset(p->stack_slots, 0,
		       (p->stack_mask + 1) * sizeof(uint32_t));
	}
	p->frames = shrink(p->frames, &p->cap_frames, RETAIN_FRAMES,
			   sizeof(*p->frames));
	if (p->cap_addrs > RETAIN_ADDRS) {
		p->addrs = shrink(p->addrs, &p->cap_addrs, RETAIN_ADDRS,
				  sizeof(*p->addrs));
		free(p->addr_slots);
		p->addr_mask = slots_for(p->cap_addrs) - 1;
		p->addr_slots = calloc(p->addr_mask + 1, sizeof(uint32_t));
		if (!p->addr_slots) {
			p->cap_addrs = 0;
			p->addr_mask = 0;
		}
	} else if (p->addr_slots) {
		memset(p->addr_slots, 0, (p->addr_mask + 1) * sizeof(uint32_t));
	}
}

/* ---- encoding: strings ---- */

/* Length of the well-formed UTF-8 sequence at s (1..4), 0 if ill-formed:
 * no overlongs, no surrogates, nothing past U+10FFFF (Go's and Python's
 * rules, which Pyroscope and the test receiver apply). */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	size_t n;
	uint32_t cp;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (left < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
		return 0;
	if (n == 4 && (cp < 0x10000 || cp > 0x10ffff))
		return 0;
	return n;
}

static bool utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	for (size_t i = 0; i < len;) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t n = utf8_seq(s + i, len - i);
		if (!n)
			return false;
		i += n;
	}
	return true;
}

/* A malloc'd copy with every run of ill-formed bytes replaced by U+FFFD. */
static char *utf8_repair(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	char *out = malloc(3 * len + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	bool in_bad = false;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_seq(s + i, len - i);
		if (n) {
			memcpy(out + o, s + i, n);
			o += n;
			i += n;
			in_bad = false;
			continue;
		}
		if (!in_bad) {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
		}
		in_bad = true;
		i++;
	}
	out[o] = 0;
	return out;
}

struct emap {
	struct pa_module *mod;
	uint32_t file, build; /* global string ids */
	int named;	      /* a symbol named one of its addresses */
};

struct efunc {
	uint32_t name; /* global string id */
	int32_t owner; /* module index; -1 outside any; -2 synthetic */
};

/* Everything one encode needs; freed before pa_pprof_encode returns. */
struct enc {
	struct pa_pprof *p;
	struct pa_modules *mods;
	struct pa_symbols *syms;

	const char **str; /* global strings; [0] = "" */
	uint32_t *str_hash;
	uint32_t nstr, cap_str;
	uint32_t *str_slots;
	uint32_t str_mask;
	char **owned; /* repaired or generated strings */
	uint32_t nowned, cap_owned;
	struct {
		const char *ptr;
		uint32_t id;
	} name_cache[1024]; /* symbol name pointer -> string id */

	uint32_t *addr_func; /* function index + 1 per address id; 0 not yet */
	int32_t *addr_map;   /* mapping index; -1 none */
	struct emap *maps;
	uint32_t nmaps;
	int32_t *mod_map; /* module index -> mapping index, -1 */
	int nmods;
	struct efunc *funcs;
	uint32_t nfuncs, cap_funcs;
	uint32_t *func_slots;
	uint32_t func_mask;
	uint32_t leaf_func[MAX_LEAVES];
	uint32_t trunc_func;
	uint32_t type_str[PA_PPROF_MAX_VALUES], unit_str[PA_PPROF_MAX_VALUES];
	uint32_t ptype_str, punit_str;
	uint32_t comment_str[MAX_COMMENTS + 4];
	int ncomment_fixed;
	uint32_t fold_slot; /* string slot of the fold comment (not interned) */

	uint32_t *live; /* stacks with a non-zero value, insertion order */
	uint32_t nlive;
	uint32_t *order; /* live, smallest first (only when folding) */
	uint8_t *folded; /* per stack index */

	/* One attempt's remapping (0 = not in this attempt). */
	uint32_t nglocs; /* addresses + leaves + "[truncated]" */
	uint32_t *loc_id, *loc_order, nloc;
	uint32_t *func_id, *func_order, nfunc_used;
	uint32_t *map_id, *map_order, nmap_used;
	uint32_t *str_id, nstrtab;

	/* Message storage, sized for the first (largest) attempt. */
	Perftools__Profiles__Profile prof;
	Perftools__Profiles__ValueType vt[PA_PPROF_MAX_VALUES],
	    *vtp[PA_PPROF_MAX_VALUES];
	Perftools__Profiles__ValueType ptype;
	Perftools__Profiles__Sample *samples, **samplep;
	uint64_t *locpool;
	int64_t *valpool;
	Perftools__Profiles__Location *locs, **locp;
	Perftools__Profiles__Line *lines, **linep;
	Perftools__Profiles__Function *fns, **fnp;
	Perftools__Profiles__Mapping *mps, **mpp;
	char **strtab;
	int64_t comments[MAX_COMMENTS + 4];
};

static uint32_t hash_bytes(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ULL;
	}
	return (uint32_t)mix64(h);
}

static int grow_str(struct enc *e)
{
	uint32_t cap = e->cap_str ? e->cap_str * 2 : 1024;
	const char **s = realloc(e->str, cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	e->str = s;
	uint32_t *h = realloc(e->str_hash, cap * sizeof(*h));
	if (!h)
		return -ENOMEM;
	e->str_hash = h;
	uint32_t nslots = slots_for(cap);
	uint32_t *slots = calloc(nslots, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < e->nstr; i++) {
		uint32_t j = e->str_hash[i] & (nslots - 1);
		while (slots[j])
			j = (j + 1) & (nslots - 1);
		slots[j] = i + 1;
	}
	free(e->str_slots);
	e->str_slots = slots;
	e->str_mask = nslots - 1;
	e->cap_str = cap;
	return 0;
}

static int own(struct enc *e, char *s)
{
	if (e->nowned == e->cap_owned) {
		uint32_t cap = e->cap_owned ? e->cap_owned * 2 : 64;
		char **o = realloc(e->owned, cap * sizeof(*o));
		if (!o) {
			free(s);
			return -ENOMEM;
		}
		e->owned = o;
		e->cap_owned = cap;
	}
	e->owned[e->nowned++] = s;
	return 0;
}

/* Global string id of s (valid UTF-8 from here on). s must outlive the
 * encode (symbol cache, module table, description, p's copies) or be
 * copied: copy asks for that. Returns the id, or a negative errno. */
static int64_t intern(struct enc *e, const char *s, bool copy)
{
	size_t len = strlen(s);
	if (len == 0)
		return 0;
	char *fixed = NULL;
	if (!utf8_valid(s, len)) {
		fixed = utf8_repair(s, len);
		if (!fixed || own(e, fixed))
			return -ENOMEM;
		s = fixed;
		len = strlen(s);
	}
	uint32_t h = hash_bytes(s, len);
	uint32_t j = h & e->str_mask;
	for (; e->str_slots[j]; j = (j + 1) & e->str_mask) {
		uint32_t i = e->str_slots[j] - 1;
		if (e->str_hash[i] == h && strcmp(e->str[i], s) == 0)
			return i;
	}
	if (copy && !fixed) {
		char *c = strdup(s);
		if (!c || own(e, c))
			return -ENOMEM;
		s = c;
	}
	if (e->nstr == e->cap_str) {
		int rc = grow_str(e);
		if (rc)
			return rc;
		j = h & e->str_mask;
		while (e->str_slots[j])
			j = (j + 1) & e->str_mask;
	}
	uint32_t id = e->nstr++;
	e->str[id] = s;
	e->str_hash[id] = h;
	e->str_slots[j] = id + 1;
	return id;
}

static int64_t intern_name(struct enc *e, const char *name)
{
	size_t k = (size_t)(mix64((uint64_t)(uintptr_t)name) & 1023);
	if (e->name_cache[k].ptr == name)
		return e->name_cache[k].id;
	int64_t id = intern(e, name, false);
	if (id >= 0) {
		e->name_cache[k].ptr = name;
		e->name_cache[k].id = (uint32_t)id;
	}
	return id;
}

/* ---- encoding: functions, mappings, symbolization ---- */

static uint32_t func_hash(uint32_t name, int32_t owner)
{
	return (uint32_t)mix64((uint64_t)name << 32 ^ (uint32_t)owner);
}

static int grow_funcs(struct enc *e)
{
	uint32_t cap = e->cap_funcs ? e->cap_funcs * 2 : 1024;
	struct efunc *f = realloc(e->funcs, cap * sizeof(*f));
	if (!f)
		return -ENOMEM;
	e->funcs = f;
	uint32_t nslots = slots_for(cap);
	uint32_t *slots = calloc(nslots, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < e->nfuncs; i++) {
		uint32_t k = func_hash(f[i].name, f[i].owner) & (nslots - 1);
		while (slots[k])
			k = (k + 1) & (nslots - 1);
		slots[k] = i + 1;
	}
	free(e->func_slots);
	e->func_slots = slots;
	e->func_mask = nslots - 1;
	e->cap_funcs = cap;
	return 0;
}

/* The function for (name, owner), added on first use. */
static int64_t func_index(struct enc *e, uint32_t name, int32_t owner)
{
	int rc;
	if (e->nfuncs == e->cap_funcs && (rc = grow_funcs(e)))
		return rc;
	uint32_t j = func_hash(name, owner) & e->func_mask;
	for (; e->func_slots[j]; j = (j + 1) & e->func_mask) {
		const struct efunc *f = &e->funcs[e->func_slots[j] - 1];
		if (f->name == name && f->owner == owner)
			return e->func_slots[j] - 1;
	}
	uint32_t id = e->nfuncs++;
	e->funcs[id] = (struct efunc){name, owner};
	e->func_slots[j] = id + 1;
	return id;
}

static int64_t mapping_of(struct enc *e, int mi, struct pa_module *m)
{
	if (e->mod_map[mi] >= 0)
		return e->mod_map[mi];
	int64_t file = intern(e, m->path ? m->path : "", false);
	if (file < 0)
		return file;
	int64_t build = 0;
	if (m->build_id_len > 0) {
		static const char hex[] = "0123456789abcdef";
		int n = m->build_id_len > 32 ? 32 : m->build_id_len;
		char buf[65];
		for (int i = 0; i < n; i++) {
			buf[2 * i] = hex[m->build_id[i] >> 4];
			buf[2 * i + 1] = hex[m->build_id[i] & 15];
		}
		buf[2 * n] = 0;
		build = intern(e, buf, true);
		if (build < 0)
			return build;
	}
	uint32_t k = e->nmaps++;
	e->maps[k] = (struct emap){m, (uint32_t)file, (uint32_t)build, 0};
	e->mod_map[mi] = (int32_t)k;
	return k;
}

/* Names the function holding address id g and finds its mapping. */
static int symbolize(struct enc *e, uint32_t g)
{
	uint64_t pc = e->p->addrs[g];
	const char *name = NULL;
	int32_t owner = -1, map = -1;
	if (e->mods && e->nmods > 0) {
		struct pa_module *base = pa_modules_at(e->mods, 0);
		const struct pa_module *found = pa_modules_find(e->mods, pc);
		if (found && base) {
			int mi = (int)(found - base);
			struct pa_module *m = pa_modules_at(e->mods, mi);
			if (m) {
				owner = mi;
				int64_t k = mapping_of(e, mi, m);
				if (k < 0)
					return (int)k;
				map = (int32_t)k;
				if (e->syms)
					name = pa_symbols_lookup(e->syms, m, pc,
								 NULL);
			}
		}
	}
	if (map >= 0 && name && name[0])
		e->maps[map].named = 1;
	int64_t s = intern_name(e, name && name[0] ? name : UNKNOWN_NAME);
	if (s < 0)
		return (int)s;
	int64_t f = func_index(e, (uint32_t)s, owner);
	if (f < 0)
		return (int)f;
	e->addr_func[g] = (uint32_t)f + 1;
	e->addr_map[g] = map;
	return 0;
}

static int cmp_smallest(const void *a, const void *b, void *arg)
{
	const struct pa_pprof *p = arg;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	const int64_t *vx = p->values + (size_t)x * (size_t)p->ntypes;
	const int64_t *vy = p->values + (size_t)y * (size_t)p->ntypes;
	for (int i = p->ntypes - 1; i >= 0; i--)
		if (vx[i] != vy[i])
			return vx[i] < vy[i] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Interns the fixed strings and collects the stacks with values. */
static int prepare(struct enc *e)
{
	struct pa_pprof *p = e->p;
	int rc;
	if ((rc = grow_str(e)))
		return rc;
	e->str[0] = "";
	e->str_hash[0] = hash_bytes("", 0);
	e->nstr = 1; /* "" is never looked up: intern returns 0 for it */
	e->nmods = e->mods ? pa_modules_count(e->mods) : 0;
	e->mod_map = malloc((size_t)(e->nmods + 1) * sizeof(*e->mod_map));
	e->maps = malloc((size_t)(e->nmods + 1) * sizeof(*e->maps));
	e->addr_func = calloc((size_t)p->naddrs + 1, sizeof(*e->addr_func));
	e->addr_map = malloc(((size_t)p->naddrs + 1) * sizeof(*e->addr_map));
	e->live = malloc(((size_t)p->nstacks + 1) * sizeof(*e->live));
	e->folded = calloc((size_t)p->nstacks + 1, 1);
	if (!e->mod_map || !e->maps || !e->addr_func || !e->addr_map ||
	    !e->live || !e->folded)
		return -ENOMEM;
	for (int i = 0; i < e->nmods; i++)
		e->mod_map[i] = -1;

	int64_t id;
	for (int i = 0; i < p->ntypes; i++) {
		if ((id = intern(e, p->types[i].type, false)) < 0)
			return (int)id;
		e->type_str[i] = (uint32_t)id;
		if ((id = intern(e, p->types[i].unit, false)) < 0)
			return (int)id;
		e->unit_str[i] = (uint32_t)id;
	}
	if ((id = intern(e, p->period_type.type, false)) < 0)
		return (int)id;
	e->ptype_str = (uint32_t)id;
	if ((id = intern(e, p->period_type.unit, false)) < 0)
		return (int)id;
	e->punit_str = (uint32_t)id;
	for (int i = 0; i < p->ncomments; i++) {
		if ((id = intern(e, p->comments[i], false)) < 0)
			return (int)id;
		e->comment_str[e->ncomment_fixed++] = (uint32_t)id;
	}
	char text[256];
	if (p->trunc_adds) {
		snprintf(text, sizeof(text),
			 "pyroagent: %llu samples past the aggregation limits "
			 "(%zu stacks) went to " TRUNCATED_NAME,
			 (unsigned long long)p->trunc_adds, p->max_stacks);
		if ((id = intern(e, text, true)) < 0)
			return (int)id;
		e->comment_str[e->ncomment_fixed++] = (uint32_t)id;
	}
	if (p->cut) {
		snprintf(text, sizeof(text),
			 "pyroagent: %llu samples had stacks deeper than %d "
			 "frames (cut)",
			 (unsigned long long)p->cut, MAX_DEPTH);
		if ((id = intern(e, text, true)) < 0)
			return (int)id;
		e->comment_str[e->ncomment_fixed++] = (uint32_t)id;
	}
	if (p->comments_dropped) {
		snprintf(text, sizeof(text), "pyroagent: %llu comments dropped",
			 (unsigned long long)p->comments_dropped);
		if ((id = intern(e, text, true)) < 0)
			return (int)id;
		e->comment_str[e->ncomment_fixed++] = (uint32_t)id;
	}

	for (int i = 0; i < p->nleaves; i++) {
		if ((id = intern(e, p->leaves[i], false)) < 0 ||
		    (id = func_index(e, (uint32_t)id, -2)) < 0)
			return (int)id;
		e->leaf_func[i] = (uint32_t)id;
	}
	if ((id = intern(e, TRUNCATED_NAME, false)) < 0 ||
	    (id = func_index(e, (uint32_t)id, -2)) < 0)
		return (int)id;
	e->trunc_func = (uint32_t)id;

	for (uint32_t i = 0; i < p->nstacks; i++)
		if (!all_zero(p->values + (size_t)i * (size_t)p->ntypes,
			      p->ntypes))
			e->live[e->nlive++] = i; /* else merged to nothing */
	/* A string slot for the fold comment, rewritten per attempt; never
	 * in the lookup table. */
	if (e->nstr == e->cap_str && (rc = grow_str(e)))
		return rc;
	e->fold_slot = e->nstr++;
	e->str[e->fold_slot] = "";
	e->str_hash[e->fold_slot] = 0;
	return 0;
}

/* Sorts the live stacks smallest first (by the last value type, then the
 * others) once, for folding. */
static int sort_order(struct enc *e)
{
	if (e->order)
		return 0;
	e->order = malloc(((size_t)e->nlive + 1) * sizeof(*e->order));
	if (!e->order)
		return -ENOMEM;
	memcpy(e->order, e->live, (size_t)e->nlive * sizeof(*e->order));
	qsort_r(e->order, e->nlive, sizeof(*e->order), cmp_smallest, e->p);
	return 0;
}

/* Symbolizes what the first (largest) attempt keeps and sizes the
 * message storage for it: later attempts keep subsets. Stacks folded
 * from the start cost neither symbol lookups nor message memory. */
static int prepare_attempts(struct enc *e, uint32_t nfold)
{
	struct pa_pprof *p = e->p;
	int rc;
	for (uint32_t i = 0; i < nfold; i++)
		e->folded[e->order[i]] = 1;
	size_t nsamp = 1, nframes = 1;
	for (uint32_t i = 0; i < e->nlive; i++) {
		uint32_t si = e->live[i];
		if (e->folded[si])
			continue;
		const struct stack *s = &p->stacks[si];
		nsamp++;
		nframes += s->n + (s->leaf ? 1u : 0u);
		for (uint32_t k = 0; k < s->n; k++) {
			uint32_t g = p->frames[s->off + k];
			if (!e->addr_func[g] && (rc = symbolize(e, g)))
				return rc;
		}
	}
	e->nglocs = p->naddrs + (uint32_t)p->nleaves + 1;
	size_t nloc = nframes < e->nglocs ? nframes : e->nglocs;
	size_t nfn = (size_t)e->nfuncs + 1, nmap = (size_t)e->nmaps + 1;
	size_t nstr = (size_t)e->nstr + 1;
	e->samples = malloc(nsamp * sizeof(*e->samples));
	e->samplep = malloc(nsamp * sizeof(*e->samplep));
	e->locpool = malloc(nframes * sizeof(*e->locpool));
	e->valpool = malloc(nsamp * (size_t)p->ntypes * sizeof(*e->valpool));
	e->locs = malloc(nloc * sizeof(*e->locs));
	e->locp = malloc(nloc * sizeof(*e->locp));
	/* One Line per function, shared by its locations (line numbers are
	 * not known, so every Line of a function is the same). */
	e->lines = malloc(nfn * sizeof(*e->lines));
	e->linep = malloc(nfn * sizeof(*e->linep));
	e->fns = malloc(nfn * sizeof(*e->fns));
	e->fnp = malloc(nfn * sizeof(*e->fnp));
	e->mps = malloc(nmap * sizeof(*e->mps));
	e->mpp = malloc(nmap * sizeof(*e->mpp));
	e->strtab = malloc(nstr * sizeof(*e->strtab));
	e->loc_id = malloc(e->nglocs * sizeof(*e->loc_id));
	e->loc_order = malloc(nloc * sizeof(*e->loc_order));
	e->func_id = malloc(nfn * sizeof(*e->func_id));
	e->func_order = malloc(nfn * sizeof(*e->func_order));
	e->map_id = malloc(nmap * sizeof(*e->map_id));
	e->map_order = malloc(nmap * sizeof(*e->map_order));
	e->str_id = malloc(nstr * sizeof(*e->str_id));
	if (!e->samples || !e->samplep || !e->locpool || !e->valpool ||
	    !e->locs || !e->locp || !e->lines || !e->linep || !e->fns ||
	    !e->fnp || !e->mps || !e->mpp || !e->strtab || !e->loc_id ||
	    !e->loc_order || !e->func_id || !e->func_order || !e->map_id ||
	    !e->map_order || !e->str_id)
		return -ENOMEM;
	return 0;
}

/* ---- encoding: one attempt ---- */

static uint32_t use_str(struct enc *e, uint32_t g)
{
	if (g == 0)
		return 0;
	if (!e->str_id[g]) {
		e->str_id[g] = e->nstrtab;
		e->strtab[e->nstrtab++] = (char *)e->str[g];
	}
	return e->str_id[g];
}

static uint64_t use_loc(struct enc *e, uint32_t g)
{
	if (!e->loc_id[g]) {
		e->loc_order[e->nloc] = g;
		e->loc_id[g] = ++e->nloc;
	}
	return e->loc_id[g];
}

static uint64_t use_func(struct enc *e, uint32_t f)
{
	if (!e->func_id[f]) {
		e->func_order[e->nfunc_used] = f;
		e->func_id[f] = ++e->nfunc_used;
	}
	return e->func_id[f];
}

static uint64_t use_map(struct enc *e, uint32_t m)
{
	if (!e->map_id[m]) {
		e->map_order[e->nmap_used] = m;
		e->map_id[m] = ++e->nmap_used;
	}
	return e->map_id[m];
}

/* Builds the message with the nfold smallest live stacks folded into
 * "[truncated]"; fold_str is the global id of the fold comment (0 none).
 * Ids are dense (index + 1): some Pyroscope code indexes by id - 1. */
static void build(struct enc *e, uint32_t nfold, int64_t fold_str)
{
	struct pa_pprof *p = e->p;
	int nt = p->ntypes;
	memset(e->loc_id, 0, e->nglocs * sizeof(*e->loc_id));
	memset(e->func_id, 0, ((size_t)e->nfuncs + 1) * sizeof(*e->func_id));
	memset(e->map_id, 0, ((size_t)e->nmaps + 1) * sizeof(*e->map_id));
	memset(e->str_id, 0, ((size_t)e->nstr + 1) * sizeof(*e->str_id));
	e->nloc = e->nfunc_used = e->nmap_used = 0;
	e->nstrtab = 0;
	e->strtab[e->nstrtab++] = "";

	Perftools__Profiles__Profile *pr = &e->prof;
	perftools__profiles__profile__init(pr);
	for (int i = 0; i < nt; i++) {
		perftools__profiles__value_type__init(&e->vt[i]);
		e->vt[i].type = use_str(e, e->type_str[i]);
		e->vt[i].unit = use_str(e, e->unit_str[i]);
		e->vtp[i] = &e->vt[i];
	}
	pr->n_sample_type = (size_t)nt;
	pr->sample_type = e->vtp;
	perftools__profiles__value_type__init(&e->ptype);
	e->ptype.type = use_str(e, e->ptype_str);
	e->ptype.unit = use_str(e, e->punit_str);
	pr->period_type = &e->ptype;
	/* pprof shows the last sample type unless told otherwise; name it
	 * (cpu time, inuse_space) so every reader agrees. */
	pr->default_sample_type = use_str(e, e->type_str[nt - 1]);
	size_t nc = 0;
	for (int i = 0; i < e->ncomment_fixed; i++)
		e->comments[nc++] = use_str(e, e->comment_str[i]);
	if (fold_str > 0)
		e->comments[nc++] = use_str(e, (uint32_t)fold_str);
	pr->n_comment = nc;
	pr->comment = e->comments;

	/* Fold set and the "[truncated]" values. */
	int64_t trunc[PA_PPROF_MAX_VALUES];
	memcpy(trunc, p->trunc, sizeof(trunc));
	for (uint32_t i = 0; i < e->nlive; i++)
		e->folded[e->live[i]] = 0;
	for (uint32_t i = 0; i < nfold; i++) {
		uint32_t s = e->order[i];
		e->folded[s] = 1;
		add_values(trunc, p->values + (size_t)s * (size_t)nt, nt);
	}

	size_t ns = 0, lp = 0;
	for (uint32_t i = 0; i < e->nlive; i++) {
		uint32_t si = e->live[i];
		if (e->folded[si])
			continue;
		const struct stack *s = &p->stacks[si];
		Perftools__Profiles__Sample *sm = &e->samples[ns];
		perftools__profiles__sample__init(sm);
		sm->location_id = e->locpool + lp;
		if (s->leaf)
			e->locpool[lp++] = use_loc(e, p->naddrs + s->leaf - 1u);
		for (uint32_t k = 0; k < s->n; k++)
			e->locpool[lp++] = use_loc(e, p->frames[s->off + k]);
		sm->n_location_id = (size_t)(e->locpool + lp - sm->location_id);
		sm->value = e->valpool + ns * (size_t)nt;
		memcpy(sm->value, p->values + (size_t)si * (size_t)nt,
		       (size_t)nt * sizeof(int64_t));
		sm->n_value = (size_t)nt;
		e->samplep[ns] = sm;
		ns++;
	}
	if (!all_zero(trunc, nt)) {
		Perftools__Profiles__Sample *sm = &e->samples[ns];
		perftools__profiles__sample__init(sm);
		sm->location_id = e->locpool + lp;
		e->locpool[lp++] = use_loc(e, p->naddrs + (uint32_t)p->nleaves);
		sm->n_location_id = 1;
		sm->value = e->valpool + ns * (size_t)nt;
		memcpy(sm->value, trunc, (size_t)nt * sizeof(int64_t));
		sm->n_value = (size_t)nt;
		e->samplep[ns] = sm;
		ns++;
	}
	pr->n_sample = ns;
	pr->sample = e->samplep;

	for (uint32_t i = 0; i < e->nloc; i++) {
		uint32_t g = e->loc_order[i];
		Perftools__Profiles__Location *l = &e->locs[i];
		perftools__profiles__location__init(l);
		l->id = i + 1;
		uint64_t fid;
		if (g < p->naddrs) {
			l->address = p->addrs[g];
			if (e->addr_map[g] >= 0)
				l->mapping_id =
				    use_map(e, (uint32_t)e->addr_map[g]);
			fid = use_func(e, e->addr_func[g] - 1);
		} else if (g < p->naddrs + (uint32_t)p->nleaves) {
			fid = use_func(e, e->leaf_func[g - p->naddrs]);
		} else {
			fid = use_func(e, e->trunc_func);
		}
		l->n_line = 1;
		l->line = &e->linep[fid - 1]; /* filled below */
		e->locp[i] = l;
	}
	pr->n_location = e->nloc;
	pr->location = e->locp;

	for (uint32_t i = 0; i < e->nfunc_used; i++) {
		const struct efunc *f = &e->funcs[e->func_order[i]];
		Perftools__Profiles__Function *fn = &e->fns[i];
		perftools__profiles__function__init(fn);
		fn->id = i + 1;
		fn->name = use_str(e, f->name);
		fn->system_name = fn->name;
		e->fnp[i] = fn;
		perftools__profiles__line__init(&e->lines[i]);
		e->lines[i].function_id = i + 1;
		e->linep[i] = &e->lines[i];
	}
	pr->n_function = e->nfunc_used;
	pr->function = e->fnp;

	for (uint32_t i = 0; i < e->nmap_used; i++) {
		const struct emap *m = &e->maps[e->map_order[i]];
		Perftools__Profiles__Mapping *mp = &e->mps[i];
		perftools__profiles__mapping__init(mp);
		mp->id = i + 1;
		mp->memory_start = m->mod->exec_start;
		mp->memory_limit = m->mod->exec_end;
		mp->file_offset = m->mod->exec_offset;
		mp->filename = use_str(e, m->file);
		mp->build_id = use_str(e, m->build);
		/* Named here: the server's symbolizer leaves it alone. A
		 * module we found no symbol in (stripped, no debug file) is
		 * left to it: it may know the build ID. */
		mp->has_functions = m->named;
		e->mpp[i] = mp;
	}
	pr->n_mapping = e->nmap_used;
	pr->mapping = e->mpp;

	pr->n_string_table = e->nstrtab;
	pr->string_table = e->strtab;
	pr->period = p->period;
}

/* The fold comment for this attempt in the string slot prepare() kept
 * for it (the text changes per attempt); 0 when nothing folds. */
static int64_t fold_comment(struct enc *e, uint32_t nfold)
{
	if (nfold == 0)
		return 0;
	struct pa_pprof *p = e->p;
	int last = p->ntypes - 1;
	double total = (double)p->trunc[last], folded = 0;
	for (uint32_t i = 0; i < e->nlive; i++)
		total +=
		    (double)p->values[(size_t)e->live[i] * (size_t)p->ntypes +
				      (size_t)last];
	for (uint32_t i = 0; i < nfold; i++)
		folded +=
		    (double)p->values[(size_t)e->order[i] * (size_t)p->ntypes +
				      (size_t)last];
	char text[256];
	snprintf(text, sizeof(text),
		 "pyroagent: folded %u of %u stacks (%.1f%% of %s) "
		 "into " TRUNCATED_NAME,
		 nfold, e->nlive, total != 0 ? 100.0 * folded / total : 0.0,
		 p->types[last].type);
	char *c = strdup(text);
	if (!c || own(e, c))
		return -ENOMEM;
	e->str[e->fold_slot] = c;
	return e->fold_slot;
}

static int gzip_buf(const uint8_t *in, size_t len, uint8_t **out,
		    size_t *outlen)
{
	if (len > UINT_MAX / 2)
		return -EFBIG;
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		return -ENOMEM;
	uLong bound = deflateBound(&zs, (uLong)len);
	uint8_t *buf = malloc(bound);
	if (!buf) {
		deflateEnd(&zs);
		return -ENOMEM;
	}
	zs.next_in = (Bytef *)(uintptr_t)in;
	zs.avail_in = (uInt)len;
	zs.next_out = buf;
	zs.avail_out = (uInt)bound;
	int zrc = deflate(&zs, Z_FINISH);
	size_t n = zs.total_out;
	deflateEnd(&zs);
	if (zrc != Z_STREAM_END) {
		free(buf);
		return -EIO;
	}
	uint8_t *shrunk = realloc(buf, n);
	*out = shrunk ? shrunk : buf;
	*outlen = n;
	return 0;
}

static void enc_free(struct enc *e)
{
	for (uint32_t i = 0; i < e->nowned; i++)
		free(e->owned[i]);
	free(e->owned);
	free(e->str);
	free(e->str_hash);
	free(e->str_slots);
	free(e->addr_func);
	free(e->addr_map);
	free(e->maps);
	free(e->mod_map);
	free(e->funcs);
	free(e->func_slots);
	free(e->live);
	free(e->order);
	free(e->folded);
	free(e->loc_id);
	free(e->loc_order);
	free(e->func_id);
	free(e->func_order);
	free(e->map_id);
	free(e->map_order);
	free(e->str_id);
	free(e->samples);
	free(e->samplep);
	free(e->locpool);
	free(e->valpool);
	free(e->locs);
	free(e->locp);
	free(e->lines);
	free(e->linep);
	free(e->fns);
	free(e->fnp);
	free(e->mps);
	free(e->mpp);
	free(e->strtab);
}

/* Next fold count after an attempt of `size` bytes with nfold folded:
 * scale the kept stacks by the overshoot with a margin, always progress,
 * and fold everything on the last attempt. */
static uint32_t next_fold(uint32_t nlive, uint32_t nfold, size_t size,
			  size_t max_bytes, int attempt)
{
	if (attempt >= FOLD_ATTEMPTS - 2)
		return nlive;
	uint32_t kept = nlive - nfold;
	double scaled = (double)kept * (double)max_bytes / (double)size * 0.9;
	uint32_t target = scaled < 0 ? 0 : (uint32_t)scaled;
	uint32_t step = kept / 16 + 1;
	if (target + step > kept)
		target = kept > step ? kept - step : 0;
	return nlive - target;
}

int pa_pprof_encode(struct pa_pprof *p, struct pa_modules *mods,
		    struct pa_symbols *syms, int64_t time_ns,
		    int64_t duration_ns, uint8_t **gz, size_t *gzlen)
{
	if (!p || !gz || !gzlen)
		return -EINVAL;
	*gz = NULL;
	*gzlen = 0;
	struct enc *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->p = p;
	e->mods = mods;
	e->syms = syms;
	uint8_t *raw = NULL;
	int rc = prepare(e);
	if (rc)
		goto out;
	/* Pyroscope takes at most max_samples: fold the smallest stacks
	 * first, keeping one sample for "[truncated]". */
	uint32_t nfold = 0;
	bool trunc_base = !all_zero(p->trunc, p->ntypes);
	if ((size_t)e->nlive + (trunc_base ? 1 : 0) > p->max_samples)
		nfold = e->nlive - (uint32_t)(p->max_samples - 1);
	if ((nfold && (rc = sort_order(e))) ||
	    (rc = prepare_attempts(e, nfold)))
		goto out;
	size_t size = 0;
	for (int attempt = 0;; attempt++) {
		if (nfold && (rc = sort_order(e)))
			goto out;
		int64_t fs = fold_comment(e, nfold);
		if (fs < 0) {
			rc = (int)fs;
			goto out;
		}
		build(e, nfold, fs);
		e->prof.time_nanos = time_ns;
		e->prof.duration_nanos = duration_ns;
		size = perftools__profiles__profile__get_packed_size(&e->prof);
		if (size <= p->max_bytes || nfold == e->nlive)
			break; /* fits, or as small as it gets */
		nfold = next_fold(e->nlive, nfold, size, p->max_bytes, attempt);
	}
	raw = malloc(size ? size : 1);
	if (!raw) {
		rc = -ENOMEM;
		goto out;
	}
	if (perftools__profiles__profile__pack(&e->prof, raw) != size) {
		rc = -EIO;
		goto out;
	}
	rc = gzip_buf(raw, size, gz, gzlen);
out:
	free(raw);
	enc_free(e);
	free(e);
	return rc;
}
