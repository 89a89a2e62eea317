/* Stack capture (hot path: registers and a bounded stack copy, in signal
 * handlers and hooks) and unwinding of those copies with libunwind's remote
 * API on the agent thread (cold path). */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

#include "modules.h"
#include "ring.h"
#include "thread.h"
#include "unwind.h"

#if defined(__x86_64__)
#include <libunwind-x86_64.h>
#endif

/* ---- capture: hot path ---------------------------------------------------
 * Runs in signal handlers and allocation hooks: no locks, no malloc, no
 * stdio, no libunwind, errno preserved, bounded work. */

#define PAGE_MIN 4096u

#if defined(__x86_64__)

/* Raw reads of memory that may hold sanitizer redzones (stacks, module
 * data): under AddressSanitizer they must not be instrumented or
 * intercepted. Plain memcpy otherwise. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PA_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(PA_ASAN)
__attribute__((no_sanitize_address)) static void
raw_copy(void *dst, const void *src, size_t len)
{
	const volatile uint8_t *from = src;
	uint8_t *to = dst;
	for (size_t i = 0; i < len; i++)
		to[i] = from[i];
}
#else
#define raw_copy memcpy
#endif

/* process_vm_readv answered ENOSYS or EPERM (seccomp): stop trying. */
static int vm_readv_off;

/*
 * Copies [sp, sp + len) with process_vm_readv on our own process: a page
 * that is not mapped ends the copy instead of faulting. The remote side is
 * split at page boundaries, so the kernel's partial transfer (documented at
 * iovec granularity) stops exactly at the first unreadable page. Returns
 * the bytes copied.
 */
static size_t copy_foreign(uint8_t *dst, uint64_t sp, size_t len)
{
	if (__atomic_load_n(&vm_readv_off, __ATOMIC_RELAXED) || sp == 0)
		return 0;
	if (sp + len < sp)
		len = (size_t)(0 - sp);
	struct iovec local = {dst, len};
	struct iovec remote[PA_STACK_COPY / PAGE_MIN + 1];
	int n = 0;
	for (uint64_t a = sp, left = len;
	     left && n < (int)(sizeof(remote) / sizeof(remote[0]));) {
		uint64_t chunk = PAGE_MIN - (a & (PAGE_MIN - 1));
		if (chunk > left)
			chunk = left;
		remote[n].iov_base = (void *)(uintptr_t)a;
		remote[n].iov_len = (size_t)chunk;
		n++;
		a += chunk;
		left -= chunk;
	}
	pid_t pid = (pid_t)syscall(SYS_getpid);
	long got = syscall(SYS_process_vm_readv, pid, &local, 1UL, remote,
			   (unsigned long)n, 0UL);
	if (got < 0 && errno == EFAULT && n > 1) {
		/* A kernel that refuses the whole request on a fault: shrink
		 * to sp's own page. */
		local.iov_len = remote[0].iov_len;
		got = syscall(SYS_process_vm_readv, pid, &local, 1UL, remote,
			      1UL, 0UL);
	}
	if (got < 0) {
		if (errno == ENOSYS || errno == EPERM)
			__atomic_store_n(&vm_readv_off, 1, __ATOMIC_RELAXED);
		return 0;
	}
	return (size_t)got;
}

/*
 * Where a thread's stack really ends. pthread_getattr_np's bounds include,
 * at the top of a thread's stack, its TLS blocks and glibc's thread
 * descriptor, and on the main thread the environment and auxv: 4 KiB or
 * more that no unwind ever reads, copied with every sample. After an
 * unwind that reached the outermost frame (the thread's start or _start:
 * the same frame for the whole life of the thread), the agent thread
 * records that frame's stack pointer here, keyed by tid; later captures
 * on that thread copy only up to it (plus a margin). A hint is used only
 * when it lies inside the capturing thread's own stack bounds, and is
 * dropped when an unwind runs off the end of its copy.
 *
 * Entry: (top >> 3) << TOP_TID_BITS | (tid & TOP_TID_MASK); 0 = none.
 */
#define TOP_HINTS    1024
#define TOP_TID_BITS 20
#define TOP_TID_MASK ((1ULL << TOP_TID_BITS) - 1)
#define TOP_MARGIN   256
static uint64_t stack_tops[TOP_HINTS];

/* Hot path: the end of the useful stack of this thread, at most hi. */
static uint64_t useful_top(uint64_t sp, uint64_t hi)
{
	uint32_t tid = pa_self.tid;
	if (!tid)
		return hi;
	uint64_t h =
	    __atomic_load_n(&stack_tops[tid % TOP_HINTS], __ATOMIC_RELAXED);
	if (!h || (h & TOP_TID_MASK) != (tid & TOP_TID_MASK))
		return hi;
	uint64_t top = ((h >> TOP_TID_BITS) << 3) + TOP_MARGIN;
	return top > sp && top < hi ? top : hi;
}

/* Agent thread: what the unwind of a sample of thread tid learned. */
static void note_top(uint32_t tid, uint64_t top, int reached_end)
{
	if (!tid)
		return;
	uint64_t *slot = &stack_tops[tid % TOP_HINTS];
	if (reached_end) {
		/* The highest top seen for the thread wins: a frame that only
		 * looked outermost can cost copy size, never frames. */
		uint64_t h = (top >> 3) << TOP_TID_BITS | (tid & TOP_TID_MASK);
		uint64_t old = __atomic_load_n(slot, __ATOMIC_RELAXED);
		if (top >> 3 >> (64 - TOP_TID_BITS) == 0 &&
		    (!old || (old & TOP_TID_MASK) != (tid & TOP_TID_MASK) ||
		     (old >> TOP_TID_BITS) < (h >> TOP_TID_BITS)))
			__atomic_store_n(slot, h, __ATOMIC_RELAXED);
	} else {
		uint64_t h = __atomic_load_n(slot, __ATOMIC_RELAXED);
		if (h && (h & TOP_TID_MASK) == (tid & TOP_TID_MASK))
			__atomic_store_n(slot, 0, __ATOMIC_RELAXED);
	}
}

/* Fills stack_start/stack_len from sp upwards; sets PA_SAMPLE_NO_STACK when
 * nothing could be copied. */
static void copy_stack(struct pa_sample *s, uint64_t sp)
{
	uint64_t lo = pa_self.stack_lo, hi = pa_self.stack_hi;
	size_t cap = s->stack_cap && s->stack_cap < PA_STACK_COPY
			 ? s->stack_cap
			 : PA_STACK_COPY;
	size_t len;
	if (sp && lo < hi && sp >= lo && sp < hi) {
		hi = useful_top(sp, hi);
		/* Our own thread's stack: [sp, hi) is mapped. */
		len = hi - sp < cap ? (size_t)(hi - sp) : cap;
		raw_copy(s->stack, (const void *)(uintptr_t)sp, len);
	} else {
		/* Unknown bounds, a sigaltstack, a fiber: read carefully. */
		len = copy_foreign(s->stack, sp, cap);
	}
	s->stack_start = sp;
	s->stack_len = (uint32_t)len;
	if (len == 0)
		s->flags |= PA_SAMPLE_NO_STACK;
}

/* The caller's frames lie above this function's frame: its sp at a call
 * it makes next is at most STACK_NEED_SLACK bytes below this frame's. */
#define STACK_NEED_SLACK 128

__attribute__((noinline)) uint32_t pa_unwind_stack_need(void)
{
	uint64_t sp = (uint64_t)(uintptr_t)__builtin_frame_address(0);
	uint64_t lo = pa_self.stack_lo, hi = pa_self.stack_hi;
	if (!(lo < hi && sp >= lo && sp < hi))
		return PA_STACK_COPY;
	uint64_t need = useful_top(sp, hi) - sp + STACK_NEED_SLACK;
	return need < PA_STACK_COPY ? (uint32_t)need : PA_STACK_COPY;
}

/* libunwind's x86_64 register numbers (DWARF order). */
enum {
	R_RAX = 0,
	R_RDX,
	R_RCX,
	R_RBX,
	R_RSI,
	R_RDI,
	R_RBP,
	R_RSP,
	R_R8,
	R_R9,
	R_R10,
	R_R11,
	R_R12,
	R_R13,
	R_R14,
	R_R15,
	R_RIP,
	R_COUNT
};
#define REG_IP R_RIP

void pa_unwind_capture_signal(struct pa_sample *s, const void *ucontext)
{
	int saved = errno;
	s->flags = (s->flags &
		    ~(uint32_t)(PA_SAMPLE_LEAF_EXACT | PA_SAMPLE_NO_STACK)) |
		   PA_SAMPLE_LEAF_EXACT;
	memset(s->regs, 0, sizeof(s->regs));
	s->stack_start = 0;
	s->stack_len = 0;
	const ucontext_t *uc = ucontext;
	if (!uc) {
		s->flags |= PA_SAMPLE_NO_STACK;
		errno = saved;
		return;
	}
	const greg_t *g = uc->uc_mcontext.gregs;
	s->regs[R_RAX] = (uint64_t)g[REG_RAX];
	s->regs[R_RDX] = (uint64_t)g[REG_RDX];
	s->regs[R_RCX] = (uint64_t)g[REG_RCX];
	s->regs[R_RBX] = (uint64_t)g[REG_RBX];
	s->regs[R_RSI] = (uint64_t)g[REG_RSI];
	s->regs[R_RDI] = (uint64_t)g[REG_RDI];
	s->regs[R_RBP] = (uint64_t)g[REG_RBP];
	s->regs[R_RSP] = (uint64_t)g[REG_RSP];
	s->regs[R_R8] = (uint64_t)g[REG_R8];
	s->regs[R_R9] = (uint64_t)g[REG_R9];
	s->regs[R_R10] = (uint64_t)g[REG_R10];
	s->regs[R_R11] = (uint64_t)g[REG_R11];
	s->regs[R_R12] = (uint64_t)g[REG_R12];
	s->regs[R_R13] = (uint64_t)g[REG_R13];
	s->regs[R_R14] = (uint64_t)g[REG_R14];
	s->regs[R_R15] = (uint64_t)g[REG_R15];
	s->regs[R_RIP] = (uint64_t)g[REG_RIP];
	copy_stack(s, s->regs[R_RSP]);
	errno = saved;
}

/*
 * pa_unwind_capture_here is a few instructions of assembly: it stores the
 * registers as they are at its entry, which are the caller's (rip = the
 * return address, rsp = the caller's sp after the call, rbp and the other
 * callee-saved registers untouched), then jumps to the C part. A C function
 * could not read them reliably (the compiler may reuse rbx before any asm
 * runs), and getcontext makes a sigprocmask syscall. The caller is the
 * leaf; its ip is a return address, so the sample is not LEAF_EXACT.
 */
#define REGS_OFF 64
#if defined(__CET__) && (__CET__ & 1)
#define ENDBR "	endbr64\n"
#else
#define ENDBR ""
#endif
_Static_assert(PA_NREGS >= R_COUNT, "a sample holds every register");
_Static_assert(offsetof(struct pa_sample, regs) == REGS_OFF,
	       "the assembly below hard-codes the offset of regs");

static void capture_here_finish(struct pa_sample *s) __asm__(
    "pa_unwind_capture_here_finish") __attribute__((used));

/* clang-format off */
__asm__(".text\n"
	".globl pa_unwind_capture_here\n"
	".hidden pa_unwind_capture_here\n"
	".type pa_unwind_capture_here, @function\n"
	".p2align 4\n"
	"pa_unwind_capture_here:\n"
	".cfi_startproc\n"
	ENDBR
	"	movq %rbx, 64+3*8(%rdi)\n"
	"	movq %rbp, 64+6*8(%rdi)\n"
	"	leaq 8(%rsp), %rax\n"
	"	movq %rax, 64+7*8(%rdi)\n"
	"	movq %r12, 64+12*8(%rdi)\n"
	"	movq %r13, 64+13*8(%rdi)\n"
	"	movq %r14, 64+14*8(%rdi)\n"
	"	movq %r15, 64+15*8(%rdi)\n"
	"	movq (%rsp), %rax\n"
	"	movq %rax, 64+16*8(%rdi)\n"
	"	jmp pa_unwind_capture_here_finish\n"
	".cfi_endproc\n"
	".size pa_unwind_capture_here, .-pa_unwind_capture_here\n");
/* clang-format on */

/* Entered by a jump with the caller's return address on top of the stack:
 * our frame lies below the caller's sp, outside the copied range. */
static void capture_here_finish(struct pa_sample *s)
{
	int saved = errno;
	/* Caller-saved registers are dead at a call: zero them. */
	static const int dead[] = {R_RAX, R_RDX, R_RCX, R_RSI, R_RDI,
				   R_R8,  R_R9,	 R_R10, R_R11};
	for (size_t i = 0; i < sizeof(dead) / sizeof(dead[0]); i++)
		s->regs[dead[i]] = 0;
	memset(&s->regs[R_COUNT], 0,
	       sizeof(s->regs) - R_COUNT * sizeof(s->regs[0]));
	s->flags &= ~(uint32_t)(PA_SAMPLE_LEAF_EXACT | PA_SAMPLE_NO_STACK);
	s->stack_start = 0;
	s->stack_len = 0;
	copy_stack(s, s->regs[R_RSP]);
	errno = saved;
}

#else /* !__x86_64__: the leaf only */

#if defined(__aarch64__)
#define REG_IP 32 /* UNW_AARCH64_PC */
#else
#define REG_IP 0
#endif

void pa_unwind_capture_signal(struct pa_sample *s, const void *ucontext)
{
	int saved = errno;
	memset(s->regs, 0, sizeof(s->regs));
	s->stack_start = 0;
	s->stack_len = 0;
	s->flags |= PA_SAMPLE_LEAF_EXACT | PA_SAMPLE_NO_STACK;
#if defined(__aarch64__)
	const ucontext_t *uc = ucontext;
	if (uc)
		s->regs[REG_IP] = uc->uc_mcontext.pc;
#else
	(void)ucontext;
#endif
	errno = saved;
}

uint32_t pa_unwind_stack_need(void)
{
	return 0; /* no stack is copied here */
}

__attribute__((noinline)) void pa_unwind_capture_here(struct pa_sample *s)
{
	memset(s->regs, 0, sizeof(s->regs));
	s->regs[REG_IP] = (uint64_t)(uintptr_t)__builtin_return_address(0);
	s->stack_start = 0;
	s->stack_len = 0;
	s->flags =
	    (s->flags & ~(uint32_t)PA_SAMPLE_LEAF_EXACT) | PA_SAMPLE_NO_STACK;
}

#endif

/* ---- unwinding: agent thread only */

#if defined(__x86_64__)

/* Not in libunwind's public headers, exported by libunwind-<arch>.so: binary
 * search of an .eh_frame_hdr table, then the FDE, read through our
 * accessors. */
extern int UNW_OBJ(dwarf_search_unwind_table)(unw_addr_space_t as,
					      unw_word_t ip, unw_dyn_info_t *di,
					      unw_proc_info_t *pi,
					      int need_unwind_info, void *arg);

/* DWARF pointer encodings (LSB, .eh_frame_hdr). */
#define PE_ABSPTR  0x00
#define PE_ULEB128 0x01
#define PE_UDATA2  0x02
#define PE_UDATA4  0x03
#define PE_UDATA8  0x04
#define PE_SLEB128 0x09
#define PE_SDATA2  0x0a
#define PE_SDATA4  0x0b
#define PE_SDATA8  0x0c
#define PE_DATAREL 0x30
#define PE_OMIT	   0xff

/* The module table's signature is checked at least every this many
 * samples (see pa_unwind_sample). */
#define SIG_EVERY 64

/* Bounds the frames of one unwind whatever the stack looks like. */
#define MAX_STEPS 1024

/*
 * libunwind's own cache of register states takes a mutex around every
 * unw_step, and Debian's build blocks all signals around it: two
 * rt_sigprocmask syscalls per frame (measured: 130 us for 29 frames on a
 * VM). So frames are stepped with unw_reg_states_iterate (once per return
 * address: the CFI row that applies there) and unw_apply_reg_state, and the
 * rows are cached here, keyed by the address looked up: 2-way set
 * associative, fixed size.
 *
 * Even so a libunwind step (a fresh cursor, the row applied, 17 registers
 * read back through the accessors) costs ~0.3 us, and heap sampling at
 * tens of thousands of samples a second made it most of the agent thread's
 * time. Nearly every row on x86_64 says "CFA = rsp or rbp + k, the return
 * address and some callee-saved registers at CFA + k', the rest unchanged":
 * such a row is reduced to a compact rule (struct rule) that the unwinder
 * applies itself in a few loads. The reduction never interprets libunwind's
 * private row layout: the row is applied to two symbolic frames (see
 * probe()) and the rule is read off the answers, then checked against the
 * real libunwind step of the frame that missed. Rows that are not of that
 * form (expressions, register copies, signal frames) keep the libunwind
 * path.
 */
#define ROW_MAX	   192 /* bytes of one row (dwarf_reg_state_t: 184 in 1.6) */
#define CACHE_SETS 512
#define CACHE_WAYS 2
/* Rules: 4096 return addresses (72 bytes each, 288 KiB). */
#define RULE_SETS 2048
#define RULE_WAYS 2
/* Registers a compact rule restores from the stack (x86_64 has 6
 * callee-saved ones besides rsp). */
#define RULE_SAVED 8

struct row {
	uint64_t ip; /* 0: empty */
	uint32_t len;
	uint32_t age;
	uint8_t data[ROW_MAX];
};

enum rule_kind {
	RULE_COMPACT = 1, /* applied here */
	RULE_ROW,	  /* libunwind applies the (cached) row */
	RULE_NOINFO,	  /* no unwind info: frame-pointer step */
	RULE_TRAMP,	  /* the signal return trampoline */
};

/* What one frame's step does, for the frame at an ip (exact or a return
 * address). */
struct rule {
	uint64_t key; /* ip | exact << 63; 0: empty */
	uint32_t age;
	uint8_t kind;
	uint8_t cfa_reg; /* R_RSP or R_RBP */
	uint8_t end;	 /* return address undefined: the outermost frame */
	uint8_t nsaved;
	int32_t cfa_off;
	int32_t ra_off;		  /* return address at CFA + ra_off */
	uint32_t undef;		  /* registers without a location: read as 0 */
	uint8_t sreg[RULE_SAVED]; /* register restored from CFA + soff */
	int32_t soff[RULE_SAVED];
};

/*
 * Whole walks are remembered too. A heap sample taken at the same call
 * site on the same thread has the same registers and, in its copy, the
 * same return addresses and saved frame pointers; only the rest of the
 * stack (locals, other saved registers) differs. The frames of a walk
 * whose every step was a compact rule depend on nothing else: a compact
 * rule finds the CFA from sp or the frame pointer only, so the frames
 * follow from the leaf's ip, sp and frame pointer, the return addresses
 * and frame pointers it read, and the module table (a change empties
 * this cache with the others). So such a walk is kept with those words,
 * and a sample with the same registers and copy whose copy holds the same
 * words at the same places gets its frames without a step: two loads and
 * a compare a frame instead of a rule lookup and a step (0.06 us for 29
 * frames instead of 0.6, unwind_cost_per_sample). A walk that read more
 * than MEMO_READS such words or gave more than MEMO_PCS frames is not
 * kept.
 */
#define MEMO_SETS  64
#define MEMO_WAYS  2
#define MEMO_READS 96
#define MEMO_PCS   64

struct memo {
	uint64_t ip, sp, bp; /* ip 0: empty */
	uint64_t start;	     /* the copy: stack_start, stack_len */
	uint32_t len;
	uint32_t max; /* the pcs room it was walked for */
	uint32_t age;
	uint8_t exact;
	uint16_t nreads, npcs;
	uint64_t top; /* the outermost frame's sp, when the walk reached it */
	uint32_t read_off[MEMO_READS]; /* from the copy's start */
	uint64_t read_val[MEMO_READS];
	uint64_t pcs[MEMO_PCS];
};

/* What a walk read, while it may be remembered. */
struct memo_rec {
	int ok; /* every step so far was a compact rule; reads fit */
	int nreads;
	uint64_t addr[MEMO_READS], val[MEMO_READS];
};

/* State of one unwind, the `arg` of every accessor. */
struct walk {
	const struct pa_sample *s;
	struct pa_modules *mods;
	uint64_t regs[R_COUNT]; /* the frame being stepped; writable */
	uint64_t slice_lo, slice_hi;
	/* The last readable module segment hit: most reads repeat it. */
	uint64_t seg_lo, seg_hi;
	/* The last module whose .eh_frame_hdr was parsed. */
	const struct pa_module *di_mod;
	unw_dyn_info_t di;
	int noinfo;	      /* find_proc_info failed for this frame */
	int probe;	      /* stack reads answer symbolic values (probe()) */
	struct memo_rec *rec; /* NULL: reads are not recorded */
	int rec_pause;	      /* a read the frames do not depend on */
};

struct pa_unwind {
	unw_addr_space_t as;
	struct pa_modules *mods;
	uint64_t mods_sig;
	const struct pa_module *sig_base; /* the table the signature was of */
	int sig_count;
	uint32_t sig_age;
	uint32_t clock;
	struct walk w;
	struct row rows[CACHE_SETS][CACHE_WAYS];
	struct rule rules[RULE_SETS][RULE_WAYS];
	struct memo memos[MEMO_SETS][MEMO_WAYS];
	struct memo_rec rec;
	uint8_t spill[1024]; /* a row too large for the cache */
	/* Counters, for tests and debugging. */
	uint64_t row_hits, row_misses, fp_frames, signal_frames;
	uint64_t rule_hits, rule_misses, rule_compact, rule_row;
	uint64_t memo_hits, memo_misses;
	int memo_off;
};

static int slice_read(const struct walk *w, uint64_t addr, uint64_t *val)
{
	if (addr < w->slice_lo || addr > w->slice_hi - 8 ||
	    w->slice_hi - w->slice_lo < 8)
		return -1;
	memcpy(val, w->s->stack + (addr - w->slice_lo), 8);
	struct memo_rec *rec = w->rec;
	if (rec && rec->ok && !w->rec_pause) {
		if (rec->nreads < MEMO_READS) {
			rec->addr[rec->nreads] = addr;
			rec->val[rec->nreads++] = *val;
		} else {
			rec->ok = 0;
		}
	}
	return 0;
}

/*
 * True if [addr, addr + len) can be read directly from a module's mapping.
 * The caller holds pa_modules_read_lock, so no dlclose unmaps it meanwhile.
 * A word that starts inside a segment and stays in the same page is mapped
 * even past the segment's end (libunwind reads aligned words around the
 * bytes it wants).
 */
static int module_mem(struct walk *w, uint64_t addr, size_t len)
{
	if (addr + len < addr)
		return 0;
	if (addr >= w->seg_lo && addr + len <= w->seg_hi)
		return 1;
	const struct pa_module *mod = pa_modules_find(w->mods, addr);
	if (!mod)
		return 0;
	for (int i = 0; i < mod->nsegs; i++) {
		uint64_t lo = mod->segs[i].start, hi = mod->segs[i].end;
		if (addr < lo || addr >= hi)
			continue;
		/* The mapping covers whole pages around the segment. */
		uint64_t page_lo = lo & ~(uint64_t)(PAGE_MIN - 1);
		uint64_t page_hi =
		    (hi + PAGE_MIN - 1) & ~(uint64_t)(PAGE_MIN - 1);
		if (addr + len > page_hi)
			return 0;
		w->seg_lo = page_lo;
		w->seg_hi = page_hi;
		return 1;
	}
	return 0;
}

/*
 * Symbolic frames for probe(): the stack pointer and frame pointer lie in
 * a window of non-canonical addresses (never a module, never mapped), and
 * a read there answers a token from which the address read is recovered
 * (an odd multiplier is invertible modulo 2^64; the product is nothing
 * like a linear function of the address). The other registers hold
 * tokens outside the window, so a rule that dereferences them fails.
 */
#define PROBE_LO  0x4000000000000000ULL
#define PROBE_HI  (PROBE_LO + (1ULL << 40))
#define PROBE_SP  (PROBE_LO + (1ULL << 36))
#define PROBE_FP  (PROBE_LO + (2ULL << 36))
#define PROBE_REG 0x6a5c3e1f00000011ULL
#define PROBE_MUL 0x9e3779b97f4a7c15ULL
/* The inverse of PROBE_MUL modulo 2^64. */
#define PROBE_INV 0xf1de83e19937733dULL

/* A stack word as the unwinder sees it: the copy, else module memory.
 * Stack addresses outside the copy are never read live: that memory has
 * moved on since the capture. */
static int read_word(struct walk *w, uint64_t addr, uint64_t *val)
{
	if (slice_read(w, addr, val) == 0)
		return 0;
	if (w->probe && addr >= PROBE_LO && addr < PROBE_HI) {
		*val = addr * PROBE_MUL;
		return 0;
	}
	if (module_mem(w, addr, 8)) {
		raw_copy(val, (const void *)(uintptr_t)addr, 8);
		return 0;
	}
	return -1;
}

static int access_mem(unw_addr_space_t as, unw_word_t addr, unw_word_t *val,
		      int write, void *arg)
{
	(void)as;
	struct walk *w = arg;
	if (write)
		return -UNW_EREADONLYREG;
	uint64_t v;
	if (read_word(w, addr, &v) < 0)
		return -UNW_EINVAL;
	*val = v;
	return 0;
}

static int access_reg(unw_addr_space_t as, unw_regnum_t reg, unw_word_t *val,
		      int write, void *arg)
{
	(void)as;
	struct walk *w = arg;
	if (reg < 0 || reg >= R_COUNT)
		return -UNW_EBADREG;
	if (write)
		w->regs[reg] = *val;
	else
		*val = w->regs[reg];
	return 0;
}

static int access_fpreg(unw_addr_space_t as, unw_regnum_t reg, unw_fpreg_t *val,
			int write, void *arg)
{
	(void)as, (void)reg, (void)val, (void)write, (void)arg;
	return -UNW_EBADREG;
}

static int resume(unw_addr_space_t as, unw_cursor_t *c, void *arg)
{
	(void)as, (void)c, (void)arg;
	return -UNW_EINVAL;
}

static int get_dyn_info_list_addr(unw_addr_space_t as, unw_word_t *addr,
				  void *arg)
{
	(void)as, (void)addr, (void)arg;
	return -UNW_ENOINFO;
}

static int get_proc_name(unw_addr_space_t as, unw_word_t addr, char *buf,
			 size_t len, unw_word_t *off, void *arg)
{
	(void)as, (void)addr, (void)buf, (void)len, (void)off, (void)arg;
	return -UNW_ENOINFO; /* symbols.c names frames */
}

/*
 * find_proc_info allocates nothing itself: the unwind info that
 * dwarf_search_unwind_table returns comes from libunwind's own pool, and
 * libunwind 1.6 releases it itself (it calls this accessor only for
 * dynamically registered info, which get_dyn_info_list_addr never offers).
 * Freeing it here would corrupt that pool.
 */
static void put_unwind_info(unw_addr_space_t as, unw_proc_info_t *pi, void *arg)
{
	(void)as, (void)pi, (void)arg;
}

/* Size of a fixed or LEB128 encoded value at p (within end); -1 if the
 * encoding is not supported. */
static int encoded_size(uint8_t enc, const uint8_t *p, const uint8_t *end)
{
	switch (enc & 0x0f) {
	case PE_ABSPTR:
	case PE_UDATA8:
	case PE_SDATA8:
		return 8;
	case PE_UDATA4:
	case PE_SDATA4:
		return 4;
	case PE_UDATA2:
	case PE_SDATA2:
		return 2;
	case PE_ULEB128:
	case PE_SLEB128:
		for (int n = 1; p < end && n <= 10; n++, p++)
			if (!(*p & 0x80))
				return n;
		return -1;
	default:
		return -1;
	}
}

/*
 * The binary search table of a module's .eh_frame_hdr as libunwind's
 * REMOTE_TABLE: version 1, table encoded datarel|sdata4 (what every linker
 * writes; anything else is refused rather than guessed), entries relative
 * to the header itself (segbase).
 */
static int module_table(struct walk *w, const struct pa_module *mod)
{
	if (w->di_mod == mod)
		return 0;
	uint64_t hdr = mod->eh_frame_hdr, len = mod->eh_frame_hdr_len;
	if (!hdr || len < 8 || len > (1ULL << 32) ||
	    !module_mem(w, hdr, (size_t)len))
		return -1;
	const uint8_t *p = (const uint8_t *)(uintptr_t)hdr, *end = p + len;
	uint8_t version = p[0], ptr_enc = p[1], cnt_enc = p[2], tab_enc = p[3];
	if (version != 1 || tab_enc != (PE_DATAREL | PE_SDATA4) ||
	    cnt_enc == PE_OMIT)
		return -1;
	const uint8_t *q = p + 4;
	if (ptr_enc != PE_OMIT) {
		int sz = encoded_size(ptr_enc, q, end);
		if (sz < 0 || sz > end - q)
			return -1;
		q += sz;
	}
	/* The count is a plain number: no pc/data-relative application. */
	if (cnt_enc & 0x70)
		return -1;
	uint64_t count = 0;
	int sz = encoded_size(cnt_enc, q, end);
	if (sz < 0 || sz > end - q)
		return -1;
	switch (cnt_enc & 0x0f) {
	case PE_UDATA2:
	case PE_SDATA2: {
		uint16_t v;
		memcpy(&v, q, 2);
		count = v;
		break;
	}
	case PE_UDATA4:
	case PE_SDATA4: {
		uint32_t v;
		memcpy(&v, q, 4);
		count = v;
		break;
	}
	case PE_ABSPTR:
	case PE_UDATA8:
	case PE_SDATA8:
		memcpy(&count, q, 8);
		break;
	default: /* LEB128 */
		for (int i = 0, shift = 0; i < sz && shift < 64;
		     i++, shift += 7)
			count |= (uint64_t)(q[i] & 0x7f) << shift;
		break;
	}
	q += sz;
	if (count == 0 || count > (uint64_t)(end - q) / 8)
		return -1;
	memset(&w->di, 0, sizeof(w->di));
	w->di.format = UNW_INFO_FORMAT_REMOTE_TABLE;
	w->di.start_ip = mod->exec_start;
	w->di.end_ip = mod->exec_end;
	w->di.u.rti.segbase = hdr;
	w->di.u.rti.table_data = (uint64_t)(uintptr_t)q;
	/* In words; each entry is two int32. */
	w->di.u.rti.table_len = count * 8 / sizeof(unw_word_t);
	w->di_mod = mod;
	return 0;
}

static int find_proc_info(unw_addr_space_t as, unw_word_t ip,
			  unw_proc_info_t *pi, int need_unwind_info, void *arg)
{
	struct walk *w = arg;
	const struct pa_module *mod = pa_modules_find(w->mods, ip);
	int rc = -UNW_ENOINFO;
	if (mod && ip >= mod->exec_start && ip < mod->exec_end &&
	    module_table(w, mod) == 0)
		rc = UNW_OBJ(dwarf_search_unwind_table)(as, ip, &w->di, pi,
							need_unwind_info, arg);
	if (rc < 0)
		w->noinfo = 1;
	return rc;
}

static unw_accessors_t accessors = {
    .find_proc_info = find_proc_info,
    .put_unwind_info = put_unwind_info,
    .get_dyn_info_list_addr = get_dyn_info_list_addr,
    .access_mem = access_mem,
    .access_reg = access_reg,
    .access_fpreg = access_fpreg,
    .resume = resume,
    .get_proc_name = get_proc_name,
};

int pa_unwind_new(struct pa_unwind **out, struct pa_modules *mods)
{
	if (!out || !mods)
		return -EINVAL;
	struct pa_unwind *u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->mods = mods;
	u->as = unw_create_addr_space(&accessors, 0);
	if (!u->as) {
		free(u);
		return -ENOMEM;
	}
	/* No cache in libunwind (see ROW_MAX): it is never stepped with
	 * unw_step, and its cache would only cost memory. */
	unw_set_caching_policy(u->as, UNW_CACHE_NONE);
	*out = u;
	return 0;
}

void pa_unwind_free(struct pa_unwind *u)
{
	if (!u)
		return;
	unw_destroy_addr_space(u->as);
	free(u);
}

/* A summary of the module table: cached rows are keyed by address and are
 * dropped when code at some address may have changed. */
static uint64_t modules_signature(struct pa_modules *m)
{
	int n = pa_modules_count(m);
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)n;
	for (int i = 0; i < n; i++) {
		const struct pa_module *mod = pa_modules_at(m, i);
		uint64_t id = 0;
		memcpy(&id, mod->build_id, sizeof(id));
		h = (h ^ mod->start) * 1099511628211ULL;
		h = (h ^ mod->end ^ (mod->bias << 7)) * 1099511628211ULL;
		h = (h ^ id) * 1099511628211ULL;
	}
	return h;
}

static int in_exec(const struct pa_modules *m, uint64_t ip)
{
	const struct pa_module *mod = pa_modules_find(m, ip);
	return mod && ip >= mod->exec_start && ip < mod->exec_end;
}

/*
 * One frame-pointer step from a frame whose frame pointer is fp and whose
 * sp is sp: [fp] is the caller's fp, [fp + 8] the return address. Only the
 * stack copy is read; fp must lie above sp (frames grow down).
 */
static int fp_step(const struct walk *w, uint64_t fp, uint64_t sp,
		   uint64_t *ret, uint64_t *next_fp)
{
	if ((fp & 7) || fp < sp || fp > UINT64_MAX - 16)
		return -1;
	if (slice_read(w, fp, next_fp) < 0 || slice_read(w, fp + 8, ret) < 0)
		return -1;
	if (!in_exec(w->mods, *ret))
		return -1;
	return 0;
}

/*
 * True if ip is the rt_sigreturn trampoline a handler returns to
 * (glibc's and musl's __restore_rt: mov $15,%rax; syscall). On x86_64 the
 * trampoline is always libc's (SA_RESTORER), never the vDSO's.
 */
static int is_sigreturn(struct walk *w, uint64_t ip)
{
	static const uint8_t code[9] = {0x48, 0xc7, 0xc0, 0x0f, 0x00,
					0x00, 0x00, 0x0f, 0x05};
	if (!in_exec(w->mods, ip) || !module_mem(w, ip, sizeof(code)))
		return 0;
	return memcmp((const void *)(uintptr_t)ip, code, sizeof(code)) == 0;
}

/*
 * The frame a signal interrupted, read from the kernel's signal frame: a
 * handler's return pops the trampoline's address, leaving sp at the
 * ucontext_t. Every register is known there. Only the stack copy is read.
 */
static int signal_step(struct walk *w, uint64_t sp, uint64_t *regs)
{
	static const int map[R_COUNT] = {
	    [R_RAX] = REG_RAX, [R_RDX] = REG_RDX, [R_RCX] = REG_RCX,
	    [R_RBX] = REG_RBX, [R_RSI] = REG_RSI, [R_RDI] = REG_RDI,
	    [R_RBP] = REG_RBP, [R_RSP] = REG_RSP, [R_R8] = REG_R8,
	    [R_R9] = REG_R9,   [R_R10] = REG_R10, [R_R11] = REG_R11,
	    [R_R12] = REG_R12, [R_R13] = REG_R13, [R_R14] = REG_R14,
	    [R_R15] = REG_R15, [R_RIP] = REG_RIP,
	};
	uint64_t gregs = sp + offsetof(ucontext_t, uc_mcontext.gregs);
	for (int i = 0; i < R_COUNT; i++)
		if (slice_read(w, gregs + (uint64_t)map[i] * 8, &regs[i]) < 0)
			return -1;
	return 0;
}

/* Copies the CFI row that applies at the wanted address. */
struct pick {
	uint64_t ip;
	uint8_t *dst;
	size_t cap, len;
	int found;
};

static int pick_row(void *token, void *data, size_t size, unw_word_t start,
		    unw_word_t end)
{
	struct pick *p = token;
	if (p->ip < start || p->ip >= end)
		return 0;
	if (size > p->cap)
		return -UNW_EINVAL;
	memcpy(p->dst, data, size);
	p->len = size;
	p->found = 1;
	return -UNW_ESTOPUNWIND; /* found: stop iterating */
}

enum { STEP_END = 0, STEP_OK = 1, STEP_ERROR = -1, STEP_NOINFO = -2 };

/*
 * One DWARF step of the frame in w->regs, whose CFI is looked up at
 * `lookup` (the ip itself when exact, else the return address - 1): a fresh
 * cursor at that frame, the row from the cache or from libunwind, applied,
 * and every register of the caller read back into regs. *used (if not
 * NULL) is the row applied, valid until the next call; NULL when none was
 * found.
 */
static int dwarf_frame(struct pa_unwind *u, uint64_t lookup, uint64_t *regs,
		       const void **used)
{
	struct walk *w = &u->w;
	if (used)
		*used = NULL;
	w->regs[R_RIP] = lookup;
	unw_cursor_t cur;
	if (unw_init_remote(&cur, u->as, w) < 0)
		return STEP_ERROR;
	unsigned set =
	    (unsigned)((lookup * 0x9e3779b97f4a7c15ULL) >> 55) % CACHE_SETS;
	struct row *ways = u->rows[set], *row = NULL;
	for (int i = 0; i < CACHE_WAYS; i++)
		if (ways[i].ip == lookup)
			row = &ways[i];
	const void *data;
	if (row) {
		u->row_hits++;
		row->age = ++u->clock;
		data = row->data;
	} else {
		u->row_misses++;
		struct pick p = {
		    .ip = lookup, .dst = u->spill, .cap = sizeof(u->spill)};
		w->noinfo = 0;
		int rc = unw_reg_states_iterate(&cur, pick_row, &p);
		if (w->noinfo)
			return STEP_NOINFO;
		if (!p.found || (rc < 0 && rc != -UNW_ESTOPUNWIND))
			return STEP_ERROR;
		data = u->spill;
		if (p.len <= ROW_MAX) {
			row = ways[0].age <= ways[1].age ? &ways[0] : &ways[1];
			row->ip = lookup;
			row->len = (uint32_t)p.len;
			row->age = ++u->clock;
			memcpy(row->data, u->spill, p.len);
			data = row->data;
		}
	}
	if (used)
		*used = data;
	/* libunwind takes the row as read-only input. */
	int rc = unw_apply_reg_state(&cur, (void *)(uintptr_t)data);
	if (rc <= 0)
		return rc == 0 ? STEP_END : STEP_ERROR;
	for (int i = 0; i < R_COUNT; i++) {
		unw_word_t v;
		/* Registers without a location (undefined) read as 0. */
		regs[i] = unw_get_reg(&cur, i, &v) < 0 ? 0 : v;
	}
	return STEP_OK;
}

/* ---- compact rules */

/* libunwind applies a row to the frame in w->regs; every register of the
 * result lands in out (the CFA in out[R_RSP], also at the outermost frame),
 * with a bit in *missing for each one that has no location. */
static int apply_row(struct pa_unwind *u, uint64_t lookup, const void *row,
		     uint64_t *out, uint32_t *missing)
{
	struct walk *w = &u->w;
	w->regs[R_RIP] = lookup;
	unw_cursor_t cur;
	if (unw_init_remote(&cur, u->as, w) < 0)
		return STEP_ERROR;
	int rc = unw_apply_reg_state(&cur, (void *)(uintptr_t)row);
	if (rc < 0)
		return STEP_ERROR;
	*missing = 0;
	for (int i = 0; i < R_COUNT; i++) {
		unw_word_t v = 0;
		if (unw_get_reg(&cur, i, &v) < 0) {
			v = 0;
			*missing |= 1u << i;
		}
		out[i] = v;
	}
	return rc == 0 ? STEP_END : STEP_OK;
}

static int fits32(int64_t v)
{
	return v >= INT32_MIN && v <= INT32_MAX;
}

/* Register i was loaded from the same offset from the CFA in both probes:
 * the offset. */
static int probe_saved(const uint64_t out[2][R_COUNT], int i, int32_t *off)
{
	int64_t o[2];
	for (int k = 0; k < 2; k++) {
		uint64_t a = out[k][i] * PROBE_INV;
		if (a < PROBE_LO || a >= PROBE_HI)
			return -1;
		o[k] = (int64_t)(a - out[k][R_RSP]);
	}
	if (o[0] != o[1] || !fits32(o[0]))
		return -1;
	*off = (int32_t)o[0];
	return 0;
}

/*
 * Reduces a row to a compact rule: the row is applied to two symbolic
 * frames whose sp and fp move by different amounts and whose stack reads
 * answer tokens naming the address read; a compact row answers, in both,
 * CFA = sp or fp + the same offset, and every register either unchanged,
 * without a location, or loaded from CFA + the same offset. Anything else
 * (an expression that depends on memory, a register copied from another
 * register) stays with libunwind. Returns 0 with *r filled (but for key,
 * age and kind), or -1.
 */
static int derive_rule(struct pa_unwind *u, uint64_t lookup, const void *row,
		       struct rule *r)
{
	struct walk *w = &u->w;
	uint64_t in[2][R_COUNT], out[2][R_COUNT];
	uint32_t missing[2] = {0, 0};
	int rc[2];
	w->probe = 1;
	for (int k = 0; k < 2; k++) {
		for (int i = 0; i < R_COUNT; i++)
			in[k][i] = PROBE_REG + ((uint64_t)i << 40) +
				   (uint64_t)k * 0x1234567ULL;
		in[k][R_RSP] = PROBE_SP + (uint64_t)k * 0x10000;
		in[k][R_RBP] = PROBE_FP + (uint64_t)k * 0x30000;
		memcpy(w->regs, in[k], sizeof(in[k]));
		rc[k] = apply_row(u, lookup, row, out[k], &missing[k]);
	}
	w->probe = 0;
	if (rc[0] != rc[1] || rc[0] == STEP_ERROR)
		return -1;
	int64_t d[2], e[2];
	for (int k = 0; k < 2; k++) {
		d[k] = (int64_t)(out[k][R_RSP] - in[k][R_RSP]);
		e[k] = (int64_t)(out[k][R_RSP] - in[k][R_RBP]);
	}
	if (d[0] == d[1] && fits32(d[0])) {
		r->cfa_reg = R_RSP;
		r->cfa_off = (int32_t)d[0];
	} else if (e[0] == e[1] && fits32(e[0])) {
		r->cfa_reg = R_RBP;
		r->cfa_off = (int32_t)e[0];
	} else {
		return -1;
	}
	r->end = rc[0] == STEP_END;
	r->nsaved = 0;
	r->undef = 0;
	r->ra_off = 0;
	if (r->end)
		return 0;
	if (((missing[0] | missing[1]) & (1u << R_RIP)) ||
	    probe_saved(out, R_RIP, &r->ra_off) < 0)
		return -1;
	for (int i = 0; i < R_COUNT; i++) {
		if (i == R_RSP || i == R_RIP)
			continue;
		uint32_t bit = 1u << i;
		if ((missing[0] & bit) && (missing[1] & bit)) {
			r->undef |= bit;
			continue;
		}
		if ((missing[0] | missing[1]) & bit)
			return -1;
		if (out[0][i] == in[0][i] && out[1][i] == in[1][i])
			continue;
		int32_t off;
		if (r->nsaved == RULE_SAVED || probe_saved(out, i, &off) < 0)
			return -1;
		r->sreg[r->nsaved] = (uint8_t)i;
		r->soff[r->nsaved] = off;
		r->nsaved++;
	}
	return 0;
}

/* What libunwind's step would give for this frame (dwarf_frame), in a few
 * loads: same registers, same reads, same failures. */
static int compact_step(struct walk *w, const struct rule *r, uint64_t lookup,
			const uint64_t *regs, uint64_t *next)
{
	if (r->end)
		return STEP_END;
	uint64_t cfa = regs[r->cfa_reg] + (uint64_t)(int64_t)r->cfa_off;
	uint64_t ra;
	if (read_word(w, cfa + (uint64_t)(int64_t)r->ra_off, &ra) < 0)
		return STEP_ERROR;
	/* libunwind stops a step that changes neither ip nor CFA. */
	if (ra == lookup && cfa == regs[R_RSP])
		return STEP_ERROR;
	memcpy(next, regs, sizeof(uint64_t) * R_COUNT);
	for (uint32_t m = r->undef; m; m &= m - 1)
		next[__builtin_ctz(m)] = 0;
	for (int j = 0; j < r->nsaved; j++) {
		uint64_t v;
		/* Only the frame pointer can be a later frame's CFA base: the
		 * other saved registers' values never change the frames. */
		w->rec_pause = r->sreg[j] != R_RBP;
		next[r->sreg[j]] =
		    read_word(w, cfa + (uint64_t)(int64_t)r->soff[j], &v) == 0
			? v
			: 0;
		w->rec_pause = 0;
	}
	next[R_RSP] = cfa;
	next[R_RIP] = ra;
	return STEP_OK;
}

/* The walk under way cannot be remembered. */
static void no_memo(struct walk *w)
{
	if (w->rec)
		w->rec->ok = 0;
}

static struct rule *rule_find(struct pa_unwind *u, uint64_t key)
{
	unsigned set =
	    (unsigned)((key * 0x9e3779b97f4a7c15ULL) >> 52) % RULE_SETS;
	struct rule *ways = u->rules[set];
	for (int i = 0; i < RULE_WAYS; i++)
		if (ways[i].key == key) {
			ways[i].age = ++u->clock;
			return &ways[i];
		}
	return NULL;
}

static struct rule *rule_new(struct pa_unwind *u, uint64_t key)
{
	unsigned set =
	    (unsigned)((key * 0x9e3779b97f4a7c15ULL) >> 52) % RULE_SETS;
	struct rule *ways = u->rules[set];
	struct rule *r = ways[0].age <= ways[1].age ? &ways[0] : &ways[1];
	memset(r, 0, sizeof(*r));
	r->key = key;
	r->age = ++u->clock;
	return r;
}

/*
 * One step from the frame at ip (exact: the interrupted instruction; else
 * a return address) with registers regs to its caller's registers. The
 * rule for ip is cached: a miss takes libunwind's step and derives the
 * rule, which is used from then on only if it gives exactly what libunwind
 * gave. *tramp: the frame was the signal return trampoline.
 */
static int step(struct pa_unwind *u, uint64_t ip, int exact,
		const uint64_t *regs, uint64_t *next, int *tramp)
{
	struct walk *w = &u->w;
	uint64_t lookup = exact ? ip : ip - 1;
	uint64_t key = ip | ((uint64_t)(exact != 0) << 63);
	*tramp = 0;
	struct rule *r = rule_find(u, key);
	if (r) {
		u->rule_hits++;
		if (r->kind != RULE_COMPACT)
			no_memo(w);
		switch (r->kind) {
		case RULE_COMPACT:
			return compact_step(w, r, lookup, regs, next);
		case RULE_TRAMP:
			*tramp = 1;
			return signal_step(w, regs[R_RSP], next) == 0
				   ? STEP_OK
				   : STEP_ERROR;
		case RULE_NOINFO:
			return STEP_NOINFO;
		default:
			memcpy(w->regs, regs, sizeof(w->regs));
			return dwarf_frame(u, lookup, next, NULL);
		}
	}
	u->rule_misses++;
	/* Only a step that turns out compact keeps the walk rememberable
	 * (its reads are recorded meanwhile). */
	if (is_sigreturn(w, ip)) {
		no_memo(w);
		rule_new(u, key)->kind = RULE_TRAMP;
		*tramp = 1;
		return signal_step(w, regs[R_RSP], next) == 0 ? STEP_OK
							      : STEP_ERROR;
	}
	memcpy(w->regs, regs, sizeof(w->regs));
	const void *row;
	int rc = dwarf_frame(u, lookup, next, &row);
	if (rc == STEP_NOINFO) {
		no_memo(w);
		rule_new(u, key)->kind = RULE_NOINFO;
		return rc;
	}
	if (!row) {
		no_memo(w);
		return rc; /* nothing known: look again next time */
	}
	/* derive_rule and compact_step leave w->regs and the row alone;
	 * next holds libunwind's answer. */
	struct rule tmp;
	memset(&tmp, 0, sizeof(tmp));
	tmp.kind = RULE_ROW;
	uint64_t check[R_COUNT];
	if (derive_rule(u, lookup, row, &tmp) == 0) {
		int crc = compact_step(w, &tmp, lookup, regs, check);
		if (crc == rc &&
		    (rc != STEP_OK || memcmp(check, next, sizeof(check)) == 0))
			tmp.kind = RULE_COMPACT;
	}
	if (tmp.kind == RULE_COMPACT) {
		u->rule_compact++;
	} else {
		u->rule_row++;
		no_memo(w);
	}
	r = rule_new(u, key);
	tmp.key = r->key;
	tmp.age = r->age;
	*r = tmp;
	return rc;
}

static struct memo *memo_ways(struct pa_unwind *u, const struct pa_sample *s)
{
	uint64_t h = (s->regs[R_RIP] ^ s->regs[R_RSP] * 0x9e3779b97f4a7c15ULL ^
		      s->regs[R_RBP] << 7) *
		     0xbf58476d1ce4e5b9ULL;
	return u->memos[(h >> 32) % MEMO_SETS];
}

static int memo_key_is(const struct memo *m, const struct pa_sample *s,
		       int exact, int max)
{
	return m->ip == s->regs[R_RIP] && m->sp == s->regs[R_RSP] &&
	       m->bp == s->regs[R_RBP] && m->start == s->stack_start &&
	       m->len == s->stack_len && m->exact == exact &&
	       m->max == (uint32_t)max;
}

/* The frames of a remembered walk that applies to s, or -1. */
static int memo_find(struct pa_unwind *u, const struct pa_sample *s, int exact,
		     uint64_t *pcs, int max)
{
	struct memo *ways = memo_ways(u, s);
	for (int i = 0; i < MEMO_WAYS; i++) {
		struct memo *m = &ways[i];
		if (!m->ip || !memo_key_is(m, s, exact, max))
			continue;
		int j = 0;
		for (; j < m->nreads; j++) {
			uint64_t v;
			memcpy(&v, s->stack + m->read_off[j], 8);
			if (v != m->read_val[j])
				break;
		}
		if (j < m->nreads)
			continue;
		m->age = ++u->clock;
		memcpy(pcs, m->pcs, m->npcs * sizeof(pcs[0]));
		if (m->top)
			note_top(s->tid, m->top, 1);
		return m->npcs;
	}
	return -1;
}

static void memo_keep(struct pa_unwind *u, const struct pa_sample *s, int exact,
		      int max, const uint64_t *pcs, int n, uint64_t top)
{
	const struct memo_rec *rec = &u->rec;
	if (!rec->ok || n > MEMO_PCS)
		return;
	struct memo *ways = memo_ways(u, s);
	struct memo *m = ways[0].age <= ways[1].age ? &ways[0] : &ways[1];
	m->ip = s->regs[R_RIP];
	m->sp = s->regs[R_RSP];
	m->bp = s->regs[R_RBP];
	m->start = s->stack_start;
	m->len = s->stack_len;
	m->exact = (uint8_t)exact;
	m->max = (uint32_t)max;
	m->age = ++u->clock;
	m->top = top;
	m->nreads = (uint16_t)rec->nreads;
	for (int i = 0; i < rec->nreads; i++)
		m->read_off[i] = (uint32_t)(rec->addr[i] - s->stack_start);
	memcpy(m->read_val, rec->val, rec->nreads * sizeof(rec->val[0]));
	m->npcs = (uint16_t)n;
	memcpy(m->pcs, pcs, (size_t)n * sizeof(pcs[0]));
}

int pa_unwind_sample(struct pa_unwind *u, const struct pa_sample *s,
		     uint64_t *pcs, int max)
{
	if (!u || !s || !pcs || max <= 0)
		return -EINVAL;
	uint64_t ip = s->regs[R_RIP];
	if (ip == 0)
		return -ENOENT;
	int exact = (s->flags & PA_SAMPLE_LEAF_EXACT) != 0;
	const int leaf_exact = exact;
	int n = 0;
	pcs[n++] = exact ? ip : ip - 1;
	/* Whether pcs[n - 1] was moved back from a return address. */
	int adjusted = !exact;
	struct walk *w = &u->w;
	int walked = 0;	  /* a walk ran: remember it if it may be */
	uint64_t top = 0; /* where it found the outermost frame */
	if ((s->flags & PA_SAMPLE_NO_STACK) || n >= max ||
	    s->stack_len > PA_STACK_COPY ||
	    s->stack_start + s->stack_len < s->stack_start)
		goto out;

	/* The signature reads every module (a few cache lines each): only
	 * when the table looks different (a refresh that found a change
	 * builds a new array) and, in case it changed in place, every
	 * SIG_EVERY samples. */
	const struct pa_module *base = pa_modules_at(u->mods, 0);
	int count = pa_modules_count(u->mods);
	if (base != u->sig_base || count != u->sig_count ||
	    ++u->sig_age >= SIG_EVERY) {
		u->sig_base = base;
		u->sig_count = count;
		u->sig_age = 0;
		uint64_t sig = modules_signature(u->mods);
		if (sig != u->mods_sig) {
			memset(u->rows, 0, sizeof(u->rows));
			memset(u->rules, 0, sizeof(u->rules));
			memset(u->memos, 0, sizeof(u->memos));
			u->mods_sig = sig;
		}
	}
	w->s = s;
	w->mods = u->mods;
	w->slice_lo = s->stack_start;
	w->slice_hi = s->stack_start + s->stack_len;
	w->seg_lo = w->seg_hi = 0;
	w->di_mod = NULL;
	int known = u->memo_off ? -1 : memo_find(u, s, leaf_exact, pcs, max);
	if (known > 0) {
		u->memo_hits++;
		return known;
	}
	u->memo_misses++;
	u->rec.ok = 1;
	u->rec.nreads = 0;
	w->rec = &u->rec;
	uint64_t regs[R_COUNT];
	memcpy(regs, s->regs, sizeof(regs));
	uint64_t sp = regs[R_RSP];
	/* How the walk ended, for the stack top hint (useful_top). */
	int reached_end = 0, ran_off = 0, tramp_seen = 0;
	for (int steps = 0; n < max && steps < MAX_STEPS; steps++) {
		uint64_t next[R_COUNT];
		int tramp;
		int rc = step(u, ip, exact, regs, next, &tramp);
		if (tramp) {
			/* A handler returned here: this frame's address is
			 * the trampoline itself, and the frame it leads to is
			 * the interrupted one, both exact. */
			if (adjusted)
				pcs[n - 1] += 1;
			adjusted = 0;
			u->signal_frames++;
			tramp_seen = 1;
		}
		if (rc == STEP_NOINFO) {
			/* No unwind info (no .eh_frame, code without CFI,
			 * JIT): one frame-pointer step, DWARF again from the
			 * caller. */
			uint64_t fp = regs[R_RBP], ret, next_fp;
			if (fp_step(w, fp, sp, &ret, &next_fp) < 0)
				break;
			u->fp_frames++;
			memcpy(next, regs, sizeof(next));
			next[R_RIP] = ret;
			next[R_RSP] = fp + 16;
			next[R_RBP] = next_fp;
		} else if (rc != STEP_OK) {
			reached_end = rc == STEP_END;
			break;
		}
		uint64_t nip = next[R_RIP], nsp = next[R_RSP];
		if (nip == 0)
			break;
		/* Frames grow up; a handler on a sigaltstack may sit
		 * anywhere relative to what it interrupted. */
		if (!tramp && nsp <= sp)
			break;
		if (!in_exec(u->mods, nip))
			break;
		exact = tramp;
		pcs[n++] = exact ? nip : nip - 1;
		adjusted = !exact;
		memcpy(regs, next, sizeof(regs));
		ip = nip;
		sp = nsp;
		/* Beyond the copy nothing more can be read: this frame's
		 * address was the last thing known. */
		if (sp < w->slice_lo || sp >= w->slice_hi) {
			ran_off = 1;
			break;
		}
	}
	/* Only the outermost frame (its CFI says the return address is
	 * undefined: clone3, _start) says where the stack ends; a copy that
	 * was too short says the hint (if any) was wrong. */
	if (reached_end && !tramp_seen)
		note_top(s->tid, sp, 1);
	else if (ran_off)
		note_top(s->tid, 0, 0);
	/* A walk that ran off its copy is not remembered: its hint changes. */
	if (ran_off || tramp_seen)
		u->rec.ok = 0;
	w->rec = NULL;
	walked = 1;
	top = reached_end && !tramp_seen ? sp : 0;
out:;
	/* Frames inside the agent itself are removed wherever they are: at
	 * the top (hooks, handlers) and in the middle (a sample taken inside
	 * the real malloc called from our hook shows the host calling malloc,
	 * as it would without the agent). If nothing else is left, the
	 * outermost agent frame stays so the sample still counts somewhere. */
	int kept = 0;
	for (int i = 0; i < n; i++) {
		const struct pa_module *mod = pa_modules_find(u->mods, pcs[i]);
		if (!mod || !mod->is_self)
			pcs[kept++] = pcs[i];
	}
	if (kept == 0 && n > 0) {
		pcs[0] = pcs[n - 1];
		kept = 1;
	}
	n = kept;
	if (walked && !u->memo_off)
		memo_keep(u, s, leaf_exact, max, pcs, n, top);
	return n;
}

uint64_t pa_unwind_memo_hits(const struct pa_unwind *u)
{
	return u ? u->memo_hits : 0;
}

void pa_unwind_set_memo(struct pa_unwind *u, int on)
{
	if (u) {
		u->memo_off = !on;
		memset(u->memos, 0, sizeof(u->memos));
	}
}

#else /* !__x86_64__: the leaf only */

struct pa_unwind {
	struct pa_modules *mods;
};

int pa_unwind_new(struct pa_unwind **out, struct pa_modules *mods)
{
	if (!out || !mods)
		return -EINVAL;
	struct pa_unwind *u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->mods = mods;
	*out = u;
	return 0;
}

void pa_unwind_free(struct pa_unwind *u)
{
	free(u);
}

uint64_t pa_unwind_memo_hits(const struct pa_unwind *u)
{
	(void)u;
	return 0;
}

void pa_unwind_set_memo(struct pa_unwind *u, int on)
{
	(void)u, (void)on;
}

int pa_unwind_sample(struct pa_unwind *u, const struct pa_sample *s,
		     uint64_t *pcs, int max)
{
	if (!u || !s || !pcs || max <= 0)
		return -EINVAL;
	uint64_t ip = s->regs[REG_IP];
	if (ip == 0)
		return -ENOENT;
	pcs[0] = (s->flags & PA_SAMPLE_LEAF_EXACT) ? ip : ip - 1;
	return 1;
}

#endif
