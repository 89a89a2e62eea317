/* Stack capture and unwinding against this very process: hooks, signals,
 * sigaltstack, unknown stack bounds, garbage, code without CFI, JIT code,
 * frames inside libc; and the cost per sample. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "modules.h"
#include "ring.h"
#include "thread.h"
#include "unit.h"
#include "unwind.h"

#define NOINLINE __attribute__((noinline, noclone))
/* Keeps a call from becoming a tail call. */
#define BARRIER() __asm__ volatile("" ::: "memory")
#define ADDR(f)	  ((uint64_t)(uintptr_t)(f))
#define MAXF	  128

static struct pa_modules *uw_mods;
static struct pa_unwind *uw;
static struct pa_sample uw_sample;
static uint64_t uw_pcs[MAXF];

static void uw_setup(void)
{
	CHECK_EQ_INT(pa_modules_new(&uw_mods), 0);
	CHECK_EQ_INT(pa_modules_refresh(uw_mods, true), 0);
	CHECK_EQ_INT(pa_unwind_new(&uw, uw_mods), 0);
}

static int uw_run(const struct pa_sample *s, uint64_t *pcs, int max)
{
	pa_modules_read_lock();
	int n = pa_unwind_sample(uw, s, pcs, max);
	pa_modules_read_unlock();
	return n;
}

static void uw_dump(const uint64_t *pcs, int n)
{
	for (int i = 0; i < n; i++) {
		Dl_info di;
		const struct pa_module *m = pa_modules_find(uw_mods, pcs[i]);
		const char *name =
		    dladdr((void *)(uintptr_t)pcs[i], &di) && di.dli_sname
			? di.dli_sname
			: "?";
		fprintf(stderr, "    #%d %#llx %s (%s)\n", i,
			(unsigned long long)pcs[i], name,
			m ? m->path : "no module");
	}
}

/* pc lies in the first bytes of function f (static functions have no
 * dynamic symbol, so no dladdr: our test functions are small). */
static int in_func(uint64_t pc, const void *f, unsigned size)
{
	return pc > ADDR(f) && pc < ADDR(f) + size;
}

static int in_module_named(uint64_t pc, const char *part)
{
	const struct pa_module *m = pa_modules_find(uw_mods, pc);
	return m && strstr(m->path, part);
}

/* pc lies in the test executable itself (_start, main...). */
static int in_exe(uint64_t pc)
{
	const struct pa_module *m = pa_modules_find(uw_mods, pc);
	return m && m == pa_modules_find(uw_mods, ADDR(uw_setup));
}

static int index_of(const uint64_t *pcs, int n, uint64_t pc)
{
	for (int i = 0; i < n; i++)
		if (pcs[i] == pc)
			return i;
	return -1;
}

/* ---- (a) capture from a hook-like call chain */

static uint64_t ra_a, ra_b, ra_c;

NOINLINE static void chain_c(struct pa_sample *s)
{
	ra_c = ADDR(__builtin_return_address(0));
	pa_unwind_capture_here(s);
	BARRIER();
}

NOINLINE static void chain_b(struct pa_sample *s)
{
	ra_b = ADDR(__builtin_return_address(0));
	chain_c(s);
	BARRIER();
}

NOINLINE static void chain_a(struct pa_sample *s)
{
	ra_a = ADDR(__builtin_return_address(0));
	chain_b(s);
	BARRIER();
}

/* c, b, a, then the test function: exactly the recorded return addresses
 * moved back by one; then the runner, libc's start code. */
static void check_chain(const uint64_t *pcs, int n)
{
	if (n < 5 || !in_func(pcs[0], chain_c, 128) || pcs[1] != ra_c - 1 ||
	    pcs[2] != ra_b - 1 || pcs[3] != ra_a - 1) {
		uw_dump(pcs, n);
		FAIL("chain c, b, a, caller not found (n = %d)", n);
	}
	int libc = 0;
	for (int i = 4; i < n; i++)
		libc |= in_module_named(pcs[i], "libc.so");
	CHECK(libc); /* __libc_start_call_main */
	/* The outermost frame is _start in the executable. */
	CHECK(in_exe(pcs[n - 1]));
}

/* uw_sample: a capture in chain_c, its header garbage before. */
static void chain_capture(void)
{
	pa_thread_init_current();
	uw_setup();
	memset(&uw_sample, 0xa5, offsetof(struct pa_sample, stack));
	uw_sample.flags = 0;
	chain_a(&uw_sample);
}

TEST(unwind_capture_here_chain)
{
	chain_capture();
	CHECK(!(uw_sample.flags & PA_SAMPLE_LEAF_EXACT));
	CHECK(!(uw_sample.flags & PA_SAMPLE_NO_STACK));
	CHECK(uw_sample.stack_len > 64);
	/* Caller-saved registers are cleared, not left as garbage. */
	CHECK_EQ_INT(uw_sample.regs[0], 0);
	CHECK_EQ_INT(uw_sample.regs[11], 0); /* r11 */
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	check_chain(uw_pcs, n);
	/* max is honoured. */
	CHECK_EQ_INT(uw_run(&uw_sample, uw_pcs, 2), 2);
	CHECK(in_func(uw_pcs[0], chain_c, 128) && uw_pcs[1] == ra_c - 1);
	CHECK_EQ_INT(uw_run(&uw_sample, uw_pcs, 1), 1);
	CHECK_EQ_INT(uw_run(&uw_sample, uw_pcs, 0), -EINVAL);
	/* Unwinding the same copy again gives the same result (cache). */
	uint64_t again[MAXF];
	CHECK_EQ_INT(uw_run(&uw_sample, again, MAXF), n);
	CHECK(memcmp(again, uw_pcs, (size_t)n * sizeof(again[0])) == 0);
	pa_unwind_free(uw);
	pa_unwind_free(NULL);
	pa_modules_free(uw_mods);
}

/* A hook reserves pa_unwind_stack_need() bytes and then captures: the
 * reservation holds the whole copy, so the frames are the same as with a
 * full-size sample, from a frame with or without frame pointers. */
static struct pa_sample need_full, need_cut;
static uint32_t need_bytes[2];

NOINLINE static void need_capture(int k)
{
	need_bytes[k] = pa_unwind_stack_need();
	struct pa_sample *s = k ? &need_cut : &need_full;
	s->stack_cap = k ? need_bytes[k] : 0;
	pa_unwind_capture_here(s);
	BARRIER();
}

#define NEED_NOFP                                                              \
	__attribute__((noinline, noclone, optimize("omit-frame-pointer")))
NEED_NOFP static void need_capture_nofp(void)
{
	char pad[200];
	memset(pad, 1, sizeof(pad));
	__asm__ volatile("" : : "r"(pad) : "memory");
	need_capture(0);
	need_capture(1);
	BARRIER();
}

TEST(unwind_stack_need_covers_the_capture)
{
	pa_thread_init_current();
	uw_setup();
	for (int round = 0; round < 2; round++) {
		need_capture_nofp();
		CHECK(need_bytes[1] <= PA_STACK_COPY);
		CHECK(need_cut.stack_len <= need_bytes[1]);
		CHECK_EQ_INT(need_cut.stack_len, need_full.stack_len);
		CHECK_EQ_INT(need_cut.stack_start, need_full.stack_start);
		uint64_t full[MAXF], cut[MAXF];
		int n = uw_run(&need_full, full, MAXF);
		CHECK(n >= 4);
		CHECK_EQ_INT(uw_run(&need_cut, cut, MAXF), n);
		/* The same frames but for the call site (#1). */
		if (full[0] != cut[0] ||
		    memcmp(full + 2, cut + 2,
			   (size_t)(n - 2) * sizeof(full[0])) != 0) {
			uw_dump(full, n);
			uw_dump(cut, n);
			FAIL("a capture in the reserved length unwound "
			     "differently");
		}
	}
	/* A cap below the copy's length is honoured. */
	need_cut.stack_cap = 64;
	pa_unwind_capture_here(&need_cut);
	CHECK_EQ_INT(need_cut.stack_len, 64);
	pa_unwind_free(uw);
	pa_modules_free(uw_mods);
}

/* A remembered walk answers only a copy that holds the same words where
 * the walk read: a return address changed in the copy is walked again,
 * and gives what a walk without memory gives. */
static int word_at(const struct pa_sample *s, uint64_t val)
{
	for (uint32_t o = 0; o + 8 <= s->stack_len; o += 8) {
		uint64_t v;
		memcpy(&v, s->stack + o, 8);
		if (v == val)
			return (int)o;
	}
	return -1;
}

TEST(unwind_memo_checks_the_words_it_read)
{
	chain_capture();
	uint64_t first[MAXF], again[MAXF], plain_pcs[MAXF];
	int n = uw_run(&uw_sample, first, MAXF);
	check_chain(first, n);
	uint64_t hits = pa_unwind_memo_hits(uw);
	CHECK_EQ_INT(uw_run(&uw_sample, again, MAXF), n);
	CHECK(memcmp(first, again, (size_t)n * sizeof(first[0])) == 0);
	CHECK_EQ_INT(pa_unwind_memo_hits(uw), hits + 1);
	/* chain_b's return address into chain_a now points into chain_b. */
	int off = word_at(&uw_sample, ra_b);
	CHECK(off >= 0);
	memcpy(uw_sample.stack + off, &ra_c, 8);
	int m = uw_run(&uw_sample, again, MAXF);
	CHECK_EQ_INT(pa_unwind_memo_hits(uw), hits + 1);
	struct pa_unwind *plain;
	CHECK_EQ_INT(pa_unwind_new(&plain, uw_mods), 0);
	pa_unwind_set_memo(plain, 0);
	pa_modules_read_lock();
	int t = pa_unwind_sample(plain, &uw_sample, plain_pcs, MAXF);
	pa_modules_read_unlock();
	pa_unwind_free(plain);
	CHECK_EQ_INT(m, t);
	CHECK(memcmp(again, plain_pcs, (size_t)m * sizeof(again[0])) == 0);
	CHECK(m > 2 && again[2] == ra_c - 1); /* not what was remembered */
	/* Put back: remembered again. */
	memcpy(uw_sample.stack + off, &ra_b, 8);
	CHECK_EQ_INT(uw_run(&uw_sample, again, MAXF), n);
	CHECK(memcmp(first, again, (size_t)n * sizeof(first[0])) == 0);
	CHECK(pa_unwind_memo_hits(uw) >= hits + 2);
	pa_unwind_free(uw);
	pa_modules_free(uw_mods);
}

/* The same without frame pointers, as most distribution libraries are
 * built: only the CFI can find the callers. */
#define NOFP __attribute__((noinline, noclone, optimize("omit-frame-pointer")))
static uint64_t ra_nofp_a, ra_nofp_b;

NOFP static void nofp_b(struct pa_sample *s)
{
	ra_nofp_b = ADDR(__builtin_return_address(0));
	pa_unwind_capture_here(s);
	BARRIER();
}

NOFP static void nofp_a(struct pa_sample *s)
{
	ra_nofp_a = ADDR(__builtin_return_address(0));
	nofp_b(s);
	BARRIER();
}

TEST(unwind_capture_here_without_frame_pointers)
{
	pa_thread_init_current();
	uw_setup();
	nofp_a(&uw_sample);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	if (n < 4 || !in_func(uw_pcs[0], nofp_b, 128) ||
	    uw_pcs[1] != ra_nofp_b - 1 || uw_pcs[2] != ra_nofp_a - 1 ||
	    !in_exe(uw_pcs[n - 1])) {
		uw_dump(uw_pcs, n);
		FAIL("frames without frame pointers not found (n = %d)", n);
	}
}

/* A call to a noreturn function as the last instruction of its caller: the
 * return address is past the caller's end (in padding, or the next
 * function), so its CFI must be looked up at the return address - 1. */
static jmp_buf nr_jmp;
static uint64_t ra_nr_caller;

__attribute__((noinline, noclone, noreturn)) static void
nr_capture(struct pa_sample *s)
{
	pa_unwind_capture_here(s);
	longjmp(nr_jmp, 1);
}

NOFP static void nr_caller(struct pa_sample *s)
{
	ra_nr_caller = ADDR(__builtin_return_address(0));
	nr_capture(s);
}

TEST(unwind_noreturn_call_at_function_end)
{
	pa_thread_init_current();
	uw_setup();
	if (!setjmp(nr_jmp))
		nr_caller(&uw_sample);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	if (n < 4 || !in_func(uw_pcs[0], nr_capture, 64) ||
	    !in_func(uw_pcs[1], nr_caller, 64) ||
	    uw_pcs[2] != ra_nr_caller - 1 || !in_exe(uw_pcs[n - 1])) {
		uw_dump(uw_pcs, n);
		FAIL("frames around a noreturn call not found (n = %d)", n);
	}
}

/* ---- (b) capture in a SIGPROF handler */

static volatile int busy_in, busy_taken;
static volatile uint64_t busy_count;
static uint64_t ra_busy, ra_busy_caller, busy_uc_sp;

static void on_prof_capture(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si;
	if (busy_in && !busy_taken) {
		int e = errno = 1234;
		pa_unwind_capture_signal(&uw_sample, uc);
		busy_uc_sp =
		    (uint64_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RSP];
		if (errno != e)
			abort(); /* errno must be preserved */
		busy_taken = 1;
	}
}

NOINLINE static void busy(void)
{
	ra_busy = ADDR(__builtin_return_address(0));
	busy_in = 1;
	while (!busy_taken)
		busy_count++;
	busy_in = 0;
}

NOINLINE static void busy_caller(void)
{
	ra_busy_caller = ADDR(__builtin_return_address(0));
	busy();
	BARRIER();
}

static void prof_timer(int on)
{
	struct itimerval it = {{0, on ? 1000 : 0}, {0, on ? 1000 : 0}};
	setitimer(ITIMER_PROF, &it, NULL);
}

static void install(int sig, void (*fn)(int, siginfo_t *, void *), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | flags;
	sigemptyset(&sa.sa_mask);
	CHECK_EQ_INT(sigaction(sig, &sa, NULL), 0);
}

TEST(unwind_signal_capture_in_busy_loop)
{
	pa_thread_init_current();
	uw_setup();
	install(SIGPROF, on_prof_capture, 0);
	prof_timer(1);
	busy_caller();
	prof_timer(0);
	CHECK(uw_sample.flags & PA_SAMPLE_LEAF_EXACT);
	CHECK(!(uw_sample.flags & PA_SAMPLE_NO_STACK));
	/* Known bounds: copied from sp, up to the copy size or the top. */
	CHECK_EQ_INT(uw_sample.stack_start, busy_uc_sp);
	uint64_t room = pa_self.stack_hi - busy_uc_sp;
	CHECK_EQ_INT(uw_sample.stack_len,
		     room < PA_STACK_COPY ? room : PA_STACK_COPY);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	if (n < 4 || !in_func(uw_pcs[0], busy, 96) ||
	    uw_pcs[1] != ra_busy - 1 || uw_pcs[2] != ra_busy_caller - 1) {
		uw_dump(uw_pcs, n);
		FAIL("busy, busy_caller, test not found (n = %d)", n);
	}
	/* The leaf is the interrupted instruction itself. */
	CHECK_EQ_INT(uw_pcs[0], uw_sample.regs[16]);
	CHECK(in_exe(uw_pcs[n - 1]));
}

/* ---- (c) sigaltstack and unknown stack bounds (process_vm_readv) */

#define ALT_SIZE (64 * 1024)

static uint64_t ra_alt_inner, alt_interrupted_ip;
static volatile int alt_taken;

static void on_prof_alt(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si;
	pa_unwind_capture_signal(&uw_sample, uc);
	alt_taken = 1;
}

NOINLINE static void alt_inner(void)
{
	ra_alt_inner = ADDR(__builtin_return_address(0));
	raise(SIGPROF);
	BARRIER();
}

static void on_usr1_alt(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si;
	alt_interrupted_ip =
	    (uint64_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
	alt_inner();
	BARRIER();
}

TEST(unwind_signal_on_sigaltstack)
{
	pa_thread_init_current();
	uw_setup();
	/* The alternate stack is followed by an inaccessible page: the copy
	 * must stop there instead of faulting. */
	uint8_t *alt = mmap(NULL, ALT_SIZE + 4096, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(alt != MAP_FAILED);
	CHECK_EQ_INT(mprotect(alt + ALT_SIZE, 4096, PROT_NONE), 0);
	stack_t ss = {.ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0};
	CHECK_EQ_INT(sigaltstack(&ss, NULL), 0);
	install(SIGUSR1, on_usr1_alt, SA_ONSTACK);
	install(SIGPROF, on_prof_alt, 0);
	raise(SIGUSR1);
	CHECK(alt_taken);
	CHECK(!(uw_sample.flags & PA_SAMPLE_NO_STACK));
	CHECK(uw_sample.stack_start >= ADDR(alt) &&
	      uw_sample.stack_start < ADDR(alt) + ALT_SIZE);
	/* Everything up to the guard page, nothing past it. */
	CHECK_EQ_INT(uw_sample.stack_start + uw_sample.stack_len,
		     ADDR(alt) + ALT_SIZE);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	/* raise's frames in libc, alt_inner, the SIGUSR1 handler, the
	 * signal trampoline (exact), the interrupted frame (exact), and
	 * nothing more: its stack is not in the copy. */
	struct sigaction old;
	sigaction(SIGUSR1, NULL, &old);
	uint64_t trampoline = ADDR(old.sa_restorer);
	int i = index_of(uw_pcs, n, ra_alt_inner - 1);
	if (i < 2 || n != i + 3 || !in_func(uw_pcs[i], on_usr1_alt, 128) ||
	    !in_func(uw_pcs[i - 1], alt_inner, 64) ||
	    uw_pcs[i + 1] != trampoline ||
	    uw_pcs[i + 2] != alt_interrupted_ip) {
		uw_dump(uw_pcs, n);
		FAIL("frames through the sigaltstack handler not as expected "
		     "(n = %d, i = %d)",
		     n, i);
	}
	for (int k = 0; k < i - 1; k++)
		CHECK(in_module_named(uw_pcs[k], "libc.so"));
}

/* The same with the alternate stack at a higher address than the stack it
 * interrupted: crossing a signal frame may move sp down. */
TEST(unwind_signal_on_sigaltstack_above_the_stack)
{
	pa_thread_init_current();
	uw_setup();
	uint8_t *alt = MAP_FAILED;
	for (uint64_t gap = 1ULL << 28; gap >= 1ULL << 20 && alt == MAP_FAILED;
	     gap >>= 2) {
		uint64_t want = (pa_self.stack_hi + gap) & ~(uint64_t)0xfff;
		alt = mmap(
		    (void *)(uintptr_t)want, ALT_SIZE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	}
	if (alt == MAP_FAILED) {
		printf("  no room above the stack: skipped\n");
		return;
	}
	CHECK(ADDR(alt) > pa_self.stack_hi);
	stack_t ss = {.ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0};
	CHECK_EQ_INT(sigaltstack(&ss, NULL), 0);
	install(SIGUSR1, on_usr1_alt, SA_ONSTACK);
	install(SIGPROF, on_prof_alt, 0);
	raise(SIGUSR1);
	CHECK(alt_taken);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	int i = index_of(uw_pcs, n, ra_alt_inner - 1);
	if (i < 2 || n != i + 3 || uw_pcs[i + 2] != alt_interrupted_ip) {
		uw_dump(uw_pcs, n);
		FAIL("the interrupted frame below the handler's stack was lost "
		     "(n = %d)",
		     n);
	}
}

/* A signal handler on the ordinary stack that is itself interrupted: the
 * unwind goes through the signal frame and on into the code the first
 * signal interrupted. */
static uint64_t ra_nested_raise;

NOINLINE static void nested_raiser(void)
{
	ra_nested_raise = ADDR(__builtin_return_address(0));
	raise(SIGUSR1);
	BARRIER();
}

TEST(unwind_through_nested_signal_frame)
{
	pa_thread_init_current();
	uw_setup();
	install(SIGUSR1, on_usr1_alt, 0);
	install(SIGPROF, on_prof_alt, 0);
	nested_raiser();
	CHECK(alt_taken);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	struct sigaction old;
	sigaction(SIGUSR1, NULL, &old);
	int i = index_of(uw_pcs, n, ra_alt_inner - 1);
	/* ..., alt_inner, the handler, the trampoline, the interrupted
	 * instruction in libc's raise, then on: nested_raiser, the test. */
	int j = index_of(uw_pcs, n, ra_nested_raise - 1);
	if (i < 2 || uw_pcs[i + 1] != ADDR(old.sa_restorer) ||
	    uw_pcs[i + 2] != alt_interrupted_ip || j <= i + 2 ||
	    !in_func(uw_pcs[j - 1], nested_raiser, 64) ||
	    !in_exe(uw_pcs[n - 1])) {
		uw_dump(uw_pcs, n);
		FAIL("frames through a nested signal not as expected (n = %d, "
		     "i = %d, j = %d)",
		     n, i, j);
	}
	for (int k = i + 3; k < j - 1; k++)
		CHECK(in_module_named(uw_pcs[k], "libc.so"));
}

static uint64_t unknown_hi;

TEST(unwind_capture_with_unknown_stack_bounds)
{
	/* A thread the agent found without bounds: process_vm_readv. */
	pa_self.stack_lo = pa_self.stack_hi = 0;
	uw_setup();
	chain_a(&uw_sample);
	CHECK(!(uw_sample.flags & PA_SAMPLE_NO_STACK));
	pa_thread_init_current();
	unknown_hi = pa_self.stack_hi;
	/* The main stack's mapping ends a few KiB above us (above what
	 * pthread reports: the environment): a partial copy to its end. */
	uint64_t room = unknown_hi - uw_sample.stack_start;
	CHECK(uw_sample.stack_len >=
	      (room < PA_STACK_COPY ? room : PA_STACK_COPY));
	CHECK(uw_sample.stack_len <= PA_STACK_COPY);
	check_chain(uw_pcs, uw_run(&uw_sample, uw_pcs, MAXF));
}

static void *unknown_thread(void *arg)
{
	(void)arg;
	chain_a(&uw_sample);
	return NULL;
}

TEST(unwind_capture_in_thread_without_bounds)
{
	uw_setup();
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, unknown_thread, NULL), 0);
	pthread_join(t, NULL);
	/* The thread's stack is gone (or cached) but the copy is ours:
	 * c, b, a, the thread function, start_thread and clone3 in libc. */
	CHECK(!(uw_sample.flags & PA_SAMPLE_NO_STACK));
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	if (n < 4 || !in_func(uw_pcs[0], chain_c, 128) ||
	    uw_pcs[1] != ra_c - 1 || uw_pcs[2] != ra_b - 1 ||
	    uw_pcs[3] != ra_a - 1 || !in_func(uw_pcs[3], unknown_thread, 64) ||
	    !in_module_named(uw_pcs[4], "libc.so")) {
		uw_dump(uw_pcs, n);
		FAIL("thread chain not found (n = %d)", n);
	}
}

/* ---- the stack top hint: after one unwind that reached the thread's
 * outermost frame, captures on that thread copy only the stack in use, and
 * unwind to exactly the same frames. */

static struct pa_sample top_first, top_again, top_other;
static uint64_t top_pcs[3][MAXF];
static int top_n[3];

static void *top_thread(void *arg)
{
	(void)arg;
	pa_thread_init_current();
	chain_a(&top_first);
	top_first.tid = pa_self.tid;
	top_n[0] = uw_run(&top_first, top_pcs[0], MAXF);
	chain_a(&top_again);
	top_again.tid = pa_self.tid;
	top_n[1] = uw_run(&top_again, top_pcs[1], MAXF);
	/* Another thread's hint never applies here: same stack, other tid. */
	pa_self.tid ^= 1;
	chain_a(&top_other);
	top_other.tid = pa_self.tid;
	top_n[2] = uw_run(&top_other, top_pcs[2], MAXF);
	return NULL;
}

TEST(unwind_stack_top_hint_copies_less_same_frames)
{
	uw_setup();
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, top_thread, NULL), 0);
	pthread_join(t, NULL);
	/* The first copy runs to the top of the thread's block (TLS and
	 * glibc's descriptor are there); the second stops above the
	 * outermost frame. */
	CHECK(top_n[0] >= 6);
	CHECK(in_module_named(top_pcs[0][top_n[0] - 1], "libc.so"));
	CHECK(top_again.stack_len + 1024 < top_first.stack_len);
	CHECK(top_other.stack_len == top_first.stack_len);
	/* The same frames but for the call site in top_thread (#3). */
	for (int k = 1; k < 3; k++) {
		if (top_n[k] != top_n[0] ||
		    memcmp(top_pcs[k], top_pcs[0], 3 * sizeof(uint64_t)) ||
		    memcmp(top_pcs[k] + 4, top_pcs[0] + 4,
			   (size_t)(top_n[0] - 4) * sizeof(uint64_t))) {
			uw_dump(top_pcs[0], top_n[0]);
			uw_dump(top_pcs[k], top_n[k]);
			FAIL("capture %d unwound differently", k);
		}
	}
	printf("  stack copy: %u bytes, %u with the hint (%d frames)\n",
	       top_first.stack_len, top_again.stack_len, top_n[0]);
}

TEST(unwind_capture_bad_sp_is_leaf_only)
{
	/* A signal context whose sp points nowhere: the leaf survives. */
	pa_self.stack_lo = pa_self.stack_hi = 0;
	uw_setup();
	ucontext_t uc;
	memset(&uc, 0, sizeof(uc));
	uc.uc_mcontext.gregs[REG_RIP] = (greg_t)ADDR(busy) + 4;
	uc.uc_mcontext.gregs[REG_RSP] = 16;
	pa_unwind_capture_signal(&uw_sample, &uc);
	CHECK(uw_sample.flags & PA_SAMPLE_NO_STACK);
	CHECK(uw_sample.flags & PA_SAMPLE_LEAF_EXACT);
	CHECK_EQ_INT(uw_sample.stack_len, 0);
	CHECK_EQ_INT(uw_run(&uw_sample, uw_pcs, MAXF), 1);
	CHECK_EQ_INT(uw_pcs[0], ADDR(busy) + 4);
	/* No context at all. */
	pa_unwind_capture_signal(&uw_sample, NULL);
	CHECK(uw_sample.flags & PA_SAMPLE_NO_STACK);
	CHECK_EQ_INT(uw_run(&uw_sample, uw_pcs, MAXF), -ENOENT);
	/* Kernel addresses and the top of the address space. */
	uc.uc_mcontext.gregs[REG_RSP] = (greg_t)0xffffffffffffff00ULL;
	pa_unwind_capture_signal(&uw_sample, &uc);
	CHECK(uw_sample.flags & PA_SAMPLE_NO_STACK);
}

/* ---- (d) garbage */

static uint64_t rnd_state = 88172645463325252ULL;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* A value that looks plausible half of the time: code addresses of loaded
 * modules, addresses inside the stack copy, small numbers, or anything. */
static uint64_t plausible(const struct pa_sample *s)
{
	int nm = pa_modules_count(uw_mods);
	const struct pa_module *m =
	    pa_modules_at(uw_mods, (int)(rnd() % (uint64_t)nm));
	switch (rnd() % 6) {
	case 0:
	case 1:
		return m->exec_start +
		       rnd() % (m->exec_end - m->exec_start + 1);
	case 2:
		return s->stack_start + (rnd() % (PA_STACK_COPY + 64)) - 32;
	case 3:
		return rnd() % 4096;
	case 4:
		return m->start + rnd() % (m->end - m->start + 64);
	default:
		return rnd();
	}
}

NOINLINE static void deep(struct pa_sample *s, int depth);

static void deep_for_garbage(struct pa_sample *s)
{
	deep(s, 12);
}

TEST_TIMEOUT(unwind_garbage_never_crashes, 60)
{
	uw_setup();
	static struct pa_sample g;
	uint64_t base = ADDR(&g) & ~(uint64_t)0xfff;
	int results[4] = {0};
	for (int iter = 0; iter < 20000; iter++) {
		g.flags = (rnd() % 2) ? PA_SAMPLE_LEAF_EXACT : 0;
		if (rnd() % 50 == 0)
			g.flags |= PA_SAMPLE_NO_STACK;
		g.stack_start = (rnd() % 8) ? base + (rnd() % 4096) * 8 : rnd();
		g.stack_len =
		    (uint32_t)(rnd() % 10 == 0 ? rnd() % (2 * PA_STACK_COPY)
					       : PA_STACK_COPY - rnd() % 4096);
		for (int i = 0; i < PA_NREGS; i++)
			g.regs[i] = plausible(&g);
		if (rnd() % 3 == 0)
			g.regs[7] = g.stack_start +
				    (rnd() % 64) * 8; /* sp in the copy */
		uint64_t *words = (uint64_t *)g.stack;
		for (int i = 0; i < PA_STACK_COPY / 8; i++)
			words[i] = (rnd() % 4) ? plausible(&g) : rnd();
		int n = uw_run(&g, uw_pcs, MAXF);
		CHECK(n == -ENOENT || (n >= 1 && n <= MAXF));
		results[n < 0 ? 0 : n == 1 ? 1 : n < 8 ? 2 : 3]++;
	}
	printf("  garbage: %d errors, %d leaf only, %d short, %d long\n",
	       results[0], results[1], results[2], results[3]);
	/* A real deep sample, corrupted a little more each round: the
	 * unwinder meets plausible-but-wrong frames deep in the walk. */
	pa_thread_init_current();
	static struct pa_sample real;
	deep_for_garbage(&real);
	int full = uw_run(&real, uw_pcs, MAXF);
	CHECK(full >= 10);
	memset(results, 0, sizeof(results));
	for (int iter = 0; iter < 20000; iter++) {
		memcpy(&g, &real,
		       offsetof(struct pa_sample, stack) + real.stack_len);
		uint64_t *words = (uint64_t *)g.stack;
		int nwords = (int)(g.stack_len / 8);
		int flips = 1 + (int)(rnd() % 16);
		for (int k = 0; k < flips; k++) {
			int at = (int)(rnd() % (uint64_t)nwords);
			switch (rnd() % 4) {
			case 0:
				words[at] ^= 1ULL << (rnd() % 64);
				break;
			case 1:
				words[at] = plausible(&g);
				break;
			case 2:
				words[at] = words[rnd() % (uint64_t)nwords];
				break;
			default:
				g.regs[rnd() % 17] = plausible(&g);
				break;
			}
		}
		int n = uw_run(&g, uw_pcs, MAXF);
		if (g.regs[16] == 0)
			CHECK_EQ_INT(n, -ENOENT);
		else if (n < 1 || n > MAXF)
			FAIL("corrupted stack: %d frames", n);
		results[n < full ? 0 : n == full ? 1 : 2]++;
	}
	printf(
	    "  corrupted real stacks: %d shorter, %d same depth, %d longer\n",
	    results[0], results[1], results[2]);
}

/* ---- (e) frames without unwind info: the frame-pointer fallback */

/* A function with a frame pointer and no CFI at all (no FDE covers it):
 * void unwind_test_nocfi_call(struct pa_sample *s, void (*fn)(struct pa_sample
 * *)). It records its own return address, so the test knows where it came from.
 */
__asm__(".text\n"
	".p2align 4\n"
	".globl unwind_test_nocfi_call\n"
	".hidden unwind_test_nocfi_call\n"
	".type unwind_test_nocfi_call, @function\n"
	"unwind_test_nocfi_call:\n"
	"	push %rbp\n"
	"	mov %rsp, %rbp\n"
	"	mov 8(%rbp), %rax\n"
	"	mov %rax, unwind_test_nocfi_ra(%rip)\n"
	"	call *%rsi\n"
	"	nop\n"
	"	pop %rbp\n"
	"	ret\n"
	".size unwind_test_nocfi_call, .-unwind_test_nocfi_call\n");
void unwind_test_nocfi_call(struct pa_sample *s,
			    void (*fn)(struct pa_sample *));
uint64_t unwind_test_nocfi_ra;

static uint64_t ra_fp_leaf;

NOINLINE static void fp_leaf(struct pa_sample *s)
{
	ra_fp_leaf = ADDR(__builtin_return_address(0));
	pa_unwind_capture_here(s);
	BARRIER();
}

TEST(unwind_frame_pointer_fallback_without_cfi)
{
	pa_thread_init_current();
	uw_setup();
	unwind_test_nocfi_call(&uw_sample, fp_leaf);
	BARRIER();
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	/* fp_leaf (DWARF), nocfi_call (no FDE: frame pointer), the test
	 * (DWARF again), the runner, libc. */
	if (n < 5 || !in_func(uw_pcs[0], fp_leaf, 128) ||
	    uw_pcs[1] != ra_fp_leaf - 1 ||
	    !in_func(uw_pcs[1], unwind_test_nocfi_call, 32) ||
	    uw_pcs[2] != unwind_test_nocfi_ra - 1) {
		uw_dump(uw_pcs, n);
		FAIL("frames around code without CFI not found (n = %d)", n);
	}
	int libc = 0;
	for (int i = 3; i < n; i++)
		libc |= in_module_named(uw_pcs[i], "libc.so");
	CHECK(libc);
	CHECK(in_exe(uw_pcs[n - 1]));
}

/* JIT code: a leaf outside every module, with a frame pointer, spinning
 * until the handler has sampled it. */
static const uint8_t jit_code[] = {
    0x55,	      /* push %rbp */
    0x48, 0x89, 0xe5, /* mov %rsp,%rbp */
    0x8b, 0x07,	      /* 1: mov (%rdi),%eax */
    0x85, 0xc0,	      /* test %eax,%eax */
    0x74, 0xfa,	      /* je 1b */
    0x5d,	      /* pop %rbp */
    0xc3,	      /* ret */
};
static uint8_t *jit;
static volatile int jit_done;
static uint64_t ra_jit_caller;

static void on_prof_jit(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si;
	uint64_t ip = (uint64_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
	if (!jit_done && ip >= ADDR(jit) + 4 &&
	    ip < ADDR(jit) + sizeof(jit_code)) {
		pa_unwind_capture_signal(&uw_sample, uc);
		jit_done = 1;
	}
}

NOINLINE static void jit_caller(void)
{
	ra_jit_caller = ADDR(__builtin_return_address(0));
	((void (*)(volatile int *))(uintptr_t)jit)(&jit_done);
	BARRIER();
}

TEST(unwind_frame_pointer_fallback_from_jit_leaf)
{
	pa_thread_init_current();
	uw_setup();
	jit = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(jit != MAP_FAILED);
	memcpy(jit, jit_code, sizeof(jit_code));
	CHECK_EQ_INT(mprotect(jit, 4096, PROT_READ | PROT_EXEC), 0);
	install(SIGPROF, on_prof_jit, 0);
	prof_timer(1);
	jit_caller();
	prof_timer(0);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	/* The JIT leaf (exact), then by its frame pointer jit_caller, then
	 * DWARF again: the test function and beyond. */
	if (n < 4 || uw_pcs[0] < ADDR(jit) ||
	    uw_pcs[0] >= ADDR(jit) + sizeof(jit_code) ||
	    !in_func(uw_pcs[1], jit_caller, 128) ||
	    uw_pcs[2] != ra_jit_caller - 1) {
		uw_dump(uw_pcs, n);
		FAIL("frames from a JIT leaf not found (n = %d)", n);
	}
	CHECK(in_exe(uw_pcs[n - 1]));
}

/* ---- (f) through libc: a qsort comparator */

static uint64_t ra_cmp, ra_sorter;
static int cmp_captured;

static int cmp_capture(const void *a, const void *b)
{
	if (!cmp_captured) {
		cmp_captured = 1;
		ra_cmp = ADDR(__builtin_return_address(0));
		pa_unwind_capture_here(&uw_sample);
	}
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

NOINLINE static void sorter(void)
{
	ra_sorter = ADDR(__builtin_return_address(0));
	int v[64];
	for (int i = 0; i < 64; i++)
		v[i] = (i * 37) % 64;
	qsort(v, 64, sizeof(v[0]), cmp_capture);
	BARRIER();
}

TEST(unwind_through_libc_qsort)
{
	pa_thread_init_current();
	uw_setup();
	sorter();
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	int k = -1;
	for (int i = 1; i < n; i++)
		if (in_func(uw_pcs[i], sorter, 1024)) {
			k = i;
			break;
		}
	/* cmp, libc's merge sort frames, qsort, sorter, the test. */
	if (n < 4 || !in_func(uw_pcs[0], cmp_capture, 256) ||
	    uw_pcs[1] != ra_cmp - 1 || k < 2 ||
	    uw_pcs[k + 1] != ra_sorter - 1) {
		uw_dump(uw_pcs, n);
		FAIL("frames through qsort not found (n = %d, k = %d)", n, k);
	}
	/* AddressSanitizer brings its own qsort. */
	for (int i = 1; i < k; i++)
		CHECK(in_module_named(uw_pcs[i], "libc.so") ||
		      in_module_named(uw_pcs[i], "libasan"));
}

/* ---- the row cache: many different stacks through one unwinder give what
 * fresh unwinders give. */

TEST(unwind_cache_gives_the_same_frames)
{
	pa_thread_init_current();
	uw_setup();
	static struct pa_sample samples[5];
	chain_a(&samples[0]);
	nofp_a(&samples[1]);
	cmp_captured = 0;
	sorter();
	memcpy(&samples[2], &uw_sample, sizeof(uw_sample));
	unwind_test_nocfi_call(&samples[3], fp_leaf);
	deep(&samples[4], 7);
	uint64_t want[5][MAXF];
	int nwant[5];
	for (int k = 0; k < 5; k++) {
		struct pa_unwind *fresh;
		CHECK_EQ_INT(pa_unwind_new(&fresh, uw_mods), 0);
		pa_modules_read_lock();
		nwant[k] = pa_unwind_sample(fresh, &samples[k], want[k], MAXF);
		pa_modules_read_unlock();
		pa_unwind_free(fresh);
		CHECK(nwant[k] >= 4);
	}
	for (int round = 0; round < 200; round++) {
		int k = (int)(rnd() % 5);
		int n = uw_run(&samples[k], uw_pcs, MAXF);
		if (n != nwant[k] ||
		    memcmp(uw_pcs, want[k], (size_t)n * sizeof(uw_pcs[0]))) {
			uw_dump(uw_pcs, n);
			FAIL("sample %d unwound differently from the cache "
			     "(round %d)",
			     k, round);
		}
	}
}

/* ---- cost per sample */

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

NOINLINE static void deep(struct pa_sample *s, int depth)
{
	if (depth == 0)
		chain_a(s);
	else
		deep(s, depth - 1);
	BARRIER();
}

/* Leaves more than a full copy of stack above the capture. */
NOINLINE static void padded_capture(struct pa_sample *s)
{
	volatile char pad[PA_STACK_COPY + 4096];
	pad[0] = 1;
	chain_a(s);
	BARRIER();
	(void)pad[0];
}

TEST_TIMEOUT(unwind_cost_per_sample, 60)
{
	pa_thread_init_current();
	uw_setup();
	/* Warm: the same stacks again and again (the rules cached), and
	 * the same stack remembered whole. */
	deep(&uw_sample, 20);
	int n = uw_run(&uw_sample, uw_pcs, MAXF);
	CHECK(n >= 25);
	const int iters = 20000;
	pa_unwind_set_memo(uw, 0);
	double t0 = now_us();
	for (int i = 0; i < iters; i++)
		uw_run(&uw_sample, uw_pcs, MAXF);
	double warm = (now_us() - t0) / iters;
	pa_unwind_set_memo(uw, 1);
	uw_run(&uw_sample, uw_pcs, MAXF);
	t0 = now_us();
	for (int i = 0; i < iters; i++)
		uw_run(&uw_sample, uw_pcs, MAXF);
	double remembered = (now_us() - t0) / iters;
	/* Cold: the first unwind after a fresh address space. */
	double cold = 0;
	for (int i = 0; i < 20; i++) {
		pa_unwind_free(uw);
		CHECK_EQ_INT(pa_unwind_new(&uw, uw_mods), 0);
		t0 = now_us();
		uw_run(&uw_sample, uw_pcs, MAXF);
		cold += now_us() - t0;
	}
	cold /= 20;
	/* Capture costs with a full 16 KiB to copy: memcpy within known
	 * bounds, process_vm_readv without. */
	t0 = now_us();
	for (int i = 0; i < iters; i++)
		padded_capture(&uw_sample);
	double here = (now_us() - t0) / iters;
	CHECK_EQ_INT(uw_sample.stack_len, PA_STACK_COPY);
	pa_self.stack_lo = pa_self.stack_hi = 0;
	t0 = now_us();
	for (int i = 0; i < iters; i++)
		padded_capture(&uw_sample);
	double foreign = (now_us() - t0) / iters;
	CHECK_EQ_INT(uw_sample.stack_len, PA_STACK_COPY);
	printf("  unwind %d frames: %.2f us remembered, %.2f us warm, %.1f us "
	       "cold; capture of 16 KiB %.2f us (known bounds), %.2f us "
	       "(process_vm_readv)\n",
	       n, remembered, warm, cold, here, foreign);
}
