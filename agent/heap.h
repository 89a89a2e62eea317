/* Heap sampling, the core behind preload.c's allocation surface: real
 * functions resolved once (RTLD_NEXT), the bootstrap pool, the per-thread
 * byte countdown, per-sample weights, live-table upkeep, and anonymous
 * mmap events. Hot path: no locks, no malloc, no stdio, errno kept. */
#ifndef PA_HEAP_H
#define PA_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "live.h"
#include "ring.h"
#include "thread.h"

#define PA_HIDDEN __attribute__((visibility("hidden")))

/* The next definitions of everything we interpose. free_sized and
 * free_aligned_sized are NULL where libc lacks them (glibc < 2.39). */
struct pa_heap_real {
	void *(*malloc)(size_t);
	void (*free)(void *);
	void *(*calloc)(size_t, size_t);
	void *(*realloc)(void *, size_t);
	void *(*reallocarray)(void *, size_t, size_t);
	int (*posix_memalign)(void **, size_t, size_t);
	void *(*aligned_alloc)(size_t, size_t);
	void *(*memalign)(size_t, size_t);
	void *(*valloc)(size_t);
	void *(*pvalloc)(size_t);
	void (*free_sized)(void *, size_t);
	void (*free_aligned_sized)(void *, size_t, size_t);
	void *(*mmap)(void *, size_t, int, int, int, off_t);
	void *(*mmap64)(void *, size_t, int, int, int, off_t);
	int (*munmap)(void *, size_t);
	void *(*mremap)(void *, size_t, size_t, int, ...);
};

/* Counted on the hot path (relaxed atomics, only on rare paths), reported
 * in the memory profile's comment. */
struct pa_heap_stats {
	/* Sampled allocations lost: the sample buffer was full. */
	uint64_t ring_full_alloc;
	/* mmap events lost (the mapping is not tracked). */
	uint64_t ring_full_mmap;
	/* munmap/mremap events lost (live mmap bytes are overstated). */
	uint64_t ring_full_unmap;
	uint64_t boot_allocs;	 /* served by the bootstrap pool */
	uint64_t boot_exhausted; /* bootstrap pool full: NULL returned */
	uint64_t null_returns;	 /* allocations that returned NULL */
};

/* The prefilter free() reads: always PA_HEAP_FILTER_SIZE counters (the
 * live table's, or pa_heap_boot_filter while there is none), so that its
 * mask is a constant in the hook. */
#define PA_HEAP_FILTER_SIZE (PA_LIVE_SLOTS * PA_LIVE_FILTER_PER_SLOT)

struct pa_heap {
	/* The first cache line holds all that malloc and free read: the
	 * prefilter, which says "maybe" for live sampled blocks and for the
	 * bootstrap pool's blocks (never NULL), the functions the two hooks
	 * forward to (a stub that resolves, then the real one), and the rest
	 * of the real functions. */
	const uint8_t *filter;
	void *(*hot_malloc)(size_t);
	void (*hot_free)(void *);
	struct pa_heap_real real;
	struct pa_live *live;
	struct pa_ring *ring; /* where samples and mapping events go */
	/* The agent's state (enum pa_state): records only while RUNNING. */
	const int *state;
	int64_t rate; /* mean bytes between samples; 0 = off */
	double rate_d;
	int configured; /* pa_heap_start ran: countdowns are real draws */
	/* Tracked anonymous regions (in the agent's table or in flight):
	 * munmap/mremap send events only while this is > 0. */
	int64_t regions;
	int null_seen; /* an allocation returned NULL since the last look */
	/* The code of an allocator that is not libc's: the one we forward to
	 * (an allocator .so preloaded after us), or the one the program calls
	 * instead of us (preloaded before us). Its own mmap calls reach our
	 * mmap through its PLT; they are allocator internals, not the
	 * program's mappings, and would count its blocks twice (PITFALLS 7). */
	uint64_t foreign_lo, foreign_hi;
	struct pa_heap_stats stats;
	/* Sample ids handed out (threads take them in batches): a cache
	 * line of its own, away from what the hooks read. */
	uint32_t seq __attribute__((aligned(64)));
} __attribute__((aligned(64)));

extern struct pa_heap pa_heap PA_HIDDEN;

/* The bootstrap pool: serves allocations while dlsym resolves the real
 * functions (dlsym itself allocates). Never passed to the real free. */
#define PA_HEAP_BOOT_SIZE (64 * 1024)
extern unsigned char pa_heap_boot[PA_HEAP_BOOT_SIZE] PA_HIDDEN;

static inline bool pa_heap_is_boot(const void *p)
{
	return (uintptr_t)p - (uintptr_t)pa_heap_boot < PA_HEAP_BOOT_SIZE;
}

/* The prefilter while there is no live table (PYROSCOPE_ALLOC_LIVE=false,
 * allocation profiling off, before the agent starts): all zero but for
 * the bootstrap pool's blocks, which every prefilter marks "maybe" for
 * good. Untouched pages cost no memory. */
extern uint8_t pa_heap_boot_filter[PA_HEAP_FILTER_SIZE] PA_HIDDEN;

/* ---- lifecycle (not hot path) -------------------------------------------- */

/* Resolves every real function with dlsym(RTLD_NEXT), once. Called by the
 * first hook that finds its pointer unset; allocations made meanwhile
 * (by dlsym) come from the bootstrap pool. Safe from any thread. */
void pa_heap_resolve(void);

/* From the load-time constructor, before the agent runs: applies
 * PYROSCOPE_PROFILER_ALLOC / PYROSCOPE_ALLOC_LIVE, maps the live table,
 * and from then on records into ring while *state is PA_STATE_RUNNING
 * (the agent's state word: fork, exit and disable flip it). Taking them
 * as arguments keeps heap.c free of agent.c, so unit tests link it. */
int pa_heap_start(const struct pa_config *cfg, struct pa_ring *ring,
		  const int *state);

/* After fork, in the child (only the calling thread exists), when the
 * child profiles itself: samples go to ring (a fresh one), the live table
 * is replaced by an empty one (the old entries carry stack ids of the
 * parent's exporter; a parent thread may have left one half written) and
 * the region count and counters start from zero. Also makes this process
 * the one that records: a vfork()/posix_spawn() child, which shares the
 * memory but runs no atfork handler, records nothing. */
void pa_heap_atfork_child(struct pa_ring *ring);

/* Nonzero once the process may have a child that shares its memory
 * without having run the atfork handlers: vfork(), clone(CLONE_VM) without
 * CLONE_THREAD (preload.c sets it just before). Only then do sampled paths
 * ask getpid() whether this is still the recording process: a system call
 * costs a microsecond or more on some VMs, and the allocation worst case
 * samples a hundred thousand times a second. */
extern int pa_heap_shared_vm PA_HIDDEN;
static inline void pa_heap_note_shared_vm(void)
{
	__atomic_store_n(&pa_heap_shared_vm, 1, __ATOMIC_RELAXED);
}

/* Logs one line if malloc is not ours (PITFALLS 7): an executable with its
 * own static allocator, or an allocator preloaded before the agent. Returns
 * true when our malloc is the one the program calls. */
bool pa_heap_check_interposed(void);

/* Agent thread: true (once) if an allocation returned NULL since the last
 * call. */
bool pa_heap_take_null(void);

/* Agent thread: the region count changed by delta in its table (see
 * pa_heap.regions). */
void pa_heap_regions_add(int64_t delta);

/* ---- sampling arithmetic (exposed for tests) ----------------------------- */

/* An exponential draw with mean rate (bytes), from a xorshift state. */
int64_t pa_heap_draw(uint64_t *rng, double rate);
/* The unbiased weight of a sampled allocation of n bytes: the bytes it
 * stands for, n / (1 - e^(-n/rate)); objects = weight / n. */
double pa_heap_weight(size_t n, double rate);

/* ---- hooks: slow paths (heap.c) ------------------------------------------ */

/* The first call of each hook (or any call while dlsym runs): resolves,
 * then forwards, or serves from the bootstrap pool. */
void *pa_heap_boot_alloc(size_t n, size_t align);
void *pa_heap_boot_malloc(size_t n);
void *pa_heap_boot_calloc(size_t n, size_t m);
void *pa_heap_sampled(void *p, size_t n);
/* malloc once its countdown crossed (it was charged): the real call, then
 * maybe a sample. */
void *pa_heap_malloc_crossed(size_t n);
void pa_heap_free_slow(void *p);
void pa_heap_free_maybe(void *p);

void *pa_heap_realloc(void *old, size_t n);
void *pa_heap_reallocarray(void *old, size_t n, size_t m);
int pa_heap_posix_memalign(void **out, size_t align, size_t n);
void *pa_heap_aligned_alloc(size_t align, size_t n);
void *pa_heap_memalign(size_t align, size_t n);
void *pa_heap_valloc(size_t n);
void *pa_heap_pvalloc(size_t n);
void pa_heap_free_sized(void *p, size_t n);
void pa_heap_free_aligned_sized(void *p, size_t align, size_t n);

/* ra: the hook's return address (the mmap call site), to recognise a
 * foreign allocator's own mappings. is64: the mmap64 entry point. */
void *pa_heap_mmap(void *addr, size_t len, int prot, int flags, int fd,
		   off_t off, const void *ra, bool is64);
int pa_heap_munmap(void *addr, size_t len, const void *ra);
void *pa_heap_mremap(void *old, size_t old_len, size_t new_len, int flags,
		     void *new_addr, const void *ra);

/* ---- hooks: fast paths, inlined into preload.c --------------------------- */

#define PA_HEAP_REAL(fn) __atomic_load_n(&pa_heap.real.fn, __ATOMIC_RELAXED)

/* The fast paths end in a tail call to the real function: no frame, no
 * work after it. So a NULL return is seen only on the sampled path, which
 * every allocation at least as large as the countdown takes (large
 * failing requests: almost always) and repeated small failures reach
 * statistically (they still count down). */

/* Counts n bytes against this thread's countdown: true while no sample is
 * due. Unsigned arithmetic: a huge n wraps instead of overflowing. */
static inline bool pa_heap_count(size_t n)
{
	int64_t c = (int64_t)((uint64_t)pa_self.alloc_countdown - (uint64_t)n);
	pa_self.alloc_countdown = c;
	return c > 0;
}

/* malloc and free are the hooks a program calls most: a few instructions
 * each, no test for "not resolved yet" (hot_malloc and hot_free are stubs
 * that resolve until then) nor for the bootstrap pool (its blocks are
 * "maybe" in every prefilter). On x86_64 the exported malloc and free are
 * these two in assembly (preload.c), with a patched direct tail jump;
 * a change here goes there too. */
static inline void *pa_heap_malloc(size_t n)
{
	void *(*fn)(size_t) =
	    __atomic_load_n(&pa_heap.hot_malloc, __ATOMIC_RELAXED);
	if (__builtin_expect(pa_heap_count(n), 1))
		return fn(n);
	return pa_heap_malloc_crossed(n);
}

static inline void *pa_heap_calloc(size_t n, size_t m)
{
	void *(*fn)(size_t, size_t) = PA_HEAP_REAL(calloc);
	if (__builtin_expect(!fn, 0))
		return pa_heap_boot_calloc(n, m);
	size_t total;
	if (__builtin_mul_overflow(n, m, &total))
		total = 0; /* the real calloc fails it with ENOMEM */
	if (__builtin_expect(pa_heap_count(total), 1))
		return fn(n, m);
	return pa_heap_sampled(fn(n, m), total);
}

/* Hot path (free, realloc): false means the block is certainly neither in
 * the live table nor from the bootstrap pool. One relaxed load. (NULL may
 * say maybe: the table never holds it.) */
static inline bool pa_heap_maybe_live(const void *p)
{
	/* Acquire (a plain load on x86): the table is set up before. */
	const uint8_t *f = __atomic_load_n(&pa_heap.filter, __ATOMIC_ACQUIRE);
	return __atomic_load_n(
		   &f[pa_live_filter_slot(p, PA_HEAP_FILTER_SIZE - 1)],
		   __ATOMIC_RELAXED) != 0;
}

static inline void pa_heap_free(void *p)
{
	void (*fn)(void *) =
	    __atomic_load_n(&pa_heap.hot_free, __ATOMIC_RELAXED);
	/* A sampled block leaves the live table before the real free (in
	 * the slow path): once freed, the address may be handed out, and
	 * sampled, again on another thread (PITFALLS 8). */
	if (__builtin_expect(pa_heap_maybe_live(p), 0)) {
		pa_heap_free_maybe(p);
		return;
	}
	fn(p);
}

#endif
