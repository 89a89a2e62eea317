/* Pyroscope Push API client (libcurl): POST /push.v1.PusherService/Push
 * with a PushRequest (agent/push.proto) carrying one gzipped pprof. */
#ifndef PA_PUSH_H
#define PA_PUSH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct pa_push;

/* Keeps pointers into cfg (which outlives it). */
int pa_push_new(struct pa_push **out, const struct pa_config *cfg);
void pa_push_free(struct pa_push *p); /* accepts NULL */

/* Sends one series: labels __name__=name, service_name, the static
 * labels, __delta__="false", then extra. Blocks for at most the transfer
 * timeout. Returns 0 on 2xx; -EAGAIN when a retry may succeed
 * (connection error, timeout, 429, 5xx: *retry_after_ms set from
 * Retry-After, else 0); -EINVAL when the server rejected the profile
 * (other 4xx; its message is logged once per status); -ENOMEM etc.
 * *http_status gets the status (0 if none). */
int pa_push_send(struct pa_push *p, const char *name, const uint8_t *gz,
		 size_t len, const struct pa_label *extra, int nextra,
		 long *http_status, long *retry_after_ms);

/* Encodes the PushRequest body alone (for tests and the spool); *body is
 * malloc'd, owned by the caller. */
int pa_push_encode(const struct pa_push *p, const char *name,
		   const uint8_t *gz, size_t len, const struct pa_label *extra,
		   int nextra, uint8_t **body, size_t *body_len);

#endif
