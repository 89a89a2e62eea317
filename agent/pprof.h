/* Profile builder: aggregates stacks for one interval and encodes them as a
 * gzipped pprof (protobuf-c, agent/profile.proto) that Pyroscope accepts. */
#ifndef PA_PPROF_H
#define PA_PPROF_H

#include <stddef.h>
#include <stdint.h>

#include "modules.h"
#include "symbols.h"

#define PA_PPROF_MAX_VALUES 4

struct pa_pprof_type {
	const char *type; /* e.g. "cpu" (no '-': Pyroscope rejects it) */
	const char *unit; /* e.g. "nanoseconds" */
};

struct pa_pprof_desc {
	const struct pa_pprof_type
	    *sample_types; /* ntypes <= PA_PPROF_MAX_VALUES */
	int ntypes;
	struct pa_pprof_type period_type;
	int64_t period;
	size_t max_samples; /* Pyroscope: <= 16000; extra stacks fold into
			       [truncated] */
	size_t max_bytes; /* uncompressed ceiling; Pyroscope answers 429 past ~2
			     MiB */
	size_t max_stacks; /* distinct stacks kept while aggregating; beyond,
			      folded */
	/* A limit of 0 takes the default: 16000 samples, 1800 KiB, 50000
	 * stacks. */
};

struct pa_pprof;

/* Copies the description (strings must be static). -EINVAL when a sample
 * type is missing, empty or contains '-'. */
int pa_pprof_new(struct pa_pprof **out, const struct pa_pprof_desc *d);
void pa_pprof_free(struct pa_pprof *p); /* accepts NULL */

/* Adds values to the sample for this stack. pcs: leaf first, already
 * adjusted into the calling instruction (see unwind.h). leaf: an optional
 * synthetic frame name put below pcs[0] (e.g. "[anonymous mmap]"), or
 * NULL; its text is copied. Identical (leaf, pcs) merge. Past max_stacks
 * (or the frame/address caps) the values go to one "[truncated]" sample
 * and the fold is counted. All-zero values are ignored; stacks deeper
 * than 1000 frames keep the leaf-most 1000. Returns 0, -EINVAL, or
 * -ENOMEM (the values were still counted, in "[truncated]"). */
int pa_pprof_add(struct pa_pprof *p, const uint64_t *pcs, int n,
		 const char *leaf, const int64_t *values);

/* Distinct stacks held, plus one if "[truncated]" holds values. */
size_t pa_pprof_nsamples(const struct pa_pprof *p);

/* A free-text comment carried in the profile (e.g. drop counters); copied,
 * at most 16 per interval (-ENOSPC past that, counted in a comment). */
int pa_pprof_comment(struct pa_pprof *p, const char *text);

/* Encodes and gzips: mappings with file names and build IDs
 * (has_functions=true), one location per address, functions named by
 * pa_symbols_lookup ("[unknown]" where none). Folds the smallest stacks
 * into "[truncated]" until it fits max_samples and max_bytes, recording
 * how many in a comment. *gz is malloc'd and owned by the caller. Does
 * not change p (encoding twice gives the same bytes). mods and syms may
 * be NULL (every frame "[unknown]"); the caller holds
 * pa_modules_read_lock. */
int pa_pprof_encode(struct pa_pprof *p, struct pa_modules *mods,
		    struct pa_symbols *syms, int64_t time_ns,
		    int64_t duration_ns, uint8_t **gz, size_t *gzlen);

/* Empties the samples and comments for the next interval (keeps the
 * description, and up to ~0.75 MiB of table capacity). */
void pa_pprof_reset(struct pa_pprof *p);

#endif
