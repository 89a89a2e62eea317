/* Blocking calls the kernel restarts under SA_RESTART, made while busy
 * threads burn CPU and the agent samples at 1 kHz: pipe read/write, a
 * socketpair, waitpid, sem_wait, pthread_cond_wait. Counts the EINTRs it
 * sees (the correct number is 0). The busy threads block SIGPROF, so a
 * process-wide SIGPROF (PYROSCOPE_PROFILER_EVENT=itimer) lands on the
 * threads that wait. Deterministic output. Usage: proc_eintr ROUNDS */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static long eintr;
static int rounds;

static void count_eintr(void)
{
	__atomic_add_fetch(&eintr, 1, __ATOMIC_RELAXED);
}

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *busy(void *arg)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGPROF);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	unsigned long x = (unsigned long)(long)arg;
	while (!stop)
		for (int i = 0; i < 100000; i++)
			x = x * 6364136223846793005ul + 1;
	return (void *)x;
}

/* Waits in read() for a peer that burns CPU between writes. */
static void *pipe_echo(void *arg)
{
	int *fds = arg; /* fds[0]: read ours, fds[1]: write back */
	char b;
	for (;;) {
		ssize_t n = read(fds[0], &b, 1);
		if (n < 0 && errno == EINTR) {
			count_eintr();
			continue;
		}
		if (n <= 0 || b == 'q')
			break;
		while (write(fds[1], &b, 1) < 0 && errno == EINTR)
			count_eintr();
	}
	return NULL;
}

static long pipes(void)
{
	int a[2], b[2];
	if (pipe(a) || pipe(b))
		return -1;
	int fds[2] = {a[0], b[1]};
	pthread_t t;
	pthread_create(&t, NULL, pipe_echo, fds);
	long ok = 0;
	for (int i = 0; i < rounds; i++) {
		char c = 'x', r;
		double end = cpu_now() + 0.002;
		while (cpu_now() < end)
			;
		while (write(a[1], &c, 1) < 0 && errno == EINTR)
			count_eintr();
		ssize_t n;
		while ((n = read(b[0], &r, 1)) < 0 && errno == EINTR)
			count_eintr();
		if (n == 1 && r == 'x')
			ok++;
	}
	char q = 'q';
	(void)!write(a[1], &q, 1);
	pthread_join(t, NULL);
	close(a[0]);
	close(a[1]);
	close(b[0]);
	close(b[1]);
	return ok;
}

static void *sock_echo(void *arg)
{
	int fd = *(int *)arg;
	char b;
	for (;;) {
		ssize_t n = recv(fd, &b, 1, 0);
		if (n < 0 && errno == EINTR) {
			count_eintr();
			continue;
		}
		if (n <= 0 || b == 'q')
			break;
		while (send(fd, &b, 1, 0) < 0 && errno == EINTR)
			count_eintr();
	}
	return NULL;
}

static long sockets(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return -1;
	pthread_t t;
	pthread_create(&t, NULL, sock_echo, &sv[1]);
	long ok = 0;
	for (int i = 0; i < rounds; i++) {
		char c = 's', r;
		double end = cpu_now() + 0.002;
		while (cpu_now() < end)
			;
		while (send(sv[0], &c, 1, 0) < 0 && errno == EINTR)
			count_eintr();
		ssize_t n;
		while ((n = recv(sv[0], &r, 1, 0)) < 0 && errno == EINTR)
			count_eintr();
		if (n == 1 && r == 's')
			ok++;
	}
	char q = 'q';
	(void)!send(sv[0], &q, 1, 0);
	pthread_join(t, NULL);
	close(sv[0]);
	close(sv[1]);
	return ok;
}

static long children(void)
{
	long ok = 0;
	for (int i = 0; i < rounds / 10; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			struct timespec d = {0, 20 * 1000000};
			nanosleep(&d, NULL);
			_exit(7);
		}
		int st;
		pid_t r;
		while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
			count_eintr();
		if (r == pid && WIFEXITED(st) && WEXITSTATUS(st) == 7)
			ok++;
	}
	return ok;
}

static sem_t sem;

static void *sem_poster(void *arg)
{
	(void)arg;
	for (int i = 0; i < rounds; i++) {
		double end = cpu_now() + 0.002;
		while (cpu_now() < end)
			;
		sem_post(&sem);
	}
	return NULL;
}

static long semaphores(void)
{
	sem_init(&sem, 0, 0);
	pthread_t t;
	pthread_create(&t, NULL, sem_poster, NULL);
	long ok = 0;
	for (int i = 0; i < rounds; i++) {
		int rc;
		while ((rc = sem_wait(&sem)) < 0 && errno == EINTR)
			count_eintr();
		if (rc == 0)
			ok++;
	}
	pthread_join(t, NULL);
	return ok;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int posted;

static void *cond_poster(void *arg)
{
	(void)arg;
	for (int i = 0; i < rounds; i++) {
		double end = cpu_now() + 0.002;
		while (cpu_now() < end)
			;
		pthread_mutex_lock(&mu);
		posted++;
		pthread_cond_signal(&cv);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

static long conditions(void)
{
	pthread_t t;
	pthread_create(&t, NULL, cond_poster, NULL);
	long ok = 0;
	pthread_mutex_lock(&mu);
	for (int i = 0; i < rounds; i++) {
		while (posted == 0) {
			int rc = pthread_cond_wait(&cv, &mu);
			if (rc == EINTR)
				count_eintr();
		}
		posted--;
		ok++;
	}
	pthread_mutex_unlock(&mu);
	pthread_join(t, NULL);
	return ok;
}

int main(int argc, char **argv)
{
	rounds = argc > 1 ? atoi(argv[1]) : 300;
	pthread_t b[2];
	for (long i = 0; i < 2; i++)
		pthread_create(&b[i], NULL, busy, (void *)(i + 1));
	long p = pipes(), s = sockets(), c = children(), m = semaphores(),
	     v = conditions();
	stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(b[i], NULL);
	printf("pipes %ld, sockets %ld, waitpid %ld, sem_wait %ld, cond_wait "
	       "%ld\n",
	       p, s, c, m, v);
	printf("EINTR: %ld\n", eintr);
	return 0;
}
