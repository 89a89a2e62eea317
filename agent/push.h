/* Pyroscope Push API client (libcurl): POST /push.v1.PusherService/Push
 * with a PushRequest (agent/push.proto) carrying one gzipped pprof. */
#ifndef PA_PUSH_H
#define PA_PUSH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* The agent's version: User-Agent "pyroagent/<version>", the start line. */
#define PA_VERSION "0.1.0"

/* Transfer limits (see push.c for the reasoning). */
#define PA_PUSH_CONNECT_TIMEOUT_MS 5000
#define PA_PUSH_TIMEOUT_MS	   20000

struct pa_push;

/* Keeps pointers into cfg (which outlives it). */
int pa_push_new(struct pa_push **out, const struct pa_config *cfg);
void pa_push_free(struct pa_push *p); /* accepts NULL */

/* Test seam: replaces the connect and total transfer timeouts (ms, > 0). */
void pa_push_set_timeouts(struct pa_push *p, long connect_ms, long total_ms);

/* Makes a pa_push_send in flight (and every later one) return -ECANCELED
 * within about a second; callable from any thread (the exit deadline).
 * Async-signal-safe: one atomic store. */
void pa_push_abort(struct pa_push *p);

/* Sends one series: labels __name__=name, service_name, the static
 * labels, __delta__="false", then extra; sorted by name, one per name
 * (the first three win over extra, extra over a static label), at most
 * PA_MAX_LABELS (invalid or surplus ones dropped, logged once). Blocks for
 * at most the transfer timeout. Returns 0 on 2xx; -EAGAIN when a retry may
 * succeed (connection error, timeout, 408, 429, 5xx but 501: then
 * *retry_after_ms is set from Retry-After, else 0); -EINVAL when the
 * server rejected the profile (other 4xx, and 501: Pyroscope refusing our
 * encoding; the message is logged once per status); -ECANCELED after
 * pa_push_abort; -ENOMEM etc. *http_status gets the status (0 if none). */
int pa_push_send(struct pa_push *p, const char *name, const uint8_t *gz,
		 size_t len, const struct pa_label *extra, int nextra,
		 long *http_status, long *retry_after_ms);

/* Encodes the PushRequest body alone (for tests and the spool); *body is
 * malloc'd, owned by the caller. */
int pa_push_encode(const struct pa_push *p, const char *name, const uint8_t *gz,
		   size_t len, const struct pa_label *extra, int nextra,
		   uint8_t **body, size_t *body_len);

/* For tests and fuzzers: what pa_push_send makes of a reply, without the
 * network. head: the reply's header lines as libcurl hands them over
 * (split at '\n', status line included), body: its body. Returns what
 * pa_push_send would for that status (0, -EAGAIN, -EINVAL; status 0 means
 * no reply) with *retry_after_ms as it would set it, and logs the same
 * line. msg (NULL, or msg_cap >= 4 bytes) gets the server's message as a
 * log line would carry it: redacted, escaped, one line, cut. */
int pa_push_take_reply(struct pa_push *p, const char *name, long status,
		       const char *head, size_t head_len, const char *body,
		       size_t body_len, long *retry_after_ms, char *msg,
		       size_t msg_cap);

#endif
