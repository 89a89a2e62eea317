/* Function names for addresses: ELF symbol tables of a module's file, its
 * separate debug file or its loaded image; aliases resolved, clone suffixes
 * stripped, C++ and Rust names demangled. Agent thread only. */
#include <ctype.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "symbols.h"

#if defined(__x86_64__)
#define HOST_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define HOST_MACHINE EM_AARCH64
#else
#error "pyroagent symbols: unsupported architecture"
#endif

/* Hard caps. Everything read from a file or from memory is checked
 * against them, and against the size of what holds it, before use. */
#define MAX_FILE_SIZE	(256ull << 20) /* ELF files we map */
#define MAX_SYMBOLS	(2u << 20)     /* candidates per module */
#define MAX_ARENA	(128u << 20)   /* name bytes per module */
#define MAX_TOTAL_BYTES (64ull << 20)  /* all modules' caches together */
#define MAX_NAME_LEN	16384 /* longer names are cut (never demangled) */
#define MAX_SECTIONS	(1u << 20)
#define MAX_PHDRS	512
#define MAX_DYN_ENTRIES 4096
#define MAX_HASH_WORDS	(1u << 24) /* buckets or bloom words in a hash table */
#define DEBUG_DIR	"/usr/lib/debug"
/* A size-0 symbol inside a sized one is a label of that function, and
 * nested sized symbols exist in hand-written assembly: a lookup walks back
 * at most this many entries to find the function that covers pc. */
#define MAX_WALK_BACK 64
/* __cxa_demangle puts about 70 bytes of stack per input byte in VLAs
 * (~300 KiB at 4 KiB): past this length the name stays mangled. */
#define DEMANGLE_MAX_IN	 4096
#define DEMANGLE_MAX_OUT 4096	    /* demangled names are cut here */
#define MAX_DEMANGLED	 (4u << 20) /* demangled bytes per module */
#define CHUNK_SIZE	 16384

/* The top bit of a name offset says the name lives in the demangled
 * store (the rest is an index into dem[]); arenas stay below 2 GiB. */
#define DEM_FLAG 0x80000000u

/* 16 bytes per function: the cache is sized for millions of them. */
struct sym {
	uint64_t start; /* runtime address */
	uint32_t size;	/* bytes; 0 = unknown: up to the next symbol */
	uint32_t name;	/* offset into arena, or DEM_FLAG | index into dem */
};

struct chunk {
	struct chunk *next;
	size_t used, cap;
	char data[];
};

/* One module's symbols, hung off pa_module.symbols; owned by the
 * pa_symbols that loaded it (listed there for accounting and teardown). */
struct symcache {
	struct pa_symbols *owner;
	struct symcache *prev, *next;
	struct sym *syms; /* sorted by start, one entry per address */
	uint32_t n;
	char *arena;	  /* NUL-terminated names; never reallocated, so the
			     pointers lookups return stay valid */
	const char **dem; /* final names of demangled entries (into chunks,
			     or into arena when demangling failed) */
	uint32_t ndem, dem_cap;
	struct chunk *chunks; /* demangled strings; never moved */
	size_t dem_bytes;
	size_t bytes; /* everything above, as counted in owner->total */
};

typedef char *(*demangle_fn)(const char *mangled, char *buf, size_t *len,
			     int *status);

struct pa_symbols {
	struct symcache *caches;
	size_t total_bytes;
	uint32_t nmodules;
	/* Every fallback is counted (and shown in the debug line per load). */
	uint64_t loads, from_symtab, from_debug, from_dynsym, from_memory;
	uint64_t empty, replaced, capped, budget, debug_mismatch;
	uint64_t demangled, demangle_failed;
	/* __cxa_demangle of a C++ runtime the host already loaded, found in
	 * its in-memory .dynsym; valid while the loader's add/remove counts
	 * are the ones seen when it was searched. */
	demangle_fn demangle;
	unsigned long long dem_adds, dem_subs;
	bool dem_searched;
};

static bool range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/* ------------------------------------------------------------------ */
/* Names                                                               */

static bool all_digits(const char *p, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (p[i] < '0' || p[i] > '9')
			return false;
	return true;
}

static bool word_is(const char *p, size_t len, const char *w)
{
	return strlen(w) == len && memcmp(p, w, len) == 0;
}

/* Clone and partition suffixes GCC and LLVM append to a function's name:
 * each piece is still that function in a profile. */
static bool clone_word(const char *p, size_t len)
{
	static const char *const words[] = {
	    "constprop", "isra", "part",       "cold",	      "lto_priv",
	    "clone",	 "llvm", "localalias", "specialized",
	};
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (word_is(p, len, words[i]))
			return true;
	return false;
}

/* Length of name without trailing clone suffixes, any combination:
 * foo.isra.0.constprop.1 -> foo, foo.part.0.cold -> foo. A name is never
 * stripped to nothing. */
static size_t strip_clone_suffixes(const char *name, size_t len)
{
	for (;;) {
		const char *dot = memrchr(name, '.', len);
		if (!dot || dot == name)
			return len;
		const char *tail = dot + 1;
		size_t tail_len = len - (size_t)(tail - name);
		if (clone_word(tail, tail_len)) {
			len = (size_t)(dot - name);
			continue;
		}
		if (!all_digits(tail, tail_len))
			return len;
		const char *dot2 = memrchr(name, '.', (size_t)(dot - name));
		if (!dot2 || dot2 == name ||
		    !clone_word(dot2 + 1, (size_t)(dot - dot2 - 1)))
			return len;
		len = (size_t)(dot2 - name);
	}
}

/* 0 public name, 1 reserved (_X, __x), 2 known glibc-internal alias.
 * The vDSO's __vdso_ names are what distinguishes it: public. */
static unsigned name_class(const char *n, size_t len)
{
	if (len >= 7 && memcmp(n, "__vdso_", 7) == 0)
		return 0;
	if ((len >= 5 && memcmp(n, "__GI_", 5) == 0) ||
	    (len >= 7 && memcmp(n, "__libc_", 7) == 0))
		return 2;
	if (len >= 2 && n[0] == '_' &&
	    (n[1] == '_' || isupper((unsigned char)n[1])))
		return 1;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Candidates: symbols read from any table, before aliases are merged.  */

struct cand {
	uint64_t start;
	uint64_t size;
	uint64_t limit;	  /* end of its section; UINT64_MAX if unknown */
	const char *name; /* into a mapped file or loaded memory */
	uint32_t len;
	uint8_t rank;	/* type << 4 | class << 2 | binding: lower wins */
	uint8_t unders; /* leading underscores */
};

struct collect {
	struct cand *v;
	size_t n, cap;
	bool capped;
	/* Only runtime addresses in [lo, hi) are kept. */
	uint64_t lo, hi;
};

static unsigned bind_rank(unsigned bind)
{
	switch (bind) {
	case STB_GLOBAL:
	case STB_GNU_UNIQUE:
		return 0;
	case STB_WEAK:
		return 1;
	case STB_LOCAL:
		return 2;
	default:
		return 3;
	}
}

/* Adds one symbol. limit: the end of its section (a size-0 symbol ends
 * there at the latest), or UINT64_MAX. is_label: an STT_NOTYPE label in
 * code (ranks below typed functions at the same address). Bad names are
 * skipped. */
static void add_cand(struct collect *col, uint64_t start, uint64_t size,
		     uint64_t limit, const char *strtab, uint64_t strsz,
		     uint32_t st_name, bool is_label, unsigned bind)
{
	if (col->capped || st_name == 0 || st_name >= strsz)
		return;
	if (start < col->lo || start >= col->hi)
		return;
	const char *name = strtab + st_name;
	uint64_t room = strsz - st_name;
	size_t scan = room < MAX_NAME_LEN + 1 ? (size_t)room : MAX_NAME_LEN + 1;
	const char *nul = memchr(name, 0, scan);
	size_t len;
	if (nul)
		len = (size_t)(nul - name);
	else if (room > MAX_NAME_LEN)
		len = MAX_NAME_LEN;
	else
		return; /* unterminated at the end of the table */
	if (is_label && (name[0] == '.' || name[0] == '$'))
		return; /* local and mapping labels ($x, $d, .L...) */
	len = strip_clone_suffixes(name, len);
	if (len == 0)
		return;
	if (col->n == col->cap) {
		if (col->cap >= MAX_SYMBOLS) {
			col->capped = true;
			return;
		}
		size_t cap = col->cap ? col->cap * 2 : 1024;
		if (cap > MAX_SYMBOLS)
			cap = MAX_SYMBOLS;
		struct cand *v = realloc(col->v, cap * sizeof(*v));
		if (!v) {
			col->capped = true;
			return;
		}
		col->v = v;
		col->cap = cap;
	}
	unsigned unders = 0;
	while (unders < len && name[unders] == '_' && unders < 255)
		unders++;
	struct cand *c = &col->v[col->n++];
	c->start = start;
	c->size = size;
	c->limit = limit;
	c->name = name;
	c->len = (uint32_t)len;
	c->rank = (uint8_t)((is_label ? 1u : 0u) << 4 |
			    name_class(name, len) << 2 | bind_rank(bind));
	c->unders = (uint8_t)unders;
}

/* Address order; at one address the preferred alias first: typed
 * functions over labels, public names over reserved ones over glibc's
 * __GI_/__libc_ aliases, GLOBAL over WEAK over LOCAL, fewer leading
 * underscores, shorter, then bytes (deterministic). */
static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x->rank != y->rank)
		return x->rank < y->rank ? -1 : 1;
	if (x->unders != y->unders)
		return x->unders < y->unders ? -1 : 1;
	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->name, y->name, x->len);
}

/* ------------------------------------------------------------------ */
/* ELF files                                                           */

struct elf_file {
	const uint8_t *map;
	size_t size;
	dev_t dev;
	ino_t ino;
	Elf64_Ehdr eh;
	uint64_t phoff; /* 0 when the program headers are unusable */
	uint32_t phnum;
	uint64_t shoff;
	uint32_t shnum;
	const char *shstr;
	uint64_t shstr_size;
	uint8_t build_id[32];
	size_t build_id_len;
};

static bool get_shdr(const struct elf_file *f, uint32_t i, Elf64_Shdr *sh)
{
	if (i >= f->shnum)
		return false;
	memcpy(sh, f->map + f->shoff + (uint64_t)i * sizeof(*sh), sizeof(*sh));
	return true;
}

static bool get_phdr(const struct elf_file *f, uint32_t i, Elf64_Phdr *ph)
{
	if (i >= f->phnum)
		return false;
	memcpy(ph, f->map + f->phoff + (uint64_t)i * sizeof(*ph), sizeof(*ph));
	return true;
}

/* The bytes of section i in the file: not NOBITS, not compressed, inside
 * the file. */
static bool sec_data(const struct elf_file *f, uint32_t i, const uint8_t **p,
		     uint64_t *len)
{
	Elf64_Shdr sh;
	if (!get_shdr(f, i, &sh) || sh.sh_type == SHT_NOBITS ||
	    sh.sh_type == SHT_NULL || (sh.sh_flags & SHF_COMPRESSED) ||
	    !range_ok(sh.sh_offset, sh.sh_size, f->size))
		return false;
	*p = f->map + sh.sh_offset;
	*len = sh.sh_size;
	return true;
}

static const char *sec_name(const struct elf_file *f, const Elf64_Shdr *sh)
{
	if (!f->shstr || sh->sh_name >= f->shstr_size)
		return NULL;
	const char *n = f->shstr + sh->sh_name;
	if (!memchr(n, 0, f->shstr_size - sh->sh_name))
		return NULL;
	return n;
}

/* Finds the GNU build ID note in [p, p+len). */
static bool note_build_id(const uint8_t *p, uint64_t len, uint64_t align,
			  uint8_t *id, size_t *id_len)
{
	if (align != 8)
		align = 4;
	uint64_t off = 0;
	while (len - off >= sizeof(Elf64_Nhdr)) {
		Elf64_Nhdr nh;
		memcpy(&nh, p + off, sizeof(nh));
		uint64_t name_off = off + sizeof(nh);
		uint64_t namesz = align_up(nh.n_namesz, align);
		if (namesz > len - name_off)
			return false;
		uint64_t desc_off = name_off + namesz;
		if (nh.n_descsz > len - desc_off)
			return false;
		if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
		    memcmp(p + name_off, "GNU", 4) == 0 && nh.n_descsz > 0 &&
		    nh.n_descsz <= 32) {
			memcpy(id, p + desc_off, nh.n_descsz);
			*id_len = nh.n_descsz;
			return true;
		}
		uint64_t descsz = align_up(nh.n_descsz, align);
		if (descsz > len - desc_off)
			return false;
		off = desc_off + descsz;
	}
	return false;
}

static bool ident_ok(const unsigned char *e)
{
	return memcmp(e, ELFMAG, SELFMAG) == 0 && e[EI_CLASS] == ELFCLASS64 &&
	       e[EI_DATA] == ELFDATA2LSB && e[EI_VERSION] == EV_CURRENT;
}

/* Validates headers and finds section and program header tables, the
 * section name table and the build ID. ELF32, other machines, other byte
 * orders: -ENOEXEC. Any table out of bounds is treated as absent. */
static int elf_parse(struct elf_file *f)
{
	if (f->size < sizeof(Elf64_Ehdr))
		return -ENOEXEC;
	memcpy(&f->eh, f->map, sizeof(f->eh));
	const Elf64_Ehdr *eh = &f->eh;
	if (!ident_ok(eh->e_ident) || eh->e_machine != HOST_MACHINE ||
	    (eh->e_type != ET_EXEC && eh->e_type != ET_DYN))
		return -ENOEXEC;
	if (eh->e_phnum && eh->e_phnum < MAX_PHDRS &&
	    eh->e_phentsize == sizeof(Elf64_Phdr) &&
	    range_ok(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr),
		     f->size)) {
		f->phoff = eh->e_phoff;
		f->phnum = eh->e_phnum;
	}
	if (eh->e_shoff && eh->e_shentsize == sizeof(Elf64_Shdr) &&
	    range_ok(eh->e_shoff, sizeof(Elf64_Shdr), f->size)) {
		Elf64_Shdr sh0;
		memcpy(&sh0, f->map + eh->e_shoff, sizeof(sh0));
		uint64_t shnum = eh->e_shnum ? eh->e_shnum : sh0.sh_size;
		if (shnum && shnum <= MAX_SECTIONS &&
		    range_ok(eh->e_shoff, shnum * sizeof(Elf64_Shdr),
			     f->size)) {
			f->shoff = eh->e_shoff;
			f->shnum = (uint32_t)shnum;
		}
		uint32_t strndx =
		    eh->e_shstrndx == SHN_XINDEX ? sh0.sh_link : eh->e_shstrndx;
		const uint8_t *p;
		uint64_t len;
		Elf64_Shdr ssh;
		if (f->shnum && get_shdr(f, strndx, &ssh) &&
		    ssh.sh_type == SHT_STRTAB &&
		    sec_data(f, strndx, &p, &len) && len > 0) {
			f->shstr = (const char *)p;
			f->shstr_size = len;
		}
	}
	/* Build ID: the note section (debug files keep it), else PT_NOTE. */
	for (uint32_t i = 0; i < f->shnum && !f->build_id_len; i++) {
		Elf64_Shdr sh;
		const uint8_t *p;
		uint64_t len;
		if (get_shdr(f, i, &sh) && sh.sh_type == SHT_NOTE &&
		    sec_data(f, i, &p, &len))
			note_build_id(p, len, sh.sh_addralign, f->build_id,
				      &f->build_id_len);
	}
	for (uint32_t i = 0; i < f->phnum && !f->build_id_len; i++) {
		Elf64_Phdr ph;
		if (get_phdr(f, i, &ph) && ph.p_type == PT_NOTE &&
		    range_ok(ph.p_offset, ph.p_filesz, f->size))
			note_build_id(f->map + ph.p_offset, ph.p_filesz,
				      ph.p_align, f->build_id,
				      &f->build_id_len);
	}
	return 0;
}

static void elf_close(struct elf_file *f)
{
	if (f->map)
		munmap((void *)f->map, f->size);
	memset(f, 0, sizeof(*f));
}

/* Maps path read-only and parses it. O_NONBLOCK: a FIFO put in a
 * library's place must not block the agent thread. The mapping only
 * lives while a module loads (the file being truncated under us in that
 * window would raise SIGBUS; rename-replacement, what installers do,
 * is harmless). */
static int elf_open(const char *path, struct elf_file *f)
{
	memset(f, 0, sizeof(*f));
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = 0;
	if (fstat(fd, &st) != 0)
		rc = -errno;
	else if (!S_ISREG(st.st_mode))
		rc = -EINVAL;
	else if ((uint64_t)st.st_size > MAX_FILE_SIZE)
		rc = -EFBIG;
	else if ((uint64_t)st.st_size < sizeof(Elf64_Ehdr))
		rc = -ENOEXEC;
	if (rc == 0) {
		void *map = mmap(NULL, (size_t)st.st_size, PROT_READ,
				 MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			rc = -errno;
		} else {
			f->map = map;
			f->size = (size_t)st.st_size;
			f->dev = st.st_dev;
			f->ino = st.st_ino;
		}
	}
	close(fd);
	if (rc == 0 && (rc = elf_parse(f)) != 0)
		elf_close(f);
	return rc;
}

static bool has_section(const struct elf_file *f, uint32_t type)
{
	for (uint32_t i = 0; i < f->shnum; i++) {
		Elf64_Shdr sh;
		const uint8_t *p;
		uint64_t len;
		if (get_shdr(f, i, &sh) && sh.sh_type == type &&
		    sec_data(f, i, &p, &len) && len >= 2 * sizeof(Elf64_Sym))
			return true;
	}
	return false;
}

/* Adds the functions of every symbol table of this type. Symbols count
 * only when defined in an executable section of f (debug files keep
 * their section headers, with .text as NOBITS: fine, only flags matter). */
static void collect_file(struct collect *col, const struct elf_file *f,
			 uint32_t type, uint64_t bias)
{
	for (uint32_t i = 0; i < f->shnum; i++) {
		Elf64_Shdr sh, strsh;
		const uint8_t *syms, *strs;
		uint64_t len, strsz;
		if (!get_shdr(f, i, &sh) || sh.sh_type != type)
			continue;
		if (sh.sh_entsize && sh.sh_entsize != sizeof(Elf64_Sym))
			continue;
		if (!sec_data(f, i, &syms, &len) ||
		    !get_shdr(f, sh.sh_link, &strsh) ||
		    strsh.sh_type != SHT_STRTAB ||
		    !sec_data(f, sh.sh_link, &strs, &strsz))
			continue;
		uint64_t count = len / sizeof(Elf64_Sym);
		for (uint64_t j = 1; j < count && !col->capped; j++) {
			Elf64_Sym s;
			memcpy(&s, syms + j * sizeof(s), sizeof(s));
			unsigned st_type = ELF64_ST_TYPE(s.st_info);
			bool label = st_type == STT_NOTYPE;
			if (st_type != STT_FUNC && st_type != STT_GNU_IFUNC &&
			    !label)
				continue;
			if (s.st_shndx == SHN_UNDEF ||
			    s.st_shndx >= SHN_LORESERVE)
				continue;
			Elf64_Shdr target;
			if (!get_shdr(f, s.st_shndx, &target) ||
			    !(target.sh_flags & SHF_EXECINSTR) ||
			    !(target.sh_flags & SHF_ALLOC))
				continue;
			if (s.st_value > UINT64_MAX - bias)
				continue;
			uint64_t limit = UINT64_MAX;
			if (target.sh_addr <= UINT64_MAX - bias &&
			    target.sh_size <=
				UINT64_MAX - bias - target.sh_addr)
				limit = bias + target.sh_addr + target.sh_size;
			add_cand(col, bias + s.st_value, s.st_size, limit,
				 (const char *)strs, strsz, s.st_name, label,
				 ELF64_ST_BIND(s.st_info));
		}
	}
}

/* ------------------------------------------------------------------ */
/* Loaded images: the vDSO, files replaced on disk, the C++ runtime.   */

#define MEM_MAX_SEGS 16

struct memimg {
	uint64_t bias;
	uint64_t phdr; /* runtime address of the program headers */
	uint32_t phnum;
	struct {
		uint64_t start, end;
	} segs[MEM_MAX_SEGS]; /* readable ranges */
	int nsegs;
	uint64_t exec_start, exec_end;
};

/* Reading loaded memory is safe inside readable PT_LOAD ranges of a
 * module that cannot be unloaded meanwhile (the caller holds
 * pa_modules_read_lock, or the loader's lock in dl_iterate_phdr). */
static bool mem_ok(const struct memimg *im, uint64_t addr, uint64_t len)
{
	for (int i = 0; i < im->nsegs; i++)
		if (addr >= im->segs[i].start && addr <= im->segs[i].end &&
		    len <= im->segs[i].end - addr)
			return true;
	return false;
}

static void mem_read(void *dst, uint64_t addr, size_t len)
{
	memcpy(dst, (const void *)(uintptr_t)addr, len);
}

/* The image of a module in the module table: its ELF header must be at
 * the start of its first segment (true for every linker's output). */
static bool memimg_from_module(struct memimg *im, const struct pa_module *m)
{
	memset(im, 0, sizeof(*im));
	im->bias = m->bias;
	for (int i = 0;
	     i < m->nsegs && i < PA_MODULE_MAX_SEGS && i < MEM_MAX_SEGS; i++) {
		im->segs[i].start = m->segs[i].start;
		im->segs[i].end = m->segs[i].end;
		im->nsegs++;
	}
	im->exec_start = m->exec_start;
	im->exec_end = m->exec_end;
	Elf64_Ehdr eh;
	if (!mem_ok(im, m->start, sizeof(eh)))
		return false;
	mem_read(&eh, m->start, sizeof(eh));
	if (!ident_ok(eh.e_ident) || eh.e_machine != HOST_MACHINE ||
	    eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 ||
	    eh.e_phnum > MAX_PHDRS || eh.e_phoff > UINT64_MAX - m->start ||
	    !mem_ok(im, m->start + eh.e_phoff,
		    (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr)))
		return false;
	im->phdr = m->start + eh.e_phoff;
	im->phnum = eh.e_phnum;
	return true;
}

static void memimg_from_phdrs(struct memimg *im,
			      const struct dl_phdr_info *info)
{
	memset(im, 0, sizeof(*im));
	im->bias = info->dlpi_addr;
	im->phdr = (uint64_t)(uintptr_t)info->dlpi_phdr;
	im->phnum = info->dlpi_phnum;
	for (int i = 0; i < info->dlpi_phnum && im->nsegs < MEM_MAX_SEGS; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_R))
			continue;
		im->segs[im->nsegs].start = info->dlpi_addr + ph->p_vaddr;
		im->segs[im->nsegs].end =
		    info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
		im->nsegs++;
		if ((ph->p_flags & PF_X) && !im->exec_end) {
			im->exec_start = info->dlpi_addr + ph->p_vaddr;
			im->exec_end = im->exec_start + ph->p_memsz;
		}
	}
}

/* A d_ptr as ld.so left it: relocated in place for ordinary objects,
 * link-time for read-only .dynamic (the vDSO). */
static uint64_t dyn_addr(const struct memimg *im, uint64_t v)
{
	if (mem_ok(im, v, 1))
		return v;
	if (v <= UINT64_MAX - im->bias && mem_ok(im, im->bias + v, 1))
		return im->bias + v;
	return 0;
}

struct dynsyms {
	uint64_t symtab, strtab, strsz, count;
};

static uint64_t gnu_hash_count(const struct memimg *im, uint64_t h)
{
	uint32_t hdr[4];
	if (!mem_ok(im, h, sizeof(hdr)))
		return 0;
	mem_read(hdr, h, sizeof(hdr));
	uint32_t nbuckets = hdr[0], symoffset = hdr[1], bloom = hdr[2];
	if (nbuckets == 0 || nbuckets > MAX_HASH_WORDS ||
	    bloom > MAX_HASH_WORDS)
		return 0;
	uint64_t buckets = h + sizeof(hdr) + (uint64_t)bloom * 8;
	if (!mem_ok(im, buckets, (uint64_t)nbuckets * 4))
		return 0;
	uint32_t max = 0;
	for (uint32_t i = 0; i < nbuckets; i++) {
		uint32_t b;
		mem_read(&b, buckets + (uint64_t)i * 4, 4);
		if (b > max)
			max = b;
	}
	if (max < symoffset)
		return symoffset;
	uint64_t chains = buckets + (uint64_t)nbuckets * 4;
	for (uint64_t idx = max; idx < MAX_SYMBOLS; idx++) {
		uint64_t at = chains + (idx - symoffset) * 4;
		uint32_t v;
		if (!mem_ok(im, at, 4))
			return 0;
		mem_read(&v, at, 4);
		if (v & 1)
			return idx + 1;
	}
	return 0;
}

/* .dynsym and .dynstr of a loaded image, through PT_DYNAMIC. */
static bool mem_dynsyms(const struct memimg *im, struct dynsyms *d)
{
	memset(d, 0, sizeof(*d));
	uint64_t hash = 0, gnu_hash = 0, syment = sizeof(Elf64_Sym);
	bool found = false;
	for (uint32_t i = 0; i < im->phnum && !found; i++) {
		Elf64_Phdr ph;
		mem_read(&ph, im->phdr + (uint64_t)i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_DYNAMIC)
			continue;
		found = true;
		uint64_t dyn = im->bias + ph.p_vaddr;
		uint64_t n = ph.p_memsz / sizeof(Elf64_Dyn);
		if (n > MAX_DYN_ENTRIES)
			n = MAX_DYN_ENTRIES;
		for (uint64_t k = 0; k < n; k++) {
			Elf64_Dyn e;
			uint64_t at = dyn + k * sizeof(e);
			if (!mem_ok(im, at, sizeof(e)))
				break;
			mem_read(&e, at, sizeof(e));
			if (e.d_tag == DT_NULL)
				break;
			switch (e.d_tag) {
			case DT_SYMTAB:
				d->symtab = dyn_addr(im, e.d_un.d_ptr);
				break;
			case DT_STRTAB:
				d->strtab = dyn_addr(im, e.d_un.d_ptr);
				break;
			case DT_STRSZ:
				d->strsz = e.d_un.d_val;
				break;
			case DT_SYMENT:
				syment = e.d_un.d_val;
				break;
			case DT_HASH:
				hash = dyn_addr(im, e.d_un.d_ptr);
				break;
			case DT_GNU_HASH:
				gnu_hash = dyn_addr(im, e.d_un.d_ptr);
				break;
			default:
				break;
			}
		}
	}
	if (!d->symtab || !d->strtab || !d->strsz ||
	    syment != sizeof(Elf64_Sym) || !mem_ok(im, d->strtab, d->strsz))
		return false;
	if (hash && mem_ok(im, hash, 8)) {
		uint32_t nchain;
		mem_read(&nchain, hash + 4, 4);
		d->count = nchain;
	} else if (gnu_hash) {
		d->count = gnu_hash_count(im, gnu_hash);
	}
	/* The usual layout puts .dynstr right after .dynsym: a bound. */
	if (d->strtab > d->symtab &&
	    (d->strtab - d->symtab) / sizeof(Elf64_Sym) < d->count)
		d->count = (d->strtab - d->symtab) / sizeof(Elf64_Sym);
	if (d->count > MAX_SYMBOLS)
		d->count = MAX_SYMBOLS;
	while (d->count > 0 &&
	       !mem_ok(im, d->symtab, d->count * sizeof(Elf64_Sym)))
		d->count /= 2; /* keep what is readable, never more */
	return d->count > 1;
}

static void collect_memory(struct collect *col, const struct memimg *im)
{
	struct dynsyms d;
	if (!mem_dynsyms(im, &d))
		return;
	const char *strs = (const char *)(uintptr_t)d.strtab;
	for (uint64_t j = 1; j < d.count && !col->capped; j++) {
		Elf64_Sym s;
		mem_read(&s, d.symtab + j * sizeof(s), sizeof(s));
		unsigned t = ELF64_ST_TYPE(s.st_info);
		if ((t != STT_FUNC && t != STT_GNU_IFUNC) ||
		    s.st_shndx == SHN_UNDEF || s.st_shndx >= SHN_LORESERVE ||
		    s.st_value > UINT64_MAX - im->bias)
			continue;
		uint64_t start = im->bias + s.st_value;
		if (start < im->exec_start || start >= im->exec_end)
			continue;
		add_cand(col, start, s.st_size, UINT64_MAX, strs, d.strsz,
			 s.st_name, false, ELF64_ST_BIND(s.st_info));
	}
}

/* The runtime address of a defined function in a loaded image's .dynsym,
 * or 0. */
static uint64_t mem_find_function(const struct memimg *im, const char *want)
{
	struct dynsyms d;
	if (!mem_dynsyms(im, &d))
		return 0;
	size_t wlen = strlen(want);
	for (uint64_t j = 1; j < d.count; j++) {
		Elf64_Sym s;
		mem_read(&s, d.symtab + j * sizeof(s), sizeof(s));
		if (ELF64_ST_TYPE(s.st_info) != STT_FUNC ||
		    s.st_shndx == SHN_UNDEF || s.st_value == 0 ||
		    s.st_name >= d.strsz || d.strsz - s.st_name <= wlen)
			continue;
		const char *n = (const char *)(uintptr_t)(d.strtab + s.st_name);
		if (memcmp(n, want, wlen + 1) != 0)
			continue;
		uint64_t addr = im->bias + s.st_value;
		return addr >= im->exec_start && addr < im->exec_end ? addr : 0;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Is the file on disk the one mapped?                                  */

static bool file_is_mapped_one(const struct elf_file *f,
			       const struct pa_module *m)
{
	if (m->build_id_len > 0)
		return f->build_id_len == (size_t)m->build_id_len &&
		       memcmp(f->build_id, m->build_id, f->build_id_len) == 0;
	/* No build ID to compare: the ELF and program headers in memory are
	 * the file's first bytes; a rebuilt file differs in them (sizes,
	 * offsets). Unreadable memory (a test's synthetic module): trust. */
	struct memimg im;
	if (!memimg_from_module(&im, m))
		return true;
	Elf64_Ehdr eh;
	mem_read(&eh, m->start, sizeof(eh));
	if (memcmp(&eh, &f->eh, sizeof(eh)) != 0 || f->phnum != im.phnum ||
	    !f->phoff)
		return false;
	return memcmp((const void *)(uintptr_t)im.phdr, f->map + f->phoff,
		      (size_t)f->phnum * sizeof(Elf64_Phdr)) == 0;
}

/* ------------------------------------------------------------------ */
/* Separate debug files                                                 */

static bool debuglink(const struct elf_file *f, char *name, size_t cap,
		      uint32_t *crc)
{
	for (uint32_t i = 0; i < f->shnum; i++) {
		Elf64_Shdr sh;
		const uint8_t *p;
		uint64_t len;
		if (!get_shdr(f, i, &sh) || sh.sh_type != SHT_PROGBITS)
			continue;
		const char *sn = sec_name(f, &sh);
		if (!sn || strcmp(sn, ".gnu_debuglink") != 0 ||
		    !sec_data(f, i, &p, &len))
			continue;
		const uint8_t *nul = memchr(p, 0, len);
		if (!nul || nul == p)
			return false;
		size_t nlen = (size_t)(nul - p);
		uint64_t crc_off = align_up(nlen + 1, 4);
		if (nlen >= cap || !range_ok(crc_off, 4, len) ||
		    memchr(p, '/', nlen))
			return false;
		memcpy(name, p, nlen + 1);
		memcpy(crc, p + crc_off, 4);
		return true;
	}
	return false;
}

/* Opens path as the debug file of main (expected build ID id, or the
 * debuglink CRC when there is no ID): 0 and *dbg mapped, or negative. */
static int try_debug_file(struct pa_symbols *s, const char *path,
			  const struct elf_file *main_f, const uint8_t *id,
			  size_t id_len, bool check_crc, uint32_t crc,
			  struct elf_file *dbg)
{
	if (elf_open(path, dbg) != 0)
		return -ENOENT;
	bool ok = dbg->dev != main_f->dev || dbg->ino != main_f->ino;
	if (ok && id_len)
		ok = dbg->build_id_len == id_len &&
		     memcmp(dbg->build_id, id, id_len) == 0;
	else if (ok && check_crc)
		ok = (uint32_t)crc32(0, dbg->map, (uInt)dbg->size) == crc;
	else
		ok = false;
	if (ok && !has_section(dbg, SHT_SYMTAB))
		ok = false;
	if (!ok) {
		s->debug_mismatch++;
		pa_log_once(PA_LOG_DEBUG,
			    "symbols: %s does not match its module: ignored",
			    path);
		elf_close(dbg);
		return -ESTALE;
	}
	return 0;
}

/* Looks for a separate debug file: by build ID under /usr/lib/debug,
 * then by .gnu_debuglink name in /usr/lib/debug/<dir>, <dir>/.debug and
 * <dir> (dir of the module's path and of its real path). */
static int open_debug(struct pa_symbols *s, const struct pa_module *m,
		      const struct elf_file *main_f, struct elf_file *dbg,
		      char *used, size_t used_cap)
{
	const uint8_t *id =
	    m->build_id_len > 0 ? m->build_id : main_f->build_id;
	size_t id_len = m->build_id_len > 0 ? (size_t)m->build_id_len
					    : main_f->build_id_len;
	char path[PATH_MAX];
	if (id_len >= 2) {
		char hex[2 * 32 + 1];
		for (size_t i = 0; i < id_len; i++)
			snprintf(hex + 2 * i, 3, "%02x", id[i]);
		int n = snprintf(path, sizeof(path),
				 DEBUG_DIR "/.build-id/%.2s/%s.debug", hex,
				 hex + 2);
		if (n > 0 && (size_t)n < sizeof(path) &&
		    try_debug_file(s, path, main_f, id, id_len, false, 0,
				   dbg) == 0)
			goto found;
	}
	char name[256];
	uint32_t crc;
	if (!debuglink(main_f, name, sizeof(name), &crc))
		return -ENOENT;
	char dirs[2][PATH_MAX];
	int ndirs = 0;
	const char *slash = strrchr(m->path, '/');
	if (slash && (size_t)(slash - m->path) < sizeof(dirs[0])) {
		memcpy(dirs[0], m->path, (size_t)(slash - m->path));
		dirs[0][slash - m->path] = 0;
		ndirs = 1;
	}
	char real[PATH_MAX];
	char *rslash;
	if (realpath(m->path, real) && (rslash = strrchr(real, '/'))) {
		*rslash = 0;
		if (!ndirs || strcmp(real, dirs[0]) != 0)
			memcpy(dirs[ndirs++], real, strlen(real) + 1);
	}
	for (int d = 0; d < ndirs; d++) {
		for (int k = 0; k < 3; k++) {
			int n;
			if (k == 0)
				n = snprintf(path, sizeof(path),
					     DEBUG_DIR "%s/%s", dirs[d], name);
			else if (k == 1)
				n = snprintf(path, sizeof(path), "%s/.debug/%s",
					     dirs[d], name);
			else
				n = snprintf(path, sizeof(path), "%s/%s",
					     dirs[d], name);
			if (n > 0 && (size_t)n < sizeof(path) &&
			    try_debug_file(s, path, main_f, id, id_len,
					   id_len == 0, crc, dbg) == 0)
				goto found;
		}
	}
	return -ENOENT;
found:
	snprintf(used, used_cap, "%s", path);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Building a module's cache                                            */

static void cache_free(struct symcache *c)
{
	if (!c)
		return;
	for (struct chunk *k = c->chunks, *next; k; k = next) {
		next = k->next;
		free(k);
	}
	free(c->dem);
	free(c->syms);
	free(c->arena);
	free(c);
}

/* Merges aliases (one entry per address, the preferred name, the largest
 * size), drops size-0 labels inside sized functions, ends the other
 * size-0 symbols at the next symbol or their section's end (_init must
 * not swallow .plt), and copies the names into one arena. Candidates must
 * be sorted. -E2BIG past a cap. */
static int build_cache(struct pa_symbols *s, struct collect *col,
		       struct symcache **out)
{
	size_t kept = 0;
	uint64_t cover_end = 0, name_bytes = 0;
	for (size_t i = 0; i < col->n;) {
		size_t j = i + 1;
		uint64_t size = col->v[i].size;
		while (j < col->n && col->v[j].start == col->v[i].start) {
			if (col->v[j].size > size)
				size = col->v[j].size;
			j++;
		}
		struct cand best = col->v[i];
		i = j;
		if (size == 0 && best.start < cover_end)
			continue;
		best.size = size;
		if (size && best.start + size > cover_end)
			cover_end = best.start + size;
		col->v[kept++] = best;
	}
	size_t final = 0;
	for (size_t i = 0; i < kept; i++) {
		struct cand k = col->v[i];
		if (k.size == 0 && k.limit != UINT64_MAX) {
			uint64_t end = k.limit;
			if (i + 1 < kept && col->v[i + 1].start < end)
				end = col->v[i + 1].start;
			if (end <= k.start)
				continue; /* an end marker: covers nothing */
			k.size = end - k.start;
		}
		if (k.size > UINT32_MAX)
			k.size = UINT32_MAX;
		col->v[final++] = k;
		name_bytes += k.len + 1;
	}
	kept = final;
	col->n = kept;
	size_t need =
	    sizeof(struct symcache) + kept * sizeof(struct sym) + name_bytes;
	if (name_bytes > MAX_ARENA || s->total_bytes > MAX_TOTAL_BYTES ||
	    need > MAX_TOTAL_BYTES - s->total_bytes)
		return -E2BIG;
	struct symcache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->syms = kept ? malloc(kept * sizeof(*c->syms)) : NULL;
	c->arena = name_bytes ? malloc(name_bytes) : NULL;
	if ((kept && !c->syms) || (name_bytes && !c->arena)) {
		cache_free(c);
		return -ENOMEM;
	}
	size_t off = 0;
	for (size_t i = 0; i < kept; i++) {
		const struct cand *k = &col->v[i];
		c->syms[i].start = k->start;
		c->syms[i].size = (uint32_t)k->size;
		c->syms[i].name = (uint32_t)off;
		memcpy(c->arena + off, k->name, k->len);
		c->arena[off + k->len] = 0;
		off += k->len + 1;
	}
	c->n = (uint32_t)kept;
	c->bytes = need;
	*out = c;
	return 0;
}

static bool pseudo_path(const char *path)
{
	return !path || !path[0] || path[0] == '[';
}

enum source { SRC_NONE, SRC_SYMTAB, SRC_DEBUG, SRC_DYNSYM, SRC_MEMORY };

static const char *source_name(enum source src)
{
	static const char *const names[] = {"nothing", ".symtab", "debug file",
					    ".dynsym", "loaded .dynsym"};
	return names[src];
}

/* Reads a module's functions into col. full: .symtab or a debug file's
 * too; otherwise .dynsym only (the fallback past a cap). Names in col
 * point into *main_f, *dbg or the module's memory. */
static enum source gather(struct pa_symbols *s, const struct pa_module *m,
			  bool full, struct collect *col,
			  struct elf_file *main_f, struct elf_file *dbg,
			  char *dbg_path, size_t dbg_cap)
{
	enum source src = SRC_NONE;
	struct memimg im;
	if (!pseudo_path(m->path)) {
		int rc = elf_open(m->path, main_f);
		if (rc == 0 && !file_is_mapped_one(main_f, m)) {
			s->replaced++;
			pa_log_once(PA_LOG_INFO,
				    "symbols: %s changed on disk since it was "
				    "loaded: using its loaded dynamic symbols",
				    m->path);
			elf_close(main_f);
		} else if (rc == 0) {
			if (full && has_section(main_f, SHT_SYMTAB)) {
				collect_file(col, main_f, SHT_SYMTAB, m->bias);
				src = SRC_SYMTAB;
			} else if (full && open_debug(s, m, main_f, dbg,
						      dbg_path, dbg_cap) == 0) {
				collect_file(col, dbg, SHT_SYMTAB, m->bias);
				src = SRC_DEBUG;
			}
			collect_file(col, main_f, SHT_DYNSYM, m->bias);
			if (src == SRC_NONE && col->n)
				src = SRC_DYNSYM;
		} else if (rc == -EFBIG) {
			s->capped++;
			pa_log_once(PA_LOG_INFO,
				    "symbols: %s is larger than %llu MiB: "
				    "using its loaded dynamic symbols",
				    m->path,
				    (unsigned long long)(MAX_FILE_SIZE >> 20));
		}
	}
	if (col->n == 0 && !col->capped && memimg_from_module(&im, m)) {
		collect_memory(col, &im);
		if (col->n)
			src = SRC_MEMORY;
	}
	return src;
}

static int load_module(struct pa_symbols *s, const struct pa_module *m,
		       struct symcache **out)
{
	struct collect col;
	struct elf_file main_f, dbg;
	char dbg_path[PATH_MAX];
	enum source src = SRC_NONE;
	int rc = 0;
	bool full = true;
	*out = NULL;
	memset(&col, 0, sizeof(col));
	for (;;) {
		memset(&main_f, 0, sizeof(main_f));
		memset(&dbg, 0, sizeof(dbg));
		dbg_path[0] = 0;
		col.n = 0;
		col.capped = false;
		col.lo = m->start;
		col.hi = m->end;
		src = gather(s, m, full, &col, &main_f, &dbg, dbg_path,
			     sizeof(dbg_path));
		rc = 0;
		if (!col.capped) {
			if (col.n > 1)
				qsort(col.v, col.n, sizeof(*col.v), cand_cmp);
			rc = build_cache(s, &col, out);
		}
		elf_close(&dbg);
		elf_close(&main_f);
		if ((col.capped || rc == -E2BIG) && full &&
		    (src == SRC_SYMTAB || src == SRC_DEBUG)) {
			if (col.capped)
				s->capped++;
			else
				s->budget++;
			pa_log_once(
			    PA_LOG_INFO,
			    "symbols: %s has more symbols than the "
			    "caps allow (%u entries, %u MiB names, "
			    "%llu MiB in all): dynamic symbols only",
			    m->path, MAX_SYMBOLS, MAX_ARENA >> 20,
			    (unsigned long long)(MAX_TOTAL_BYTES >> 20));
			full = false;
			continue;
		}
		break;
	}
	free(col.v);
	if (col.capped || rc == -E2BIG) {
		if (col.capped)
			s->capped++;
		else
			s->budget++;
		pa_log_once(PA_LOG_WARN,
			    "symbols: %s: over the symbol caps, not symbolized",
			    m->path);
		src = SRC_NONE;
		col.n = 0;
		/* An empty cache: the module is not tried again. */
		rc = build_cache(s, &col, out);
	}
	if (rc != 0)
		return rc;
	s->loads++;
	switch (src) {
	case SRC_SYMTAB:
		s->from_symtab++;
		break;
	case SRC_DEBUG:
		s->from_debug++;
		break;
	case SRC_DYNSYM:
		s->from_dynsym++;
		break;
	case SRC_MEMORY:
		s->from_memory++;
		break;
	case SRC_NONE:
		s->empty++;
		break;
	}
	struct symcache *c = *out;
	pa_debug("symbols: %s: %u functions from %s%s%s, %zu KiB; all modules "
		 "%zu KiB in %u caches (so far: %llu replaced on disk, %llu "
		 "over caps, %llu debug files rejected, %llu names demangled)",
		 m->path, c->n, source_name(src), dbg_path[0] ? " " : "",
		 dbg_path, (c->bytes + 1023) / 1024,
		 (s->total_bytes + c->bytes + 1023) / 1024, s->nmodules + 1,
		 (unsigned long long)s->replaced,
		 (unsigned long long)(s->capped + s->budget),
		 (unsigned long long)s->debug_mismatch,
		 (unsigned long long)s->demangled);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Demangling                                                           */

struct loader_counts {
	unsigned long long adds, subs;
	bool known;
};

static int counts_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct loader_counts *lc = arg;
	if (size >= offsetof(struct dl_phdr_info, dlpi_subs) +
			sizeof(info->dlpi_subs)) {
		lc->adds = info->dlpi_adds;
		lc->subs = info->dlpi_subs;
		lc->known = true;
	}
	return 1; /* the counts are global: one module is enough */
}

static int find_demangler_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	(void)size;
	const char *name = info->dlpi_name;
	if (!name || !name[0])
		return 0;
	const char *base = strrchr(name, '/');
	base = base ? base + 1 : name;
	if (strncmp(base, "libstdc++", 9) != 0 &&
	    strncmp(base, "libc++abi", 9) != 0)
		return 0;
	struct memimg im;
	memimg_from_phdrs(&im, info);
	uint64_t addr = mem_find_function(&im, "__cxa_demangle");
	if (!addr)
		return 0;
	*(demangle_fn *)arg = (demangle_fn)(uintptr_t)addr;
	return 1;
}

/* __cxa_demangle if a C++ runtime is loaded, else NULL. Never loads one.
 * Found by reading the runtime's loaded .dynsym from dl_iterate_phdr
 * rather than dlsym: dlsym takes the loader's dl_load_lock, which a
 * thread in dlopen holds while constructors run; a constructor calling
 * dlclose waits in our hook for pa_modules_read_lock, which our caller
 * holds: a deadlock. dl_iterate_phdr's lock is never held around
 * constructors. The pointer is trusted while the loader's add/remove
 * counts are unchanged (nothing unloaded since). */
static demangle_fn get_demangler(struct pa_symbols *s)
{
	struct loader_counts lc = {0, 0, false};
	dl_iterate_phdr(counts_cb, &lc);
	if (lc.known && s->dem_searched && lc.adds == s->dem_adds &&
	    lc.subs == s->dem_subs)
		return s->demangle;
	s->demangle = NULL;
	dl_iterate_phdr(find_demangler_cb, &s->demangle);
	s->dem_searched = lc.known;
	s->dem_adds = lc.adds;
	s->dem_subs = lc.subs;
	return s->demangle;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Rust's legacy mangling: _ZN...17h<16 hex>E. */
static bool rust_legacy(const char *m, size_t len)
{
	if (len < 23 || m[len - 1] != 'E' ||
	    memcmp(m + len - 20, "17h", 3) != 0)
		return false;
	for (size_t i = len - 17; i < len - 1; i++)
		if (!is_hex(m[i]))
			return false;
	return true;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Rust legacy names demangled as C++ keep the hash and rustc's escapes:
 * drop "::h<16 hex>" and decode $LT$ $GT$ $RF$ $BP$ $C$ $SP$ $LP$ $RP$
 * $uXX$ and "..", in place (never longer). */
static void rust_cleanup(char *s)
{
	size_t len = strlen(s);
	if (len >= 19 && memcmp(s + len - 19, "::h", 3) == 0) {
		bool hash = true;
		for (size_t i = len - 16; i < len; i++)
			hash = hash && is_hex(s[i]);
		if (hash)
			s[len -= 19] = 0;
	}
	static const struct {
		const char *code;
		char c;
	} esc[] = {{"$LT$", '<'}, {"$GT$", '>'}, {"$RF$", '&'}, {"$BP$", '*'},
		   {"$C$", ','},  {"$SP$", '@'}, {"$LP$", '('}, {"$RP$", ')'}};
	char *w = s;
	for (size_t r = 0; r < len;) {
		/* "_$" opens an identifier that starts with '$'. */
		if (s[r] == '_' && s[r + 1] == '$' &&
		    (r == 0 || s[r - 1] == ':')) {
			r++;
			continue;
		}
		if (s[r] == '$') {
			bool done = false;
			for (size_t k = 0;
			     k < sizeof(esc) / sizeof(esc[0]) && !done; k++) {
				size_t cl = strlen(esc[k].code);
				if (strncmp(s + r, esc[k].code, cl) == 0) {
					*w++ = esc[k].c;
					r += cl;
					done = true;
				}
			}
			if (!done && s[r + 1] == 'u' && r + 4 < len &&
			    s[r + 4] == '$') {
				int hi = hexval(s[r + 2]),
				    lo = hexval(s[r + 3]);
				int ch = hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
				if (ch >= 0x20 && ch < 0x7f) {
					*w++ = (char)ch;
					r += 5;
					done = true;
				}
			}
			if (done)
				continue;
		}
		if (s[r] == '.' && s[r + 1] == '.') {
			*w++ = ':';
			*w++ = ':';
			r += 2;
			continue;
		}
		*w++ = s[r++];
	}
	*w = 0;
}

static char *chunk_alloc(struct symcache *c, size_t len)
{
	struct chunk *k = c->chunks;
	if (!k || k->cap - k->used < len) {
		size_t cap = len > CHUNK_SIZE ? len : CHUNK_SIZE;
		k = malloc(sizeof(*k) + cap);
		if (!k)
			return NULL;
		k->next = c->chunks;
		k->used = 0;
		k->cap = cap;
		c->chunks = k;
		c->bytes += sizeof(*k) + cap;
		c->owner->total_bytes += sizeof(*k) + cap;
	}
	char *p = k->data + k->used;
	k->used += len;
	return p;
}

/* Remembers name as the final name of e (no more demangling attempts). */
static bool set_final(struct symcache *c, struct sym *e, const char *name)
{
	if (c->ndem == c->dem_cap) {
		uint32_t cap = c->dem_cap ? c->dem_cap * 2 : 64;
		const char **dem = realloc(c->dem, cap * sizeof(*dem));
		if (!dem)
			return false;
		c->bytes += (cap - c->dem_cap) * sizeof(*dem);
		c->owner->total_bytes += (cap - c->dem_cap) * sizeof(*dem);
		c->dem = dem;
		c->dem_cap = cap;
	}
	c->dem[c->ndem] = name;
	e->name = DEM_FLAG | c->ndem++;
	return true;
}

/* The display name of e: demangled once (lazily: most symbols are never
 * looked up) when a C++ runtime is loaded. */
static const char *entry_name(struct pa_symbols *s, struct symcache *c,
			      struct sym *e)
{
	if (e->name & DEM_FLAG)
		return c->dem[e->name & ~DEM_FLAG];
	const char *name = c->arena + e->name;
	if (name[0] != '_' || name[1] != 'Z')
		return name; /* Rust v0 (_R...) is left as is */
	size_t len = strlen(name);
	if (len > DEMANGLE_MAX_IN) {
		set_final(c, e, name);
		return name;
	}
	if (c->dem_bytes >= MAX_DEMANGLED ||
	    c->owner->total_bytes >= MAX_TOTAL_BYTES)
		return name;
	demangle_fn demangle = get_demangler(s);
	if (!demangle)
		return name; /* maybe later, once the host loads libstdc++ */
	int status = -1;
	char *out = demangle(name, NULL, NULL, &status);
	if (status != 0 || !out || !out[0]) {
		free(out);
		s->demangle_failed++;
		set_final(c, e, name);
		return name;
	}
	if (rust_legacy(name, len))
		rust_cleanup(out);
	size_t olen = strlen(out);
	if (olen > DEMANGLE_MAX_OUT) {
		olen = DEMANGLE_MAX_OUT;
		while (olen > 0 && ((unsigned char)out[olen] & 0xc0) == 0x80)
			olen--; /* do not cut a UTF-8 sequence */
	}
	char *copy = chunk_alloc(c, olen + 1);
	if (!copy) {
		free(out);
		return name;
	}
	memcpy(copy, out, olen);
	copy[olen] = 0;
	free(out);
	c->dem_bytes += olen + 1;
	if (!set_final(c, e, copy))
		return copy;
	s->demangled++;
	return copy;
}

/* ------------------------------------------------------------------ */
/* API                                                                  */

int pa_symbols_new(struct pa_symbols **out)
{
	struct pa_symbols *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	*out = s;
	return 0;
}

static void unlink_cache(struct symcache *c)
{
	struct pa_symbols *s = c->owner;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->caches = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->total_bytes -= c->bytes < s->total_bytes ? c->bytes : s->total_bytes;
	s->nmodules--;
}

void pa_symbols_free(struct pa_symbols *s)
{
	if (!s)
		return;
	for (struct symcache *c = s->caches, *next; c; c = next) {
		next = c->next;
		cache_free(c);
	}
	free(s);
}

void pa_symbols_forget(struct pa_module *m)
{
	if (!m || !m->symbols)
		return;
	struct symcache *c = m->symbols;
	unlink_cache(c);
	cache_free(c);
	m->symbols = NULL;
}

const char *pa_symbols_lookup(struct pa_symbols *s, struct pa_module *m,
			      uint64_t pc, uint64_t *start)
{
	if (!s || !m)
		return NULL;
	struct symcache *c = m->symbols;
	if (!c) {
		if (load_module(s, m, &c) != 0)
			return NULL; /* out of memory: try again later */
		c->owner = s;
		c->next = s->caches;
		if (s->caches)
			s->caches->prev = c;
		s->caches = c;
		s->total_bytes += c->bytes;
		s->nmodules++;
		m->symbols = c;
	}
	/* The last entry starting at or below pc. */
	uint32_t lo = 0, hi = c->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->syms[mid].start <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	uint32_t i = lo - 1;
	struct sym *e = &c->syms[i];
	struct sym *hit = NULL;
	if (e->size == 0) {
		/* No size and no section (the loaded .dynsym): up to the next
		 * symbol, inside the code segment. */
		uint64_t next =
		    i + 1 < c->n ? c->syms[i + 1].start : UINT64_MAX;
		if (pc < next && e->start >= m->exec_start && pc < m->exec_end)
			hit = e;
	} else {
		for (uint32_t k = 0; k <= i && k < MAX_WALK_BACK; k++) {
			struct sym *x = &c->syms[i - k];
			if (x->size && pc - x->start < x->size) {
				hit = x;
				break;
			}
		}
	}
	if (!hit)
		return NULL;
	if (start)
		*start = hit->start;
	return entry_name(s, c, hit);
}
