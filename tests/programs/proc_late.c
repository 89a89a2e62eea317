/* Threads that exist before the agent: busy threads start first, then the
 * agent is loaded with dlopen(). Usage: proc_late AGENT_PATH SECONDS */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile int stop;

__attribute__((noinline)) static unsigned long
early_thread_work(unsigned long x)
{
	for (int i = 0; i < 100000; i++)
		x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x;
}

static void *early_thread(void *arg)
{
	unsigned long x = (unsigned long)arg;
	while (!stop)
		x = early_thread_work(x);
	return (void *)x;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: proc_late AGENT_PATH SECONDS\n");
		return 2;
	}
	pthread_t t[2];
	for (long i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, early_thread, (void *)(i + 1));
	struct timespec d = {0, 200 * 1000000};
	nanosleep(&d, NULL);
	void *agent = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!agent) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	double s = atof(argv[2]);
	d.tv_sec = (time_t)s;
	d.tv_nsec = (long)((s - (double)d.tv_sec) * 1e9);
	nanosleep(&d, NULL);
	stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("late agent: ok\n");
	return 0;
}
