/* CPU sampling: a POSIX timer per thread on the thread's CPU-time clock
 * (SIGEV_THREAD_ID), as Go does since 1.18; setitimer as the fallback. And
 * SIGPROF itself: the agent's handler, the host's view of the disposition,
 * the hand-over when the host installs a SIGPROF handler of its own, and
 * what exec and fork need. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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
/* Exit and the host's takeover may run in a signal handler that
 * interrupted a thread holding cpu.mu: they wait this long at most. */
#define LOCK_WAIT_NS (200 * 1000000LL)

struct timer_slot {
	pid_t tid; /* 0: free; read lock-free by the handler */
	int kid;   /* the kernel's timer id (si_timerid); -1: no timer */
	timer_t timer;
	int seen; /* rescan mark */
};

static struct {
	pthread_mutex_t mu;
	struct timer_slot slots[MAX_TIMERS];
	int64_t period_ns;
	int itimer;
	int started; /* sampling: threads get timers */
	uint64_t table_full;
	/* SIGPROF */
	int installed; /* the agent's handler is the disposition */
	int yielded;   /* the host took SIGPROF: the agent never touches it
			* again */
	/* What the host believes is installed (its last sigaction, or what
	 * was there before the agent): SIG_DFL or SIG_IGN only, since a
	 * handler ends the agent's part. */
	struct sigaction host;
	int host_lock;
	int exec_ign; /* threads between exec_begin's SIG_IGN and exec */
} cpu = {.mu = PTHREAD_MUTEX_INITIALIZER};

static pid_t gettid_raw(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* The calling thread's id: known, or asked (async-signal-safe). */
static pid_t self_tid(void)
{
	pid_t tid = (pid_t)pa_self.tid;
	return tid ? tid : gettid_raw();
}

/* ---- the handler (signal context) -------------------------------------- */

/* The slot of tid, read without the lock: slots move under cpu.mu while
 * timers are deleted, so a lookup may miss (that tick is then ignored). */
static int slot_kid_racy(pid_t tid)
{
	unsigned h = (unsigned)tid * 2654435761u % MAX_TIMERS;
	for (int i = 0; i < 256; i++) {
		const struct timer_slot *s =
		    &cpu.slots[(h + (unsigned)i) % MAX_TIMERS];
		pid_t t = __atomic_load_n(&s->tid, __ATOMIC_ACQUIRE);
		if (t == tid)
			return __atomic_load_n(&s->kid, __ATOMIC_RELAXED);
		if (t == 0)
			break;
	}
	return -1;
}

/* Whether this SIGPROF is one of the agent's: its timer for this thread
 * (per-thread mode) or the kernel's itimer signal (itimer mode). Anything
 * else (kill, the host's setitimer or timers while the host has SIG_DFL or
 * SIG_IGN) is ignored: the host's handler, had it one, would be installed
 * instead of ours. */
static int is_ours(const siginfo_t *info)
{
	if (!info)
		return 0;
	if (cpu.itimer)
		return info->si_code == SI_KERNEL;
	if (info->si_code != SI_TIMER)
		return 0;
	pid_t tid = (pid_t)pa_self.tid;
	if (!tid) {
		/* A thread older than the agent: learn its id once. */
		tid = gettid_raw();
		pa_self.tid = (uint32_t)tid;
	}
	int kid = slot_kid_racy(tid);
	return kid >= 0 && kid == info->si_timerid;
}

/* Runs in a signal handler: no locks, no malloc, no stdio; errno kept. */
static void on_sigprof(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	int saved = errno;
	if (pa_self.is_agent || !pa_agent_running() ||
	    __atomic_load_n(&cpu.yielded, __ATOMIC_RELAXED) || !is_ours(info))
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
	if (info->si_code == SI_TIMER && info->si_overrun > 0)
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

/* ---- the timer table (cpu.mu) ---------------------------------------------
 */

/* The CPU-time clock of any thread of this process, by tid (the kernel's
 * encoding; pthread_getcpuclockid needs a pthread_t we may not have). */
static clockid_t thread_clock(pid_t tid)
{
	return (clockid_t)((~(unsigned)tid << 3) | 6);
}

static int lock_bounded(void)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	int64_t ns = until.tv_nsec + LOCK_WAIT_NS;
	until.tv_sec += ns / 1000000000LL;
	until.tv_nsec = ns % 1000000000LL;
	return pthread_mutex_timedlock(&cpu.mu, &until) == 0;
}

static struct timer_slot *slot_find(pid_t tid, int create)
{
	unsigned h = (unsigned)tid * 2654435761u % MAX_TIMERS;
	for (int i = 0; i < MAX_TIMERS; i++) {
		struct timer_slot *s =
		    &cpu.slots[(h + (unsigned)i) % MAX_TIMERS];
		if (s->tid == tid)
			return s;
		if (s->tid == 0)
			return create ? s : NULL;
	}
	return NULL;
}

static void slot_publish(struct timer_slot *s, pid_t tid, int kid, timer_t t)
{
	s->timer = t;
	__atomic_store_n(&s->kid, kid, __ATOMIC_RELAXED);
	s->seen = 1;
	__atomic_store_n(&s->tid, tid, __ATOMIC_RELEASE);
}

/* A slot without a timer: the thread is in exec (see pa_cpu_exec_begin),
 * the rescan must not arm it. */
static void placeholder_locked(pid_t tid)
{
	struct timer_slot *s = slot_find(tid, 1);
	if (s && !s->tid)
		slot_publish(s, tid, -1, 0);
}

/* Called with cpu.mu held. */
static void arm_locked(pid_t tid)
{
	if (slot_find(tid, 0))
		return;
	struct timer_slot *slot = slot_find(tid, 1);
	if (!slot) {
		if (cpu.table_full++ == 0)
			pa_warn(
			    "more than %d threads: new threads are not sampled",
			    MAX_TIMERS);
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
			pa_log_once(PA_LOG_WARN,
				    "timer_create failed (errno %d): some "
				    "threads are not sampled",
				    errno);
		return;
	}
	/* Known to the handler before the first tick. glibc's timer_t for a
	 * SIGEV_THREAD_ID timer is the kernel's id (si_timerid). */
	slot_publish(slot, tid, (int)(intptr_t)t, t);
	struct itimerspec its;
	its.it_interval.tv_sec = cpu.period_ns / 1000000000;
	its.it_interval.tv_nsec = cpu.period_ns % 1000000000;
	its.it_value = its.it_interval;
	if (timer_settime(t, 0, &its, NULL) != 0) {
		__atomic_store_n(&slot->tid, 0, __ATOMIC_RELEASE);
		timer_delete(t);
	}
}

static void delete_slot(struct timer_slot *s)
{
	if (s->kid >= 0)
		timer_delete(s->timer);
	__atomic_store_n(&s->tid, 0, __ATOMIC_RELEASE);
	/* Re-insert the run behind this slot so lookups stay correct in
	 * the open-addressed table. */
	size_t idx = (size_t)(s - cpu.slots);
	for (size_t i = (idx + 1) % MAX_TIMERS; cpu.slots[i].tid;
	     i = (i + 1) % MAX_TIMERS) {
		struct timer_slot moved = cpu.slots[i];
		__atomic_store_n(&cpu.slots[i].tid, 0, __ATOMIC_RELEASE);
		struct timer_slot *dst = slot_find(moved.tid, 1);
		slot_publish(dst, moved.tid, moved.kid, moved.timer);
		dst->seen = moved.seen;
	}
}

static void delete_all_locked(void)
{
	for (int i = 0; i < MAX_TIMERS; i++) {
		if (cpu.slots[i].tid) {
			if (cpu.slots[i].kid >= 0)
				timer_delete(cpu.slots[i].timer);
			__atomic_store_n(&cpu.slots[i].tid, 0,
					 __ATOMIC_RELEASE);
		}
	}
}

static int sampling(void)
{
	return cpu.started && !__atomic_load_n(&cpu.yielded, __ATOMIC_RELAXED);
}

void pa_cpu_thread_start(void)
{
	if (!sampling() || cpu.itimer || pa_self.is_agent)
		return;
	pid_t tid = self_tid();
	pthread_mutex_lock(&cpu.mu);
	/* A slot under this id may be stale: a thread that ended without
	 * its destructors (raw exit) left its timer, and the kernel reused
	 * the id. A new thread gets a new timer. */
	struct timer_slot *s = slot_find(tid, 0);
	if (s)
		delete_slot(s);
	if (sampling())
		arm_locked(tid);
	pthread_mutex_unlock(&cpu.mu);
}

void pa_cpu_thread_stop(void)
{
	if (!cpu.started || cpu.itimer)
		return;
	pid_t tid = (pid_t)pa_self.tid;
	if (!tid)
		return;
	pthread_mutex_lock(&cpu.mu);
	struct timer_slot *s = slot_find(tid, 0);
	if (s)
		delete_slot(s);
	pthread_mutex_unlock(&cpu.mu);
}

/* ---- the SIGPROF disposition ------------------------------------------ */

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef int (*setitimer_fn)(int, const struct itimerval *, struct itimerval *);
static void *real_sigaction, *real_setitimer;

/* libc's definition of name, looked up once into *cache; NULL with errno
 * ENOSYS when there is none. */
static void *next_fn(const char *name, void **cache)
{
	void *fn = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
	if (!fn) {
		fn = dlsym(RTLD_NEXT, name);
		__atomic_store_n(cache, fn, __ATOMIC_RELEASE);
	}
	if (!fn)
		errno = ENOSYS;
	return fn;
}

int pa_cpu_real_sigaction(int sig, const struct sigaction *act,
			  struct sigaction *old)
{
	void *p = next_fn("sigaction", &real_sigaction);
	if (!p)
		return -1;
	sigaction_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	return fn(sig, act, old);
}

static int real_setitimer_call(int which, const struct itimerval *value,
			       struct itimerval *old)
{
	void *p = next_fn("setitimer", &real_setitimer);
	if (!p)
		return -1;
	setitimer_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	return fn(which, value, old);
}

/* The host's view is read and written by host threads, possibly from
 * their signal handlers (sigaction is async-signal-safe): a spin flag
 * that gives up rather than deadlock on a handler that interrupted its
 * own thread's update. */
static int view_acquire(void)
{
	for (int i = 0; i < 1000; i++) {
		if (!__atomic_exchange_n(&cpu.host_lock, 1, __ATOMIC_ACQUIRE))
			return 1;
		sched_yield();
	}
	return 0;
}

static void view_release(int held)
{
	if (held)
		__atomic_store_n(&cpu.host_lock, 0, __ATOMIC_RELEASE);
}

static int is_handler(const struct sigaction *act)
{
	if (act->sa_flags & SA_SIGINFO)
		return act->sa_sigaction != NULL;
	return act->sa_handler != SIG_DFL && act->sa_handler != SIG_IGN;
}

/* The agent's part of SIGPROF in this process: its handler is installed,
 * the host has not taken it, and this is not a vfork child (which shares
 * our memory but has its own dispositions). */
static int owns_sigprof(void)
{
	return __atomic_load_n(&cpu.installed, __ATOMIC_ACQUIRE) &&
	       !__atomic_load_n(&cpu.yielded, __ATOMIC_ACQUIRE) &&
	       pa_agent.pid && getpid() == pa_agent.pid;
}

/* No more CPU sampling: the host profiles itself. Timers go first, so no
 * later tick of ours reaches the host's handler (one already pending on
 * a thread that blocks SIGPROF still may, on kernels before 6.13, which
 * deliver the signal of a deleted timer). */
static void yield(const char *why)
{
	if (__atomic_exchange_n(&cpu.yielded, 1, __ATOMIC_ACQ_REL))
		return;
	pa_warn("%s: CPU sampling stops (the host profiles itself); heap "
		"profiling goes on",
		why);
	if (!cpu.started)
		return;
	if (cpu.itimer) {
		/* Only if the itimer is still ours: a host that set its own
		 * was seen by pa_cpu_setitimer, which yielded before. */
		struct itimerval zero;
		memset(&zero, 0, sizeof(zero));
		real_setitimer_call(ITIMER_PROF, &zero, NULL);
		return;
	}
	if (lock_bounded()) {
		delete_all_locked();
		pthread_mutex_unlock(&cpu.mu);
	}
}

int pa_cpu_sigaction(const struct sigaction *act, struct sigaction *old)
{
	if (!owns_sigprof())
		return pa_cpu_real_sigaction(SIGPROF, act, old);
	int held = view_acquire();
	if (old)
		*old = cpu.host;
	if (act && !is_handler(act)) {
		/* SIG_DFL or SIG_IGN: recorded; the agent's handler ignores
		 * SIGPROFs that are not its own either way (never SIG_DFL:
		 * a stray one must not kill the host). */
		cpu.host = *act;
		view_release(held);
		return 0;
	}
	view_release(held);
	if (!act)
		return 0;
	yield("the program installed its own SIGPROF handler");
	__atomic_store_n(&cpu.installed, 0, __ATOMIC_RELEASE);
	return pa_cpu_real_sigaction(SIGPROF, act, NULL);
}

int pa_cpu_setitimer(int which, const struct itimerval *value,
		     struct itimerval *old)
{
	if (which == ITIMER_PROF && value && cpu.itimer && owns_sigprof() &&
	    sampling()) {
		/* The process has one ITIMER_PROF: the host's from now on. */
		__atomic_store_n(&cpu.started, 0, __ATOMIC_RELEASE);
		yield("the program set its own ITIMER_PROF");
	}
	return real_setitimer_call(which, value, old);
}

/* A handler installed behind the agent's back (raw rt_sigaction, or libc
 * paths that do not go through the PLT: sigignore, siginterrupt). */
static void check_disposition(void)
{
	if (!owns_sigprof() || __atomic_load_n(&cpu.exec_ign, __ATOMIC_ACQUIRE))
		return;
	struct sigaction cur;
	if (pa_cpu_real_sigaction(SIGPROF, NULL, &cur) != 0)
		return;
	if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigprof)
		return;
	yield("SIGPROF was given another disposition");
	__atomic_store_n(&cpu.installed, 0, __ATOMIC_RELEASE);
}

/* ---- the rescan -------------------------------------------------------------
 */

/* Every thread in /proc/self/task but the agent's own gets a timer;
 * timers of threads that are gone are deleted. */
void pa_cpu_rescan(void)
{
	check_disposition();
	if (!sampling() || cpu.itimer)
		return;
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return;
	pid_t self = gettid_raw();
	/* Enough for a full table: beyond it new threads are not sampled
	 * anyway, and timers of gone threads are deleted only after a
	 * complete listing. */
	pid_t *tids = malloc((MAX_TIMERS + 1) * sizeof(*tids));
	if (!tids) {
		closedir(d);
		return;
	}
	int n = 0, complete = 1;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		if (n == MAX_TIMERS + 1) {
			complete = 0;
			break;
		}
		tids[n++] = (pid_t)atoi(de->d_name);
	}
	closedir(d);
	pthread_mutex_lock(&cpu.mu);
	for (int i = 0; i < MAX_TIMERS; i++)
		cpu.slots[i].seen = 0;
	for (int i = 0; i < n && sampling(); i++) {
		/* The caller is the agent thread, or the host thread in the
		 * constructor (pa_cpu_start), which is sampled like any other.
		 */
		if ((tids[i] == self && pa_self.is_agent) ||
		    pa_agent_is_own_thread(tids[i]))
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
	free(tids);
}

/* ---- start, stop, fork, exec ------------------------------------------------
 */

static int arm_itimer(void)
{
	struct itimerval it;
	it.it_interval.tv_sec = cpu.period_ns / 1000000000;
	it.it_interval.tv_usec = (cpu.period_ns % 1000000000) / 1000;
	it.it_value = it.it_interval;
	return real_setitimer_call(ITIMER_PROF, &it, NULL) == 0 ? 0 : -errno;
}

int pa_cpu_start(const struct pa_config *cfg)
{
	cpu.period_ns = cfg->profiling_interval_ns;
	cpu.itimer = cfg->event == PA_EVENT_ITIMER;
	struct sigaction prev;
	if (pa_cpu_real_sigaction(SIGPROF, NULL, &prev) != 0)
		return -errno;
	if (is_handler(&prev)) {
		/* Another profiler was there first (a library loaded before
		 * us, or the program, when the agent is dlopen()ed). */
		__atomic_store_n(&cpu.yielded, 1, __ATOMIC_RELEASE);
		pa_warn("SIGPROF already has a handler (the program's own "
			"profiler?): "
			"CPU sampling off; heap profiling goes on");
		return -EBUSY;
	}
	cpu.host = prev;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigprof;
	/* SA_RESTART: a tick never makes a restartable call fail with
	 * EINTR. No SA_ONSTACK: on the interrupted stack, so a handler on
	 * the host's sigaltstack is seen from inside. */
	sa.sa_flags = SA_RESTART | SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (pa_cpu_real_sigaction(SIGPROF, &sa, NULL) != 0)
		return -errno;
	__atomic_store_n(&cpu.installed, 1, __ATOMIC_RELEASE);
	cpu.started = 1;
	if (cpu.itimer)
		return arm_itimer();
	pa_cpu_thread_start();
	pa_cpu_rescan();
	return 0;
}

void pa_cpu_stop(void)
{
	if (!cpu.started)
		return;
	cpu.started = 0;
	if (cpu.itimer) {
		if (!__atomic_load_n(&cpu.yielded, __ATOMIC_RELAXED)) {
			struct itimerval zero;
			memset(&zero, 0, sizeof(zero));
			real_setitimer_call(ITIMER_PROF, &zero, NULL);
		}
	} else if (lock_bounded()) {
		/* Bounded: exit may run in a handler that interrupted a
		 * thread holding the lock; the handler is a no-op anyway
		 * once the agent stops. */
		delete_all_locked();
		pthread_mutex_unlock(&cpu.mu);
	}
	/* The handler stays: it is a no-op once the agent is not running,
	 * and a pending SIGPROF must never hit SIG_DFL (PITFALLS 4). */
}

void pa_cpu_atfork_child(void)
{
	/* POSIX timers and itimers are not inherited by the child. */
	pa_thread_reset_lock(&cpu.mu, NULL);
	memset(cpu.slots, 0, sizeof(cpu.slots));
	cpu.table_full = 0;
	if (!sampling())
		return;
	if (cpu.itimer) {
		if (arm_itimer() != 0)
			cpu.started = 0;
		return;
	}
	pa_cpu_thread_start();
}

/* Takes a SIGPROF pending on this thread (or on the process): it would
 * reach the new program, where SIGPROF is SIG_DFL. */
static void take_pending(void)
{
	sigset_t pending;
	if (sigpending(&pending) != 0 || !sigismember(&pending, SIGPROF))
		return;
	sigset_t prof, old;
	sigemptyset(&prof);
	sigaddset(&prof, SIGPROF);
	pthread_sigmask(SIG_BLOCK, &prof, &old);
	struct timespec zero = {0, 0};
	for (int i = 0; i < 8 && sigtimedwait(&prof, NULL, &zero) == SIGPROF;
	     i++)
		;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static int host_ignores(void)
{
	int held = view_acquire();
	int ign =
	    !(cpu.host.sa_flags & SA_SIGINFO) && cpu.host.sa_handler == SIG_IGN;
	view_release(held);
	return ign;
}

/* The real disposition becomes SIG_IGN for a child about to be made (exec
 * keeps SIG_IGN, resets handlers). own: in the agent's process, where the
 * rescan must not take it for the host's doing. */
static int ignore_for_child(int own)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	if (own)
		__atomic_add_fetch(&cpu.exec_ign, 1, __ATOMIC_ACQ_REL);
	if (pa_cpu_real_sigaction(SIGPROF, &sa, NULL) == 0)
		return 1;
	if (own)
		__atomic_sub_fetch(&cpu.exec_ign, 1, __ATOMIC_ACQ_REL);
	return 0;
}

/* Back to the agent's handler, unless the host took SIGPROF meanwhile. */
static void unignore(int own)
{
	if (!__atomic_load_n(&cpu.yielded, __ATOMIC_ACQUIRE)) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = on_sigprof;
		sa.sa_flags = SA_RESTART | SA_SIGINFO;
		sigemptyset(&sa.sa_mask);
		pa_cpu_real_sigaction(SIGPROF, &sa, NULL);
	}
	if (own)
		__atomic_sub_fetch(&cpu.exec_ign, 1, __ATOMIC_ACQ_REL);
}

void pa_cpu_spawn_begin(struct pa_cpu_exec *st)
{
	memset(st, 0, sizeof(*st));
	if (!owns_sigprof() || !host_ignores())
		return;
	int saved = errno;
	st->ignored = ignore_for_child(1);
	st->own = 1;
	errno = saved;
}

void pa_cpu_spawn_end(struct pa_cpu_exec *st)
{
	if (!st->ignored)
		return;
	int saved = errno;
	unignore(st->own);
	errno = saved;
}

void pa_cpu_exec_begin(struct pa_cpu_exec *st)
{
	memset(st, 0, sizeof(*st));
	if (!__atomic_load_n(&cpu.installed, __ATOMIC_ACQUIRE) ||
	    __atomic_load_n(&cpu.yielded, __ATOMIC_ACQUIRE))
		return;
	int saved = errno;
	if (!pa_agent.pid || getpid() != pa_agent.pid) {
		/* A vfork child: its dispositions are its own (its timers
		 * and memory are not): only what the new program inherits. */
		if (host_ignores())
			st->ignored = ignore_for_child(0);
		errno = saved;
		return;
	}
	st->own = 1;
	if (sampling()) {
		if (cpu.itimer) {
			struct itimerval zero;
			memset(&zero, 0, sizeof(zero));
			if (real_setitimer_call(ITIMER_PROF, &zero, &st->old) ==
			    0)
				st->itimer_off = 1;
		} else {
			pid_t tid = self_tid();
			/* Bounded: exec is async-signal-safe, and a handler
			 * may have interrupted this thread holding the lock. */
			if (lock_bounded()) {
				struct timer_slot *s = slot_find(tid, 0);
				if (s)
					delete_slot(s);
				/* The rescan must not arm it again meanwhile.
				 */
				placeholder_locked(tid);
				pthread_mutex_unlock(&cpu.mu);
				st->timer_off = 1;
			}
		}
	}
	/* exec keeps SIG_IGN and resets handlers: the new program gets
	 * what the host asked for. */
	if (host_ignores())
		st->ignored = ignore_for_child(1);
	take_pending();
	errno = saved;
}

void pa_cpu_exec_end(struct pa_cpu_exec *st)
{
	int saved = errno;
	if (st->ignored)
		unignore(st->own);
	if (st->itimer_off && sampling())
		real_setitimer_call(ITIMER_PROF, &st->old, NULL);
	if (st->timer_off) {
		pid_t tid = self_tid();
		if (lock_bounded()) {
			struct timer_slot *s = slot_find(tid, 0);
			if (s)
				delete_slot(s);
			if (sampling())
				arm_locked(tid);
			pthread_mutex_unlock(&cpu.mu);
		}
	}
	errno = saved;
}
