/* Interned call stacks that outlive an interval: live heap blocks and
 * anonymous mappings refer to their stack by a small id. Bounded; stacks
 * nothing refers to any more are collected. Agent thread only. */
#ifndef PA_STACKS_H
#define PA_STACKS_H

#include <stddef.h>
#include <stdint.h>

struct pa_stacks;

/* At most max_stacks stacks (ids 1..max_stacks) holding at most
 * max_frames frames in total. */
int pa_stacks_new(struct pa_stacks **out, uint32_t max_stacks,
		  size_t max_frames);
void pa_stacks_free(struct pa_stacks *s); /* accepts NULL */

/* The id of (leaf, pcs[0..n)), interning it if new. leaf is NULL or a
 * static string (compared by pointer, as pa_pprof_add does). Returns 0
 * when the table is full (counted in pa_stacks_refused). */
uint32_t pa_stacks_intern(struct pa_stacks *s, const uint64_t *pcs, int n,
			  const char *leaf);

/* The frames of a live id (valid until the next pa_stacks_gc). */
const uint64_t *pa_stacks_get(const struct pa_stacks *s, uint32_t id, int *n,
			      const char **leaf);

/* Something still refers to id: keep it through the next collection. */
void pa_stacks_mark(struct pa_stacks *s, uint32_t id);

/* Frees every stack that was neither interned nor marked during this
 * round and the one before (two rounds: a live entry briefly out of the
 * table, as in realloc, must not lose its stack). Returns how many. */
uint32_t pa_stacks_gc(struct pa_stacks *s);

uint32_t pa_stacks_count(const struct pa_stacks *s);
uint32_t pa_stacks_max(const struct pa_stacks *s);
uint64_t pa_stacks_refused(const struct pa_stacks *s);

#endif
