/* Everything at once for a fixed time: threads doing malloc/realloc/free
 * and mmap/munmap, a thread forking (children allocate, then exit or
 * _exit), a thread spawning /bin/true, a thread in a dlopen/dlclose loop.
 * Output is deterministic: each thread's result over a fixed number of
 * rounds, and counts that must be complete.
 * Usage: proc_stress SECONDS */
#include <dlfcn.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKERS	   3
#define MIN_ROUNDS 3000

/* /bin/true without the agent: the stress is in this process. */
static char *no_env[] = {NULL};
static double seconds;
static unsigned long results[WORKERS];
static int forks_bad, spawns_bad, dl_bad;
/* glibc's fork does not reset the lock of the exit handler list, which
 * dlclose takes (__cxa_finalize): a child forked during a dlclose hangs in
 * exit(), agent or not (measured). The program serializes the two. */
static pthread_mutex_t dl_fork_mu = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Deterministic per round: the checksum of what it wrote and read back. */
__attribute__((noinline)) static unsigned long
stress_round(int w, unsigned long r, void **keep)
{
	unsigned long x = (unsigned long)w * 7919 + r;
	int i = (int)(r % 32);
	size_t n = 16 + (x * 2654435761u) % (r % 7 == 0 ? 300000 : 3000);
	unsigned char *p = realloc(keep[i], n);
	if (!p)
		return x;
	p[0] = (unsigned char)x;
	p[n - 1] = (unsigned char)(x >> 8);
	x += p[0] + p[n - 1];
	keep[i] = p;
	char *q = malloc(64 + r % 512);
	if (q) {
		memset(q, (int)(x & 0xff), 64);
		x ^= (unsigned long)q[r % 64];
		free(q);
	}
	if (r % 50 == 0) {
		size_t len = 4096 * (1 + r % 16);
		unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m != MAP_FAILED) {
			m[len - 1] = (unsigned char)x;
			x += m[len - 1];
			munmap(m, len);
		}
	}
	return x;
}

static void *worker(void *arg)
{
	int w = (int)(long)arg;
	void *keep[32] = {0};
	unsigned long sum = 0, r = 0;
	double end = now() + seconds;
	while (r < MIN_ROUNDS || now() < end) {
		unsigned long v = stress_round(w, r, keep);
		if (r < MIN_ROUNDS)
			sum += v;
		r++;
	}
	for (int i = 0; i < 32; i++)
		free(keep[i]);
	results[w] = sum;
	return NULL;
}

static void *forker(void *arg)
{
	(void)arg;
	double end = now() + seconds;
	for (int i = 0; now() < end; i++) {
		pthread_mutex_lock(&dl_fork_mu);
		pid_t pid = fork();
		if (pid != 0)
			pthread_mutex_unlock(&dl_fork_mu);
		if (pid == 0) {
			alarm(20);
			void *keep[32] = {0};
			for (unsigned long r = 0; r < 200; r++)
				stress_round(9, r, keep);
			if (i % 2)
				_exit(0);
			exit(0);
		}
		int st;
		if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
		    WEXITSTATUS(st) != 0)
			__atomic_add_fetch(&forks_bad, 1, __ATOMIC_RELAXED);
		struct timespec d = {0, 20 * 1000000};
		nanosleep(&d, NULL);
	}
	return NULL;
}

static void *spawner(void *arg)
{
	(void)arg;
	char *args[] = {"true", NULL};
	double end = now() + seconds;
	while (now() < end) {
		pid_t pid;
		int st;
		if (posix_spawn(&pid, "/bin/true", NULL, NULL, args, no_env) !=
			0 ||
		    waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
		    WEXITSTATUS(st) != 0)
			__atomic_add_fetch(&spawns_bad, 1, __ATOMIC_RELAXED);
		struct timespec d = {0, 10 * 1000000};
		nanosleep(&d, NULL);
	}
	return NULL;
}

static void *dl_loop(void *arg)
{
	(void)arg;
	double end = now() + seconds;
	while (now() < end) {
		pthread_mutex_lock(&dl_fork_mu);
		void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
		if (!h || !dlsym(h, "crc32"))
			__atomic_add_fetch(&dl_bad, 1, __ATOMIC_RELAXED);
		if (h)
			dlclose(h);
		pthread_mutex_unlock(&dl_fork_mu);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	seconds = argc > 1 ? atof(argv[1]) : 5.0;
	pthread_t w[WORKERS], f, s, d;
	for (long i = 0; i < WORKERS; i++)
		pthread_create(&w[i], NULL, worker, (void *)i);
	pthread_create(&f, NULL, forker, NULL);
	pthread_create(&s, NULL, spawner, NULL);
	pthread_create(&d, NULL, dl_loop, NULL);
	for (int i = 0; i < WORKERS; i++)
		pthread_join(w[i], NULL);
	pthread_join(f, NULL);
	pthread_join(s, NULL);
	pthread_join(d, NULL);
	for (int i = 0; i < WORKERS; i++)
		printf("worker %d: %lx\n", i, results[i]);
	printf("failed forks: %d, failed spawns: %d, failed dlopens: %d\n",
	       forks_bad, spawns_bad, dl_bad);
	return 0;
}
