/* fork without exec under the agent. Deterministic output.
 *
 *   proc_fork work CHILDREN SECONDS
 *     busy parent threads (CPU in parent_only_work, malloc) fork CHILDREN
 *     children, each spinning SECONDS of CPU in child_only_work, then
 *     returning from main (exit handlers run);
 *   proc_fork hunt FORKS
 *     one thread forks FORKS times while three others malloc/realloc/free
 *     and mmap; each child allocates, maybe starts a thread, and leaves by
 *     exit() or _exit(); a child still alive after 10 s is a deadlock;
 *   proc_fork locale FORKS SECONDS
 *     forks every ~2 ms for SECONDS (or FORKS times); each child calls
 *     newlocale/freelocale (which need the locale lock strerror holds) and
 *     exits: a child that inherited a held lock hangs (killed by alarm
 *     after 1 s).
 */
#include <locale.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long spin(unsigned long x, long n)
{
	for (long i = 0; i < n; i++)
		x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x;
}

__attribute__((noinline)) static unsigned long parent_only_work(unsigned long x)
{
	char *p = malloc(4096 + (x & 0xffff));
	if (p) {
		memset(p, (int)(x & 0xff), 4096);
		x ^= (unsigned long)p[17];
		free(p);
	}
	x = spin(x, 20000);
	return x ^ (x >> 7);
}

__attribute__((noinline)) static unsigned long child_only_work(double seconds)
{
	unsigned long x = 12345;
	double end = cpu_now() + seconds;
	while (cpu_now() < end)
		x = spin(x, 100000);
	return x;
}

static void *parent_thread(void *arg)
{
	unsigned long x = (unsigned long)(long)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED))
		x = parent_only_work(x);
	return (void *)x;
}

static int work(int children, double seconds)
{
	pthread_t t[2];
	for (long i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, parent_thread, (void *)(i + 1));
	/* Let the parent's agent sample the parent before the forks. */
	double until = now() + 0.3;
	while (now() < until)
		parent_only_work(7);
	pid_t pids[64];
	for (int i = 0; i < children && i < 64; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			child_only_work(seconds);
			printf("child done\n");
			return 0; /* exit handlers run: the child's final
				     profile */
		}
	}
	int ok = 0;
	for (int i = 0; i < children && i < 64; i++) {
		int st;
		if (waitpid(pids[i], &st, 0) == pids[i] && WIFEXITED(st) &&
		    WEXITSTATUS(st) == 0)
			ok++;
	}
	until = now() + 0.3;
	while (now() < until)
		parent_only_work(9);
	stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("children ok: %d of %d\n", ok, children);
	return ok == children ? 0 : 1;
}

/* ---- hunt --------------------------------------------------------------- */

static void *allocator(void *arg)
{
	unsigned long r = (unsigned long)(long)arg;
	void *keep[64] = {0};
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		r = r * 6364136223846793005ul + 1;
		int i = (int)(r >> 58);
		size_t n = 16 + (r >> 40) % (r & 1 ? 200000 : 2000);
		void *p = realloc(keep[i], n);
		if (p) {
			memset(p, 1, n < 64 ? n : 64);
			keep[i] = p;
		}
		if ((r & 0xff) == 0) {
			void *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (m != MAP_FAILED)
				munmap(m, 65536);
		}
	}
	for (int i = 0; i < 64; i++)
		free(keep[i]);
	return NULL;
}

static void *child_thread(void *arg)
{
	free(malloc(1000));
	return arg;
}

static int hunt(int forks)
{
	pthread_t t[3];
	for (long i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, allocator, (void *)(i * 977 + 1));
	int ok = 0, hung = 0, bad = 0;
	for (int i = 0; i < forks; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			alarm(10);
			void *p = malloc(1 << 20);
			for (int k = 0; k < 100; k++)
				free(malloc(100 + k * 1000));
			if (i % 3 == 0) {
				pthread_t c;
				if (pthread_create(&c, NULL, child_thread, p) ==
				    0)
					pthread_join(c, NULL);
			}
			free(p);
			if (i % 2)
				_exit(0);
			exit(0);
		}
		int st;
		if (pid < 0 || waitpid(pid, &st, 0) != pid)
			bad++;
		else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
			hung++;
		else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
		else
			bad++;
	}
	stop = 1;
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	printf("forks: %d ok, %d hung, %d failed\n", ok, hung, bad);
	return ok == forks ? 0 : 1;
}

/* ---- locale ------------------------------------------------------------- */

static int locale_forks(int forks, double seconds)
{
	int ok = 0, hung = 0, bad = 0, n = 0;
	double end = now() + seconds;
	while (n < forks && now() < end) {
		pid_t pid = fork();
		if (pid == 0) {
			alarm(1);
			locale_t l =
			    newlocale(LC_ALL_MASK, "POSIX", (locale_t)0);
			if (l)
				freelocale(l);
			_exit(0);
		}
		n++;
		int st;
		if (pid < 0 || waitpid(pid, &st, 0) != pid)
			bad++;
		else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
			hung++;
		else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
		else
			bad++;
		usleep(2000);
	}
	printf("locale children: %d hung, %d failed\n", hung, bad);
	fprintf(stderr, "locale children: %d forked, %d ok\n", n, ok);
	return hung || bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 4 && strcmp(argv[1], "work") == 0)
		return work(atoi(argv[2]), atof(argv[3]));
	if (argc >= 3 && strcmp(argv[1], "hunt") == 0)
		return hunt(atoi(argv[2]));
	if (argc >= 4 && strcmp(argv[1], "locale") == 0)
		return locale_forks(atoi(argv[2]), atof(argv[3]));
	fprintf(stderr, "usage: proc_fork work N S | hunt N | locale N S\n");
	return 2;
}
