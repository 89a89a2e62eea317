/* The disk spool: profiles that could not be delivered, kept as
 * zstd-compressed files and replayed in order, also by the next process of
 * the same service. Uploader thread only (files are locked against other
 * processes sharing the directory). */
#ifndef PA_SPOOL_H
#define PA_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define PA_SPOOL_MAX_LABELS  (PA_MAX_LABELS + 2)
#define PA_SPOOL_MAX_PROFILE (16u << 20) /* larger records are corrupt */

/* One profile with the series labels it was (or would have been) pushed
 * with, so a later process replays it exactly. */
struct pa_spool_record {
	int64_t time_ns; /* wall clock: the profile's interval start */
	struct pa_label labels[PA_SPOOL_MAX_LABELS];
	int nlabels;
	const uint8_t *gz; /* the gzipped pprof */
	size_t len;
};

struct pa_spool_stats {
	uint64_t written;
	uint64_t dropped_full; /* oldest removed to stay under the size cap */
	uint64_t dropped_old;  /* past the ingestion window: never replayed */
	uint64_t corrupt;      /* unreadable files, skipped and removed */
};

struct pa_spool;

/* Files one service keeps in the spool, besides PYROAGENT_SPOOL_MAX: past
 * it the oldest go first, as for the size cap. Small profiles would
 * otherwise fill a directory with more files than a scan reads. */
#define PA_SPOOL_MAX_FILES 4096

/* Opens (creating it 0700 if needed) a spool directory for one service,
 * removing temporary files a killed writer left behind (older than 10
 * minutes). Returns 0, or -errno with the directory refused
 * (world-writable without the sticky bit, not a directory). */
int pa_spool_open(struct pa_spool **out, const char *dir, const char *service,
		  int64_t max_bytes, int64_t max_age_ns);
/* Accepts NULL; releases a held record. */
void pa_spool_close(struct pa_spool *s);
/* For tests: a lower file cap than PA_SPOOL_MAX_FILES. */
void pa_spool_set_max_files(struct pa_spool *s, int n);
/* In a child after fork: drops the child's copy of the held record's
 * descriptor (the parent keeps its lock); frees nothing. Accepts NULL. */
void pa_spool_atfork_child(struct pa_spool *s);

/* Writes one record atomically (temp file 0600, O_NOFOLLOW, rename),
 * removing the oldest files first when a cap (bytes, files) would be
 * passed. */
int pa_spool_put(struct pa_spool *s, const struct pa_spool_record *r);

/* The oldest replayable record of this service, locked against other
 * processes: 0 and *r filled (its pointers stay valid until
 * pa_spool_done/pa_spool_release), -ENOENT when there is none. Files past
 * max age and corrupt files met on the way are removed and counted. */
int pa_spool_next(struct pa_spool *s, struct pa_spool_record *r);
/* The record from pa_spool_next was delivered (or refused for good):
 * remove it. */
void pa_spool_done(struct pa_spool *s);
/* Keep it for a later try. */
void pa_spool_release(struct pa_spool *s);

/* Files of this service waiting in the spool. */
int pa_spool_count(struct pa_spool *s);
void pa_spool_stats(const struct pa_spool *s, struct pa_spool_stats *out);

/* The file format, for tests and the fuzz target. pa_spool_encode returns
 * a malloc'd buffer owned by the caller. pa_spool_decode validates
 * everything; on success *r points into buf and into *payload (a malloc'd
 * buffer of the decompressed profile the caller frees). */
int pa_spool_encode(const struct pa_spool_record *r, uint8_t **out,
		    size_t *len);
int pa_spool_decode(const uint8_t *buf, size_t len, struct pa_spool_record *r,
		    uint8_t **payload);

#endif
