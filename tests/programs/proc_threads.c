/* Thousands of short threads, a few at a time, each allocating a little;
 * they end by returning, by pthread_exit, or detached. Deterministic
 * output on stdout; on stderr the POSIX timers left (/proc/self/timers)
 * and the peak RSS. Usage: proc_threads THREADS PARALLEL */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sem_t detached_done;
static unsigned long results[8];

__attribute__((noinline)) static unsigned long
short_thread_work(unsigned long x)
{
	char *p = malloc(256 + (x % 4096));
	if (!p)
		return x;
	memset(p, (int)(x & 0x7f), 256);
	x = x * 6364136223846793005ul + (unsigned long)p[x % 256];
	/* Now and then a block large enough to be sampled. */
	if (x % 16 == 0) {
		char *big = malloc(600000);
		if (big) {
			big[0] = 1;
			x += (unsigned long)big[0];
			free(big);
		}
	}
	free(p);
	return x;
}

struct job {
	unsigned long in, out;
	int how;
};

static void *thread_main(void *arg)
{
	struct job *j = arg;
	j->out = short_thread_work(j->in);
	if (j->how == 1)
		pthread_exit(NULL);
	if (j->how == 2) {
		results[j->in % 8] ^= j->out;
		free(j);
		sem_post(&detached_done);
	}
	return NULL;
}

static int count_timers(void)
{
	FILE *f = fopen("/proc/self/timers", "r");
	if (!f)
		return -1;
	char line[256];
	int n = 0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "ID:", 3) == 0)
			n++;
	fclose(f);
	return n;
}

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	char line[256];
	long v = -1;
	size_t n = strlen(key);
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, n) == 0)
			v = atol(line + n + 1);
	fclose(f);
	return v;
}

int main(int argc, char **argv)
{
	int total = argc > 1 ? atoi(argv[1]) : 20000;
	int parallel = argc > 2 ? atoi(argv[2]) : 4;
	if (parallel < 1 || parallel > 64)
		parallel = 4;
	sem_init(&detached_done, 0, 0);
	unsigned long sum = 0;
	int detached = 0, failed = 0;
	for (int base = 0; base < total; base += parallel) {
		pthread_t t[64];
		struct job *jobs[64];
		int n = 0;
		for (int i = 0; i < parallel && base + i < total; i++) {
			struct job *j = malloc(sizeof(*j));
			j->in = (unsigned long)(base + i) * 2654435761u;
			j->how = (base + i) % 3;
			j->out = 0;
			if (j->how == 2) {
				pthread_attr_t a;
				pthread_attr_init(&a);
				pthread_attr_setdetachstate(
				    &a, PTHREAD_CREATE_DETACHED);
				pthread_t d;
				if (pthread_create(&d, &a, thread_main, j) == 0)
					detached++;
				else
					failed++;
				pthread_attr_destroy(&a);
				continue;
			}
			if (pthread_create(&t[n], NULL, thread_main, j) != 0) {
				failed++;
				free(j);
				continue;
			}
			jobs[n++] = j;
		}
		for (int i = 0; i < n; i++) {
			pthread_join(t[i], NULL);
			sum += jobs[i]->out;
			free(jobs[i]);
		}
	}
	for (int i = 0; i < detached; i++)
		sem_wait(&detached_done);
	for (int i = 0; i < 8; i++)
		sum += results[i];
	printf("threads: %d (%d failed), checksum %lx\n", total, failed, sum);
	fprintf(stderr, "timers: %d\nVmHWM: %ld kB\nVmRSS: %ld kB\n",
		count_timers(), status_kb("VmHWM:"), status_kb("VmRSS:"));
	return failed ? 1 : 0;
}
