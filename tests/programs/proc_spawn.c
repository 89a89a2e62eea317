/* posix_spawn() and vfork()+exec of /bin/true, thousands of times, while
 * other threads allocate. vfork children share the parent's memory and
 * run no atfork handler; some allocate before exec (common, if not
 * strictly allowed). The new programs get an empty environment: this is
 * about the parent's side (proc_exec has children with the agent).
 * Deterministic output. Usage: proc_spawn ROUNDS */
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *no_env[] = {NULL};
static volatile int stop;

__attribute__((noinline)) static unsigned long spawn_side_work(unsigned long x)
{
	for (int i = 0; i < 64; i++) {
		x = x * 6364136223846793005ul + 1442695040888963407ul;
		char *p = malloc(64 + (x >> 52));
		if (p) {
			p[0] = (char)x;
			x += (unsigned long)p[0];
			free(p);
		}
	}
	return x;
}

static void *allocator(void *arg)
{
	unsigned long x = (unsigned long)(long)arg;
	struct timespec pause = {0, 200000};
	while (!stop) {
		x = spawn_side_work(x);
		nanosleep(&pause, NULL);
	}
	return (void *)x;
}

static int wait_ok(pid_t pid)
{
	int st;
	return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
	       WEXITSTATUS(st) == 0;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 1000;
	pthread_t t[3];
	for (long i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, allocator, (void *)(i + 1));
	char *args[] = {"true", NULL};
	int spawned = 0, vforked = 0;
	for (int i = 0; i < rounds; i++) {
		pid_t pid;
		if (posix_spawn(&pid, "/bin/true", NULL, NULL, args, no_env) ==
			0 &&
		    wait_ok(pid))
			spawned++;
		pid = vfork();
		if (pid == 0) {
			if (i % 4 == 0) {
				/* Large enough to reach the sampled path;
				 * volatile, or gcc drops the pair. */
				char *volatile p = malloc(1 << 20);
				if (p)
					p[0] = 1;
				free(p);
			}
			execve("/bin/true", args, no_env);
			_exit(127);
		}
		if (wait_ok(pid))
			vforked++;
	}
	stop = 1;
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	printf("posix_spawn: %d of %d ok, vfork: %d of %d ok\n", spawned,
	       rounds, vforked, rounds);
	return spawned == rounds && vforked == rounds ? 0 : 1;
}
