/* Lock-free bounded MPSC queue of raw samples: Vyukov's bounded queue with a
 * sequence number per slot, producers in signal handlers and hooks, one
 * consumer (the agent thread). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include "ring.h"

#define CACHELINE 64
/* Hard cap: 8192 slots are ~137 MiB of address space (16.4 KiB each). */
#define MAX_SLOTS 8192u

/*
 * Slot protocol, for the slot of position pos (index pos & mask):
 *   seq == pos        free: the producer that wins the CAS on enq for pos
 *                     owns it;
 *   seq == pos + 1    committed: the consumer at deq == pos may read it;
 *   seq == pos + n    released: free for the producer of pos + n.
 * A producer that reserved and has not committed yet leaves seq == pos; the
 * consumer stops in front of it (see pa_ring_next).
 */
struct seq_cell {
	uint64_t seq;
	uint8_t pad[CACHELINE - sizeof(uint64_t)];
};

struct pa_ring {
	/* Written once by pa_ring_new. */
	uint64_t mask;
	size_t map_len;
	struct seq_cell *seqs;
	struct pa_sample *samples;
	/* Producers' position, contended by CAS: its own cache line. */
	uint64_t enq __attribute__((aligned(CACHELINE)));
	/* Consumer's position: only the agent thread touches it. */
	uint64_t deq __attribute__((aligned(CACHELINE)));
	uint64_t dropped __attribute__((aligned(CACHELINE)));
};

static size_t align_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/*
 * One anonymous mapping holds the header, the sequence cells and the
 * samples, so no path of the ring ever calls malloc. The samples are not
 * touched here: pages are faulted in only as producers fill slots.
 */
int pa_ring_new(struct pa_ring **out, unsigned nslots)
{
	if (!out || nslots == 0 || nslots > MAX_SLOTS)
		return -EINVAL;
	unsigned n = 1;
	while (n < nslots)
		n <<= 1;
	size_t seq_off = align_up(sizeof(struct pa_ring), CACHELINE);
	size_t sample_off =
	    align_up(seq_off + (size_t)n * sizeof(struct seq_cell), 4096);
	size_t len =
	    align_up(sample_off + (size_t)n * sizeof(struct pa_sample), 4096);
	void *map = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED)
		return -ENOMEM;
	struct pa_ring *r = map;
	r->mask = n - 1;
	r->map_len = len;
	r->seqs = (struct seq_cell *)((char *)map + seq_off);
	r->samples = (struct pa_sample *)((char *)map + sample_off);
	for (unsigned i = 0; i < n; i++)
		r->seqs[i].seq = i;
	r->enq = 0;
	r->deq = 0;
	r->dropped = 0;
	/* Producers on other threads see the ring through whatever publishes
	 * *out (the agent's state, stored after it). */
	*out = r;
	return 0;
}

void pa_ring_free(struct pa_ring *r)
{
	if (r)
		munmap(r, r->map_len);
}

/* The slot index of a sample handed out by this ring, or -1. */
static long slot_of(const struct pa_ring *r, const struct pa_sample *s)
{
	uintptr_t base = (uintptr_t)r->samples, p = (uintptr_t)s;
	if (p < base)
		return -1;
	uintptr_t off = p - base;
	if (off % sizeof(struct pa_sample) != 0 ||
	    off / sizeof(struct pa_sample) > r->mask)
		return -1;
	return (long)(off / sizeof(struct pa_sample));
}

/*
 * Hot path: signal handlers and allocation hooks. Lock-free: a producer
 * interrupted between its load and its CAS (even by a signal handler on the
 * same thread that reserves and commits) only retries. No malloc, no
 * syscalls, errno untouched.
 */
struct pa_sample *pa_ring_reserve(struct pa_ring *r)
{
	if (!r)
		return NULL;
	uint64_t pos = __atomic_load_n(&r->enq, __ATOMIC_RELAXED);
	for (;;) {
		struct seq_cell *c = &r->seqs[pos & r->mask];
		uint64_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
		int64_t diff = (int64_t)(seq - pos);
		if (diff == 0) {
			/* On failure the CAS reloads pos. */
			if (__atomic_compare_exchange_n(&r->enq, &pos, pos + 1,
							true, __ATOMIC_RELAXED,
							__ATOMIC_RELAXED))
				return &r->samples[pos & r->mask];
		} else if (diff < 0) {
			/* The slot still holds the sample of one lap ago:
			 * full. */
			__atomic_add_fetch(&r->dropped, 1, __ATOMIC_RELAXED);
			return NULL;
		} else {
			/* Another producer took pos meanwhile. */
			pos = __atomic_load_n(&r->enq, __ATOMIC_RELAXED);
		}
	}
}

/* Hot path. The reserving producer alone owns the slot until this store,
 * so its sequence number is still the position it reserved. */
void pa_ring_commit(struct pa_ring *r, struct pa_sample *s)
{
	if (!r)
		return;
	long i = slot_of(r, s);
	if (i < 0)
		return;
	struct seq_cell *c = &r->seqs[i];
	uint64_t pos = __atomic_load_n(&c->seq, __ATOMIC_RELAXED);
	__atomic_store_n(&c->seq, pos + 1, __ATOMIC_RELEASE);
}

/*
 * Consumer, in reservation order. Behind a slot that was reserved but not
 * committed yet the consumer waits (returns NULL) even if later slots are
 * committed: order is kept and a slot is never read while its producer may
 * still write it. A producer cannot be stuck there in practice (the code
 * between reserve and commit is bounded and never blocks); if its thread is
 * stopped (a debugger holding one thread), the ring fills and new samples
 * are dropped and counted until the thread runs again. Returns the same
 * sample again until it is released.
 */
struct pa_sample *pa_ring_next(struct pa_ring *r)
{
	if (!r)
		return NULL;
	uint64_t pos = r->deq;
	struct seq_cell *c = &r->seqs[pos & r->mask];
	if (__atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != pos + 1)
		return NULL;
	return &r->samples[pos & r->mask];
}

/* Consumer: hands the head slot back to the producers of the next lap. A
 * sample that is not the current head is ignored. */
void pa_ring_release(struct pa_ring *r, struct pa_sample *s)
{
	if (!r)
		return;
	uint64_t pos = r->deq;
	long i = slot_of(r, s);
	if (i < 0 || (uint64_t)i != (pos & r->mask) ||
	    __atomic_load_n(&r->seqs[i].seq, __ATOMIC_RELAXED) != pos + 1)
		return;
	__atomic_store_n(&r->seqs[i].seq, pos + r->mask + 1, __ATOMIC_RELEASE);
	r->deq = pos + 1;
}

uint64_t pa_ring_dropped(const struct pa_ring *r)
{
	return r ? __atomic_load_n(&r->dropped, __ATOMIC_RELAXED) : 0;
}
