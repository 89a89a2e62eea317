/* Function names for addresses: ELF .symtab, then .dynsym, symbol sizes
 * respected, C++ demangled when libstdc++ is present. Agent thread only. */
#ifndef PA_SYMBOLS_H
#define PA_SYMBOLS_H

#include <stdint.h>

#include "modules.h"

struct pa_symbols;

int pa_symbols_new(struct pa_symbols **out);
/* Accepts NULL; frees module caches too: free the module tables first
 * (pa_modules_free forgets their caches), or their m->symbols dangle. */
void pa_symbols_free(struct pa_symbols *s);

/* Name of the function containing the absolute address pc in module m,
 * or NULL if no symbol covers it. The string is owned by the cache and
 * lives until m's cache is released (pa_symbols_forget, when the module
 * goes away) or pa_symbols_free: copy it to keep it longer. *start (if
 * not NULL) gets the function's absolute start address. Loads m's
 * symbols on first use (m->symbols), which may read m's loaded image:
 * the caller holds pa_modules_read_lock. */
const char *pa_symbols_lookup(struct pa_symbols *s, struct pa_module *m,
			      uint64_t pc, uint64_t *start);

/* Releases the cache hanging off a module that is going away. */
void pa_symbols_forget(struct pa_module *m);

#endif
