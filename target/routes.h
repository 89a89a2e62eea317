/* HTTP handlers of the aggregator, as libmicrohttpd callbacks. */
#ifndef AGGREGATOR_ROUTES_H
#define AGGREGATOR_ROUTES_H

#include <stddef.h>

#include <microhttpd.h>

/* Passed as the cls of every callback below; must outlive the daemon. */
struct routes_config {
	const char *data_file; /* the readings CSV */
};

/* MHD_OPTION_URI_LOG_CALLBACK: starts a request's context (clock, URI
 * with its query, for the access log). Returns NULL when out of memory;
 * the handler then drops the connection. */
void *routes_request_begin(void *cls, const char *uri,
			   struct MHD_Connection *connection);

/* The MHD_AccessHandlerCallback: dispatches on method and path. */
enum MHD_Result routes_handle(void *cls, struct MHD_Connection *connection,
			      const char *url, const char *method,
			      const char *version, const char *upload_data,
			      size_t *upload_data_size, void **req_cls);

/* MHD_OPTION_NOTIFY_COMPLETED: logs the request's line (method, path and
 * query, status, duration) on stderr and frees its context. */
void routes_request_done(void *cls, struct MHD_Connection *connection,
			 void **req_cls, enum MHD_RequestTerminationCode toe);

#endif
