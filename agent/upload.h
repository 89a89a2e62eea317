/* The uploader: a bounded queue of encoded profiles and one thread that
 * pushes them to Pyroscope, retrying with backoff; the host never waits. */
#ifndef PA_UPLOAD_H
#define PA_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

int pa_upload_start(const struct pa_config *cfg);
/* Queues one profile (takes ownership of gz, a malloc'd buffer). When the
 * queue is full the oldest entry is dropped and counted. name is a static
 * string (the __name__ label). */
void pa_upload_enqueue(const char *name, uint8_t *gz, size_t len, int64_t time_ns);
/* Delivers what is queued until deadline_ns (CLOCK_MONOTONIC), then stops. */
void pa_upload_stop(int64_t deadline_ns);
void pa_upload_atfork_child(void);

#endif
