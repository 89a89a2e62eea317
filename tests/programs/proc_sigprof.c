/* A host with its own use of SIGPROF. Deterministic output.
 *
 *   proc_sigprof handler  sigaction(SIGPROF) + setitimer(ITIMER_PROF, 1 ms)
 *                         after a first second of CPU: counts its ticks
 *                         and the SIGPROFs it did not ask for
 *   proc_sigprof signal   the same through signal()
 *   proc_sigprof raw      the same through the raw rt_sigaction syscall
 *                         (libc never sees it)
 *   proc_sigprof ignore   signal(SIGPROF, SIG_IGN) at start; burns CPU in
 *                         ignored_spin; reads its disposition back; runs
 *                         shells (fork+exec, posix_spawn, popen) that send
 *                         themselves SIGPROF (they survive only if they
 *                         inherited SIG_IGN); sends itself one.
 */
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long ticks, foreign;
static volatile unsigned long sink; /* keeps results (and frames) alive */

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long spin_for(double seconds)
{
	unsigned long x = 1;
	double end = cpu_now() + seconds;
	while (cpu_now() < end)
		for (int i = 0; i < 20000; i++)
			x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x;
}

__attribute__((noinline)) static unsigned long host_profiled_spin(double s)
{
	return spin_for(s) + 1;
}

__attribute__((noinline)) static unsigned long ignored_spin(double s)
{
	return spin_for(s) + 2;
}

static void on_prof(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	(void)uc;
	/* setitimer's signals come from the kernel; anything else (a POSIX
	 * timer, kill) was not asked for. */
	if (info->si_code == SI_KERNEL)
		ticks++;
	else
		foreign++;
}

static void on_prof_plain(int sig)
{
	(void)sig;
	ticks++;
}

struct kernel_sigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	unsigned long mask;
};

void restorer(void) __asm__("proc_sigprof_restorer");
__asm__(".text\n"
	"proc_sigprof_restorer:\n"
	"	mov $15, %rax\n"
	"	syscall\n");

static int install(const char *how)
{
	if (strcmp(how, "signal") == 0)
		return signal(SIGPROF, on_prof_plain) == SIG_ERR ? -1 : 0;
	if (strcmp(how, "raw") == 0) {
		struct kernel_sigaction ka;
		memset(&ka, 0, sizeof(ka));
		ka.handler = (void *)on_prof;
		ka.flags =
		    SA_SIGINFO | SA_RESTART | 0x04000000 /* SA_RESTORER */;
		ka.restorer = (void *)restorer;
		return (int)syscall(SYS_rt_sigaction, SIGPROF, &ka, NULL, 8);
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_prof;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	return sigaction(SIGPROF, &sa, NULL);
}

static int own_profiler(const char *how)
{
	/* A first second in which the agent samples alone. */
	sink = spin_for(1.0);
	if (install(how) != 0) {
		perror("install");
		return 1;
	}
	struct itimerval it = {{0, 1000}, {0, 1000}};
	setitimer(ITIMER_PROF, &it, NULL);
	/* The raw install is seen by the agent within its once-a-second
	 * rescan: what arrives in that second is not counted. */
	if (strcmp(how, "raw") == 0) {
		sink = host_profiled_spin(1.5);
		foreign = 0;
	}
	sink = host_profiled_spin(1.0);
	struct itimerval off;
	memset(&off, 0, sizeof(off));
	setitimer(ITIMER_PROF, &off, NULL);
	printf("own profiler (%s): ticks %s, signals not asked for: %ld\n", how,
	       ticks > 100 ? "counted" : "MISSING", foreign);
	fprintf(stderr, "ticks %ld\n", ticks);
	return 0;
}

#define SELF_KILL "kill -PROF $$; echo shell survived"

static const char *status(int st)
{
	return WIFSIGNALED(st) ? "killed" : "exited";
}

static int ignore(void)
{
	signal(SIGPROF, SIG_IGN);
	sink = ignored_spin(1.0);
	struct sigaction old;
	sigaction(SIGPROF, NULL, &old);
	printf("disposition: %s\n",
	       old.sa_handler == SIG_IGN ? "SIG_IGN" : "something else");
	/* Children inherit SIG_IGN through exec: each shell survives the
	 * SIGPROF it sends itself. */
	int st = 0;
	pid_t pid = fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", SELF_KILL, (char *)NULL);
		_exit(127);
	}
	waitpid(pid, &st, 0);
	printf("fork+exec shell: %s\n", status(st));
	char *argv[] = {"sh", "-c", SELF_KILL, NULL};
	extern char **environ;
	if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) == 0) {
		waitpid(pid, &st, 0);
		printf("posix_spawn shell: %s\n", status(st));
	}
	FILE *f = popen(SELF_KILL, "r");
	if (f) {
		char line[64] = "";
		if (!fgets(line, sizeof(line), f))
			strcpy(line, "nothing\n");
		st = pclose(f);
		printf("popen shell: %s, said %s", status(st), line);
	}
	kill(getpid(), SIGPROF);
	printf("self: survived\n");
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *mode = argc > 1 ? argv[1] : "handler";
	if (strcmp(mode, "ignore") == 0)
		return ignore();
	return own_profiler(mode);
}
