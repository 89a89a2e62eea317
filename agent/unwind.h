/* Stack capture and unwinding. Capture (hot path) copies registers and a
 * bounded slice of the stack into a sample; unwinding (cold path) runs
 * libunwind over that copy on the agent thread, never in the signal
 * handler, so the loader lock and libunwind's TLS never meet a signal. */
#ifndef PA_UNWIND_H
#define PA_UNWIND_H

#include <stdint.h>

#include "modules.h"
#include "ring.h"

/* From a signal handler: registers from the ucontext, then up to
 * PA_STACK_COPY bytes from the interrupted sp (bounded by pa_self's stack
 * bounds, or read with process_vm_readv when they are unknown).
 * Async-signal-safe. Sets PA_SAMPLE_LEAF_EXACT. */
void pa_unwind_capture_signal(struct pa_sample *s, const void *ucontext);

/* From a hook: the caller's registers and stack. Frames inside the agent
 * itself are dropped when unwinding. No locks, no malloc. */
void pa_unwind_capture_here(struct pa_sample *s);

/* The bytes of stack the caller's pa_unwind_capture_here would copy (a
 * little more, never less; PA_STACK_COPY when it cannot tell): what to
 * reserve in the ring (pa_ring_reserve_stack). No locks, no malloc. */
uint32_t pa_unwind_stack_need(void);

struct pa_unwind;

/* Unwinds answered from a remembered walk, and whether walks are
 * remembered at all (on by default): for tests and benchmarks. */
uint64_t pa_unwind_memo_hits(const struct pa_unwind *u);
void pa_unwind_set_memo(struct pa_unwind *u, int on);

int pa_unwind_new(struct pa_unwind **out, struct pa_modules *mods);
void pa_unwind_free(struct pa_unwind *u); /* accepts NULL */

/* Unwinds a captured sample into pcs[0..return), leaf first, at most max.
 * pcs[0] is the leaf; return addresses are already moved back by one so
 * every address points into its calling instruction; frames inside the
 * agent are removed wherever they stand (hooks at the top, the thread
 * trampoline in the middle). Returns the count (>= 1 when the leaf
 * is known) or a negative errno. Agent thread only. */
int pa_unwind_sample(struct pa_unwind *u, const struct pa_sample *s,
		     uint64_t *pcs, int max);

#endif
