/* Lock-free bounded MPSC queue of raw samples: variable-length records in a
 * byte ring (a sample takes only the stack bytes it copied), producers in
 * signal handlers and hooks, one consumer (the agent thread). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include "ring.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define CACHELINE 64
/* Hard cap: 8192 full-size records are ~137 MiB of address space. */
#define MAX_SLOTS 8192u

/*
 * Layout. The ring is `size` bytes; a position is a byte count since the
 * start (64 bits: it never wraps), its offset is pos % size. A record
 * starts at a 64-byte boundary with a header, then the sample; it never
 * straddles the end: a producer that would cross it reserves the tail as
 * a padding record first.
 *
 * A producer that knows how much stack it will copy (an allocation hook,
 * on its own thread's stack) reserves just that (pa_ring_reserve_stack)
 * and commits with one store: the reservation's compare-and-swap on enq
 * is the only write to a shared line. One that does not (a signal handler
 * that may be on an alternate stack) reserves a full sample: at commit
 * the record shrinks to the bytes actually used, if nothing was reserved
 * behind it meanwhile (the usual case: a compare-and-swap moves the
 * reservation end back); otherwise it keeps its full length. A heap
 * sample with 1 KiB of stack takes 1.4 KiB either way, not 16.7 KiB.
 *
 * Commit protocol. Free space reads as zero at every 64-byte boundary:
 * the mapping starts zeroed and the consumer, before it hands a record's
 * bytes back, zeroes its words at 64-byte boundaries. A producer commits
 * by storing the record's length into its header word (release); the
 * consumer reads the header at its position (acquire): zero means "not
 * committed yet" (reserved or free), and it waits there, so order is kept
 * and a record is never read while its producer may still write it. A
 * producer cannot be stuck between reserve and commit in practice (the
 * code there is bounded and never blocks); if its thread is stopped (a
 * debugger holding one thread), the ring fills and new samples are
 * dropped and counted until it runs again.
 *
 * Rewind. A ring that cycled through all its bytes would keep every page
 * resident and every record cold in the caches, though the consumer
 * usually keeps up within a few hundred KiB. So when the consumer finds
 * the ring empty past REWIND_AT, it moves the reservation end (by a CAS
 * on enq that fails if a producer reserved meanwhile) and then deq to the
 * start of the next lap: the bytes skipped are free space, zeroed, and
 * nobody reserved them. Producers come back to the first pages, warm in
 * the caches, and the pages past REWIND_AT are touched only by a burst
 * that outran the consumer.
 */
struct rec {
	uint64_t hdr; /* 0 until committed; then length | REC_PAD */
	uint64_t end; /* producer's: the position its reservation ends at */
	uint64_t len; /* producer's: the length it reserved */
	struct pa_sample s;
};

#define REC_PAD	       (1ULL << 62)
#define REC_LEN	       0xffffffffULL
#define REC_HEAD       offsetof(struct rec, s)
#define ALIGN_UP(v, a) (((v) + (a)-1) & ~((uint64_t)(a)-1))
/* A record with room for n bytes of stack copy. */
#define REC_LEN_FOR(n)                                                         \
	ALIGN_UP(REC_HEAD + offsetof(struct pa_sample, stack) + (n), CACHELINE)
/* A full-size record. */
#define REC_FULL ALIGN_UP(sizeof(struct rec), CACHELINE)
/* A commit gives back the unused end of its record when it is at least
 * this long (a full reservation whose copy was short). */
#define SHRINK_MIN 1024
/* Rewind point: 16 full records in, or half the ring if less (never less
 * than one record). */
#define REWIND_AT (16 * REC_FULL)

struct pa_ring {
	/* Written once by pa_ring_new. */
	uint64_t size; /* bytes of data, a multiple of REC_FULL */
	size_t map_len;
	uint8_t *data;
	/* Producers' reservation end, contended by CAS: its own line. */
	uint64_t enq __attribute__((aligned(CACHELINE)));
	/* Consumer's position: written by the agent thread only (release,
	 * after zeroing what it hands back), read by producers. */
	uint64_t deq __attribute__((aligned(CACHELINE)));
	uint64_t touched; /* consumer's: the highest offset handed back */
	uint64_t dropped __attribute__((aligned(CACHELINE)));
};

/*
 * Room for nslots full-size samples (nslots rounded up to a power of two);
 * samples with a short stack copy take less. One anonymous mapping holds
 * the header and the data, so no path of the ring ever calls malloc. The
 * data is not touched here: pages are faulted in as producers fill them.
 */
int pa_ring_new(struct pa_ring **out, unsigned nslots)
{
	if (!out || nslots == 0 || nslots > MAX_SLOTS)
		return -EINVAL;
	unsigned n = 1;
	while (n < nslots)
		n <<= 1;
	size_t data_off = ALIGN_UP(sizeof(struct pa_ring), 4096);
	uint64_t size = (uint64_t)n * REC_FULL;
	size_t len = ALIGN_UP(data_off + size, 4096);
	void *map = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED)
		return -ENOMEM;
	struct pa_ring *r = map;
	r->size = size;
	r->map_len = len;
	r->data = (uint8_t *)map + data_off;
	r->enq = 0;
	r->deq = 0;
	r->touched = 0;
	r->dropped = 0;
	/* Producers on other threads see the ring through whatever publishes
	 * *out (the agent's state, stored after it). */
	*out = r;
	return 0;
}

/* Where the consumer rewinds: REWIND_AT, or half the ring if less. */
static uint64_t rewind_at(const struct pa_ring *r)
{
	return r->size / 2 < REWIND_AT ? r->size / 2 : REWIND_AT;
}

int pa_ring_warm(struct pa_ring *r)
{
	if (!r)
		return -EINVAL;
	/* A record may start just before the rewind point. */
	uint64_t len = rewind_at(r) + REC_FULL;
	if (len > r->size)
		len = r->size;
	int saved = errno;
	int rc = madvise(r->data, len, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
	errno = saved;
	return rc;
}

void pa_ring_free(struct pa_ring *r)
{
	if (r)
		munmap(r, r->map_len);
}

static uint64_t *hdr_at(const struct pa_ring *r, uint64_t off)
{
	return (uint64_t *)(void *)(r->data + off);
}

/* The record of a sample handed out by this ring, or NULL. */
static struct rec *rec_of(const struct pa_ring *r, const struct pa_sample *s)
{
	uintptr_t base = (uintptr_t)r->data, p = (uintptr_t)s;
	if (p < base + REC_HEAD)
		return NULL;
	uintptr_t off = p - REC_HEAD - base;
	if (off % CACHELINE != 0 || off > r->size - REC_LEN_FOR(0))
		return NULL;
	return (struct rec *)(void *)(r->data + off);
}

/*
 * Hot path: signal handlers and allocation hooks. Lock-free: a producer
 * interrupted between its load and its CAS (even by a signal handler on the
 * same thread that reserves and commits) only retries. No malloc, no
 * syscalls, errno untouched.
 */
struct pa_sample *pa_ring_reserve(struct pa_ring *r)
{
	return pa_ring_reserve_stack(r, PA_STACK_COPY);
}

struct pa_sample *pa_ring_reserve_stack(struct pa_ring *r, uint32_t stack_max)
{
	if (!r)
		return NULL;
	if (stack_max > PA_STACK_COPY)
		stack_max = PA_STACK_COPY;
	const uint64_t size = r->size, len = REC_LEN_FOR(stack_max);
	uint64_t pos = __atomic_load_n(&r->enq, __ATOMIC_RELAXED);
	uint64_t pad;
	for (;;) {
		/* Acquire: the consumer zeroed what it handed back before
		 * publishing deq. */
		uint64_t deq = __atomic_load_n(&r->deq, __ATOMIC_ACQUIRE);
		if (deq > pos) {
			/* pos is stale: the ring moved on meanwhile. */
			pos = __atomic_load_n(&r->enq, __ATOMIC_RELAXED);
			continue;
		}
		uint64_t off = pos % size;
		pad = size - off < len ? size - off : 0;
		if (pos + pad + len - deq > size) {
			__atomic_add_fetch(&r->dropped, 1, __ATOMIC_RELAXED);
			return NULL;
		}
		/* On failure the CAS reloads pos. */
		if (__atomic_compare_exchange_n(&r->enq, &pos, pos + pad + len,
						true, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			break;
	}
	if (pad)
		/* The tail is a record of its own, committed at once. */
		__atomic_store_n(hdr_at(r, pos % size), pad | REC_PAD,
				 __ATOMIC_RELEASE);
	pos += pad;
	struct rec *rec = (struct rec *)(void *)(r->data + pos % size);
	/* rec->hdr is still zero: free space is. */
	rec->end = pos + len;
	rec->len = len;
	rec->s.stack_cap = stack_max;
	return &rec->s;
}

/* Hot path. The reserving producer alone owns the record until the header
 * store. */
void pa_ring_commit(struct pa_ring *r, struct pa_sample *s)
{
	if (!r)
		return;
	struct rec *rec = rec_of(r, s);
	if (!rec)
		return;
	/* The length reserved, whatever the sample says: a stack_len past
	 * it only means no shrinking. */
	uint64_t end = rec->end, len = rec->len;
	uint64_t used = REC_LEN_FOR((uint64_t)s->stack_len);
	/* Nothing written past `used`: the rest is still zeroed free space
	 * and can go back if no reservation follows this one. */
	uint64_t expect = end;
	if (end && used + SHRINK_MIN <= len &&
	    __atomic_compare_exchange_n(&r->enq, &expect, end - len + used,
					false, __ATOMIC_RELAXED,
					__ATOMIC_RELAXED))
		len = used;
	rec->end = 0; /* a second commit can no longer shrink anything */
	__atomic_store_n(&rec->hdr, len, __ATOMIC_RELEASE);
}

/* Consumer: hands [off, off + len) back, zeroed at 64-byte boundaries. */
static void hand_back(struct pa_ring *r, uint64_t off, uint64_t len)
{
	for (uint64_t o = off; o < off + len; o += CACHELINE)
		*hdr_at(r, o) = 0;
	if (off + len > r->touched)
		r->touched = off + len;
	__atomic_store_n(&r->deq, r->deq + len, __ATOMIC_RELEASE);
}

/* Consumer, the ring found empty at offset off: back to the first bytes
 * (see Rewind above). Past the rewind point, off >= REC_FULL: a producer
 * that reserves at the new lap's start while deq is still the old one
 * finds room (the full check then sees size - off + REC_FULL <= size). */
static void rewind_if_far(struct pa_ring *r, uint64_t off)
{
	if (off < rewind_at(r) || off < REC_FULL)
		return;
	uint64_t deq = r->deq, to = deq + (r->size - off);
	if (!__atomic_compare_exchange_n(&r->enq, &deq, to, false,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		return; /* not empty any more: a producer reserved at deq */
	__atomic_store_n(&r->deq, to, __ATOMIC_RELEASE);
}

/*
 * Consumer, in reservation order. Behind a record that was reserved but not
 * committed yet the consumer waits (returns NULL) even if later ones are
 * committed. Returns the same sample again until it is released.
 */
struct pa_sample *pa_ring_next(struct pa_ring *r)
{
	if (!r)
		return NULL;
	for (;;) {
		uint64_t off = r->deq % r->size;
		uint64_t h = __atomic_load_n(hdr_at(r, off), __ATOMIC_ACQUIRE);
		if (!h) {
			rewind_if_far(r, off);
			return NULL;
		}
		if (h & REC_PAD) {
			hand_back(r, off, h & REC_LEN);
			continue;
		}
		return &((struct rec *)(void *)(r->data + off))->s;
	}
}

/* Consumer: hands the head record back to the producers. A sample that is
 * not the current head is ignored. */
void pa_ring_release(struct pa_ring *r, struct pa_sample *s)
{
	if (!r)
		return;
	struct rec *rec = rec_of(r, s);
	uint64_t off = r->deq % r->size;
	if (!rec || (uint8_t *)rec != r->data + off)
		return;
	uint64_t h = __atomic_load_n(&rec->hdr, __ATOMIC_RELAXED);
	if (!h || (h & REC_PAD))
		return;
	hand_back(r, off, h & REC_LEN);
}

uint64_t pa_ring_touched(const struct pa_ring *r)
{
	return r ? r->touched : 0;
}

uint64_t pa_ring_dropped(const struct pa_ring *r)
{
	return r ? __atomic_load_n(&r->dropped, __ATOMIC_RELAXED) : 0;
}
