/* HTTP handlers of the aggregator, as libmicrohttpd callbacks. */
#include "routes.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "meters.h"

/* A request body is never needed; more than this closes the connection. */
#define MAX_BODY_BYTES (64u * 1024)
/* Access-log copy of the URI; longer ones are cut. */
#define LOG_URI_BYTES 512
/* Largest response body we build (JSON errors, metrics). */
#define BODY_BYTES 2048

struct request {
	struct timespec start;
	char method[16];
	char uri[LOG_URI_BYTES]; /* path and query as sent, printable */
	unsigned status;	 /* 0 until a response is queued */
	bool started;
	size_t body_bytes;
};

static void copy_printable(char *dst, size_t cap, const char *src)
{
	size_t i = 0;

	for (; src && src[i] && i + 1 < cap; i++) {
		unsigned char c = (unsigned char)src[i];

		dst[i] = c > 0x20 && c < 0x7f ? (char)c : '?';
	}
	dst[i] = '\0';
}

void *routes_request_begin(void *cls, const char *uri,
			   struct MHD_Connection *connection)
{
	struct request *req = calloc(1, sizeof(*req));

	(void)cls;
	(void)connection;
	if (!req)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, &req->start);
	copy_printable(req->uri, sizeof(req->uri), uri);
	return req;
}

void routes_request_done(void *cls, struct MHD_Connection *connection,
			 void **req_cls, enum MHD_RequestTerminationCode toe)
{
	struct request *req = *req_cls;
	struct timespec now;
	double ms;

	(void)cls;
	(void)connection;
	if (!req)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	ms = (double)(now.tv_sec - req->start.tv_sec) * 1e3 +
	     (double)(now.tv_nsec - req->start.tv_nsec) / 1e6;
	/* One fprintf per line: stdio locks the stream, so lines from
	 * concurrent requests never interleave. */
	fprintf(stderr, "aggregator: %s %s %u %.1f ms%s\n",
		req->method[0] ? req->method : "-", req->uri, req->status, ms,
		toe == MHD_REQUEST_TERMINATED_COMPLETED_OK
		    ? ""
		    : " (connection closed before the response was sent)");
	free(req);
	*req_cls = NULL;
}

/* ---- responses ---------------------------------------------------------- */

/* Queues a copy of body; extra_name/extra_value is an optional header. */
static enum MHD_Result respond(struct MHD_Connection *connection,
			       struct request *req, unsigned status,
			       const char *content_type, const char *body,
			       size_t len, const char *extra_name,
			       const char *extra_value)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(len, (void *)body,
					       MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				    content_type) != MHD_YES ||
	    (extra_name && MHD_add_response_header(resp, extra_name,
						   extra_value) != MHD_YES)) {
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(connection, status, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
		req->status = status;
	return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *connection,
				    struct request *req, unsigned status,
				    const char *text, const char *extra_name,
				    const char *extra_value)
{
	return respond(connection, req, status, "text/plain", text,
		       strlen(text), extra_name, extra_value);
}

/* Appends s to out as the inside of a JSON string; never overflows. */
static size_t json_escape(char *out, size_t cap, size_t pos, const char *s)
{
	for (; *s && pos + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			out[pos++] = '\\';
			out[pos++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x",
						c);
		} else {
			out[pos++] = (char)c;
		}
	}
	out[pos] = '\0';
	return pos;
}

/* {"error":"...","line":N,"detail":"..."}; line 0 is left out. */
static enum MHD_Result respond_error(struct MHD_Connection *connection,
				     struct request *req, unsigned status,
				     const char *error, uint64_t line,
				     const char *detail, const char *extra_name,
				     const char *extra_value)
{
	char body[BODY_BYTES];
	size_t pos;

	pos = (size_t)snprintf(body, sizeof(body), "{\"error\":\"");
	pos = json_escape(body, sizeof(body), pos, error);
	pos += (size_t)snprintf(body + pos, sizeof(body) - pos, "\"");
	if (line)
		pos += (size_t)snprintf(body + pos, sizeof(body) - pos,
					",\"line\":%" PRIu64, line);
	pos +=
	    (size_t)snprintf(body + pos, sizeof(body) - pos, ",\"detail\":\"");
	pos = json_escape(body, sizeof(body) - 2, pos, detail);
	memcpy(body + pos, "\"}", 3);
	return respond(connection, req, status, "application/json", body,
		       pos + 2, extra_name, extra_value);
}

__attribute__((format(printf, 4, 5))) static enum MHD_Result
bad_request(struct MHD_Connection *connection, struct request *req,
	    const char *error, const char *fmt, ...)
{
	char detail[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return respond_error(connection, req, MHD_HTTP_BAD_REQUEST, error, 0,
			     detail, NULL, NULL);
}

static enum MHD_Result method_not_allowed(struct MHD_Connection *connection,
					  struct request *req,
					  const char *allow)
{
	char detail[128];

	snprintf(detail, sizeof(detail), "%s is not allowed here; use %s",
		 req->method, allow);
	return respond_error(connection, req, MHD_HTTP_METHOD_NOT_ALLOWED,
			     "method not allowed", 0, detail,
			     MHD_HTTP_HEADER_ALLOW, allow);
}

/* ---- parameters -----------------------------------------------------------
 */

enum parse_u64 { U64_OK, U64_EMPTY, U64_NEGATIVE, U64_SYNTAX, U64_RANGE };

/* Strict decimal: digits only, no sign, no spaces, no exponent. */
static enum parse_u64 parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	if (!s || !*s)
		return U64_EMPTY;
	if (*p == '-' && p[1] >= '0' && p[1] <= '9') {
		for (p++; *p >= '0' && *p <= '9'; p++)
			;
		return *p ? U64_SYNTAX : U64_NEGATIVE;
	}
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return U64_SYNTAX;
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return U64_RANGE;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*out = v;
	return U64_OK;
}

static const char *query(struct MHD_Connection *connection, const char *key)
{
	return MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND,
					   key);
}

/* ---- endpoints ------------------------------------------------------------
 */

static enum MHD_Result handle_generate(const struct routes_config *cfg,
				       struct MHD_Connection *connection,
				       struct request *req)
{
	const char *count_s = query(connection, "meterCount");
	const char *seed_s = query(connection, "seed");
	char shown[80], text[96], seed_text[24];
	struct meters_report rep;
	uint64_t count = 0, seed;
	int err;

	copy_printable(shown, 64, count_s);
	switch (parse_u64(count_s, &count)) {
	case U64_EMPTY:
		return bad_request(connection, req, "bad request",
				   "missing meterCount: POST "
				   "/smartMeters/randomSmartMeterValues?"
				   "meterCount=N with 1 <= N <= %llu",
				   METERS_MAX_COUNT);
	case U64_NEGATIVE:
		return bad_request(connection, req, "bad request",
				   "meterCount must be positive, got %s",
				   shown);
	case U64_SYNTAX:
		return bad_request(connection, req, "bad request",
				   "meterCount must be a positive integer, "
				   "got \"%s\"",
				   shown);
	case U64_RANGE:
		count = UINT64_MAX;
		break;
	case U64_OK:
		break;
	}
	if (count == 0)
		return bad_request(connection, req, "bad request",
				   "meterCount must be at least 1, got %s",
				   shown);
	if (count > METERS_MAX_COUNT)
		return bad_request(connection, req, "bad request",
				   "meterCount must be at most %llu, got %s",
				   METERS_MAX_COUNT, shown);
	if (seed_s) {
		if (parse_u64(seed_s, &seed) != U64_OK) {
			copy_printable(shown, 64, seed_s);
			return bad_request(connection, req, "bad request",
					   "seed must be an integer between 0 "
					   "and %" PRIu64 ", got \"%s\"",
					   UINT64_MAX, shown);
		}
	} else if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) {
		seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^
		       (uint64_t)(uintptr_t)req;
	}
	snprintf(seed_text, sizeof(seed_text), "%" PRIu64, seed);

	err = meters_generate(cfg->data_file, count, seed, &rep);
	switch (err) {
	case 0:
		snprintf(text, sizeof(text),
			 "CSV file generated with %" PRIu64 " readings.",
			 count);
		return respond_text(connection, req, MHD_HTTP_OK, text,
				    "X-Seed", seed_text);
	case -EINVAL:
	case -EFBIG:
		return respond_error(connection, req, MHD_HTTP_BAD_REQUEST,
				     "bad request", 0, rep.detail, NULL, NULL);
	case -ENOSPC:
	case -EDQUOT:
		return respond_error(
		    connection, req, MHD_HTTP_INSUFFICIENT_STORAGE,
		    "insufficient storage", 0, rep.detail, NULL, NULL);
	case -ENOMEM:
		return respond_error(
		    connection, req, MHD_HTTP_INTERNAL_SERVER_ERROR,
		    "out of memory", 0, rep.detail, NULL, NULL);
	case -ECANCELED:
		return respond_error(
		    connection, req, MHD_HTTP_SERVICE_UNAVAILABLE,
		    "shutting down", 0, rep.detail, NULL, NULL);
	default:
		return respond_error(connection, req,
				     MHD_HTTP_INTERNAL_SERVER_ERROR, "io error",
				     0, rep.detail, NULL, NULL);
	}
}

static enum MHD_Result handle_sum(const struct routes_config *cfg,
				  struct MHD_Connection *connection,
				  struct request *req)
{
	const char *mode = query(connection, "mode");
	struct meters_sum sum = {0};
	struct meters_report rep;
	char body[48], count[24], shown[80];
	int err;

	if (!mode || !strcmp(mode, "naive")) {
		err = meters_sum_naive(cfg->data_file, &sum, &rep);
	} else if (!strcmp(mode, "streaming")) {
		err = meters_sum_streaming(cfg->data_file, &sum, &rep);
	} else {
		copy_printable(shown, 64, mode);
		return bad_request(connection, req, "bad request",
				   "mode must be naive or streaming, got "
				   "\"%s\"",
				   shown);
	}
	switch (err) {
	case 0:
		/* Exact: integer milli-kWh, never a float. */
		snprintf(body, sizeof(body), "%" PRId64 ".%03" PRId64,
			 sum.milli_kwh / 1000, sum.milli_kwh % 1000);
		snprintf(count, sizeof(count), "%" PRIu64, sum.readings);
		return respond(connection, req, MHD_HTTP_OK, "application/json",
			       body, strlen(body), "X-Readings-Count", count);
	case -ENOENT:
		return respond_error(connection, req, MHD_HTTP_NOT_FOUND,
				     "no data", 0, rep.detail, NULL, NULL);
	case -EBADMSG:
		return respond_error(
		    connection, req, MHD_HTTP_UNPROCESSABLE_CONTENT,
		    "malformed csv", rep.line, rep.detail, NULL, NULL);
	case -EOVERFLOW:
		return respond_error(
		    connection, req, MHD_HTTP_UNPROCESSABLE_CONTENT,
		    "sum overflow", rep.line, rep.detail, NULL, NULL);
	case -ENOMEM:
		return respond_error(
		    connection, req, MHD_HTTP_INTERNAL_SERVER_ERROR,
		    "out of memory", 0, rep.detail, NULL, NULL);
	case -ECANCELED:
		return respond_error(
		    connection, req, MHD_HTTP_SERVICE_UNAVAILABLE,
		    "shutting down", 0, rep.detail, NULL, NULL);
	default:
		return respond_error(connection, req,
				     MHD_HTTP_INTERNAL_SERVER_ERROR, "io error",
				     0, rep.detail, NULL, NULL);
	}
}

/* Prometheus text format: the heap cap's accounting. */
static enum MHD_Result handle_metrics(struct MHD_Connection *connection,
				      struct request *req)
{
	struct meters_heap_stats st;
	char body[BODY_BYTES];
	int n;

	meters_heap_stats(&st);
	n = snprintf(
	    body, sizeof(body),
	    "# HELP aggregator_heap_max_bytes Heap cap (0 = none).\n"
	    "# TYPE aggregator_heap_max_bytes gauge\n"
	    "aggregator_heap_max_bytes %" PRIu64 "\n"
	    "# HELP aggregator_heap_used_bytes Bytes charged by running "
	    "requests.\n"
	    "# TYPE aggregator_heap_used_bytes gauge\n"
	    "aggregator_heap_used_bytes %" PRIu64 "\n"
	    "# HELP aggregator_heap_peak_bytes Highest heap use since "
	    "start.\n"
	    "# TYPE aggregator_heap_peak_bytes gauge\n"
	    "aggregator_heap_peak_bytes %" PRIu64 "\n"
	    "# HELP aggregator_out_of_memory_total Requests failed for "
	    "lack of memory.\n"
	    "# TYPE aggregator_out_of_memory_total counter\n"
	    "aggregator_out_of_memory_total %" PRIu64 "\n",
	    st.cap, st.used, st.peak, st.oom_count);
	return respond(connection, req, MHD_HTTP_OK,
		       "text/plain; version=0.0.4", body, (size_t)n, NULL,
		       NULL);
}

enum MHD_Result routes_handle(void *cls, struct MHD_Connection *connection,
			      const char *url, const char *method,
			      const char *version, const char *upload_data,
			      size_t *upload_data_size, void **req_cls)
{
	const struct routes_config *cfg = cls;
	struct request *req = *req_cls;
	bool get, post;

	(void)version;
	(void)upload_data;
	if (!req)
		return MHD_NO; /* routes_request_begin ran out of memory */
	if (!req->started) {
		/* First call: headers only. Answer after the body. */
		req->started = true;
		copy_printable(req->method, sizeof(req->method), method);
		return MHD_YES;
	}
	if (*upload_data_size) {
		req->body_bytes += *upload_data_size;
		*upload_data_size = 0;
		return req->body_bytes > MAX_BODY_BYTES ? MHD_NO : MHD_YES;
	}

	get = !strcmp(method, MHD_HTTP_METHOD_GET);
	post = !strcmp(method, MHD_HTTP_METHOD_POST);
	if (!strcmp(url, "/smartMeters/randomSmartMeterValues"))
		return post ? handle_generate(cfg, connection, req)
			    : method_not_allowed(connection, req, "POST");
	if (!strcmp(url, "/smartMeters/sum"))
		return get ? handle_sum(cfg, connection, req)
			   : method_not_allowed(connection, req, "GET");
	if (!strcmp(url, "/health"))
		return get ? respond(connection, req, MHD_HTTP_OK,
				     "application/json", "{\"status\":\"UP\"}",
				     15, NULL, NULL)
			   : method_not_allowed(connection, req, "GET");
	if (!strcmp(url, "/metrics"))
		return get ? handle_metrics(connection, req)
			   : method_not_allowed(connection, req, "GET");
	return respond_error(connection, req, MHD_HTTP_NOT_FOUND, "not found",
			     0, "no such endpoint", NULL, NULL);
}
