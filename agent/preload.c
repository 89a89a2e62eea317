/* The libc front: the only file defining libc names. Each wrapper forwards
 * to the next definition (RTLD_NEXT) and tells the agent what happened. */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include "agent.h"
#include "cpu.h"
#include "heap.h"
#include "modules.h"
#include "thread.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- threads ------------------------------------------------------------ */

typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *,
				 void *(*)(void *), void *);
static pthread_create_fn real_pthread_create;

EXPORT int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
			  void *(*start)(void *), void *arg)
{
	if (!real_pthread_create) {
		real_pthread_create =
		    (pthread_create_fn)dlsym(RTLD_NEXT, "pthread_create");
		if (!real_pthread_create)
			return EAGAIN;
	}
	return pa_lifecycle_pthread_create(real_pthread_create, thread, attr,
					   start, arg);
}

/* ---- the loader: the module table goes stale; dlclose must not unmap
 * code the agent thread is reading ------------------------------------- */

typedef void *(*dlopen_fn)(const char *, int);
typedef int (*dlclose_fn)(void *);
static dlopen_fn real_dlopen;
static dlclose_fn real_dlclose;

EXPORT void *dlopen(const char *file, int flags)
{
	if (!real_dlopen)
		real_dlopen = (dlopen_fn)dlsym(RTLD_NEXT, "dlopen");
	if (!real_dlopen)
		return NULL;
	void *h = real_dlopen(file, flags);
	int saved = errno;
	pa_modules_changed();
	errno = saved;
	return h;
}

EXPORT int dlclose(void *handle)
{
	if (!real_dlclose)
		real_dlclose = (dlclose_fn)dlsym(RTLD_NEXT, "dlclose");
	if (!real_dlclose)
		return -1;
	/* A vfork child shares the lock with the parent: one that died
	 * holding it would stop the parent's agent thread for good. */
	if (pa_agent.pid && getpid() != pa_agent.pid)
		return real_dlclose(handle);
	pa_modules_unload_begin();
	int rc = real_dlclose(handle);
	int saved = errno;
	pa_modules_unload_end();
	errno = saved;
	return rc;
}

/* ---- the allocation surface (memory profiling) -----------------------------
 */

/* Every entry point of the allocator and of anonymous mappings, so nothing
 * is missed or counted twice; C++ new/delete reach malloc/free. Each one
 * forwards to heap.c's core (fast paths inlined from heap.h), which calls
 * the next definition and returns exactly what it returned. */

/* C23 names glibc 2.36 does not declare yet. */
void free_sized(void *p, size_t size);
void free_aligned_sized(void *p, size_t align, size_t size);

#if defined(__x86_64__)
/*
 * malloc and free, the hooks a program calls most, in assembly, so that
 * their last instruction can be a direct jump to the real function. They
 * are heap.h's pa_heap_malloc and pa_heap_free: the countdown (one
 * read-modify-write of a TLS word), the prefilter byte. Each ends in a
 * jump whose 32-bit displacement (aligned, so one store replaces it)
 * first targets a C forwarder that calls through pa_heap.hot_malloc /
 * hot_free. Once those hold the real functions, the forwarder points the
 * jump at them directly (patch_tail). On this project's VM the indirect
 * jump was most of what interposition cost: a bare interposer forwarding
 * through a pointer ran the malloc benchmark 1.08-1.10x, the same with a
 * patched direct jump 1.00-1.04x (2 x 200M pairs, 5 interleaved runs). A
 * system that refuses a writable and executable text page (SELinux
 * execmod, PaX) keeps the forwarder: correct, one indirect jump slower.
 */
#define COUNTDOWN_OFF 40      /* offsetof(struct pa_thread, alloc_countdown) */
#define FILTER_MASK   0x1ffff /* PA_HEAP_FILTER_SIZE - 1 */
_Static_assert(offsetof(struct pa_thread, alloc_countdown) == COUNTDOWN_OFF,
	       "the malloc hook hard-codes the countdown's offset");
_Static_assert(PA_HEAP_FILTER_SIZE - 1 == FILTER_MASK,
	       "the free hook hard-codes the prefilter's mask");
_Static_assert(offsetof(struct pa_heap, filter) == 0,
	       "the free hook reads the prefilter pointer at pa_heap");
#define STR_(x) #x
#define STR(x)	STR_(x)
#if defined(__CET__) && (__CET__ & 1)
#define HOOK_ENDBR "	endbr64\n"
#else
#define HOOK_ENDBR ""
#endif

/* The tails' first target: through the pointer, patching the tail once
 * the pointer holds the real function. */
void *pa_preload_malloc_forward(size_t n) PA_HIDDEN;
void pa_preload_free_forward(void *p) PA_HIDDEN;
/* The two tail jumps: [0] malloc's, [1] free's. */
extern unsigned char *const pa_preload_tails[2] PA_HIDDEN;

/* clang-format off */
__asm__(".text\n"
	".globl malloc\n"
	".type malloc, @function\n"
	".p2align 4\n"
	"malloc:\n"
	".cfi_startproc\n"
	HOOK_ENDBR
	"	movq pa_self@gottpoff(%rip), %rax\n"
	"	subq %rdi, %fs:" STR(COUNTDOWN_OFF) "(%rax)\n"
	"	.byte 0x0f, 0x8e\n" /* jle rel32 */
	"	.long pa_heap_malloc_crossed - . - 4\n"
	"	.balign 4, 0x90\n"
	"	.byte 0x0f, 0x1f, 0x00\n" /* nop: the displacement aligned */
	".Lmalloc_tail:\n"
	"	.byte 0xe9\n" /* jmp rel32 */
	"	.long pa_preload_malloc_forward - . - 4\n"
	".cfi_endproc\n"
	".size malloc, .-malloc\n"
	".globl free\n"
	".type free, @function\n"
	".p2align 4\n"
	"free:\n"
	".cfi_startproc\n"
	HOOK_ENDBR
	"	movq %rdi, %rax\n"
	"	shrq $6, %rax\n"
	"	andl $" STR(FILTER_MASK) ", %eax\n"
	"	movq pa_heap(%rip), %rdx\n"
	"	cmpb $0, (%rdx,%rax)\n"
	"	.byte 0x0f, 0x85\n" /* jne rel32 */
	"	.long pa_heap_free_maybe - . - 4\n"
	"	.balign 4, 0x90\n"
	"	.byte 0x0f, 0x1f, 0x00\n"
	".Lfree_tail:\n"
	"	.byte 0xe9\n"
	"	.long pa_preload_free_forward - . - 4\n"
	".cfi_endproc\n"
	".size free, .-free\n"
	".pushsection .data.rel.ro, \"aw\"\n"
	".p2align 3\n"
	".globl pa_preload_tails\n"
	".hidden pa_preload_tails\n"
	"pa_preload_tails:\n"
	"	.quad .Lmalloc_tail, .Lfree_tail\n"
	".popsection\n");
/* clang-format on */

/* 0: not tried; 1: tried (patched, or left on the forwarder). */
static int malloc_tail_tried, free_tail_tried;

/* Points the jump at `site` (e9 + aligned rel32) at `to`, once. */
static void patch_tail(int *tried, unsigned char *site, const void *to)
{
	int expect = 0;
	if (!__atomic_compare_exchange_n(tried, &expect, 1, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
		return;
	intptr_t rel = (intptr_t)to - (intptr_t)(site + 5);
	if (site[0] != 0xe9 || rel != (int32_t)rel ||
	    ((uintptr_t)(site + 1) & 3) != 0)
		return; /* too far away: stays on the forwarder */
	int saved = errno;
	uintptr_t page = (uintptr_t)site & ~(uintptr_t)4095;
	size_t len = (uintptr_t)site + 5 - page;
	if (mprotect((void *)page, len, PROT_READ | PROT_WRITE | PROT_EXEC) ==
	    0) {
		__atomic_store_n((int32_t *)(void *)(site + 1), (int32_t)rel,
				 __ATOMIC_RELEASE);
		mprotect((void *)page, len, PROT_READ | PROT_EXEC);
	}
	errno = saved;
}

void *pa_preload_malloc_forward(size_t n)
{
	void *(*fn)(size_t) =
	    __atomic_load_n(&pa_heap.hot_malloc, __ATOMIC_RELAXED);
	if (__builtin_expect(fn != pa_heap_boot_malloc, 1) &&
	    !__atomic_load_n(&malloc_tail_tried, __ATOMIC_RELAXED))
		patch_tail(&malloc_tail_tried, pa_preload_tails[0],
			   (const void *)fn);
	return fn(n);
}

void pa_preload_free_forward(void *p)
{
	void (*fn)(void *) =
	    __atomic_load_n(&pa_heap.hot_free, __ATOMIC_RELAXED);
	if (__builtin_expect(fn != pa_heap_free_slow, 1) &&
	    !__atomic_load_n(&free_tail_tried, __ATOMIC_RELAXED))
		patch_tail(&free_tail_tried, pa_preload_tails[1],
			   (const void *)fn);
	fn(p);
}
#else
EXPORT void *malloc(size_t size)
{
	return pa_heap_malloc(size);
}

EXPORT void free(void *p)
{
	pa_heap_free(p);
}
#endif

EXPORT void *calloc(size_t n, size_t size)
{
	return pa_heap_calloc(n, size);
}

EXPORT void *realloc(void *p, size_t size)
{
	return pa_heap_realloc(p, size);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size)
{
	return pa_heap_reallocarray(p, n, size);
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
	return pa_heap_posix_memalign(out, align, size);
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
	return pa_heap_aligned_alloc(align, size);
}

EXPORT void *memalign(size_t align, size_t size)
{
	return pa_heap_memalign(align, size);
}

EXPORT void *valloc(size_t size)
{
	return pa_heap_valloc(size);
}

EXPORT void *pvalloc(size_t size)
{
	return pa_heap_pvalloc(size);
}

EXPORT void free_sized(void *p, size_t size)
{
	pa_heap_free_sized(p, size);
}

EXPORT void free_aligned_sized(void *p, size_t align, size_t size)
{
	pa_heap_free_aligned_sized(p, align, size);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd,
		  off_t off)
{
	return pa_heap_mmap(addr, len, prot, flags, fd, off,
			    __builtin_return_address(0), false);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd,
		    off_t off)
{
	return pa_heap_mmap(addr, len, prot, flags, fd, off,
			    __builtin_return_address(0), true);
}

EXPORT int munmap(void *addr, size_t len)
{
	return pa_heap_munmap(addr, len, __builtin_return_address(0));
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	return pa_heap_mremap(old, old_len, new_len, flags, new_addr,
			      __builtin_return_address(0));
}

/* The next definition of name (libc's), looked up once and kept in
 * *cache; NULL with errno ENOSYS when there is none. */
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

/* ---- children that share our memory: vfork, clone(CLONE_VM) ------------- */

/* A vfork child runs on its parent's memory and thread state and runs no
 * atfork handler: it must not record into the parent's buffers (heap.c
 * asks getpid() once such a child may exist). vfork returns twice through
 * its caller's frame, so no C function may stand between: the flag is set
 * and the jump goes to libc's __vfork, which returns to our caller. */
#if defined(__x86_64__)
__asm__(".text\n"
	".globl vfork\n"
	".type vfork, @function\n"
	"vfork:\n"
	"\tmovl $1, pa_heap_shared_vm(%rip)\n"
	"\tjmp __vfork@PLT\n"
	".size vfork, .-vfork\n");
#endif

typedef int (*clone_fn)(int (*)(void *), void *, int, void *, ...);
static void *clone_cache;

/* The child starts on its own stack in libc's clone and never returns
 * through this frame: an ordinary wrapper is safe. */
EXPORT int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	pid_t *ptid = va_arg(ap, pid_t *);
	void *tls = va_arg(ap, void *);
	pid_t *ctid = va_arg(ap, pid_t *);
	va_end(ap);
	if ((flags & CLONE_VM) && !(flags & CLONE_THREAD))
		pa_heap_note_shared_vm();
	void *p = next_fn("clone", &clone_cache);
	if (!p)
		return -1;
	clone_fn real;
	memcpy(&real, &p, sizeof(real));
	return real(fn, stack, flags, arg, ptid, tls, ctid);
}

/* ---- signals: SIGPROF is shared with the host (cpu.c) -------------------- */

/* Any other signal goes straight to libc. glibc's signal(), sigset() and
 * friends call sigaction internally, past the PLT: each is wrapped for
 * SIGPROF with its own semantics. */

EXPORT int sigaction(int sig, const struct sigaction *act,
		     struct sigaction *old)
{
	if (sig == SIGPROF)
		return pa_cpu_sigaction(act, old);
	return pa_cpu_real_sigaction(sig, act, old);
}

typedef sighandler_t (*signal_fn)(int, sighandler_t);

static sighandler_t real_signal_call(const char *name, void **cache, int sig,
				     sighandler_t handler)
{
	void *p = next_fn(name, cache);
	if (!p)
		return SIG_ERR;
	signal_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	return fn(sig, handler);
}

/* SIGPROF through sigaction with the flags the libc function would use. */
static sighandler_t prof_signal(sighandler_t handler, int flags, int self_mask)
{
	if (handler == SIG_ERR) {
		errno = EINVAL;
		return SIG_ERR;
	}
	struct sigaction act, old;
	memset(&act, 0, sizeof(act));
	memset(&old, 0, sizeof(old));
	act.sa_handler = handler;
	sigemptyset(&act.sa_mask);
	if (self_mask)
		sigaddset(&act.sa_mask, SIGPROF);
	act.sa_flags = flags;
	if (pa_cpu_sigaction(&act, &old) != 0)
		return SIG_ERR;
	return old.sa_handler;
}

/* BSD semantics: restart, the signal blocked in its handler. */
EXPORT sighandler_t signal(int sig, sighandler_t handler)
{
	static void *real;
	if (sig == SIGPROF)
		return prof_signal(handler, SA_RESTART, 1);
	return real_signal_call("signal", &real, sig, handler);
}

sighandler_t bsd_signal(int sig, sighandler_t handler);
EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler)
{
	static void *real;
	if (sig == SIGPROF)
		return prof_signal(handler, SA_RESTART, 1);
	return real_signal_call("bsd_signal", &real, sig, handler);
}

/* System V semantics (what signal() is in strict ISO C builds). */
EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler)
{
	static void *real;
	if (sig == SIGPROF)
		return prof_signal(handler, SA_RESETHAND | SA_NODEFER, 0);
	return real_signal_call("sysv_signal", &real, sig, handler);
}

sighandler_t __sysv_signal(int sig, sighandler_t handler);
EXPORT sighandler_t __sysv_signal(int sig, sighandler_t handler)
{
	static void *real;
	if (sig == SIGPROF)
		return prof_signal(handler, SA_RESETHAND | SA_NODEFER, 0);
	return real_signal_call("__sysv_signal", &real, sig, handler);
}

EXPORT sighandler_t sigset(int sig, sighandler_t disp)
{
	static void *real;
	if (sig != SIGPROF)
		return real_signal_call("sigset", &real, sig, disp);
	sigset_t prof, oset;
	sigemptyset(&prof);
	sigaddset(&prof, SIGPROF);
	struct sigaction old;
	if (disp == SIG_HOLD) {
		if (sigprocmask(SIG_BLOCK, &prof, &oset) < 0)
			return SIG_ERR;
		if (sigismember(&oset, SIGPROF))
			return SIG_HOLD;
		if (pa_cpu_sigaction(NULL, &old) < 0)
			return SIG_ERR;
		return old.sa_handler;
	}
	sighandler_t prev = prof_signal(disp, 0, 0);
	if (prev == SIG_ERR)
		return SIG_ERR;
	if (sigprocmask(SIG_UNBLOCK, &prof, &oset) < 0)
		return SIG_ERR;
	return sigismember(&oset, SIGPROF) ? SIG_HOLD : prev;
}

EXPORT int setitimer(__itimer_which_t which,
		     const struct itimerval *restrict value,
		     struct itimerval *restrict old)
{
	return pa_cpu_setitimer((int)which, value, old);
}

/* ---- poll: an agent thread inside the fork gate waits outside it ------- */

typedef int (*poll_fn)(struct pollfd *, nfds_t, int);

static void *poll_cache;

EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	void *p = next_fn("poll", &poll_cache);
	if (__builtin_expect(!p, 0))
		return -1;
	poll_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (__builtin_expect(pa_self.gate_depth == 0, 1))
		return fn(fds, nfds, timeout);
	/* libcurl waiting on its sockets holds no lock: forks may go. */
	pa_gate_pause();
	int rc = fn(fds, nfds, timeout);
	int saved = errno;
	pa_gate_resume();
	errno = saved;
	return rc;
}

/* ---- exec: no tick of the agent may reach the new program --------------- */

/* Before exec the calling thread's timer goes and a pending SIGPROF is
 * taken (cpu.c); if exec returns, it failed: undone. glibc's exec
 * functions call each other past the PLT, so each is wrapped. */

extern char **environ;

#define EXEC_BEGIN()                                                           \
	struct pa_cpu_exec ex_;                                                \
	pa_cpu_exec_begin(&ex_)
#define EXEC_END(rc)                                                           \
	do {                                                                   \
		int saved_ = errno;                                            \
		pa_cpu_exec_end(&ex_);                                         \
		errno = saved_;                                                \
		return (rc);                                                   \
	} while (0)

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
typedef int (*fexecve_fn)(int, char *const[], char *const[]);
typedef int (*execveat_fn)(int, const char *, char *const[], char *const[],
			   int);

static void *execve_cache, *execvpe_cache, *execv_cache, *execvp_cache,
    *fexecve_cache, *execveat_cache, *spawn_cache, *spawnp_cache, *popen_cache;

static int do_execve(const char *path, char *const argv[], char *const envp[])
{
	void *p = next_fn("execve", &execve_cache);
	execve_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return -1;
	EXEC_BEGIN();
	int rc = fn(path, argv, envp);
	EXEC_END(rc);
}

static int do_execvpe(const char *file, char *const argv[], char *const envp[])
{
	void *p = next_fn("execvpe", &execvpe_cache);
	execve_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return -1;
	EXEC_BEGIN();
	int rc = fn(file, argv, envp);
	EXEC_END(rc);
}

static int do_execvp(const char *file, char *const argv[])
{
	void *p = next_fn("execvp", &execvp_cache);
	execv_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return -1;
	EXEC_BEGIN();
	int rc = fn(file, argv);
	EXEC_END(rc);
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	return do_execve(path, argv, envp);
}

EXPORT int execv(const char *path, char *const argv[])
{
	void *p = next_fn("execv", &execv_cache);
	execv_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return -1;
	EXEC_BEGIN();
	int rc = fn(path, argv);
	EXEC_END(rc);
}

EXPORT int execvp(const char *file, char *const argv[])
{
	return do_execvp(file, argv);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	return do_execvpe(file, argv, envp);
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
	void *p = next_fn("fexecve", &fexecve_cache);
	fexecve_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return -1;
	EXEC_BEGIN();
	int rc = fn(fd, argv, envp);
	EXEC_END(rc);
}

int execveat(int dirfd, const char *path, char *const argv[],
	     char *const envp[], int flags);
EXPORT int execveat(int dirfd, const char *path, char *const argv[],
		    char *const envp[], int flags)
{
	void *p = next_fn("execveat", &execveat_cache);
	execveat_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return -1;
	EXEC_BEGIN();
	int rc = fn(dirfd, path, argv, envp, flags);
	EXEC_END(rc);
}

/* The execl family: the arguments into an array (on the stack up to
 * EXEC_ARGV_STACK of them, like glibc), then the array form. */
#define EXEC_ARGV_STACK 1024

enum execl_kind { EXECL, EXECLE, EXECLP };

static int execl_common(enum execl_kind kind, const char *path, const char *arg,
			va_list ap)
{
	va_list count;
	va_copy(count, ap);
	size_t n = 1;
	while (va_arg(count, char *))
		n++;
	va_end(count);
	char *stack_argv[EXEC_ARGV_STACK];
	char **argv = stack_argv;
	if (n + 1 > EXEC_ARGV_STACK) {
		argv = malloc((n + 1) * sizeof(*argv));
		if (!argv) {
			errno = E2BIG;
			return -1;
		}
	}
	argv[0] = (char *)arg;
	for (size_t i = 1; i <= n; i++)
		argv[i] = va_arg(ap, char *); /* argv[n] is the NULL */
	char *const *envp =
	    kind == EXECLE ? va_arg(ap, char *const *) : environ;
	int rc;
	if (kind == EXECLP)
		rc = do_execvp(path, argv);
	else
		rc = do_execve(path, argv, envp);
	if (argv != stack_argv) {
		int saved = errno;
		free(argv);
		errno = saved;
	}
	return rc;
}

EXPORT int execl(const char *path, const char *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	int rc = execl_common(EXECL, path, arg, ap);
	va_end(ap);
	return rc;
}

EXPORT int execle(const char *path, const char *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	int rc = execl_common(EXECLE, path, arg, ap);
	va_end(ap);
	return rc;
}

EXPORT int execlp(const char *file, const char *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	int rc = execl_common(EXECLP, file, arg, ap);
	va_end(ap);
	return rc;
}

/* posix_spawn and popen clone a child that runs no atfork handler and
 * execs past the PLT: only SIG_IGN needs passing on (cpu.c). system()
 * is not wrapped: it waits for its child, and SIGPROF at SIG_IGN for that
 * long would blind the sampler; its child gets SIGPROF at SIG_DFL. */

typedef int (*spawn_fn)(pid_t *, const char *,
			const posix_spawn_file_actions_t *,
			const posix_spawnattr_t *, char *const[],
			char *const[]);

static int spawn_common(const char *name, void **cache, pid_t *pid,
			const char *path, const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *attr, char *const argv[],
			char *const envp[])
{
	void *p = next_fn(name, cache);
	spawn_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return ENOSYS;
	struct pa_cpu_exec st;
	pa_cpu_spawn_begin(&st);
	int rc = fn(pid, path, fa, attr, argv, envp);
	pa_cpu_spawn_end(&st);
	return rc;
}

EXPORT int posix_spawn(pid_t *pid, const char *path,
		       const posix_spawn_file_actions_t *fa,
		       const posix_spawnattr_t *attr, char *const argv[],
		       char *const envp[])
{
	return spawn_common("posix_spawn", &spawn_cache, pid, path, fa, attr,
			    argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file,
			const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *attr, char *const argv[],
			char *const envp[])
{
	return spawn_common("posix_spawnp", &spawnp_cache, pid, file, fa, attr,
			    argv, envp);
}

typedef FILE *(*popen_fn)(const char *, const char *);

EXPORT FILE *popen(const char *command, const char *type)
{
	void *p = next_fn("popen", &popen_cache);
	popen_fn fn;
	memcpy(&fn, &p, sizeof(fn));
	if (!fn)
		return NULL;
	struct pa_cpu_exec st;
	pa_cpu_spawn_begin(&st);
	FILE *f = fn(command, type);
	int saved = errno;
	pa_cpu_spawn_end(&st);
	errno = saved;
	return f;
}

/* Resolved at load, not on first use: exec and poll may be called from a
 * signal handler (both are async-signal-safe), where dlsym is not. */
__attribute__((constructor)) static void preload_resolve(void)
{
	int saved = errno;
	int busy = pa_self.busy;
	pa_self.busy = 1;
	static const struct {
		const char *name;
		void **cache;
	} execs[] = {
	    {"execve", &execve_cache},	   {"execvpe", &execvpe_cache},
	    {"execv", &execv_cache},	   {"execvp", &execvp_cache},
	    {"fexecve", &fexecve_cache},   {"execveat", &execveat_cache},
	    {"posix_spawn", &spawn_cache}, {"posix_spawnp", &spawnp_cache},
	    {"popen", &popen_cache},	   {"poll", &poll_cache},
	    {"clone", &clone_cache},
	};
	for (size_t i = 0; i < sizeof(execs) / sizeof(execs[0]); i++)
		next_fn(execs[i].name, execs[i].cache);
	pa_self.busy = busy;
	errno = saved;
}
