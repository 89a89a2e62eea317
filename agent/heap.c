/* Heap sampling core (hot path): resolution of the real allocator, the
 * bootstrap pool, the exponential byte countdown, unbiased weights, the
 * live table's upkeep, and anonymous-mapping events for the agent thread. */
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "heap.h"
#include "log.h"
#include "ring.h"
#include "unwind.h"

uint8_t pa_heap_boot_filter[PA_HEAP_FILTER_SIZE];
struct pa_heap pa_heap = {
    .filter = pa_heap_boot_filter,
    .hot_malloc = pa_heap_boot_malloc,
    .hot_free = pa_heap_free_slow,
};
unsigned char pa_heap_boot[PA_HEAP_BOOT_SIZE] __attribute__((aligned(4096)));

static uint64_t boot_used;
static int resolve_state; /* 0 not yet, 1 under way, 2 done */

/* Before pa_heap_start: a thread's countdown is a placeholder of this many
 * bytes, so unconfigured threads look again now and then without a draw. */
#define UNCONFIGURED_COUNTDOWN (1 << 20)
#define COUNTDOWN_OFF	       INT64_MAX

#define STAT_INC(field)                                                        \
	__atomic_add_fetch(&pa_heap.stats.field, 1, __ATOMIC_RELAXED)

/* ---- resolution and the bootstrap pool ----------------------------------- */

#define RESOLVE(name)                                                          \
	do {                                                                   \
		void *sym_ = dlsym(RTLD_NEXT, #name);                          \
		__typeof__(pa_heap.real.name) fn_;                             \
		memcpy(&fn_, &sym_, sizeof(fn_));                              \
		__atomic_store_n(&pa_heap.real.name, fn_, __ATOMIC_RELEASE);   \
	} while (0)

void pa_heap_resolve(void)
{
	if (__atomic_load_n(&resolve_state, __ATOMIC_ACQUIRE) == 2)
		return;
	int expect = 0;
	/* One thread resolves; a nested call from dlsym's own allocations,
	 * or another thread meanwhile, is served by the pool. */
	if (!__atomic_compare_exchange_n(&resolve_state, &expect, 1, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return;
	int saved = errno;
	RESOLVE(malloc);
	/* From here on dlsym's own allocations reach the real malloc. */
	if (pa_heap.real.malloc)
		__atomic_store_n(&pa_heap.hot_malloc, pa_heap.real.malloc,
				 __ATOMIC_RELEASE);
	RESOLVE(free);
	if (pa_heap.real.free)
		__atomic_store_n(&pa_heap.hot_free, pa_heap.real.free,
				 __ATOMIC_RELEASE);
	RESOLVE(calloc);
	RESOLVE(realloc);
	RESOLVE(reallocarray);
	RESOLVE(posix_memalign);
	RESOLVE(aligned_alloc);
	RESOLVE(memalign);
	RESOLVE(valloc);
	RESOLVE(pvalloc);
	RESOLVE(mmap);
	RESOLVE(mmap64);
	RESOLVE(munmap);
	RESOLVE(mremap);
	/* Not free_sized / free_aligned_sized: glibc 2.36 lacks them, and a
	 * failed dlsym this early leaves an error that dlerror() would format
	 * with gettext under the locale lock before libc is ready (measured:
	 * the lock's reader count went negative and exit hung). They are
	 * looked up on their first call instead. */
	errno = saved;
	__atomic_store_n(&resolve_state, 2, __ATOMIC_RELEASE);
}

/* Marks [lo, hi) of the pool "maybe" in filter f, for good (a saturated
 * counter is never decremented): free() then takes its slow path, which
 * knows pool blocks. */
static void mark_boot(const uint8_t *f, uint64_t lo, uint64_t hi)
{
	for (uint64_t o = lo & ~(uint64_t)63; o < hi; o += 64)
		pa_live_filter_pin((uint8_t *)(uintptr_t)f,
				   PA_HEAP_FILTER_SIZE - 1, pa_heap_boot + o);
}

/* A new prefilter takes over (its table set up before): published first,
 * then marked for the pool's blocks so far; a block handed out later
 * marks the published one itself. Sequentially consistent with the
 * pool's bump: every block is marked in the filter that ends up
 * published. */
static void publish_filter(const uint8_t *f)
{
	__atomic_store_n(&pa_heap.filter, f, __ATOMIC_SEQ_CST);
	mark_boot(f, 0, __atomic_load_n(&boot_used, __ATOMIC_SEQ_CST));
}

/* Bump allocation from a static, zeroed pool that is never reused: a
 * 16-byte header before each block holds its size for realloc. */
void *pa_heap_boot_alloc(size_t n, size_t align)
{
	if (align < 16)
		align = 16;
	if (n > PA_HEAP_BOOT_SIZE || (align & (align - 1)) != 0 ||
	    align > 4096) {
		STAT_INC(boot_exhausted);
		errno = ENOMEM;
		return NULL;
	}
	uint64_t off = __atomic_load_n(&boot_used, __ATOMIC_RELAXED);
	for (;;) {
		uint64_t start =
		    (off + 16 + align - 1) & ~(uint64_t)(align - 1);
		uint64_t end = (start + n + 15) & ~(uint64_t)15;
		if (end > PA_HEAP_BOOT_SIZE) {
			STAT_INC(boot_exhausted);
			errno = ENOMEM;
			return NULL;
		}
		if (__atomic_compare_exchange_n(&boot_used, &off, end, true,
						__ATOMIC_SEQ_CST,
						__ATOMIC_RELAXED)) {
			uint64_t size = n;
			memcpy(pa_heap_boot + start - 16, &size, sizeof(size));
			mark_boot(
			    __atomic_load_n(&pa_heap.filter, __ATOMIC_SEQ_CST),
			    start - 16, end);
			STAT_INC(boot_allocs);
			return pa_heap_boot + start;
		}
	}
}

static size_t boot_size(const void *p)
{
	uint64_t size;
	memcpy(&size, (const unsigned char *)p - 16, sizeof(size));
	return size;
}

void *pa_heap_boot_malloc(size_t n)
{
	pa_heap_resolve();
	if (PA_HEAP_REAL(malloc))
		return pa_heap_malloc(n);
	return pa_heap_boot_alloc(n, 16);
}

void *pa_heap_boot_calloc(size_t n, size_t m)
{
	pa_heap_resolve();
	if (PA_HEAP_REAL(calloc))
		return pa_heap_calloc(n, m);
	size_t total;
	if (__builtin_mul_overflow(n, m, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	/* The pool is never reused: its blocks are still zero. */
	return pa_heap_boot_alloc(total, 16);
}

/* hot_free until the real free is known. */
void pa_heap_free_slow(void *p)
{
	if (!p || pa_heap_is_boot(p))
		return; /* pool blocks are never returned */
	pa_heap_resolve();
	void (*fn)(void *) = PA_HEAP_REAL(free);
	if (fn)
		fn(p); /* before the agent starts: no table to leave */
	/* else: no allocator known yet, so p cannot be one of its blocks */
}

/* Out of the live table if p may be in it, and then maybe really in it:
 * the entry copied to *e. */
static int unlive(void *p, struct pa_live_entry *e)
{
	struct pa_live *t = pa_heap.live;
	if (!t || !pa_heap_maybe_live(p))
		return 0;
	return pa_live_remove(t, p, e);
}

/* free() of a block the prefilter says "maybe" of. */
void pa_heap_free_maybe(void *p)
{
	if (pa_heap_is_boot(p))
		return;
	unlive(p, NULL);
	__atomic_load_n(&pa_heap.hot_free, __ATOMIC_RELAXED)(p);
}

/* ---- the countdown and the weights --------------------------------------- */

static uint64_t xorshift64s(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

int64_t pa_heap_draw(uint64_t *rng, double rate)
{
	if (*rng == 0)
		*rng = 0x9e3779b97f4a7c15ULL;
	/* u in [0, 1): -log(1 - u) is finite. */
	double u = (double)(xorshift64s(rng) >> 11) * 0x1.0p-53;
	double d = -log1p(-u) * rate;
	/* Sample when the countdown reaches <= 0 after subtracting n, i.e.
	 * when ceil(D) <= n, i.e. D <= n for integer n: exactly the
	 * probability 1 - e^(-n/rate) the weight assumes. */
	d = ceil(d);
	if (d < 1)
		return 1;
	if (d > 4e18)
		return (int64_t)4e18;
	return (int64_t)d;
}

double pa_heap_weight(size_t n, double rate)
{
	if (n == 0)
		return 0;
	double x = (double)n / rate;
	/* -expm1 keeps precision for n << rate, where the weight -> rate + n/2.
	 */
	return (double)n / -expm1(-x);
}

/* Draws the next countdown after a crossing. Returns true when the
 * crossing was a real one (a draw was running) and sampling is on. */
static bool next_countdown(void)
{
	if (pa_self.is_agent) {
		pa_self.alloc_countdown = COUNTDOWN_OFF;
		return false;
	}
	if (!__atomic_load_n(&pa_heap.configured, __ATOMIC_ACQUIRE)) {
		pa_self.alloc_countdown = UNCONFIGURED_COUNTDOWN;
		return false;
	}
	if (pa_heap.rate <= 0) {
		pa_self.alloc_countdown = COUNTDOWN_OFF;
		return false;
	}
	bool first = pa_self.rng == 0;
	if (first) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		static uint64_t threads;
		uint64_t k = __atomic_add_fetch(&threads, 1, __ATOMIC_RELAXED);
		pa_self.rng =
		    splitmix64((uint64_t)ts.tv_nsec ^
			       ((uint64_t)ts.tv_sec << 32) ^
			       (uint64_t)(uintptr_t)&pa_self ^ (k << 48)) |
		    1;
	}
	pa_self.alloc_countdown = pa_heap_draw(&pa_self.rng, pa_heap.rate_d);
	/* A thread's first crossing ends a placeholder, not a draw. */
	return !first;
}

/* A sample id, unique in the process (the live table matches entries to
 * samples by it): taken from the shared counter SEQ_BATCH at a time, so
 * threads sampling at once rarely meet on its cache line. */
#define SEQ_BATCH 64

static uint32_t next_seq(void)
{
	if (pa_self.seq_left == 0) {
		pa_self.seq_next = __atomic_fetch_add(&pa_heap.seq, SEQ_BATCH,
						      __ATOMIC_RELAXED);
		pa_self.seq_left = SEQ_BATCH;
	}
	pa_self.seq_left--;
	return ++pa_self.seq_next;
}

static void note_null(void)
{
	STAT_INC(null_returns);
	if (!__atomic_load_n(&pa_heap.null_seen, __ATOMIC_RELAXED))
		__atomic_store_n(&pa_heap.null_seen, 1, __ATOMIC_RELAXED);
}

/* ---- the sampled path ---------------------------------------------------- */

/*
 * fork: a child that profiles itself gets a fresh ring and live table
 * (pa_heap_atfork_child). A process that shares our memory without having
 * run the atfork handlers, a vfork()/posix_spawn() child (or a clone() or
 * _Fork() one), records nothing: the ring and the live table are the
 * parent's, and a child that dies between reserve and commit would stall
 * the parent's ring for good. getpid() is a syscall: it is asked on
 * sampled paths and in the mmap family, and only once such a child may
 * exist (pa_heap_shared_vm). posix_spawn's child, cloned by glibc
 * internally, never reaches a hook before its exec. A child of fork()
 * without atfork handlers (_Fork) has memory of its own: what it records
 * stays there.
 */
static pid_t owner_pid; /* the process that records */

#if defined(__x86_64__)
int pa_heap_shared_vm; /* set by preload.c's vfork and clone */
#else
int pa_heap_shared_vm = 1; /* no vfork trampoline here: always ask */
#endif

static bool foreign_process(void)
{
	if (!__atomic_load_n(&pa_heap_shared_vm, __ATOMIC_RELAXED))
		return false;
	return getpid() != __atomic_load_n(&owner_pid, __ATOMIC_RELAXED);
}

/* The agent's state word (pa_agent.state, given to pa_heap_start): only
 * RUNNING records. Read on sampled paths only. */
static bool running(void)
{
	const int *st = __atomic_load_n(&pa_heap.state, __ATOMIC_ACQUIRE);
	return st &&
	       __atomic_load_n(st, __ATOMIC_RELAXED) == PA_STATE_RUNNING &&
	       pa_heap.ring;
}

static bool may_record(void)
{
	return running() && !pa_self.busy && !foreign_process();
}

/* Records a sampled block: a ring sample with the stack, and a live
 * entry. The entry goes in before the commit, so the agent thread finds
 * it when it assigns the stack; it even goes in before the reservation,
 * which keeps the (slow, cache-missing) table insert out of the window
 * between reserve and commit: a record can shrink to the stack it copied
 * only if no other reservation follows it meanwhile (ring.c). */
static void record_alloc(void *p, size_t n)
{
	pa_self.busy = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	double w = pa_heap_weight(n, pa_heap.rate_d);
	uint32_t seq = next_seq();
	struct pa_live *t = pa_heap.live;
	int live = 0;
	if (t) {
		struct pa_live_entry e = {
		    .addr = (uint64_t)(uintptr_t)p,
		    .size = n,
		    .weight = (uint64_t)(w + 0.5),
		    .seq = seq,
		    .stack = 0,
		};
		/* A full window is counted in the table. */
		live = pa_live_insert(t, &e) == 0;
	}
	struct pa_sample *s =
	    pa_ring_reserve_stack(pa_heap.ring, pa_unwind_stack_need());
	if (!s) {
		/* No sample will give the entry a stack: out again. */
		if (live)
			pa_live_remove(t, p, NULL);
		STAT_INC(ring_full_alloc);
		goto out;
	}
	s->kind = PA_SAMPLE_ALLOC;
	s->flags = 0;
	s->tid = pa_self.tid;
	s->values[0] = (int64_t)(w / (double)n + 0.5);
	s->values[1] = (int64_t)(w + 0.5);
	s->addr = (uint64_t)(uintptr_t)p;
	s->size = n;
	s->seq = seq;
	pa_unwind_capture_here(s);
	pa_ring_commit(pa_heap.ring, s);
out:
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	pa_self.busy = 0;
}

void *pa_heap_sampled(void *p, size_t n)
{
	int saved = errno;
	if (!p) {
		if (n)
			note_null();
		if (pa_self.alloc_countdown <= 0)
			next_countdown();
	} else if (pa_self.alloc_countdown <= 0) {
		if (next_countdown() && may_record())
			record_alloc(p, n);
	}
	errno = saved;
	return p;
}

void *pa_heap_malloc_crossed(size_t n)
{
	return pa_heap_sampled(
	    __atomic_load_n(&pa_heap.hot_malloc, __ATOMIC_RELAXED)(n), n);
}

/* Counts and maybe samples a block that one of the hooks below obtained. */
static inline void *account(void *p, size_t n)
{
	if (__builtin_expect(pa_heap_count(n) && p, 1))
		return p;
	return pa_heap_sampled(p, n);
}

/* ---- the rest of the malloc family --------------------------------------- */

void *pa_heap_realloc(void *old, size_t n)
{
	void *(*fn)(void *, size_t) = PA_HEAP_REAL(realloc);
	if (__builtin_expect(!fn || pa_heap_is_boot(old), 0)) {
		pa_heap_resolve();
		fn = PA_HEAP_REAL(realloc);
		if (!fn || pa_heap_is_boot(old)) {
			/* A pool block moves to the real allocator (or to
			 * another pool block); the pool never frees. */
			if (!old)
				return pa_heap_malloc(n);
			void *p = pa_heap_malloc(n);
			if (p) {
				size_t have =
				    pa_heap_is_boot(old) ? boot_size(old) : 0;
				memcpy(p, old, have < n ? have : n);
			}
			return p;
		}
	}
	struct pa_live_entry e;
	int had = 0;
	/* Out of the table before the real call (PITFALLS 8); back in if
	 * the call fails and the old block stays. */
	had = unlive(old, &e);
	/* The new block counts as a new allocation of n bytes (free, then
	 * malloc). Unsampled old block and no sample due: a tail call. */
	if (__builtin_expect(!had && pa_heap_count(n), 1))
		return fn(old, n);
	void *p = fn(old, n);
	/* realloc(p, 0) may free and return NULL: then the block is gone;
	 * any other NULL leaves it as it was. */
	if (!p && n && had)
		pa_live_insert(pa_heap.live, &e);
	if (!had) /* the countdown, charged above, crossed */
		return pa_heap_sampled(p, n);
	if (!p) {
		if (n) {
			int saved = errno;
			note_null();
			errno = saved;
		}
		return p;
	}
	return account(p, n);
}

void *pa_heap_reallocarray(void *old, size_t n, size_t m)
{
	size_t total;
	if (__builtin_mul_overflow(n, m, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	/* glibc's reallocarray calls realloc through the PLT, i.e. this
	 * hook: go to realloc once, here. */
	return pa_heap_realloc(old, total);
}

int pa_heap_posix_memalign(void **out, size_t align, size_t n)
{
	int (*fn)(void **, size_t, size_t) = PA_HEAP_REAL(posix_memalign);
	if (__builtin_expect(!fn, 0)) {
		pa_heap_resolve();
		fn = PA_HEAP_REAL(posix_memalign);
		if (!fn) {
			void *p = pa_heap_boot_alloc(n, align);
			if (!p)
				return ENOMEM;
			*out = p;
			return 0;
		}
	}
	int rc = fn(out, align, n);
	if (rc == 0)
		account(*out, n);
	else if (rc == ENOMEM && n)
		note_null();
	return rc;
}

/* aligned_alloc, memalign: (align, n). */
#define ALIGNED_HOOK(name)                                                     \
	void *pa_heap_##name(size_t align, size_t n)                           \
	{                                                                      \
		void *(*fn)(size_t, size_t) = PA_HEAP_REAL(name);              \
		if (__builtin_expect(!fn, 0)) {                                \
			pa_heap_resolve();                                     \
			fn = PA_HEAP_REAL(name);                               \
			if (!fn)                                               \
				return pa_heap_boot_alloc(n, align);           \
		}                                                              \
		if (__builtin_expect(pa_heap_count(n), 1))                     \
			return fn(align, n);                                   \
		return pa_heap_sampled(fn(align, n), n);                       \
	}

ALIGNED_HOOK(aligned_alloc)
ALIGNED_HOOK(memalign)

/* valloc, pvalloc: page-aligned (n). */
#define PAGE_HOOK(name)                                                        \
	void *pa_heap_##name(size_t n)                                         \
	{                                                                      \
		void *(*fn)(size_t) = PA_HEAP_REAL(name);                      \
		if (__builtin_expect(!fn, 0)) {                                \
			pa_heap_resolve();                                     \
			fn = PA_HEAP_REAL(name);                               \
			if (!fn)                                               \
				return pa_heap_boot_alloc(n, 4096);            \
		}                                                              \
		if (__builtin_expect(pa_heap_count(n), 1))                     \
			return fn(n);                                          \
		return pa_heap_sampled(fn(n), n);                              \
	}

PAGE_HOOK(valloc)
PAGE_HOOK(pvalloc)

/* The C23 sized frees, looked up when a program first calls one (it was
 * built against a libc that has them); until then, or if the next libc
 * lacks them, free is the next definition. */
static int sized_state; /* 0 not looked up, 1 under way, 2 done */

static void resolve_sized(void)
{
	if (__atomic_load_n(&sized_state, __ATOMIC_ACQUIRE) == 2)
		return;
	int expect = 0;
	if (!__atomic_compare_exchange_n(&sized_state, &expect, 1, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return;
	int saved = errno;
	RESOLVE(free_sized);
	RESOLVE(free_aligned_sized);
	errno = saved;
	__atomic_store_n(&sized_state, 2, __ATOMIC_RELEASE);
}

void pa_heap_free_sized(void *p, size_t n)
{
	resolve_sized();
	void (*fn)(void *, size_t) = PA_HEAP_REAL(free_sized);
	if (!fn || pa_heap_is_boot(p)) {
		pa_heap_free(p); /* glibc < 2.39: free is the next definition */
		return;
	}
	unlive(p, NULL);
	fn(p, n);
}

void pa_heap_free_aligned_sized(void *p, size_t align, size_t n)
{
	resolve_sized();
	void (*fn)(void *, size_t, size_t) = PA_HEAP_REAL(free_aligned_sized);
	if (!fn || pa_heap_is_boot(p)) {
		pa_heap_free(p);
		return;
	}
	unlive(p, NULL);
	fn(p, align, n);
}

/* ---- anonymous mappings -------------------------------------------------- */

/* Mappings made by the program itself, not by an allocator on its behalf
 * (by call site), not by agent code. */
static bool mmap_watched(const void *ra)
{
	if (pa_self.busy || pa_heap.rate <= 0 || !running())
		return false;
	uint64_t a = (uint64_t)(uintptr_t)ra;
	return !(a >= pa_heap.foreign_lo && a < pa_heap.foreign_hi) &&
	       !foreign_process();
}

static bool regions_exist(void)
{
	return __atomic_load_n(&pa_heap.regions, __ATOMIC_ACQUIRE) > 0;
}

void pa_heap_regions_add(int64_t delta)
{
	__atomic_add_fetch(&pa_heap.regions, delta, __ATOMIC_RELEASE);
}

/* An event slot reserved BEFORE the real call: the ring's reservation
 * order is the order the agent thread applies events in, so a range
 * unmapped here and mapped again by another thread right after is seen
 * in that order. */
static struct pa_sample *reserve_event(uint32_t kind, void *addr, size_t len)
{
	struct pa_sample *s = pa_ring_reserve_stack(pa_heap.ring, 0);
	if (!s) {
		STAT_INC(ring_full_unmap);
		return NULL;
	}
	s->kind = kind;
	s->flags = PA_SAMPLE_NO_STACK;
	s->tid = pa_self.tid;
	s->stack_len = 0;
	s->addr = (uint64_t)(uintptr_t)addr;
	s->size = len;
	s->seq = 0;
	s->values[0] = 0;
	s->values[1] = 0;
	return s;
}

static void commit_event(struct pa_sample *s, bool ok)
{
	if (!ok)
		s->flags |= PA_SAMPLE_FAILED;
	pa_ring_commit(pa_heap.ring, s);
}

/* A new anonymous mapping, reserved after the real mmap returned it. */
static void record_mmap(void *p, size_t len)
{
	pa_self.busy = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	struct pa_sample *s =
	    pa_ring_reserve_stack(pa_heap.ring, pa_unwind_stack_need());
	if (!s) {
		STAT_INC(ring_full_mmap);
		goto out;
	}
	s->kind = PA_SAMPLE_MMAP;
	s->flags = 0;
	s->tid = pa_self.tid;
	s->values[0] = 1;
	s->values[1] = (int64_t)len;
	s->addr = (uint64_t)(uintptr_t)p;
	s->size = len;
	s->seq = 0;
	pa_unwind_capture_here(s);
	/* Counted before the commit: the agent subtracts when it consumes. */
	pa_heap_regions_add(1);
	pa_ring_commit(pa_heap.ring, s);
out:
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	pa_self.busy = 0;
}

static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd,
		      off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

void *pa_heap_mmap(void *addr, size_t len, int prot, int flags, int fd,
		   off_t off, const void *ra, bool is64)
{
	void *(*fn)(void *, size_t, int, int, int, off_t) =
	    is64 ? PA_HEAP_REAL(mmap64) : PA_HEAP_REAL(mmap);
	if (__builtin_expect(!fn, 0)) {
		pa_heap_resolve();
		fn = is64 ? PA_HEAP_REAL(mmap64) : PA_HEAP_REAL(mmap);
		if (!fn)
			fn = raw_mmap; /* only while dlsym itself maps */
	}
	if (!mmap_watched(ra))
		return fn(addr, len, prot, flags, fd, off);
	/* PROT_NONE reservations (runtimes reserve huge ranges this way)
	 * are address space, not memory: not tracked. */
	bool track = (flags & MAP_ANONYMOUS) && prot != PROT_NONE;
	struct pa_sample *u = NULL;
	/* MAP_FIXED replaces what was there. A tracked mapping removes the
	 * overlap itself; anything else needs an unmap event. */
	if ((flags & MAP_FIXED) && !track && regions_exist())
		u = reserve_event(PA_SAMPLE_MUNMAP, addr, len);
	void *p = fn(addr, len, prot, flags, fd, off);
	int saved = errno;
	if (u)
		commit_event(u, p != MAP_FAILED);
	if (track && p != MAP_FAILED)
		record_mmap(p, len);
	errno = saved;
	return p;
}

int pa_heap_munmap(void *addr, size_t len, const void *ra)
{
	int (*fn)(void *, size_t) = PA_HEAP_REAL(munmap);
	if (__builtin_expect(!fn, 0)) {
		pa_heap_resolve();
		fn = PA_HEAP_REAL(munmap);
		if (!fn)
			return (int)syscall(SYS_munmap, addr, len);
	}
	if (!regions_exist() || !mmap_watched(ra))
		return fn(addr, len);
	struct pa_sample *u = reserve_event(PA_SAMPLE_MUNMAP, addr, len);
	int rc = fn(addr, len);
	int saved = errno;
	if (u)
		commit_event(u, rc == 0);
	errno = saved;
	return rc;
}

void *pa_heap_mremap(void *old, size_t old_len, size_t new_len, int flags,
		     void *new_addr, const void *ra)
{
	void *(*fn)(void *, size_t, size_t, int, ...) = PA_HEAP_REAL(mremap);
	if (__builtin_expect(!fn, 0)) {
		pa_heap_resolve();
		fn = PA_HEAP_REAL(mremap);
		if (!fn)
			return (void *)syscall(SYS_mremap, old, old_len,
					       new_len, flags, new_addr);
	}
	if (!regions_exist() || !mmap_watched(ra))
		return fn(old, old_len, new_len, flags, new_addr);
	struct pa_sample *u = reserve_event(PA_SAMPLE_MREMAP, old, old_len);
	void *p = fn(old, old_len, new_len, flags, new_addr);
	int saved = errno;
	if (u) {
		u->seq = (uint64_t)(unsigned)flags;
		u->values[0] = (int64_t)(uintptr_t)p;
		u->values[1] = (int64_t)new_len;
		commit_event(u, p != MAP_FAILED);
	}
	errno = saved;
	return p;
}

/* ---- lifecycle ----------------------------------------------------------- */

struct find_module {
	uint64_t addr;
	uint64_t lo, hi;
	int index, found;
};

static int find_module_cb(struct dl_phdr_info *info, size_t size, void *arg);

/* The load range of the module holding addr; index 0 is the executable. */
static struct find_module find_module(const void *addr)
{
	struct find_module f = {.addr = (uint64_t)(uintptr_t)addr};
	dl_iterate_phdr(find_module_cb, &f);
	return f;
}

static void *module_base(const void *addr)
{
	Dl_info info;
	return addr && dladdr(addr, &info) ? info.dli_fbase : NULL;
}

int pa_heap_start(const struct pa_config *cfg, struct pa_ring *ring,
		  const int *state)
{
	pa_heap_resolve();
	pa_heap.ring = ring;
	int64_t rate = cfg->alloc_rate > 0 ? cfg->alloc_rate : 0;
	pa_heap.rate = rate;
	pa_heap.rate_d = (double)rate;
	int rc = 0;
	if (rate > 0 && cfg->alloc_live && !pa_heap.live) {
		struct pa_live *t;
		rc = pa_live_new(&t, PA_LIVE_SLOTS);
		if (rc == 0) {
			pa_live_populate(t);
			pa_heap.live = t;
			publish_filter(t->filter);
		} else {
			pa_warn("no memory for the live-heap table (errno %d): "
				"inuse_* values off",
				-rc);
		}
	}
	/* Forwarding to an allocator .so (preloaded after us) rather than to
	 * libc's (the module that also has mmap): its mmap calls through
	 * the PLT are its own business. */
	void *m = (void *)PA_HEAP_REAL(malloc);
	if (m && module_base(m) != module_base((void *)PA_HEAP_REAL(mmap))) {
		struct find_module f = find_module(m);
		if (f.found && f.index > 0) {
			pa_heap.foreign_lo = f.lo;
			pa_heap.foreign_hi = f.hi;
		}
	}
	__atomic_store_n(&owner_pid, getpid(), __ATOMIC_RELAXED);
	__atomic_store_n(&pa_heap.state, state, __ATOMIC_RELEASE);
	__atomic_store_n(&pa_heap.configured, 1, __ATOMIC_RELEASE);
	return rc;
}

void pa_heap_atfork_child(struct pa_ring *ring)
{
	__atomic_store_n(&owner_pid, getpid(), __ATOMIC_RELAXED);
	pa_heap.ring = ring;
	struct pa_live *old = pa_heap.live;
	if (old) {
		struct pa_live *t = NULL;
		int rc = pa_live_new(&t, (unsigned)pa_live_nslots(old));
		/* The filter first: a free() from a signal handler on this
		 * thread meanwhile asks the new table, which is empty. */
		if (rc == 0) {
			publish_filter(t->filter);
		} else {
			publish_filter(pa_heap_boot_filter);
			pa_warn("no memory for the live-heap table in the "
				"forked child (errno %d): inuse_* values off",
				-rc);
		}
		pa_heap.live = t;
		pa_live_free(old);
	}
	/* The child's exporter starts with an empty region table. */
	__atomic_store_n(&pa_heap.regions, 0, __ATOMIC_RELEASE);
	memset(&pa_heap.stats, 0, sizeof(pa_heap.stats));
	__atomic_store_n(&pa_heap.null_seen, 0, __ATOMIC_RELAXED);
}

static int find_module_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	(void)size;
	struct find_module *f = arg;
	uint64_t lo = UINT64_MAX, hi = 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD)
			continue;
		uint64_t s = info->dlpi_addr + ph->p_vaddr;
		if (s < lo)
			lo = s;
		if (s + ph->p_memsz > hi)
			hi = s + ph->p_memsz;
	}
	if (f->addr >= lo && f->addr < hi) {
		f->lo = lo;
		f->hi = hi;
		f->found = 1;
		return 1;
	}
	f->index++;
	return 0;
}

/*
 * The malloc the program's calls bind to. dlsym(RTLD_DEFAULT) answers with
 * the executable's symbol first, and a non-PIE executable that takes
 * malloc's address has one without defining it: a canonical PLT entry
 * (SHN_UNDEF with a value), which jumps to whatever the first definition
 * in the search order is. Then that definition is looked up: the first
 * loaded object (preloads in order, then the libraries) whose own symbol
 * table defines malloc. NULL when it cannot tell.
 */
static void *bound_malloc(Dl_info *where)
{
	void *m = dlsym(RTLD_DEFAULT, "malloc");
	const ElfW(Sym) *sym = NULL;
	if (!m || !dladdr1(m, where, (void **)&sym, RTLD_DL_SYMENT))
		return NULL;
	if (!sym || sym->st_shndx != SHN_UNDEF)
		return m;
	for (struct link_map *l = _r_debug.r_map ? _r_debug.r_map->l_next
						 : NULL;
	     l; l = l->l_next) {
		if (!l->l_name || !l->l_name[0])
			continue;
		void *h = dlopen(l->l_name, RTLD_LAZY | RTLD_NOLOAD);
		if (!h)
			continue;
		/* dlsym on a handle searches its dependencies too: only a
		 * definition inside this very object counts. */
		void *d = dlsym(h, "malloc");
		dlclose(h);
		sym = NULL;
		if (d && dladdr1(d, where, (void **)&sym, RTLD_DL_SYMENT) &&
		    where->dli_fname &&
		    strcmp(where->dli_fname, l->l_name) == 0 && sym &&
		    sym->st_shndx != SHN_UNDEF)
			return d;
	}
	return NULL;
}

bool pa_heap_check_interposed(void)
{
	Dl_info self, other;
	void *m = bound_malloc(&other);
	if (!m || !dladdr((void *)pa_heap_check_interposed, &self))
		return true; /* cannot tell: assume the common case */
	if (self.dli_fbase == other.dli_fbase)
		return true;
	struct find_module f = find_module(m);
	if (f.found && f.index == 0) {
		pa_warn("%s defines its own malloc (a statically linked "
			"allocator): "
			"LD_PRELOAD cannot see its allocations, so the memory "
			"profile "
			"shows anonymous mappings only",
			program_invocation_short_name);
	} else {
		pa_warn(
		    "malloc comes from %s, loaded before the agent: heap "
		    "sampling "
		    "sees nothing; list libpyroagent.so first in LD_PRELOAD",
		    other.dli_fname ? other.dli_fname : "another library");
		/* That allocator's own mmap calls reach our mmap through its
		 * PLT with no malloc hook around them: not the program's. */
		if (f.found) {
			pa_heap.foreign_lo = f.lo;
			pa_heap.foreign_hi = f.hi;
		}
	}
	return false;
}

bool pa_heap_take_null(void)
{
	if (!__atomic_load_n(&pa_heap.null_seen, __ATOMIC_RELAXED))
		return false;
	return __atomic_exchange_n(&pa_heap.null_seen, 0, __ATOMIC_RELAXED) !=
	       0;
}
