/* The smart meter aggregator: flags, the HTTP server, clean shutdown. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "meters.h"
#include "routes.h"

#define DEFAULT_PORT	  8080
#define DEFAULT_BIND	  "0.0.0.0"
#define DEFAULT_DATA_FILE "out/smartmeter-readings.csv"
#define DEFAULT_THREADS	  4
#define MAX_THREADS	  256
/* Like the JVM's default MaxRAMPercentage: a quarter of the memory
 * available to the process. */
#define DEFAULT_HEAP_PERCENT 25
/* How long a shutdown waits for running requests to answer. */
#define DRAIN_MS 1500

struct options {
	unsigned port;
	const char *bind;
	const char *data_file;
	uint64_t max_heap; /* 0 = no cap */
	bool max_heap_set;
	unsigned threads;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: aggregator [options]\n"
		"\n"
		"A smart meter aggregator HTTP server (the pyroagent demo "
		"workload).\n"
		"\n"
		"  --port P         listen port; 0 picks a free one "
		"(AGGREGATOR_PORT, default %d)\n"
		"  --bind ADDR      IPv4 or IPv6 address to listen on "
		"(AGGREGATOR_BIND, default %s)\n"
		"  --data-file PATH the readings CSV (AGGREGATOR_DATA_FILE, "
		"default %s)\n"
		"  --max-heap SIZE  heap cap of the sums like -Xmx: bytes or "
		"k/m/g/t suffix, 0 = none\n"
		"                   (AGGREGATOR_MAX_HEAP, default %d%% of "
		"RAM or of the cgroup limit)\n"
		"  --threads N      HTTP worker threads (AGGREGATOR_THREADS, "
		"default %d)\n"
		"  --help           this text\n"
		"\n"
		"endpoints:\n"
		"  POST /smartMeters/randomSmartMeterValues?meterCount=N"
		"[&seed=S]\n"
		"  GET  /smartMeters/sum[?mode=naive|streaming]\n"
		"  GET  /health\n"
		"  GET  /metrics\n",
		DEFAULT_PORT, DEFAULT_BIND, DEFAULT_DATA_FILE,
		DEFAULT_HEAP_PERCENT, DEFAULT_THREADS);
}

static bool parse_uint(const char *s, unsigned long long max,
		       unsigned long long *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return false;
	*out = v;
	return true;
}

/* "768m", "1g", "1GiB", "512k", "1048576": bytes, binary suffixes. */
static bool parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return false;
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	case 't':
	case 'T':
		shift = 40;
		break;
	case '\0':
		break;
	default:
		return false;
	}
	if (shift) {
		end++;
		if (*end && strcasecmp(end, "b") && strcasecmp(end, "ib"))
			return false;
	} else if (*end) {
		return false;
	}
	if (v > (UINT64_MAX >> shift))
		return false;
	*out = (uint64_t)v << shift;
	return true;
}

static uint64_t read_u64_file(const char *path)
{
	FILE *f = fopen(path, "re");
	unsigned long long v = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%llu", &v) != 1)
		v = 0; /* "max" or unreadable: no limit */
	fclose(f);
	return v;
}

/* The memory limit of this process's cgroup (v2, then v1), or 0. */
static uint64_t cgroup_limit(void)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char line[512], path[PATH_MAX];
	uint64_t limit = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char *rel = strchr(line, ':');
		char *nl = strchr(line, '\n');
		uint64_t v = 0;

		if (nl)
			*nl = '\0';
		if (!rel || !(rel = strchr(rel + 1, ':')))
			continue;
		rel++;
		if (!strncmp(line, "0::", 3))
			snprintf(path, sizeof(path),
				 "/sys/fs/cgroup%s/memory.max", rel);
		else if (strstr(line, ":memory:"))
			snprintf(path, sizeof(path),
				 "/sys/fs/cgroup/memory%s/"
				 "memory.limit_in_bytes",
				 rel);
		else
			continue;
		v = read_u64_file(path);
		/* cgroup v1 reports "no limit" as a huge page-aligned value. */
		if (v && v < (1ull << 60) && (!limit || v < limit))
			limit = v;
	}
	fclose(f);
	return limit;
}

/* The JVM's ergonomics: a share of physical memory or of the cgroup's
 * limit, whichever is lower. why says where the number came from. */
static uint64_t default_heap_cap(char *why, size_t why_len)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	uint64_t ram = pages > 0 && page > 0 ? (uint64_t)pages * page : 0;
	uint64_t cg = cgroup_limit();
	uint64_t base = ram;
	const char *src = "physical memory";

	if (cg && (!base || cg < base)) {
		base = cg;
		src = "the cgroup memory limit";
	}
	if (!base) {
		snprintf(why, why_len, "no memory size found: no cap");
		return 0;
	}
	snprintf(why, why_len, "%d%% of %s, %.1f GiB", DEFAULT_HEAP_PERCENT,
		 src, (double)base / (1 << 30));
	return base / 100 * DEFAULT_HEAP_PERCENT;
}

static int bad_value(const char *what, const char *value)
{
	fprintf(stderr, "aggregator: invalid %s: '%s'\n", what, value);
	usage(stderr);
	return 2;
}

/* Environment first, flags override. Returns -1 to go on, else an exit
 * status. */
static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longs[] = {
	    {"port", required_argument, NULL, 'p'},
	    {"bind", required_argument, NULL, 'b'},
	    {"data-file", required_argument, NULL, 'd'},
	    {"max-heap", required_argument, NULL, 'm'},
	    {"threads", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *env;
	unsigned long long v;
	int c;

	o->port = DEFAULT_PORT;
	o->bind = DEFAULT_BIND;
	o->data_file = DEFAULT_DATA_FILE;
	o->threads = DEFAULT_THREADS;
	if ((env = getenv("AGGREGATOR_PORT")) && *env) {
		if (!parse_uint(env, 65535, &v))
			return bad_value("AGGREGATOR_PORT", env);
		o->port = (unsigned)v;
	}
	if ((env = getenv("AGGREGATOR_BIND")) && *env)
		o->bind = env;
	if ((env = getenv("AGGREGATOR_DATA_FILE")) && *env)
		o->data_file = env;
	if ((env = getenv("AGGREGATOR_MAX_HEAP")) && *env) {
		if (!parse_size(env, &o->max_heap))
			return bad_value("AGGREGATOR_MAX_HEAP", env);
		o->max_heap_set = true;
	}
	if ((env = getenv("AGGREGATOR_THREADS")) && *env) {
		if (!parse_uint(env, MAX_THREADS, &v) || !v)
			return bad_value("AGGREGATOR_THREADS", env);
		o->threads = (unsigned)v;
	}

	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
		switch (c) {
		case 'p':
			if (!parse_uint(optarg, 65535, &v))
				return bad_value("--port", optarg);
			o->port = (unsigned)v;
			break;
		case 'b':
			o->bind = optarg;
			break;
		case 'd':
			if (!*optarg)
				return bad_value("--data-file", optarg);
			o->data_file = optarg;
			break;
		case 'm':
			if (!parse_size(optarg, &o->max_heap))
				return bad_value("--max-heap", optarg);
			o->max_heap_set = true;
			break;
		case 't':
			if (!parse_uint(optarg, MAX_THREADS, &v) || !v)
				return bad_value("--threads", optarg);
			o->threads = (unsigned)v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			fprintf(stderr,
				"aggregator: unknown or incomplete "
				"option '%s'\n",
				argv[optind - 1]);
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "aggregator: unexpected argument '%s'\n",
			argv[optind]);
		usage(stderr);
		return 2;
	}
	return -1;
}

static unsigned open_connections(struct MHD_Daemon *daemon)
{
	const union MHD_DaemonInfo *info =
	    MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);

	return info ? info->num_connections : 0;
}

/* Stops accepting, lets running requests answer, then stops. Long
 * generations and sums see the cancel flag within a buffer or 64 K lines
 * and answer 503; idle keep-alive connections get DRAIN_MS at most. */
static void shutdown_daemon(struct MHD_Daemon *daemon)
{
	struct timespec tick = {0, 10 * 1000 * 1000};
	MHD_socket listener;

	meters_cancel();
	listener = MHD_quiesce_daemon(daemon);
	for (int waited = 0; waited < DRAIN_MS && open_connections(daemon);
	     waited += 10)
		nanosleep(&tick, NULL);
	MHD_stop_daemon(daemon);
	/* After quiesce the listening socket is ours to close. */
	if (listener != MHD_INVALID_SOCKET)
		close(listener);
}

int main(int argc, char **argv)
{
	static struct routes_config cfg;
	struct options o = {0};
	struct sockaddr_storage addr = {0};
	struct sockaddr_in *in4 = (struct sockaddr_in *)&addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
	/* ITC: lets MHD_quiesce_daemon wake the workers at shutdown. */
	unsigned flags =
	    MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC;
	const union MHD_DaemonInfo *info;
	struct MHD_Daemon *daemon;
	struct MHD_OptionItem pool[] = {
	    {MHD_OPTION_END, 0, NULL},
	    {MHD_OPTION_END, 0, NULL},
	};
	char why[128];
	sigset_t stop;
	unsigned port;
	int sig, rc;

	rc = parse_options(argc, argv, &o);
	if (rc >= 0)
		return rc;

	if (inet_pton(AF_INET, o.bind, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)o.port);
	} else if (inet_pton(AF_INET6, o.bind, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)o.port);
		flags |= MHD_USE_IPv6;
	} else {
		return bad_value("bind address", o.bind);
	}

	if (!o.max_heap_set)
		o.max_heap = default_heap_cap(why, sizeof(why));
	else
		snprintf(why, sizeof(why), "--max-heap");
	meters_heap_init(o.max_heap);
	cfg.data_file = o.data_file;

	/* SIGTERM/SIGINT are taken with sigwait below; blocked before the
	 * daemon starts so that every MHD thread inherits the mask. */
	/* One malloc arena, like one JVM heap. With per-thread arenas glibc
	 * gives a thread arena's top back only on a later large free there,
	 * so a finished naive sum's memory stayed resident and the next one,
	 * on another worker, stacked on top of it. A user's
	 * MALLOC_ARENA_MAX still wins. */
	if (!getenv("MALLOC_ARENA_MAX"))
		mallopt(M_ARENA_MAX, 1);

	/* Write errors are answered, never fatal: EPIPE from a client gone,
	 * EFBIG from RLIMIT_FSIZE (whose SIGXFSZ would dump core). */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &stop, NULL) != 0) {
		fprintf(stderr, "aggregator: cannot block signals\n");
		return 1;
	}

	/* One thread is MHD's internal polling thread, not a pool (MHD warns
	 * about a pool of 1): the option is left out then. */
	pool[0].option =
	    o.threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END;
	pool[0].value = (intptr_t)o.threads;
	daemon = MHD_start_daemon(
	    flags, (uint16_t)o.port, NULL, NULL, routes_handle, &cfg,
	    MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_ARRAY,
	    pool, MHD_OPTION_URI_LOG_CALLBACK, routes_request_begin, &cfg,
	    MHD_OPTION_NOTIFY_COMPLETED, routes_request_done, &cfg,
	    MHD_OPTION_END);
	if (!daemon) {
		fprintf(stderr, "aggregator: cannot listen on %s port %u\n",
			o.bind, o.port);
		return 1;
	}
	info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
	port = info ? info->port : o.port;

	fprintf(stderr,
		"aggregator: data file %s, heap cap %" PRIu64
		" MiB (%s), %u worker thread%s\n",
		o.data_file, o.max_heap >> 20, why, o.threads,
		o.threads == 1 ? "" : "s");
	if (flags & MHD_USE_IPv6)
		printf("listening on http://[%s]:%u\n", o.bind, port);
	else
		printf("listening on http://%s:%u\n", o.bind, port);
	fflush(stdout);

	while (sigwait(&stop, &sig) != 0)
		;
	fprintf(stderr, "aggregator: %s, shutting down\n",
		sig == SIGTERM ? "SIGTERM" : "SIGINT");
	shutdown_daemon(daemon);
	return 0;
}
