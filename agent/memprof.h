/* The memory profile, built on the agent thread: sampled allocations of the
 * interval (alloc_*) and what is still live at its end (inuse_*), for
 * malloc-family blocks (sampled) and anonymous mappings (exact). */
#ifndef PA_MEMPROF_H
#define PA_MEMPROF_H

#include <stdint.h>

#include "config.h"
#include "pprof.h"
#include "ring.h"

struct pa_memprof;

int pa_memprof_new(struct pa_memprof **out, const struct pa_config *cfg);
void pa_memprof_free(struct pa_memprof *m); /* accepts NULL */

/* Takes one PA_SAMPLE_ALLOC or PA_SAMPLE_MMAP sample already unwound into
 * pcs[0..n) (leaf first). Agent thread only. */
void pa_memprof_consume(struct pa_memprof *m, const struct pa_sample *s,
			const uint64_t *pcs, int n);

/* Fills p (described with alloc_objects, alloc_space, inuse_objects,
 * inuse_space) with this interval's allocations and the live blocks and
 * mappings at this moment, then starts the next interval. Returns 0 when
 * p holds a profile to deliver. */
int pa_memprof_profile(struct pa_memprof *m, struct pa_pprof *p);

#endif
