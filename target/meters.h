/* Smart meter readings: CSV generation, the naive and the streaming sum. */
#ifndef AGGREGATOR_METERS_H
#define AGGREGATOR_METERS_H

#include <stddef.h>
#include <stdint.h>

/* The CSV is a header line followed by one reading a line:
 *     meter_id,kwh
 *     417293,3.512
 * meter_id is a decimal integer, kwh a non-negative decimal with at most
 * three fractional digits (the generator always writes exactly three). */
#define METERS_CSV_HEADER "meter_id,kwh"

/* Largest meterCount a generation accepts; keeps the int64 milli-kWh sum
 * far from overflow (1e9 * 10,000 milli-kWh = 1e13). */
#define METERS_MAX_COUNT 1000000000ULL

/* Generated values: integer milli-kWh, uniform in [MIN, MAX]. */
#define METERS_MIN_MILLI_KWH 100
#define METERS_MAX_MILLI_KWH 10000
/* Generated meter ids: uniform in [1, METERS_METER_POPULATION]. */
#define METERS_METER_POPULATION 1000000

/* What a failed (or finished) operation has to say about itself. */
struct meters_report {
	uint64_t line;	   /* 1-based CSV line of a -EBADMSG/-EOVERFLOW */
	uint64_t readings; /* readings generated or loaded so far */
	char detail[320];  /* human-readable reason, empty on success */
};

struct meters_sum {
	int64_t milli_kwh; /* exact sum in milli-kWh */
	uint64_t readings;
};

struct meters_heap_stats {
	uint64_t cap;	    /* bytes; 0 = no cap */
	uint64_t used;	    /* bytes currently charged by running requests */
	uint64_t peak;	    /* highest value of used since start */
	uint64_t oom_count; /* requests failed for lack of memory */
};

/* Sets the heap cap (bytes, 0 = none) that every allocation made by this
 * module is charged against, like the JVM's -Xmx. Call once before any
 * request runs. */
void meters_heap_init(uint64_t cap_bytes);
void meters_heap_stats(struct meters_heap_stats *out);

/* Asks every running generation and sum to stop soon; they return
 * -ECANCELED. Async-signal-safe (a relaxed atomic store). */
void meters_cancel(void);

/* Writes count random readings to a temporary file next to path, then
 * renames it over path (readers keep whatever file they opened). The
 * parent directory is created. Same seed, same count: same bytes.
 * Returns 0, -EINVAL (count 0 or above METERS_MAX_COUNT), -EFBIG (the
 * file could not fit in the free space: nothing written), -ENOSPC (the
 * disk or RLIMIT_FSIZE ran out while writing: the old file stays),
 * -ENOMEM, -ECANCELED or another negative errno; rep->detail says why. */
int meters_generate(const char *path, uint64_t count, uint64_t seed,
		    struct meters_report *rep);

/* The naive sum, as the Java original does it: loads every reading into
 * its own heap object (load_readings/reading_new), reduces, frees.
 * Memory grows with the file; every byte is charged against the heap cap.
 * Returns 0, -ENOENT (no file), -EBADMSG (malformed line: rep->line),
 * -EOVERFLOW (sum overflow: rep->line), -ENOMEM (cap reached or malloc
 * failed; everything taken is given back), -ECANCELED, -EIO... */
int meters_sum_naive(const char *path, struct meters_sum *out,
		     struct meters_report *rep);

/* The fix: one pass over fixed buffers, O(1) memory, same result and the
 * same errors as meters_sum_naive. */
int meters_sum_streaming(const char *path, struct meters_sum *out,
			 struct meters_report *rep);

/* Upper bound of the size in bytes of a generated file of count readings. */
uint64_t meters_file_size_bound(uint64_t count);

#endif
