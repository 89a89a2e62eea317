/* Lock-free bounded MPSC queue of raw samples (hot path: producers are
 * signal handlers and allocation hooks; the consumer is the agent thread). */
#ifndef PA_RING_H
#define PA_RING_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of stack copied per sample, starting at the interrupted sp. */
#define PA_STACK_COPY 16384
/* Register slots, indexed by libunwind's UNW_X86_64_* / UNW_AARCH64_*
 * numbers (x86_64: RAX..R15 = 0..15, RIP = 16; aarch64: PC = 32). Every
 * sample carries them: no more than the architecture has. */
#if defined(__x86_64__)
#define PA_NREGS 17
#else
#define PA_NREGS 34
#endif

enum pa_sample_kind {
	PA_SAMPLE_CPU = 1, /* values: [0] samples, [1] cpu ns */
	PA_SAMPLE_ALLOC =
	    2,		    /* values: [0] objects (rounded: exact is [1]/size),
			     * [1] bytes (unbiased weight); addr/size/seq set */
	PA_SAMPLE_MMAP = 3, /* values: [0] 1, [1] length; exact, not sampled */
	/* Events without a stack (never unwound): reserved before the real
	 * call and committed after it, so they keep the kernel's order. */
	PA_SAMPLE_MUNMAP = 4, /* addr/size: the range unmapped (also a MAP_FIXED
			       * mapping that replaces whatever was there) */
	PA_SAMPLE_MREMAP = 5, /* addr/size: old range; values: [0] new address,
			       * [1] new length; seq: the mremap flags */
};

enum pa_sample_flags {
	PA_SAMPLE_LEAF_EXACT =
	    1, /* regs.ip is the interrupted instruction (signal) */
	PA_SAMPLE_NO_STACK = 2, /* capture failed: only regs.ip is known */
	PA_SAMPLE_FAILED =
	    4, /* MUNMAP/MREMAP: the call failed, nothing changed */
};

struct pa_sample {
	uint32_t kind;
	uint32_t flags;
	uint32_t tid;
	uint32_t stack_len; /* valid bytes in stack[] */
	/* Room in stack[] (set by the ring at reservation; 0 in a sample
	 * that is not from a ring: all of PA_STACK_COPY). */
	uint32_t stack_cap;
	uint32_t pad_;
	int64_t values[2];
	uint64_t addr; /* ALLOC/MMAP: the block */
	uint64_t size; /* ALLOC/MMAP: requested bytes */
	uint64_t seq;  /* ALLOC: id matching the live table entry */
	uint64_t regs[PA_NREGS];
	uint64_t stack_start; /* address that stack[0] was copied from */
	uint8_t stack[PA_STACK_COPY];
};

struct pa_ring;

/* Maps nslots (rounded up to a power of two) samples with mmap. Owns the
 * memory; pa_ring_free releases it. Not for signal context. */
int pa_ring_new(struct pa_ring **out, unsigned nslots);
void pa_ring_free(struct pa_ring *r);
/* Maps now the first bytes, which producers reuse lap after lap while the
 * consumer keeps up (ring.c, Rewind): their page faults are taken here
 * instead of in the threads being profiled. Returns 0, or -errno where
 * the kernel cannot (before Linux 5.14: mapped on first use then). */
int pa_ring_warm(struct pa_ring *r);

/* Producer side, async-signal-safe and lock-free, any thread, re-entrant
 * (a signal may interrupt a reserve/commit pair on the same thread).
 * Returns NULL when full; the drop is counted. */
struct pa_sample *pa_ring_reserve(struct pa_ring *r);
/* The same for a sample with at most stack_max bytes of stack (capped at
 * PA_STACK_COPY): a producer that knows its stack copy's length reserves
 * just that, and its commit touches nothing shared. */
struct pa_sample *pa_ring_reserve_stack(struct pa_ring *r, uint32_t stack_max);
void pa_ring_commit(struct pa_ring *r, struct pa_sample *s);

/* Consumer side, one thread only: the next committed sample in order, or
 * NULL if none is ready; pa_ring_release hands its slot back. */
struct pa_sample *pa_ring_next(struct pa_ring *r);
void pa_ring_release(struct pa_ring *r, struct pa_sample *s);

uint64_t pa_ring_dropped(const struct pa_ring *r);
/* Consumer: the highest byte offset of the ring ever handed back, i.e. how
 * much of it records have used (the rest was never touched). */
uint64_t pa_ring_touched(const struct pa_ring *r);

#endif
