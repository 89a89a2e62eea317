/* The table of loaded modules (dl_iterate_phdr): ranges, unwind tables,
 * build IDs. Read on the agent thread; refreshed after dlopen/dlclose. */
#ifndef PA_MODULES_H
#define PA_MODULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PA_MODULE_MAX_SEGS 8

struct pa_module {
	char *path;	     /* absolute file path; "[vdso]" for the vDSO */
	uint64_t bias;	     /* load bias (dlpi_addr) */
	uint64_t start, end; /* lowest..highest address of PT_LOAD segments */
	uint64_t exec_start, exec_end,
	    exec_offset; /* executable segment and its file offset */
	uint64_t
	    eh_frame_hdr; /* runtime address of PT_GNU_EH_FRAME, 0 if none */
	uint64_t eh_frame_hdr_len;
	struct {
		uint64_t start, end;
	} segs[PA_MODULE_MAX_SEGS]; /* readable PT_LOAD ranges, runtime
				       addresses */
	int nsegs;
	uint8_t build_id[32];
	int build_id_len;
	bool is_self;  /* libpyroagent.so itself */
	void *symbols; /* owned by symbols.c (lazily loaded) */
};

struct pa_modules;

int pa_modules_new(struct pa_modules **out);
void pa_modules_free(struct pa_modules *m); /* accepts NULL */
/* Called for a module's symbol cache when the module goes away
 * (symbols.c passes pa_symbols_forget; keeps modules.c free of it). */
void pa_modules_set_forget(struct pa_modules *m,
			   void (*forget)(struct pa_module *));

/* Re-reads the module list if anything was loaded or unloaded since the
 * last call (or always, with force). Keeps per-module symbol caches of
 * modules that are still loaded. Agent thread only. */
int pa_modules_refresh(struct pa_modules *m, bool force);

/* The module whose PT_LOAD range holds addr, or NULL. */
const struct pa_module *pa_modules_find(const struct pa_modules *m,
					uint64_t addr);
/* True if [addr, addr+len) lies inside one readable segment of a module. */
bool pa_modules_readable(const struct pa_modules *m, uint64_t addr, size_t len);
int pa_modules_count(const struct pa_modules *m);
struct pa_module *pa_modules_at(struct pa_modules *m, int i);

/* Hooks' side: dlopen/dlclose tell the table it is stale (lock-free). */
void pa_modules_changed(void);
/* dlclose must not unmap code the agent thread is reading: the hook
 * brackets the real dlclose with these; the agent thread brackets its
 * reads of module memory with pa_modules_read_lock/unlock. */
void pa_modules_unload_begin(void);
void pa_modules_unload_end(void);
void pa_modules_read_lock(void);
void pa_modules_read_unlock(void);
/* After fork in the child: reset the lock (its holders are gone). */
void pa_modules_atfork_child(void);

#endif
