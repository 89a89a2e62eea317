/* Interned stacks with ids, a hash index, generation-based collection and
 * hard caps on stacks and frames (agent thread only). */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "stacks.h"

struct entry {
	uint64_t *pcs; /* NULL: the id is free */
	const char *leaf;
	uint64_t hash;
	uint32_t n;
	uint32_t gen; /* last round it was interned or marked */
};

struct pa_stacks {
	struct entry *e; /* [max]; id i is e[i - 1] */
	uint32_t *index; /* open addressing over ids; 0 empty */
	uint32_t index_mask;
	uint32_t *free_ids; /* stack of free ids */
	uint32_t nfree;
	uint32_t max, count;
	size_t frames, max_frames;
	uint32_t gen;
	uint64_t refused;
};

static uint64_t hash_stack(const uint64_t *pcs, int n, const char *leaf)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)(uintptr_t)leaf;
	for (int i = 0; i < n; i++) {
		h ^= pcs[i];
		h *= 0x100000001b3ULL;
		h ^= h >> 29;
	}
	h ^= (uint64_t)n;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 32);
}

int pa_stacks_new(struct pa_stacks **out, uint32_t max_stacks,
		  size_t max_frames)
{
	*out = NULL;
	if (max_stacks == 0 || max_stacks > (1u << 24))
		return -EINVAL;
	struct pa_stacks *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	uint32_t isize = 1;
	while (isize < 2 * max_stacks)
		isize <<= 1;
	/* calloc: untouched pages of a large, mostly empty table cost no RSS.
	 */
	s->e = calloc(max_stacks, sizeof(*s->e));
	s->index = calloc(isize, sizeof(*s->index));
	s->free_ids = malloc(max_stacks * sizeof(*s->free_ids));
	if (!s->e || !s->index || !s->free_ids) {
		pa_stacks_free(s);
		return -ENOMEM;
	}
	s->index_mask = isize - 1;
	s->max = max_stacks;
	s->max_frames = max_frames;
	s->gen = 1;
	/* Lowest ids first: the ids in use stay dense. */
	for (uint32_t i = 0; i < max_stacks; i++)
		s->free_ids[i] = max_stacks - i;
	s->nfree = max_stacks;
	*out = s;
	return 0;
}

void pa_stacks_free(struct pa_stacks *s)
{
	if (!s)
		return;
	if (s->e)
		for (uint32_t i = 0; i < s->max; i++)
			free(s->e[i].pcs);
	free(s->e);
	free(s->index);
	free(s->free_ids);
	free(s);
}

static bool same(const struct entry *e, uint64_t h, const uint64_t *pcs, int n,
		 const char *leaf)
{
	return e->hash == h && e->n == (uint32_t)n && e->leaf == leaf &&
	       memcmp(e->pcs, pcs, (size_t)n * sizeof(*pcs)) == 0;
}

uint32_t pa_stacks_intern(struct pa_stacks *s, const uint64_t *pcs, int n,
			  const char *leaf)
{
	if (n < 0)
		n = 0;
	uint64_t h = hash_stack(pcs, n, leaf);
	uint32_t slot = (uint32_t)h & s->index_mask;
	for (;; slot = (slot + 1) & s->index_mask) {
		uint32_t id = s->index[slot];
		if (id == 0)
			break;
		struct entry *e = &s->e[id - 1];
		if (same(e, h, pcs, n, leaf)) {
			e->gen = s->gen;
			return id;
		}
	}
	if (s->nfree == 0 || s->frames + (size_t)n > s->max_frames) {
		s->refused++;
		return 0;
	}
	/* One allocation per stack; at least one word so pcs != NULL marks
	 * the id as used even for a frameless (leaf-only) stack. */
	uint64_t *copy = malloc((size_t)(n ? n : 1) * sizeof(*copy));
	if (!copy) {
		s->refused++;
		return 0;
	}
	if (n)
		memcpy(copy, pcs, (size_t)n * sizeof(*pcs));
	uint32_t id = s->free_ids[--s->nfree];
	struct entry *e = &s->e[id - 1];
	e->pcs = copy;
	e->leaf = leaf;
	e->hash = h;
	e->n = (uint32_t)n;
	e->gen = s->gen;
	s->index[slot] = id;
	s->count++;
	s->frames += (size_t)n;
	return id;
}

const uint64_t *pa_stacks_get(const struct pa_stacks *s, uint32_t id, int *n,
			      const char **leaf)
{
	if (id == 0 || id > s->max || !s->e[id - 1].pcs)
		return NULL;
	const struct entry *e = &s->e[id - 1];
	*n = (int)e->n;
	if (leaf)
		*leaf = e->leaf;
	return e->pcs;
}

void pa_stacks_mark(struct pa_stacks *s, uint32_t id)
{
	if (id && id <= s->max && s->e[id - 1].pcs)
		s->e[id - 1].gen = s->gen;
}

uint32_t pa_stacks_gc(struct pa_stacks *s)
{
	uint32_t freed = 0;
	for (uint32_t i = 0; i < s->max; i++) {
		struct entry *e = &s->e[i];
		if (!e->pcs || e->gen + 1 >= s->gen)
			continue;
		free(e->pcs);
		s->frames -= e->n;
		memset(e, 0, sizeof(*e));
		s->free_ids[s->nfree++] = i + 1;
		s->count--;
		freed++;
	}
	if (freed) {
		/* Rebuild the index: open addressing has no cheap delete. */
		memset(s->index, 0,
		       ((size_t)s->index_mask + 1) * sizeof(*s->index));
		for (uint32_t i = 0; i < s->max; i++) {
			if (!s->e[i].pcs)
				continue;
			uint32_t slot = (uint32_t)s->e[i].hash & s->index_mask;
			while (s->index[slot])
				slot = (slot + 1) & s->index_mask;
			s->index[slot] = i + 1;
		}
	}
	s->gen++;
	return freed;
}

uint32_t pa_stacks_count(const struct pa_stacks *s)
{
	return s->count;
}

uint32_t pa_stacks_max(const struct pa_stacks *s)
{
	return s->max;
}

uint64_t pa_stacks_refused(const struct pa_stacks *s)
{
	return s->refused;
}
