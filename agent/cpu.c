/* CPU sampling: a POSIX timer per thread on the thread's CPU-time clock
 * (SIGEV_THREAD_ID), as Go does since 1.18; setitimer as the fallback. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "cpu.h"
#include "log.h"
#include "thread.h"
#include "unwind.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

#define MAX_TIMERS 8192

struct timer_slot {
	pid_t tid; /* 0: free */
	timer_t timer;
	int seen;  /* rescan mark */
};

static struct {
	pthread_mutex_t mu;
	struct timer_slot slots[MAX_TIMERS];
	int64_t period_ns;
	int itimer;
	int started;
	uint64_t table_full;
} cpu = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Runs in a signal handler: no locks, no malloc, no stdio; errno kept. */
static void on_sigprof(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	int saved = errno;
	if (!pa_agent_running() || pa_self.is_agent)
		goto out;
	if (pa_self.busy) {
		__atomic_add_fetch(&pa_agent.drops_busy, 1, __ATOMIC_RELAXED);
		goto out;
	}
	pa_self.busy = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	/* A POSIX timer reports the expirations it merged into this one
	 * signal: the sample stands for all of them. */
	int64_t ticks = 1;
	if (info && info->si_code == SI_TIMER && info->si_overrun > 0)
		ticks += info->si_overrun;
	struct pa_sample *s = pa_ring_reserve(pa_agent.ring);
	if (s) {
		s->kind = PA_SAMPLE_CPU;
		s->flags = 0;
		s->tid = pa_self.tid;
		s->values[0] = ticks;
		s->values[1] = ticks * cpu.period_ns;
		pa_unwind_capture_signal(s, uc);
		pa_ring_commit(pa_agent.ring, s);
	}
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	pa_self.busy = 0;
out:
	errno = saved;
}

/* The CPU-time clock of any thread of this process, by tid (the kernel's
 * encoding; pthread_getcpuclockid needs a pthread_t we may not have). */
static clockid_t thread_clock(pid_t tid)
{
	return (clockid_t)((~(unsigned)tid << 3) | 6);
}

static struct timer_slot *slot_find(pid_t tid, int create)
{
	unsigned h = (unsigned)tid * 2654435761u % MAX_TIMERS;
	struct timer_slot *free_slot = NULL;
	for (int i = 0; i < MAX_TIMERS; i++) {
		struct timer_slot *s = &cpu.slots[(h + (unsigned)i) % MAX_TIMERS];
		if (s->tid == tid)
			return s;
		if (s->tid == 0) {
			free_slot = s;
			break;
		}
	}
	return create ? free_slot : NULL;
}

/* Called with cpu.mu held. */
static void arm_locked(pid_t tid)
{
	if (slot_find(tid, 0))
		return;
	struct timer_slot *slot = slot_find(tid, 1);
	if (!slot) {
		if (cpu.table_full++ == 0)
			pa_warn("more than %d threads: new threads are not sampled", MAX_TIMERS);
		return;
	}
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = SIGPROF;
	sev.sigev_notify_thread_id = tid;
	timer_t t;
	if (timer_create(thread_clock(tid), &sev, &t) != 0) {
		/* ESRCH/EINVAL: the thread is already gone. */
		if (errno != EINVAL && errno != ESRCH)
			pa_log_once(PA_LOG_WARN, "timer_create failed (errno %d): some threads are not sampled", errno);
		return;
	}
	struct itimerspec its;
	its.it_interval.tv_sec = cpu.period_ns / 1000000000;
	its.it_interval.tv_nsec = cpu.period_ns % 1000000000;
	its.it_value = its.it_interval;
	if (timer_settime(t, 0, &its, NULL) != 0) {
		timer_delete(t);
		return;
	}
	slot->tid = tid;
	slot->timer = t;
	slot->seen = 1;
}

static void delete_slot(struct timer_slot *s)
{
	timer_delete(s->timer);
	s->tid = 0;
	/* Re-insert the run behind this slot so lookups stay correct in
	 * the open-addressed table. */
	size_t idx = (size_t)(s - cpu.slots);
	for (size_t i = (idx + 1) % MAX_TIMERS; cpu.slots[i].tid; i = (i + 1) % MAX_TIMERS) {
		struct timer_slot moved = cpu.slots[i];
		cpu.slots[i].tid = 0;
		struct timer_slot *dst = slot_find(moved.tid, 1);
		*dst = moved;
	}
}

void pa_cpu_thread_start(void)
{
	if (!cpu.started || cpu.itimer || pa_self.is_agent)
		return;
	pthread_mutex_lock(&cpu.mu);
	arm_locked((pid_t)pa_self.tid);
	pthread_mutex_unlock(&cpu.mu);
}

void pa_cpu_thread_stop(void)
{
	if (!cpu.started || cpu.itimer)
		return;
	pthread_mutex_lock(&cpu.mu);
	struct timer_slot *s = slot_find((pid_t)pa_self.tid, 0);
	if (s)
		delete_slot(s);
	pthread_mutex_unlock(&cpu.mu);
}

/* Every thread in /proc/self/task but the agent's own gets a timer;
 * timers of threads that are gone are deleted. */
void pa_cpu_rescan(void)
{
	if (!cpu.started || cpu.itimer)
		return;
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return;
	pid_t self = (pid_t)syscall(SYS_gettid);
	pid_t tids[1024];
	int n = 0, complete = 1;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		if (n == 1024) {
			complete = 0;
			break;
		}
		tids[n++] = (pid_t)atoi(de->d_name);
	}
	closedir(d);
	pthread_mutex_lock(&cpu.mu);
	for (int i = 0; i < MAX_TIMERS; i++)
		cpu.slots[i].seen = 0;
	for (int i = 0; i < n; i++) {
		/* The caller is the agent thread, or the host thread in the
		 * constructor (pa_cpu_start), which is sampled like any other. */
		if ((tids[i] == self && pa_self.is_agent) || pa_agent_is_own_thread(tids[i]))
			continue;
		struct timer_slot *s = slot_find(tids[i], 0);
		if (s)
			s->seen = 1;
		else
			arm_locked(tids[i]);
	}
	if (complete) {
		for (int i = 0; i < MAX_TIMERS; i++) {
			/* A slot may move while deleting: re-check index i. */
			while (cpu.slots[i].tid && !cpu.slots[i].seen)
				delete_slot(&cpu.slots[i]);
		}
	}
	pthread_mutex_unlock(&cpu.mu);
}

int pa_cpu_start(const struct pa_config *cfg)
{
	cpu.period_ns = cfg->profiling_interval_ns;
	cpu.itimer = cfg->event == PA_EVENT_ITIMER;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigprof;
	sa.sa_flags = SA_RESTART | SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGPROF, &sa, NULL) != 0)
		return -errno;
	cpu.started = 1;
	if (cpu.itimer) {
		struct itimerval it;
		it.it_interval.tv_sec = cpu.period_ns / 1000000000;
		it.it_interval.tv_usec = (cpu.period_ns % 1000000000) / 1000;
		it.it_value = it.it_interval;
		if (setitimer(ITIMER_PROF, &it, NULL) != 0)
			return -errno;
		return 0;
	}
	pa_cpu_thread_start();
	pa_cpu_rescan();
	return 0;
}

void pa_cpu_stop(void)
{
	if (!cpu.started)
		return;
	if (cpu.itimer) {
		struct itimerval zero;
		memset(&zero, 0, sizeof(zero));
		setitimer(ITIMER_PROF, &zero, NULL);
	} else {
		pthread_mutex_lock(&cpu.mu);
		for (int i = 0; i < MAX_TIMERS; i++) {
			if (cpu.slots[i].tid) {
				timer_delete(cpu.slots[i].timer);
				cpu.slots[i].tid = 0;
			}
		}
		pthread_mutex_unlock(&cpu.mu);
	}
	/* The handler stays: it is a no-op once the agent is not running,
	 * and a pending SIGPROF must never hit SIG_DFL (PITFALLS 4). */
	cpu.started = 0;
}

void pa_cpu_atfork_child(void)
{
	/* POSIX timers and itimers are not inherited by the child. */
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	memcpy(&cpu.mu, &fresh, sizeof(fresh));
	memset(cpu.slots, 0, sizeof(cpu.slots));
	cpu.started = 0;
}
