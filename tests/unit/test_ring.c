/* The sample ring: order, full and drops, reuse, many producers, signal
 * re-entrancy. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ring.h"
#include "unit.h"

TEST(ring_order_and_release)
{
	struct pa_ring *r;
	CHECK_EQ_INT(pa_ring_new(&r, 8), 0);
	CHECK(pa_ring_next(r) == NULL);
	for (int i = 0; i < 5; i++) {
		struct pa_sample *s = pa_ring_reserve(r);
		CHECK(s);
		s->seq = (uint64_t)i;
		pa_ring_commit(r, s);
	}
	for (int i = 0; i < 5; i++) {
		struct pa_sample *s = pa_ring_next(r);
		CHECK(s);
		CHECK_EQ_INT(s->seq, i);
		/* next is a peek until release. */
		CHECK(pa_ring_next(r) == s);
		pa_ring_release(r, s);
	}
	CHECK(pa_ring_next(r) == NULL);
	CHECK_EQ_INT(pa_ring_dropped(r), 0);
	pa_ring_free(r);
	pa_ring_free(NULL);
}

TEST(ring_bad_arguments)
{
	struct pa_ring *r = NULL;
	CHECK_EQ_INT(pa_ring_new(&r, 0), -EINVAL);
	CHECK_EQ_INT(pa_ring_new(&r, 1u << 30), -EINVAL);
	CHECK(pa_ring_reserve(NULL) == NULL);
	CHECK(pa_ring_next(NULL) == NULL);
	CHECK_EQ_INT(pa_ring_dropped(NULL), 0);
	CHECK_EQ_INT(pa_ring_new(&r, 3), 0); /* rounded up to 4 */
	struct pa_sample *s[4];
	for (int i = 0; i < 4; i++)
		CHECK((s[i] = pa_ring_reserve(r)) != NULL);
	CHECK(pa_ring_reserve(r) == NULL);
	/* A pointer that is not a slot is ignored by commit and release. */
	struct pa_sample other;
	pa_ring_commit(r, &other);
	pa_ring_commit(r, (struct pa_sample *)((char *)s[0] + 8));
	CHECK(pa_ring_next(r) == NULL);
	pa_ring_commit(r, s[0]);
	pa_ring_release(r, s[1]); /* not the head: ignored */
	CHECK(pa_ring_next(r) == s[0]);
	pa_ring_free(r);
}

TEST(ring_full_counts_drops_and_reuses_slots)
{
	struct pa_ring *r;
	CHECK_EQ_INT(pa_ring_new(&r, 4), 0);
	struct pa_sample *held[4];
	/* Full stack copies: every record keeps its full size. */
	for (int i = 0; i < 4; i++) {
		held[i] = pa_ring_reserve(r);
		CHECK(held[i]);
		held[i]->seq = (uint64_t)(100 + i);
		held[i]->stack_len = PA_STACK_COPY;
		pa_ring_commit(r, held[i]);
	}
	CHECK(pa_ring_reserve(r) == NULL);
	CHECK(pa_ring_reserve(r) == NULL);
	CHECK_EQ_INT(pa_ring_dropped(r), 2);
	/* Free one slot: the next reservation reuses exactly it. */
	struct pa_sample *s = pa_ring_next(r);
	CHECK(s == held[0]);
	pa_ring_release(r, s);
	struct pa_sample *again = pa_ring_reserve(r);
	CHECK(again == held[0]);
	again->seq = 104;
	again->stack_len = PA_STACK_COPY;
	pa_ring_commit(r, again);
	CHECK(pa_ring_reserve(r) == NULL);
	CHECK_EQ_INT(pa_ring_dropped(r), 3);
	for (int i = 1; i <= 4; i++) {
		s = pa_ring_next(r);
		CHECK(s);
		CHECK_EQ_INT(s->seq, 100 + i);
		pa_ring_release(r, s);
	}
	CHECK(pa_ring_next(r) == NULL);
	/* Many laps around a small ring. */
	for (uint64_t i = 0; i < 10000; i++) {
		s = pa_ring_reserve(r);
		CHECK(s);
		s->seq = i;
		s->stack_len = (uint32_t)(i * 977 % (PA_STACK_COPY + 1));
		pa_ring_commit(r, s);
		s = pa_ring_next(r);
		CHECK(s && s->seq == i);
		pa_ring_release(r, s);
	}
	pa_ring_free(r);
}

/* ---- records as long as the stack they copied */

/* A stack copy whose bytes say which sample they belong to: a byte of the
 * sample's own everywhere, varied at every 64-byte boundary (where records
 * start and where the consumer zeroes what it hands back) and at the end.
 * Cheap enough for ThreadSanitizer builds. */
static uint8_t tag_byte(uint64_t tag, uint32_t i)
{
	return (uint8_t)(tag * 0x9e3779b97f4a7c15ULL >> 56) ^ (uint8_t)(i >> 6);
}

static void fill_stack(struct pa_sample *s, uint64_t tag, uint32_t len)
{
	s->stack_len = len;
	memset(s->stack, tag_byte(tag, 0), len);
	for (uint32_t i = 64; i < len; i += 64)
		s->stack[i] = tag_byte(tag, i);
	if (len)
		s->stack[len - 1] = tag_byte(tag, len - 1) ^ 0x5a;
}

static int stack_intact(const struct pa_sample *s, uint64_t tag)
{
	uint32_t len = s->stack_len;
	if (len > PA_STACK_COPY)
		return 0;
	for (uint32_t i = 0; i + 1 < len; i += 64)
		if (s->stack[i] != tag_byte(tag, i) ||
		    (i + 2 < len && s->stack[i + 1] != tag_byte(tag, 0)))
			return 0;
	return !len || s->stack[len - 1] == (tag_byte(tag, len - 1) ^ 0x5a);
}

/* The consumer's next sample is want, with tag's stack; then released. */
static int take(struct pa_ring *r, struct pa_sample *want, uint64_t tag)
{
	struct pa_sample *s = pa_ring_next(r);
	int ok = s == want && stack_intact(s, tag);
	pa_ring_release(r, s);
	return ok;
}

TEST(ring_short_samples_take_less_room)
{
	struct pa_ring *r;
	CHECK_EQ_INT(pa_ring_new(&r, 4), 0);
	/* Room for 4 full samples holds many with 200 bytes of stack. */
	uint64_t made = 0;
	struct pa_sample *s;
	while ((s = pa_ring_reserve(r)) != NULL) {
		s->seq = made;
		fill_stack(s, made, 200);
		pa_ring_commit(r, s);
		made++;
	}
	CHECK(made >= 4 * 20);
	CHECK_EQ_INT(pa_ring_dropped(r), 1);
	for (uint64_t i = 0; i < made; i++) {
		s = pa_ring_next(r);
		CHECK(s);
		CHECK_EQ_INT(s->seq, i);
		CHECK_EQ_INT(s->stack_len, 200);
		CHECK(stack_intact(s, i));
		pa_ring_release(r, s);
	}
	CHECK(pa_ring_next(r) == NULL);
	/* A record reserved behind another one keeps the first at full
	 * size (it cannot shrink under its neighbour), and both arrive. */
	struct pa_sample *a = pa_ring_reserve(r), *b = pa_ring_reserve(r);
	CHECK(a && b);
	a->seq = 1;
	fill_stack(a, 1, 10);
	b->seq = 2;
	fill_stack(b, 2, 10);
	pa_ring_commit(r, a);
	pa_ring_commit(r, b);
	CHECK(take(r, a, 1));
	CHECK(take(r, b, 2));
	CHECK(pa_ring_next(r) == NULL);
	pa_ring_free(r);
}

/* A producer that knows its stack length reserves just that: records sit
 * back to back even when each is reserved behind the other, and a sample
 * that claims more stack than it reserved is cut to its room. */
TEST(ring_exact_reservations_take_what_they_ask)
{
	struct pa_ring *r;
	CHECK_EQ_INT(pa_ring_new(&r, 4), 0);
	struct pa_sample *a = pa_ring_reserve_stack(r, 1000);
	struct pa_sample *b = pa_ring_reserve_stack(r, 300);
	struct pa_sample *c = pa_ring_reserve_stack(r, 1u << 30);
	CHECK(a && b && c);
	CHECK_EQ_INT(a->stack_cap, 1000);
	CHECK_EQ_INT(c->stack_cap, PA_STACK_COPY);
	uint64_t gap = (uint64_t)((char *)b - (char *)a);
	CHECK(gap >= offsetof(struct pa_sample, stack) + 1000);
	CHECK(gap < offsetof(struct pa_sample, stack) + 1000 + 128);
	fill_stack(a, 1, 1000);
	fill_stack(b, 2, 300);
	fill_stack(c, 3, 500);
	pa_ring_commit(r, b);
	pa_ring_commit(r, a);
	pa_ring_commit(r, c); /* full, nothing behind it: shrinks */
	CHECK(take(r, a, 1));
	CHECK(take(r, b, 2));
	CHECK(take(r, c, 3));
	CHECK(pa_ring_next(r) == NULL);
	/* The next record follows c's 500 bytes, not its full reservation. */
	struct pa_sample *d = pa_ring_reserve_stack(r, 0);
	CHECK(d);
	CHECK((char *)d - (char *)c <
	      (long)offsetof(struct pa_sample, stack) + 500 + 128);
	/* A producer that says it copied more than it reserved: the record
	 * keeps its reserved length, the next one is not overlapped. */
	d->stack_len = PA_STACK_COPY;
	struct pa_sample *e = pa_ring_reserve_stack(r, 64);
	CHECK(e);
	fill_stack(e, 5, 64);
	pa_ring_commit(r, d);
	pa_ring_commit(r, e);
	struct pa_sample *s = pa_ring_next(r);
	CHECK(s == d);
	pa_ring_release(r, s);
	CHECK(take(r, e, 5));
	CHECK_EQ_INT(pa_ring_dropped(r), 0);
	pa_ring_free(r);
}

/* Pages of the 256 KiB from the ring's first record on in memory. */
static size_t warm_pages(const struct pa_sample *first)
{
	static unsigned char vec[64];
	uintptr_t page = (uintptr_t)first & ~(uintptr_t)4095;
	CHECK_EQ_INT(mincore((void *)page, 64 * 4096, vec), 0);
	size_t n = 0;
	for (int i = 0; i < 64; i++)
		n += vec[i] & 1;
	return n;
}

/* Warmed, the bytes producers reuse are mapped before the first sample,
 * and the ring works as before; cold, only what was written is. */
TEST(ring_warm_maps_the_first_bytes)
{
	struct pa_ring *cold, *warm;
	CHECK_EQ_INT(pa_ring_new(&cold, 256), 0);
	CHECK_EQ_INT(pa_ring_new(&warm, 256), 0);
	CHECK_EQ_INT(pa_ring_warm(warm), 0);
	struct pa_sample *c = pa_ring_reserve_stack(cold, 0);
	struct pa_sample *w = pa_ring_reserve_stack(warm, 0);
	CHECK(c && w);
	CHECK(warm_pages(c) <= 2);
	CHECK_EQ_INT(warm_pages(w), 64);
	w->stack_len = 0;
	w->seq = 9;
	pa_ring_commit(warm, w);
	struct pa_sample *s = pa_ring_next(warm);
	CHECK(s == w && s->seq == 9);
	pa_ring_release(warm, s);
	CHECK(pa_ring_next(warm) == NULL);
	pa_ring_free(cold);
	pa_ring_free(warm);
}

/* A consumer that keeps up uses the first few hundred KiB of the ring, lap
 * after lap (the pages past them are never touched, so never resident),
 * and a rewind never jumps over a record reserved but not committed. */
TEST(ring_rewinds_when_empty)
{
	struct pa_ring *r;
	CHECK_EQ_INT(pa_ring_new(&r, 256), 0);
	uint64_t made = 0, got = 0;
	struct pa_sample *s;
	while (got < 20000) {
		for (int i = 0; i < 3; i++) {
			CHECK((s = pa_ring_reserve(r)) != NULL);
			s->seq = made;
			fill_stack(s, made, 1000 + (uint32_t)(made % 700));
			pa_ring_commit(r, s);
			made++;
		}
		while ((s = pa_ring_next(r)) != NULL) {
			CHECK_EQ_INT(s->seq, got);
			CHECK(stack_intact(s, got));
			pa_ring_release(r, s);
			got++;
		}
	}
	/* 20000 records of ~1.4 KiB went through; 4 MiB ring. */
	CHECK(pa_ring_touched(r) > 200 * 1024);
	CHECK(pa_ring_touched(r) < 512 * 1024);
	CHECK_EQ_INT(pa_ring_dropped(r), 0);
	/* Past the rewind point with a reservation pending: the consumer
	 * sees nothing yet, cannot rewind over it, and gets it once it is
	 * committed. */
	while (pa_ring_touched(r) < 300 * 1024 || made % 50) {
		s = pa_ring_reserve(r);
		s->seq = made++;
		fill_stack(s, s->seq, 1500);
		pa_ring_commit(r, s);
		s = pa_ring_next(r);
		CHECK_EQ_INT(s->seq, got++);
		pa_ring_release(r, s);
	}
	struct pa_sample *held = pa_ring_reserve(r);
	CHECK(held);
	held->seq = made++;
	fill_stack(held, held->seq, 100);
	CHECK(pa_ring_next(r) == NULL);
	CHECK(pa_ring_next(r) == NULL);
	pa_ring_commit(r, held);
	CHECK((s = pa_ring_next(r)) == held);
	CHECK(stack_intact(s, got));
	pa_ring_release(r, s);
	CHECK(pa_ring_next(r) == NULL);
	pa_ring_free(r);
}

/* Stack lengths from a xorshift: mostly short, sometimes full. */
static uint32_t ring_len(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return (*x & 7) == 0 ? PA_STACK_COPY : (uint32_t)(*x % 3000);
}

TEST(ring_mixed_sizes_wrap_in_order)
{
	struct pa_ring *r;
	CHECK_EQ_INT(pa_ring_new(&r, 2), 0);
	uint64_t x = 88172645463325252ULL, made = 0, got = 0;
	/* Producer ahead of the consumer by a varying amount, many laps:
	 * records of every size meet the end of the ring. */
	while (got < 20000) {
		int burst = (int)(x % 7);
		for (int i = 0; i < burst; i++) {
			struct pa_sample *s = pa_ring_reserve(r);
			if (!s)
				break;
			s->seq = made;
			fill_stack(s, made, ring_len(&x));
			pa_ring_commit(r, s);
			made++;
		}
		struct pa_sample *s = pa_ring_next(r);
		if (!s) {
			ring_len(&x);
			continue;
		}
		CHECK_EQ_INT(s->seq, got);
		if (!stack_intact(s, got))
			FAIL("sample %llu: stack bytes overwritten",
			     (unsigned long long)got);
		pa_ring_release(r, s);
		got++;
	}
	pa_ring_free(r);
}

/* ---- re-entrancy: a signal handler producing inside a reserve/commit pair */

static struct pa_ring *sig_ring;
static volatile int sig_produced;

static void produce_in_handler(int sig)
{
	(void)sig;
	struct pa_sample *s = pa_ring_reserve(sig_ring);
	if (s) {
		s->seq = 2;
		pa_ring_commit(sig_ring, s);
		sig_produced = 1;
	}
}

TEST(ring_signal_inside_reserve_commit)
{
	CHECK_EQ_INT(pa_ring_new(&sig_ring, 8), 0);
	signal(SIGUSR1, produce_in_handler);
	struct pa_sample *outer = pa_ring_reserve(sig_ring);
	CHECK(outer);
	outer->seq = 1;
	raise(SIGUSR1);
	CHECK(sig_produced);
	/* The handler's sample is committed but queued behind the outer,
	 * unfinished one: the consumer waits. */
	CHECK(pa_ring_next(sig_ring) == NULL);
	pa_ring_commit(sig_ring, outer);
	struct pa_sample *s = pa_ring_next(sig_ring);
	CHECK(s && s->seq == 1);
	pa_ring_release(sig_ring, s);
	s = pa_ring_next(sig_ring);
	CHECK(s && s->seq == 2);
	pa_ring_release(sig_ring, s);
	CHECK(pa_ring_next(sig_ring) == NULL);
	pa_ring_free(sig_ring);
}

/* ---- many producers, one consumer, signals interrupting producers */

#define PRODUCERS    4
#define PER_PRODUCER 200000
#define TAG_SIGNAL   0x80000000u

static struct pa_ring *mp_ring;
static int mp_stop;
static uint64_t mp_sig_sent[PRODUCERS], mp_sig_made[PRODUCERS],
    mp_sig_dropped[PRODUCERS];
static uint64_t mp_full_misses;
static __thread int mp_id __attribute__((tls_model("initial-exec")));

/* Each producer thread also produces from its SIGUSR2 handler, which can
 * land between any two instructions of its own reserve/commit. */
static void mp_handler(int sig)
{
	(void)sig;
	struct pa_sample *s = pa_ring_reserve(mp_ring);
	if (!s) {
		/* Full: the ring counts the drop too. */
		__atomic_add_fetch(&mp_sig_dropped[mp_id], 1, __ATOMIC_RELAXED);
		return;
	}
	s->tid = (uint32_t)mp_id | TAG_SIGNAL;
	s->seq = __atomic_add_fetch(&mp_sig_made[mp_id], 1, __ATOMIC_RELAXED);
	pa_ring_commit(mp_ring, s);
}

struct producer {
	int id;
	pid_t tid;
	pthread_t th;
};

static void *mp_producer(void *arg)
{
	struct producer *p = arg;
	mp_id = p->id;
	__atomic_store_n(&p->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	for (uint64_t i = 1; i <= PER_PRODUCER; i++) {
		struct pa_sample *s;
		while (!(s = pa_ring_reserve(mp_ring))) {
			__atomic_add_fetch(&mp_full_misses, 1,
					   __ATOMIC_RELAXED);
			sched_yield();
		}
		s->tid = (uint32_t)p->id;
		s->seq = i;
		pa_ring_commit(mp_ring, s);
	}
	return NULL;
}

static void *mp_killer(void *arg)
{
	struct producer *ps = arg;
	while (!__atomic_load_n(&mp_stop, __ATOMIC_RELAXED)) {
		for (int i = 0; i < PRODUCERS; i++) {
			pid_t tid =
			    __atomic_load_n(&ps[i].tid, __ATOMIC_ACQUIRE);
			if (tid > 0 &&
			    syscall(SYS_tgkill, getpid(), tid, SIGUSR2) == 0)
				mp_sig_sent[i]++;
		}
		usleep(50);
	}
	return NULL;
}

TEST_TIMEOUT(ring_many_producers_each_item_once, 60)
{
	CHECK_EQ_INT(pa_ring_new(&mp_ring, 64), 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = mp_handler;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR2, &sa, NULL);
	struct producer ps[PRODUCERS];
	memset(ps, 0, sizeof(ps));
	for (int i = 0; i < PRODUCERS; i++) {
		ps[i].id = i;
		CHECK_EQ_INT(
		    pthread_create(&ps[i].th, NULL, mp_producer, &ps[i]), 0);
	}
	pthread_t killer;
	CHECK_EQ_INT(pthread_create(&killer, NULL, mp_killer, ps), 0);
	uint64_t next[PRODUCERS], sig_seen[PRODUCERS], sig_last[PRODUCERS];
	for (int i = 0; i < PRODUCERS; i++) {
		next[i] = 1;
		sig_seen[i] = 0;
		sig_last[i] = 0;
	}
	uint64_t total = 0;
	int done = 0;
	while (!done) {
		struct pa_sample *s = pa_ring_next(mp_ring);
		if (!s) {
			done = 1;
			for (int i = 0; i < PRODUCERS; i++)
				done &= next[i] == PER_PRODUCER + 1;
			if (done) {
				__atomic_store_n(&mp_stop, 1, __ATOMIC_RELAXED);
				pthread_join(killer, NULL);
				for (int i = 0; i < PRODUCERS; i++)
					pthread_join(ps[i].th, NULL);
				/* Drain what the last signals produced. */
				while ((s = pa_ring_next(mp_ring))) {
					uint32_t id = s->tid & ~TAG_SIGNAL;
					CHECK(s->tid & TAG_SIGNAL);
					CHECK(id < PRODUCERS);
					sig_seen[id]++;
					pa_ring_release(mp_ring, s);
				}
			}
			continue;
		}
		uint32_t id = s->tid & ~TAG_SIGNAL;
		CHECK(id < PRODUCERS);
		if (s->tid & TAG_SIGNAL) {
			/* Signal items of one thread are numbered in order. */
			CHECK(s->seq > sig_last[id]);
			sig_last[id] = s->seq;
			sig_seen[id]++;
		} else {
			/* Exactly once and in order per producer. */
			if (s->seq != next[id])
				FAIL("producer %u: got %llu, expected %llu", id,
				     (unsigned long long)s->seq,
				     (unsigned long long)next[id]);
			next[id]++;
		}
		total++;
		pa_ring_release(mp_ring, s);
	}
	uint64_t sent = 0, made = 0, sig_drops = 0;
	for (int i = 0; i < PRODUCERS; i++) {
		/* Every signal item made was delivered, once. */
		CHECK_EQ_INT(sig_seen[i], mp_sig_made[i]);
		sent += mp_sig_sent[i];
		made += mp_sig_made[i];
		sig_drops += mp_sig_dropped[i];
	}
	CHECK(total >= (uint64_t)PRODUCERS * PER_PRODUCER);
	CHECK(made > 0);
	/* Every failed reservation, in a thread or a handler, was counted. */
	CHECK_EQ_INT(pa_ring_dropped(mp_ring), mp_full_misses + sig_drops);
	printf(
	    "  ring: %llu items, %llu from signals (%llu sent), %llu drops\n",
	    (unsigned long long)total, (unsigned long long)made,
	    (unsigned long long)sent,
	    (unsigned long long)pa_ring_dropped(mp_ring));
	pa_ring_free(mp_ring);
}

/* ---- many producers of records of every size: no record overlaps another
 * (each keeps its own bytes), each arrives once and in order. */

#define MIX_PRODUCERS 3
#define MIX_PER	      50000

static struct pa_ring *mix_ring;

static void *mix_producer(void *arg)
{
	uint64_t id = (uint64_t)(uintptr_t)arg;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (id + 1);
	for (uint64_t i = 1; i <= MIX_PER; i++) {
		struct pa_sample *s;
		uint32_t len = ring_len(&x) % 2048;
		/* Full reservations that shrink and exact ones, mixed. */
		while (!(s = i & 1 ? pa_ring_reserve_stack(mix_ring, len)
				   : pa_ring_reserve(mix_ring)))
			sched_yield();
		s->tid = (uint32_t)id;
		s->seq = i;
		fill_stack(s, id << 32 | i, len);
		pa_ring_commit(mix_ring, s);
	}
	return NULL;
}

TEST_TIMEOUT(ring_many_producers_mixed_sizes_intact, 60)
{
	CHECK_EQ_INT(pa_ring_new(&mix_ring, 4), 0);
	pthread_t th[MIX_PRODUCERS];
	for (uintptr_t i = 0; i < MIX_PRODUCERS; i++)
		CHECK_EQ_INT(
		    pthread_create(&th[i], NULL, mix_producer, (void *)i), 0);
	uint64_t next[MIX_PRODUCERS] = {1, 1, 1}, total = 0;
	while (total < (uint64_t)MIX_PRODUCERS * MIX_PER) {
		struct pa_sample *s = pa_ring_next(mix_ring);
		if (!s)
			continue;
		uint32_t id = s->tid;
		CHECK(id < MIX_PRODUCERS);
		if (s->seq != next[id])
			FAIL("producer %u: got %llu, expected %llu", id,
			     (unsigned long long)s->seq,
			     (unsigned long long)next[id]);
		if (!stack_intact(s, (uint64_t)id << 32 | s->seq))
			FAIL("producer %u item %llu: stack bytes overwritten",
			     id, (unsigned long long)s->seq);
		next[id]++;
		total++;
		pa_ring_release(mix_ring, s);
	}
	for (int i = 0; i < MIX_PRODUCERS; i++)
		pthread_join(th[i], NULL);
	CHECK(pa_ring_next(mix_ring) == NULL);
	pa_ring_free(mix_ring);
}
