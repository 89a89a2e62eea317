/* The module table: one dl_iterate_phdr walk per change, on the agent thread.
 */
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "modules.h"

#define MAX_MODULES 4096

struct pa_modules {
	struct pa_module *mods; /* sorted by start, owned */
	int n;
	uint64_t gen_seen;
	void (*forget)(struct pa_module *);
};

/* Bumped by dlopen/dlclose hooks; the table is stale while gen differs. */
static uint64_t modules_gen = 1;
static pthread_rwlock_t unload_lock = PTHREAD_RWLOCK_INITIALIZER;
/* How deep this thread is in read or unload brackets: a nested dlclose
 * (from a destructor, or from the agent thread itself) must not wait for
 * a lock its own thread holds. */
static __thread int lock_depth __attribute__((tls_model("initial-exec")));

void pa_modules_changed(void)
{
	__atomic_add_fetch(&modules_gen, 1, __ATOMIC_RELEASE);
}

void pa_modules_unload_begin(void)
{
	if (lock_depth++ == 0)
		pthread_rwlock_wrlock(&unload_lock);
}

void pa_modules_unload_end(void)
{
	pa_modules_changed();
	if (--lock_depth == 0)
		pthread_rwlock_unlock(&unload_lock);
}

void pa_modules_read_lock(void)
{
	if (lock_depth++ == 0)
		pthread_rwlock_rdlock(&unload_lock);
}

void pa_modules_read_unlock(void)
{
	if (--lock_depth == 0)
		pthread_rwlock_unlock(&unload_lock);
}

void pa_modules_atfork_child(void)
{
	pthread_rwlock_t fresh = PTHREAD_RWLOCK_INITIALIZER;
	memcpy(&unload_lock, &fresh, sizeof(fresh));
	lock_depth = 0;
}

int pa_modules_new(struct pa_modules **out)
{
	struct pa_modules *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	*out = m;
	return 0;
}

void pa_modules_set_forget(struct pa_modules *m,
			   void (*forget)(struct pa_module *))
{
	m->forget = forget;
}

static void release_module(struct pa_modules *m, struct pa_module *mod)
{
	if (mod->symbols && m->forget)
		m->forget(mod);
	free(mod->path);
}

void pa_modules_free(struct pa_modules *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->n; i++)
		release_module(m, &m->mods[i]);
	free(m->mods);
	free(m);
}

struct walk {
	struct pa_module *mods;
	int n, cap;
	int failed;
};

static void read_build_id(struct pa_module *mod,
			  const struct dl_phdr_info *info)
{
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_NOTE)
			continue;
		const uint8_t *p =
		    (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
		const uint8_t *end = p + ph->p_memsz;
		while (p + sizeof(ElfW(Nhdr)) <= end) {
			const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
			const uint8_t *name = p + sizeof(*nh);
			const uint8_t *desc = name + ((nh->n_namesz + 3) & ~3u);
			const uint8_t *next = desc + ((nh->n_descsz + 3) & ~3u);
			if (next > end)
				break;
			if (nh->n_type == NT_GNU_BUILD_ID &&
			    nh->n_namesz == 4 && memcmp(name, "GNU", 4) == 0 &&
			    nh->n_descsz > 0 &&
			    nh->n_descsz <= sizeof(mod->build_id)) {
				memcpy(mod->build_id, desc, nh->n_descsz);
				mod->build_id_len = (int)nh->n_descsz;
				return;
			}
			p = next;
		}
	}
}

static char *module_path(const struct dl_phdr_info *info, uint64_t start)
{
	if (start && start == getauxval(AT_SYSINFO_EHDR))
		return strdup("[vdso]");
	if (info->dlpi_name && info->dlpi_name[0])
		return strdup(info->dlpi_name);
	char buf[4096];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
	if (n <= 0)
		return strdup("[main]");
	buf[n] = 0;
	return strdup(buf);
}

static int walk_one(struct dl_phdr_info *info, size_t size, void *arg)
{
	(void)size;
	struct walk *w = arg;
	if (w->n >= MAX_MODULES)
		return 1;
	if (w->n == w->cap) {
		int cap = w->cap ? w->cap * 2 : 64;
		struct pa_module *mods =
		    realloc(w->mods, (size_t)cap * sizeof(*mods));
		if (!mods) {
			w->failed = 1;
			return 1;
		}
		w->mods = mods;
		w->cap = cap;
	}
	struct pa_module mod;
	memset(&mod, 0, sizeof(mod));
	mod.bias = info->dlpi_addr;
	mod.start = UINT64_MAX;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uint64_t s = info->dlpi_addr + ph->p_vaddr;
		uint64_t e = s + ph->p_memsz;
		if (ph->p_type == PT_LOAD) {
			if (s < mod.start)
				mod.start = s;
			if (e > mod.end)
				mod.end = e;
			if ((ph->p_flags & PF_X) && !mod.exec_end) {
				mod.exec_start = s;
				mod.exec_end = e;
				mod.exec_offset = ph->p_offset;
			}
			if ((ph->p_flags & PF_R) &&
			    mod.nsegs < PA_MODULE_MAX_SEGS) {
				mod.segs[mod.nsegs].start = s;
				mod.segs[mod.nsegs].end = e;
				mod.nsegs++;
			}
		} else if (ph->p_type == PT_GNU_EH_FRAME) {
			mod.eh_frame_hdr = s;
			mod.eh_frame_hdr_len = ph->p_memsz;
		}
	}
	if (mod.start == UINT64_MAX || !mod.exec_end)
		return 0; /* nothing executable: cannot appear in a stack */
	read_build_id(&mod, info);
	mod.path = module_path(info, mod.start);
	if (!mod.path) {
		w->failed = 1;
		return 1;
	}
	/* The agent's own frames are cut from stacks; statically linked
	 * into an executable (unit tests) it is not a separate module. */
	uint64_t self = (uint64_t)(uintptr_t)&pa_modules_new;
	mod.is_self = info->dlpi_name && info->dlpi_name[0] &&
		      self >= mod.exec_start && self < mod.exec_end;
	w->mods[w->n++] = mod;
	return 0;
}

static int by_start(const void *a, const void *b)
{
	const struct pa_module *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

int pa_modules_refresh(struct pa_modules *m, bool force)
{
	uint64_t gen = __atomic_load_n(&modules_gen, __ATOMIC_ACQUIRE);
	if (!force && gen == m->gen_seen)
		return 0;
	struct walk w = {0};
	dl_iterate_phdr(walk_one, &w);
	if (w.failed) {
		for (int i = 0; i < w.n; i++)
			free(w.mods[i].path);
		free(w.mods);
		return -ENOMEM;
	}
	qsort(w.mods, (size_t)w.n, sizeof(*w.mods), by_start);
	/* Carry symbol caches over to modules that are still the same
	 * file at the same place; release the rest. */
	for (int i = 0; i < m->n; i++) {
		struct pa_module *old = &m->mods[i];
		int kept = 0;
		for (int j = 0; j < w.n && !kept; j++) {
			struct pa_module *nw = &w.mods[j];
			if (nw->start == old->start && nw->bias == old->bias &&
			    strcmp(nw->path, old->path) == 0 && !nw->symbols) {
				nw->symbols = old->symbols;
				old->symbols = NULL;
				kept = 1;
			}
		}
		release_module(m, old);
	}
	free(m->mods);
	m->mods = w.mods;
	m->n = w.n;
	m->gen_seen = gen;
	return 0;
}

const struct pa_module *pa_modules_find(const struct pa_modules *m,
					uint64_t addr)
{
	int lo = 0, hi = m->n - 1;
	while (lo <= hi) {
		int mid = (lo + hi) / 2;
		const struct pa_module *mod = &m->mods[mid];
		if (addr < mod->start)
			hi = mid - 1;
		else if (addr >= mod->end)
			lo = mid + 1;
		else
			return mod;
	}
	return NULL;
}

bool pa_modules_readable(const struct pa_modules *m, uint64_t addr, size_t len)
{
	const struct pa_module *mod = pa_modules_find(m, addr);
	if (!mod || addr + len < addr)
		return false;
	for (int i = 0; i < mod->nsegs; i++)
		if (addr >= mod->segs[i].start &&
		    addr + len <= mod->segs[i].end)
			return true;
	return false;
}

int pa_modules_count(const struct pa_modules *m)
{
	return m->n;
}

struct pa_module *pa_modules_at(struct pa_modules *m, int i)
{
	return i >= 0 && i < m->n ? &m->mods[i] : NULL;
}
