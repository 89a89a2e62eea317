/* Symbol lookup: own, libc (with its debug file), vDSO, C++/Rust names,
 * clones, replaced and hostile files. */
#include <dlfcn.h>
#include <elf.h>
#include <execinfo.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "modules.h"
#include "symbols.h"
#include "unit.h"

#define ADDR(p) ((uint64_t)(uintptr_t)(p))

/* ---- functions of this file the lookups must name -------------------- */

static volatile uintptr_t symbols_t_ra;

__attribute__((noinline)) static void symbols_t_record(void)
{
	symbols_t_ra = (uintptr_t)__builtin_return_address(0);
}

__attribute__((noinline)) static int symbols_t_static_fn(int x)
{
	symbols_t_record();
	return x * 3 + 1;
}

__attribute__((noinline)) int symbols_t_global_fn(int x);
__attribute__((noinline)) int symbols_t_global_fn(int x)
{
	symbols_t_record();
	return x * 5 + 2;
}

/* A constant argument at every call site: gcc -O2 makes this
 * symbols_t_scaled.constprop.0 (checked with nm below). */
__attribute__((noinline)) static int symbols_t_scaled(int x, int k)
{
	symbols_t_record();
	int r = 0;
	for (int i = 0; i < x; i++)
		r += i * k;
	return r;
}

struct symbols_t_big {
	int a;
	long pad[16];
	int b;
};

/* Fields passed instead of the pointer, an argument dropped: gcc -O2
 * makes symbols_t_fields.constprop.0.isra.0. */
__attribute__((noinline)) static int
symbols_t_fields(const struct symbols_t_big *p,
		 int unused __attribute__((unused)))
{
	int a = p->a, b = p->b;
	symbols_t_record();
	return a * 3 + b;
}

/* Named as C++ and Rust compilers would name them. */
void symbols_t_cxx(void) __asm__("_ZN7symtest5Meter4readEi");
__attribute__((noinline)) void symbols_t_cxx(void)
{
	symbols_t_record();
}
void symbols_t_rust(void) __asm__("_ZN4core3fmt5write17h0123456789abcdefE");
__attribute__((noinline)) void symbols_t_rust(void)
{
	symbols_t_record();
}
void symbols_t_rust_esc(void) __asm__(
    "\"_ZN66_$LT$alloc..vec..Vec$LT$T$GT$$u20$as$u20$core..ops..drop..Drop$GT$"
    "4drop17hfedcba9876543210E\"");
__attribute__((noinline)) void symbols_t_rust_esc(void)
{
	symbols_t_record();
}
void symbols_t_rust_v0(void) __asm__("_RNvCs1234_7mycrate3foo");
__attribute__((noinline)) void symbols_t_rust_v0(void)
{
	symbols_t_record();
}

/* Hand-written code with exact symbol sizes:
 *   short   FUNC size 1, then 31 bytes that belong to no symbol
 *   nosize  FUNC without size: up to the next symbol
 *   label   NOTYPE label after it
 *   sized   FUNC size 32 with a NOTYPE label inside (must not split it)
 *   outer   FUNC size 16 with a nested FUNC inner (size 4) at +4 */
__asm__(".pushsection .text\n"
	".p2align 6\n"
	".globl symbols_t_asm_short\n"
	".type symbols_t_asm_short, @function\n"
	"symbols_t_asm_short:\n"
	"\tret\n"
	".size symbols_t_asm_short, 1\n"
	".fill 31, 1, 0xcc\n"
	".globl symbols_t_asm_nosize\n"
	".type symbols_t_asm_nosize, @function\n"
	"symbols_t_asm_nosize:\n"
	".fill 4, 1, 0x90\n"
	"\tret\n"
	".globl symbols_t_asm_label\n"
	"symbols_t_asm_label:\n"
	".fill 10, 1, 0x90\n"
	"\tret\n"
	".p2align 5\n"
	".globl symbols_t_asm_sized\n"
	".type symbols_t_asm_sized, @function\n"
	"symbols_t_asm_sized:\n"
	".fill 16, 1, 0x90\n"
	".globl symbols_t_asm_inlabel\n"
	"symbols_t_asm_inlabel:\n"
	".fill 15, 1, 0x90\n"
	"\tret\n"
	".size symbols_t_asm_sized, 32\n"
	".p2align 5\n"
	".globl symbols_t_asm_outer\n"
	".type symbols_t_asm_outer, @function\n"
	"symbols_t_asm_outer:\n"
	".fill 4, 1, 0x90\n"
	".globl symbols_t_asm_inner\n"
	".type symbols_t_asm_inner, @function\n"
	"symbols_t_asm_inner:\n"
	".fill 4, 1, 0x90\n"
	".size symbols_t_asm_inner, 4\n"
	".fill 7, 1, 0x90\n"
	"\tret\n"
	".size symbols_t_asm_outer, 16\n"
	".popsection\n");
extern char symbols_t_asm_short[], symbols_t_asm_nosize[],
    symbols_t_asm_label[];
extern char symbols_t_asm_sized[], symbols_t_asm_inlabel[];
extern char symbols_t_asm_outer[], symbols_t_asm_inner[];
extern void _init(void); /* crti.o: in .init, no size */

static const char symbols_t_lib_src[] =
    "static volatile int sink;\n"
    "__attribute__((noinline)) static int hidden_work(int x)\n"
    "{ for (int i = 0; i < x; i++) sink += i * EXTRA; return sink; }\n"
    "void *symlib_static_addr(void) { return (void *)&hidden_work; }\n"
    "int symlib_exported(int x) { return hidden_work(x) + 1; }\n"
    "int symlib_other(int x) { return x * EXTRA + sink; }\n";

/* ---- helpers ------------------------------------------------------------ */

struct symbols_t_env {
	struct pa_modules *mods;
	struct pa_symbols *syms;
};

static void symbols_t_open(struct symbols_t_env *e)
{
	CHECK_EQ_INT(pa_modules_new(&e->mods), 0);
	pa_modules_set_forget(e->mods, pa_symbols_forget);
	CHECK_EQ_INT(pa_symbols_new(&e->syms), 0);
	CHECK_EQ_INT(pa_modules_refresh(e->mods, true), 0);
}

static void symbols_t_close(struct symbols_t_env *e)
{
	pa_modules_free(e->mods); /* first: it forgets the caches */
	pa_symbols_free(e->syms);
}

static struct pa_module *symbols_t_module(struct symbols_t_env *e,
					  uint64_t addr)
{
	const struct pa_module *m = pa_modules_find(e->mods, addr);
	CHECK(m != NULL);
	return (struct pa_module *)m;
}

/* The name of addr (in whichever module holds it); start in *start. */
static const char *symbols_t_name(struct symbols_t_env *e, uint64_t addr,
				  uint64_t *start)
{
	const struct pa_module *m = pa_modules_find(e->mods, addr);
	if (!m)
		return NULL;
	return pa_symbols_lookup(e->syms, (struct pa_module *)m, addr, start);
}

static void symbols_t_expect(struct symbols_t_env *e, uint64_t addr,
			     const char *want, uint64_t want_start)
{
	uint64_t start = 0;
	const char *name = symbols_t_name(e, addr, &start);
	if (!name || strcmp(name, want) != 0)
		FAIL("address %#llx: \"%s\", expected \"%s\"",
		     (unsigned long long)addr, name ? name : "(null)", want);
	if (want_start && start != want_start)
		FAIL("address %#llx (%s): start %#llx, expected %#llx",
		     (unsigned long long)addr, want, (unsigned long long)start,
		     (unsigned long long)want_start);
}

static void symbols_t_expect_null(struct symbols_t_env *e, uint64_t addr)
{
	const char *name = symbols_t_name(e, addr, NULL);
	if (name)
		FAIL("address %#llx: \"%s\", expected no symbol",
		     (unsigned long long)addr, name);
}

static int symbols_t_sh(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static int symbols_t_sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	fflush(NULL);
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "  command failed (%d): %s\n", rc, cmd);
	return rc;
}

/* Temporary directories of this test: a failing CHECK exits through
 * exit(), whose handler removes them; passing tests remove their own. */
static char symbols_t_dirs[4][64];

static void symbols_t_cleanup(void)
{
	for (int i = 0; i < 4; i++)
		if (symbols_t_dirs[i][0])
			symbols_t_sh("rm -rf '%s'", symbols_t_dirs[i]);
}

static void symbols_t_tmpdir(char *dir, size_t cap)
{
	snprintf(dir, cap, "/tmp/pa-symbols-XXXXXX");
	CHECK(mkdtemp(dir) != NULL);
	for (int i = 0; i < 4; i++) {
		if (!symbols_t_dirs[i][0]) {
			if (i == 0)
				atexit(symbols_t_cleanup);
			snprintf(symbols_t_dirs[i], sizeof(symbols_t_dirs[i]),
				 "%s", dir);
			break;
		}
	}
}

static void symbols_t_rmdir(const char *dir)
{
	symbols_t_sh("rm -rf '%s'", dir);
	for (int i = 0; i < 4; i++)
		if (strcmp(symbols_t_dirs[i], dir) == 0)
			symbols_t_dirs[i][0] = 0;
}

static void symbols_t_write(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK_EQ_INT(write(fd, data, len), (long long)len);
	close(fd);
}

static void *symbols_t_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	CHECK(f != NULL);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	CHECK(n > 0);
	fseek(f, 0, SEEK_SET);
	void *buf = malloc((size_t)n);
	CHECK(buf != NULL);
	CHECK_EQ_INT(fread(buf, 1, (size_t)n, f), n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* Puts data at path the way installers replace files: a new inode
 * renamed over the old one, so the mapped one stays intact. */
static void symbols_t_replace(const char *path, const void *data, size_t len)
{
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	symbols_t_write(tmp, data, len);
	CHECK_EQ_INT(rename(tmp, path), 0);
}

/* True if `nm` lists a symbol of this executable containing part. */
static int symbols_t_nm_has(const char *part)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "nm /proc/%d/exe", (int)getpid());
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	char line[1024];
	int found = 0;
	while (fgets(line, sizeof(line), p))
		found |= strstr(line, part) != NULL;
	pclose(p);
	return found;
}

/* A module for an arbitrary file: no loaded image behind it (nothing of
 * it is readable in memory), symbols at bias 0. */
static void symbols_t_fake_module(struct pa_module *m, char *path)
{
	memset(m, 0, sizeof(*m));
	m->path = path;
	m->start = 0;
	m->end = UINT64_MAX;
	m->exec_start = 0;
	m->exec_end = UINT64_MAX;
}

/* Builds a shared object from C source in dir; extra: flags. */
static void symbols_t_build_so(const char *dir, const char *out,
			       const char *src, const char *extra)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s.c", dir, out);
	symbols_t_write(path, src, strlen(src));
	CHECK_EQ_INT(
	    symbols_t_sh("cd '%s' && cc -O1 -shared -fPIC %s -o %s %s.c", dir,
			 extra, out, out),
	    0);
}

/* The value of symbol name in file (from nm), 0 if absent. */
static uint64_t symbols_t_nm_value(const char *file, const char *name)
{
	char cmd[4400];
	snprintf(cmd, sizeof(cmd), "nm '%s' 2>/dev/null", file);
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	char line[1024];
	uint64_t v = 0;
	while (fgets(line, sizeof(line), p)) {
		char sym[512], type;
		unsigned long long val;
		if (sscanf(line, "%llx %c %511s", &val, &type, sym) == 3 &&
		    strcmp(sym, name) == 0)
			v = val;
	}
	pclose(p);
	return v;
}

/* Sanitizer runtimes bring libstdc++ with them: then "no C++ runtime"
 * cannot be tested in this process. */
static int symbols_t_cxx_loaded(void)
{
	void *h = dlopen("libstdc++.so.6", RTLD_NOW | RTLD_NOLOAD);
	if (!h)
		return 0;
	dlclose(h);
	fprintf(stderr, "  note: libstdc++ is already loaded: mangled-name "
			"checks skipped\n");
	return 1;
}

/* ---- tests ----------------------------------------------------------------
 */

TEST(symbols_own_functions)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	symbols_t_expect(&e, ADDR(&symbols_t_static_fn) + 2,
			 "symbols_t_static_fn", ADDR(&symbols_t_static_fn));
	symbols_t_expect(&e, ADDR(&symbols_t_global_fn) + 3,
			 "symbols_t_global_fn", ADDR(&symbols_t_global_fn));
	symbols_t_expect(&e, ADDR(&symbols_t_global_fn), "symbols_t_global_fn",
			 ADDR(&symbols_t_global_fn));
	/* A return address minus one, as the unwinder hands them over. */
	CHECK_EQ_INT(symbols_t_static_fn(1), 4);
	symbols_t_expect(&e, symbols_t_ra - 1, "symbols_t_static_fn",
			 ADDR(&symbols_t_static_fn));
	CHECK_EQ_INT(symbols_t_global_fn(1), 7);
	symbols_t_expect(&e, symbols_t_ra - 1, "symbols_t_global_fn",
			 ADDR(&symbols_t_global_fn));
	/* Agent code linked into this executable is named too. */
	symbols_t_expect(&e, ADDR(&pa_symbols_lookup) + 1, "pa_symbols_lookup",
			 ADDR(&pa_symbols_lookup));
	symbols_t_expect_null(&e, 0);
	CHECK(pa_symbols_lookup(e.syms, NULL, ADDR(&symbols_t_static_fn),
				NULL) == NULL);
	symbols_t_close(&e);
}

TEST(symbols_sizes_and_labels)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	uint64_t s = ADDR(symbols_t_asm_short);
	symbols_t_expect(&e, s, "symbols_t_asm_short", s);
	/* Past its size the padding belongs to nobody. */
	symbols_t_expect_null(&e, s + 1);
	symbols_t_expect_null(&e, s + 20);
	symbols_t_expect_null(&e, s + 31);
	/* No size: up to the next symbol (the label). */
	uint64_t ns = ADDR(symbols_t_asm_nosize),
		 lb = ADDR(symbols_t_asm_label);
	CHECK_EQ_INT(ns, s + 32);
	symbols_t_expect(&e, ns, "symbols_t_asm_nosize", ns);
	symbols_t_expect(&e, ns + 4, "symbols_t_asm_nosize", ns);
	symbols_t_expect(&e, lb, "symbols_t_asm_label", lb);
	symbols_t_expect(&e, lb + 9, "symbols_t_asm_label", lb);
	/* A label inside a sized function does not split it. */
	uint64_t sz = ADDR(symbols_t_asm_sized),
		 in = ADDR(symbols_t_asm_inlabel);
	CHECK_EQ_INT(in, sz + 16);
	symbols_t_expect(&e, sz + 3, "symbols_t_asm_sized", sz);
	symbols_t_expect(&e, in, "symbols_t_asm_sized", sz);
	symbols_t_expect(&e, in + 10, "symbols_t_asm_sized", sz);
	/* Nested sized functions: the inner one, then the outer again. */
	uint64_t o = ADDR(symbols_t_asm_outer), i = ADDR(symbols_t_asm_inner);
	symbols_t_expect(&e, o + 1, "symbols_t_asm_outer", o);
	symbols_t_expect(&e, i + 2, "symbols_t_asm_inner", i);
	symbols_t_expect(&e, o + 10, "symbols_t_asm_outer", o);
	symbols_t_expect(&e, o + 15, "symbols_t_asm_outer", o);
	/* Read-only data after the code: the last code symbol (_fini, no
	 * size) does not reach past the executable segment. */
	struct pa_module *m = symbols_t_module(&e, ADDR(symbols_t_lib_src));
	CHECK(ADDR(symbols_t_lib_src) >= m->exec_end);
	symbols_t_expect_null(&e, ADDR(symbols_t_lib_src));
	symbols_t_expect_null(&e, m->exec_end);
	/* _init has no size and .plt follows .init: the stubs are not _init. */
	symbols_t_expect(&e, ADDR(&_init) + 4, "_init", ADDR(&_init));
	symbols_t_expect_null(&e, ADDR(&_init) + 0x40);
	symbols_t_close(&e);
}

TEST(symbols_clone_suffixes)
{
	/* The compiler really cloned them (else this test proves nothing). */
	CHECK(symbols_t_nm_has("symbols_t_scaled.constprop."));
	/* Sanitizer builds keep the pointer argument: no .isra there. */
	if (!symbols_t_nm_has("symbols_t_fields.constprop.0.isra."))
		fprintf(stderr, "  note: no symbols_t_fields.constprop.0.isra "
				"clone in this build\n");
	struct symbols_t_env e;
	symbols_t_open(&e);
	CHECK(symbols_t_scaled(10, 7) + symbols_t_scaled(3, 7) ==
	      7 * 45 + 7 * 3);
	symbols_t_expect(&e, symbols_t_ra - 1, "symbols_t_scaled", 0);
	struct symbols_t_big big[2] = {{.a = 1, .b = 2}, {.a = 3, .b = 4}};
	CHECK_EQ_INT(symbols_t_fields(&big[0], 1) +
			 symbols_t_fields(&big[1], 2),
		     5 + 13);
	symbols_t_expect(&e, symbols_t_ra - 1, "symbols_t_fields", 0);
	symbols_t_close(&e);
}

TEST(symbols_libc_exported)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	void *(*volatile m)(size_t) = malloc;
	symbols_t_expect(&e, ADDR(m) + 4, "malloc", ADDR(m));
	/* Aliases: the public name wins over _IO_puts, __libc_calloc, __write.
	 */
	int (*volatile p)(const char *) = puts;
	symbols_t_expect(&e, ADDR(p) + 1, "puts", ADDR(p));
	void *(*volatile c)(size_t, size_t) = calloc;
	symbols_t_expect(&e, ADDR(c) + 1, "calloc", ADDR(c));
	ssize_t (*volatile w)(int, const void *, size_t) = write;
	symbols_t_expect(&e, ADDR(w) + 1, "write", ADDR(w));
	void (*volatile f)(void *) = free;
	symbols_t_expect(&e, ADDR(f) + 1, "free", ADDR(f));
	symbols_t_close(&e);
}

static void *symbols_t_thread(void *arg)
{
	void **pcs = arg;
	int n = backtrace(pcs, 64);
	pcs[n] = NULL;
	return NULL;
}

static int symbols_t_stack_has(struct symbols_t_env *e, void **pcs,
			       const char *want)
{
	for (int i = 0; pcs[i]; i++) {
		const char *name = symbols_t_name(e, ADDR(pcs[i]) - 1, NULL);
		if (name && strcmp(name, want) == 0)
			return 1;
	}
	fprintf(stderr, "  no \"%s\" in the stack:", want);
	for (int i = 0; pcs[i]; i++) {
		const char *name = symbols_t_name(e, ADDR(pcs[i]) - 1, NULL);
		fprintf(stderr, " %s", name ? name : "?");
	}
	fprintf(stderr, "\n");
	return 0;
}

/* libc's static functions are only in its separate debug file (libc6-dbg,
 * found by build ID). */
TEST(symbols_libc_debug_file)
{
	struct stat st;
	CHECK(stat("/usr/lib/debug/.build-id", &st) ==
	      0); /* libc6-dbg (make deps) */
	struct symbols_t_env e;
	void *pcs[65];
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, symbols_t_thread, pcs), 0);
	CHECK_EQ_INT(pthread_join(t, NULL), 0);
	symbols_t_open(&e);
	CHECK(symbols_t_stack_has(&e, pcs, "symbols_t_thread"));
	CHECK(symbols_t_stack_has(&e, pcs, "start_thread"));
	CHECK(symbols_t_stack_has(&e, pcs, "clone3"));
	int n = backtrace(pcs, 64);
	pcs[n] = NULL;
	CHECK(symbols_t_stack_has(&e, pcs, "main"));
	CHECK(symbols_t_stack_has(&e, pcs, "__libc_start_call_main"));
	CHECK(symbols_t_stack_has(&e, pcs, "__libc_start_main"));
	symbols_t_close(&e);
}

TEST(symbols_cxx_demangle)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	uint64_t fn = ADDR(&symbols_t_cxx);
	/* No C++ runtime in this process: names stay mangled. */
	if (!symbols_t_cxx_loaded())
		symbols_t_expect(&e, fn + 1, "_ZN7symtest5Meter4readEi", fn);
	void *h = dlopen("libstdc++.so.6", RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	/* The runtime is there now: the same entry is demangled. */
	symbols_t_expect(&e, fn + 1, "symtest::Meter::read(int)", fn);
	symbols_t_expect(&e, fn, "symtest::Meter::read(int)", fn);
	pa_modules_changed();
	CHECK_EQ_INT(pa_modules_refresh(e.mods, false), 0);
	void *dtor = dlsym(h, "_ZNSt9exceptionD1Ev");
	CHECK(dtor != NULL);
	symbols_t_expect(&e, ADDR(dtor) + 1, "std::exception::~exception()",
			 ADDR(dtor));
	void *what = dlsym(h, "_ZNKSt9exception4whatEv");
	CHECK(what != NULL);
	symbols_t_expect(&e, ADDR(what), "std::exception::what() const",
			 ADDR(what));
	symbols_t_close(&e);
}

TEST(symbols_rust_names)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	uint64_t r = ADDR(&symbols_t_rust), esc = ADDR(&symbols_t_rust_esc);
	uint64_t v0 = ADDR(&symbols_t_rust_v0);
	if (!symbols_t_cxx_loaded())
		symbols_t_expect(&e, r + 1,
				 "_ZN4core3fmt5write17h0123456789abcdefE", r);
	CHECK(dlopen("libstdc++.so.6", RTLD_NOW | RTLD_LOCAL) != NULL);
	symbols_t_expect(&e, r + 1, "core::fmt::write", r);
	symbols_t_expect(&e, esc + 1,
			 "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop",
			 esc);
	/* v0 mangling is not something __cxa_demangle reads: as is. */
	symbols_t_expect(&e, v0 + 1, "_RNvCs1234_7mycrate3foo", v0);
	symbols_t_close(&e);
}

TEST(symbols_vdso)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	struct pa_module *vdso = NULL;
	for (int i = 0; i < pa_modules_count(e.mods); i++)
		if (strcmp(pa_modules_at(e.mods, i)->path, "[vdso]") == 0)
			vdso = pa_modules_at(e.mods, i);
	CHECK(vdso != NULL);
	int found = 0, named = 0;
	for (uint64_t a = vdso->exec_start; a < vdso->exec_end; a++) {
		uint64_t start = 0;
		const char *name = pa_symbols_lookup(e.syms, vdso, a, &start);
		if (!name)
			continue;
		named++;
		CHECK(start <= a);
		Dl_info info;
		CHECK(dladdr((void *)(uintptr_t)a, &info) != 0);
		CHECK_EQ_INT(ADDR(info.dli_saddr), start);
		if (strcmp(name, "__vdso_clock_gettime") == 0)
			found = 1;
	}
	CHECK(found);
	CHECK(named > 100);
	symbols_t_close(&e);
}

/* dlopens a copy of libz, replaces the file on disk with data, then
 * checks that the first lookup names libz's functions right (from the
 * loaded image) or not at all. */
static void symbols_t_replaced(const void *data, size_t len)
{
	char dir[64], path[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/libsymz.so", dir);
	size_t zlen;
	void *z = symbols_t_read("/lib/x86_64-linux-gnu/libz.so.1", &zlen);
	symbols_t_write(path, z, zlen);
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	void *crc = dlsym(h, "crc32"), *defl = dlsym(h, "deflate");
	CHECK(crc && defl);
	symbols_t_replace(path, data ? data : z, data ? len : zlen / 3);
	struct symbols_t_env e;
	symbols_t_open(&e);
	struct pa_module *m = symbols_t_module(&e, ADDR(crc));
	CHECK(strcmp(m->path, path) == 0);
	symbols_t_expect(&e, ADDR(crc) + 2, "crc32", ADDR(crc));
	symbols_t_expect(&e, ADDR(defl) + 9, "deflate", ADDR(defl));
	/* Everything named in the module agrees with the loader's view. */
	for (uint64_t a = m->exec_start; a < m->exec_end; a += 7) {
		uint64_t start;
		const char *name = pa_symbols_lookup(e.syms, m, a, &start);
		if (!name)
			continue;
		Dl_info info;
		CHECK(dladdr((void *)(uintptr_t)a, &info) != 0);
		CHECK_EQ_INT(ADDR(info.dli_saddr), start);
	}
	symbols_t_close(&e);
	free(z);
	symbols_t_rmdir(dir);
}

TEST(symbols_replaced_by_other_elf)
{
	size_t len;
	void *other = symbols_t_read("/lib/x86_64-linux-gnu/libm.so.6", &len);
	symbols_t_replaced(other, len);
	free(other);
}

TEST(symbols_replaced_by_garbage)
{
	static uint8_t junk[65536];
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < sizeof(junk); i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		junk[i] = (uint8_t)x;
	}
	memcpy(junk, "\177ELF\2\1\1", 7);
	symbols_t_replaced(junk, sizeof(junk));
}

TEST(symbols_replaced_by_truncated)
{
	symbols_t_replaced(NULL, 0); /* a third of libz */
}

/* Without build IDs the file is compared with the loaded headers. */
TEST(symbols_replaced_without_build_id)
{
	char dir[64], path[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	symbols_t_build_so(dir, "liba.so", symbols_t_lib_src,
			   "-DEXTRA=3 -Wl,--build-id=none");
	char bigger[2048];
	snprintf(bigger, sizeof(bigger),
		 "%s\nint symlib_pad(int x) { int r = 0; for (int i = 0; i < "
		 "x; i++) "
		 "r += i * i * EXTRA + (i ^ x) * 7 + (r >> 3); return r; }\n",
		 symbols_t_lib_src);
	symbols_t_build_so(dir, "libb.so", bigger,
			   "-DEXTRA=5 -Wl,--build-id=none");
	snprintf(path, sizeof(path), "%s/liba.so", dir);
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	void *exported = dlsym(h, "symlib_exported");
	void *(*get)(void) = (void *(*)(void))dlsym(h, "symlib_static_addr");
	CHECK(exported && get);
	void *hidden = get();
	size_t len;
	char other[160];
	snprintf(other, sizeof(other), "%s/libb.so", dir);
	void *b = symbols_t_read(other, &len);
	symbols_t_replace(path, b, len);
	struct symbols_t_env e;
	symbols_t_open(&e);
	CHECK_EQ_INT(symbols_t_module(&e, ADDR(exported))->build_id_len, 0);
	symbols_t_expect(&e, ADDR(exported) + 1, "symlib_exported",
			 ADDR(exported));
	/* A static function is only in the (replaced) .symtab: unnamed rather
	 * than named from the wrong file. */
	symbols_t_expect_null(&e, ADDR(hidden) + 1);
	symbols_t_close(&e);
	free(b);
	symbols_t_rmdir(dir);
}

/* From the loaded .dynsym (file replaced), a symbol without size ends at
 * the next symbol or the end of the code segment. */
TEST(symbols_replaced_size0_in_memory)
{
	char dir[64], path[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	symbols_t_build_so(
	    dir, "liblast.so",
	    "int symlib_sized(int x) { return x * 3; }\n"
	    "__asm__(\".section symlast,\\\"ax\\\",@progbits\\n"
	    ".globl symlib_nosize\\n.type symlib_nosize,@function\\n"
	    "symlib_nosize:\\n nop\\n nop\\n nop\\n ret\\n.previous\\n\");\n",
	    "");
	snprintf(path, sizeof(path), "%s/liblast.so", dir);
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	void *nosize = dlsym(h, "symlib_nosize"),
	     *sized = dlsym(h, "symlib_sized");
	CHECK(nosize && sized);
	symbols_t_replace(path, "garbage", 7);
	struct symbols_t_env e;
	symbols_t_open(&e);
	struct pa_module *m = symbols_t_module(&e, ADDR(nosize));
	CHECK(ADDR(nosize) > ADDR(sized) && ADDR(nosize) < m->exec_end);
	symbols_t_expect(&e, ADDR(sized) + 1, "symlib_sized", ADDR(sized));
	symbols_t_expect(&e, ADDR(nosize), "symlib_nosize", ADDR(nosize));
	symbols_t_expect(&e, ADDR(nosize) + 3, "symlib_nosize", ADDR(nosize));
	symbols_t_expect(&e, m->exec_end - 1, "symlib_nosize", ADDR(nosize));
	/* Past the code segment: read-only data is nobody's. */
	CHECK(pa_modules_find(e.mods, m->exec_end + 0x1000) == m);
	symbols_t_expect_null(&e, m->exec_end);
	symbols_t_expect_null(&e, m->exec_end + 0x1000);
	symbols_t_close(&e);
	symbols_t_rmdir(dir);
}

/* Builds dir/libsymdbg.so stripped, its symbols in dir/.debug/ behind a
 * .gnu_debuglink; dlopens it; checks the static function's name. */
static void symbols_t_debuglink(const char *flags, int spoil, int want_static)
{
	char dir[64], path[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	symbols_t_build_so(dir, "full.so", symbols_t_lib_src, flags);
	CHECK_EQ_INT(
	    symbols_t_sh(
		"cd '%s' && mkdir .debug && "
		"objcopy --only-keep-debug full.so .debug/libsymdbg.debug && "
		"objcopy --strip-all "
		"--add-gnu-debuglink=.debug/libsymdbg.debug "
		"full.so libsymdbg.so",
		dir),
	    0);
	if (spoil == 1) /* other bytes: the CRC no longer matches */
		CHECK_EQ_INT(
		    symbols_t_sh("echo x >> '%s/.debug/libsymdbg.debug'", dir),
		    0);
	if (spoil == 2) { /* another build's debug file: another build ID */
		symbols_t_build_so(dir, "other.so", symbols_t_lib_src,
				   "-DEXTRA=11");
		CHECK_EQ_INT(
		    symbols_t_sh(
			"cd '%s' && objcopy --only-keep-debug other.so "
			".debug/libsymdbg.debug",
			dir),
		    0);
	}
	snprintf(path, sizeof(path), "%s/libsymdbg.so", dir);
	CHECK(!symbols_t_nm_value(path, "hidden_work")); /* really stripped */
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	void *exported = dlsym(h, "symlib_exported");
	void *(*get)(void) = (void *(*)(void))dlsym(h, "symlib_static_addr");
	CHECK(exported && get);
	void *hidden = get();
	struct symbols_t_env e;
	symbols_t_open(&e);
	symbols_t_expect(&e, ADDR(exported) + 1, "symlib_exported",
			 ADDR(exported));
	if (want_static)
		symbols_t_expect(&e, ADDR(hidden) + 1, "hidden_work",
				 ADDR(hidden));
	else
		symbols_t_expect_null(&e, ADDR(hidden) + 1);
	symbols_t_close(&e);
	symbols_t_rmdir(dir);
}

TEST(symbols_debuglink_crc)
{
	symbols_t_debuglink("-DEXTRA=3 -Wl,--build-id=none", 0, 1);
}

TEST(symbols_debuglink_crc_mismatch)
{
	symbols_t_debuglink("-DEXTRA=3 -Wl,--build-id=none", 1, 0);
}

TEST(symbols_debuglink_build_id)
{
	symbols_t_debuglink("-DEXTRA=3 -Wl,--build-id", 0, 1);
}

TEST(symbols_debuglink_build_id_mismatch)
{
	symbols_t_debuglink("-DEXTRA=3 -Wl,--build-id", 2, 0);
}

/* A fake module over path: every lookup in [0, 64 KiB) must not crash;
 * returns how many addresses were named. */
static int symbols_t_probe(struct pa_symbols *s, char *path)
{
	struct pa_module m;
	symbols_t_fake_module(&m, path);
	int named = 0;
	for (uint64_t a = 0; a < 0x10000; a += 13) {
		uint64_t start = 0;
		const char *name = pa_symbols_lookup(s, &m, a, &start);
		if (name) {
			CHECK(start <= a);
			CHECK(strlen(name) > 0);
			named++;
		}
	}
	pa_symbols_forget(&m);
	CHECK(m.symbols == NULL);
	return named;
}

TEST(symbols_hostile_files)
{
	char dir[64], path[128], good[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	symbols_t_build_so(dir, "good.so", symbols_t_lib_src, "-DEXTRA=3");
	snprintf(good, sizeof(good), "%s/good.so", dir);
	snprintf(path, sizeof(path), "%s/bad.so", dir);
	struct pa_symbols *s;
	CHECK_EQ_INT(pa_symbols_new(&s), 0);
	/* The good file through a fake module: names (so the probe can see). */
	CHECK(symbols_t_probe(s, good) > 5);
	struct pa_module m;
	symbols_t_fake_module(&m, good);
	uint64_t hw = symbols_t_nm_value(good, "hidden_work");
	CHECK(hw != 0);
	uint64_t start;
	CHECK_EQ_STR(pa_symbols_lookup(s, &m, hw + 1, &start), "hidden_work");
	CHECK_EQ_INT(start, hw);
	pa_symbols_forget(&m);
	size_t len;
	uint8_t *elf = symbols_t_read(good, &len);
	uint8_t *buf = malloc(len);
	CHECK(buf != NULL);
	/* ELF32, big-endian, another machine, not ELF. */
	static const struct {
		size_t off;
		uint8_t val;
	} flips[] = {{4, 1},
		     {5, 2},
		     {18, 183 /* EM_AARCH64 */},
		     {0, 0},
		     {16, 1 /* ET_REL */}};
	for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		memcpy(buf, elf, len);
		buf[flips[i].off] = flips[i].val;
		symbols_t_write(path, buf, len);
		CHECK_EQ_INT(symbols_t_probe(s, path), 0);
	}
	/* Truncated anywhere before the section headers: nothing. */
	uint64_t shoff;
	memcpy(&shoff, elf + 0x28, 8);
	CHECK(shoff > 0 && shoff < len);
	for (size_t cut = 0; cut < len; cut += cut < 256 ? 1 : 97) {
		symbols_t_write(path, elf, cut);
		int named = symbols_t_probe(s, path);
		if (cut < shoff)
			CHECK_EQ_INT(named, 0);
	}
	/* Section headers pointing everywhere. */
	memcpy(buf, elf, len);
	uint64_t huge = UINT64_MAX - 100;
	memcpy(buf + 0x28, &huge, 8);
	symbols_t_write(path, buf, len);
	CHECK_EQ_INT(symbols_t_probe(s, path), 0);
	/* Not regular files, missing files. */
	CHECK_EQ_INT(symbols_t_probe(s, dir), 0);
	snprintf(path, sizeof(path), "%s/fifo", dir);
	CHECK_EQ_INT(mkfifo(path, 0600), 0);
	CHECK_EQ_INT(symbols_t_probe(s, path), 0); /* must not block */
	snprintf(path, sizeof(path), "%s/missing.so", dir);
	CHECK_EQ_INT(symbols_t_probe(s, path), 0);
	char devnull[] = "/dev/null", pseudo[] = "[heap]", empty[] = "";
	CHECK_EQ_INT(symbols_t_probe(s, devnull), 0);
	CHECK_EQ_INT(symbols_t_probe(s, pseudo), 0);
	CHECK_EQ_INT(symbols_t_probe(s, empty), 0);
	free(buf);
	free(elf);
	pa_symbols_free(s);
	symbols_t_rmdir(dir);
}

/* Writes a synthetic ELF with nsym .symtab functions (16 bytes apart
 * from 0x1000, all named "symtab_fn") and 2 .dynsym functions at 0x1000
 * and 0x1010 ("dyn_first", "dyn_second"). */
static void symbols_t_synthetic_elf(const char *path, uint32_t nsym)
{
	static const char shstr[] =
	    "\0.text\0.symtab\0.strtab\0.dynsym\0.dynstr\0.shstrtab";
	static const char strtab[] = "\0symtab_fn";
	static const char dynstr[] = "\0dyn_first\0dyn_second";
	size_t symsz = ((size_t)nsym + 1) * sizeof(Elf64_Sym);
	size_t off_sym = sizeof(Elf64_Ehdr);
	size_t off_str = off_sym + symsz;
	size_t off_dyn = (off_str + sizeof(strtab) + 7) & ~(size_t)7;
	size_t off_dstr = off_dyn + 3 * sizeof(Elf64_Sym);
	size_t off_shstr = off_dstr + sizeof(dynstr);
	size_t off_sh = (off_shstr + sizeof(shstr) + 7) & ~(size_t)7;
	size_t total = off_sh + 7 * sizeof(Elf64_Shdr);
	uint8_t *f = calloc(1, total);
	CHECK(f != NULL);
	Elf64_Ehdr *eh = (Elf64_Ehdr *)f;
	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_type = ET_DYN;
	eh->e_machine = EM_X86_64;
	eh->e_version = EV_CURRENT;
	eh->e_ehsize = sizeof(Elf64_Ehdr);
	eh->e_shoff = off_sh;
	eh->e_shentsize = sizeof(Elf64_Shdr);
	eh->e_shnum = 7;
	eh->e_shstrndx = 6;
	Elf64_Sym *sym = (Elf64_Sym *)(f + off_sym);
	for (uint32_t i = 1; i <= nsym; i++) {
		sym[i].st_name = 1;
		sym[i].st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
		sym[i].st_shndx = 1;
		sym[i].st_value = 0x1000 + (uint64_t)(i - 1) * 16;
		sym[i].st_size = 8;
	}
	memcpy(f + off_str, strtab, sizeof(strtab));
	Elf64_Sym *dyn = (Elf64_Sym *)(f + off_dyn);
	for (int i = 1; i <= 2; i++) {
		dyn[i].st_name = i == 1 ? 1 : 11;
		dyn[i].st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
		dyn[i].st_shndx = 1;
		dyn[i].st_value = 0x1000 + (uint64_t)(i - 1) * 16;
		dyn[i].st_size = 8;
	}
	memcpy(f + off_dstr, dynstr, sizeof(dynstr));
	memcpy(f + off_shstr, shstr, sizeof(shstr));
	Elf64_Shdr *sh = (Elf64_Shdr *)(f + off_sh);
	sh[1] = (Elf64_Shdr){.sh_name = 1,
			     .sh_type = SHT_NOBITS,
			     .sh_flags = SHF_ALLOC | SHF_EXECINSTR,
			     .sh_addr = 0x1000,
			     .sh_offset = 0,
			     .sh_size = (uint64_t)nsym * 16 + 16};
	sh[2] = (Elf64_Shdr){.sh_name = 7,
			     .sh_type = SHT_SYMTAB,
			     .sh_offset = off_sym,
			     .sh_size = symsz,
			     .sh_link = 3,
			     .sh_entsize = sizeof(Elf64_Sym)};
	sh[3] = (Elf64_Shdr){.sh_name = 15,
			     .sh_type = SHT_STRTAB,
			     .sh_offset = off_str,
			     .sh_size = sizeof(strtab)};
	sh[4] = (Elf64_Shdr){.sh_name = 23,
			     .sh_type = SHT_DYNSYM,
			     .sh_offset = off_dyn,
			     .sh_size = 3 * sizeof(Elf64_Sym),
			     .sh_link = 5,
			     .sh_entsize = sizeof(Elf64_Sym)};
	sh[5] = (Elf64_Shdr){.sh_name = 31,
			     .sh_type = SHT_STRTAB,
			     .sh_offset = off_dstr,
			     .sh_size = sizeof(dynstr)};
	sh[6] = (Elf64_Shdr){.sh_name = 39,
			     .sh_type = SHT_STRTAB,
			     .sh_offset = off_shstr,
			     .sh_size = sizeof(shstr)};
	symbols_t_write(path, f, total);
	free(f);
}

/* Over the caps: a symbol table too large falls back to .dynsym; a
 * file too large is not read. */
TEST_TIMEOUT(symbols_caps, 60)
{
	char dir[64], path[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/synthetic.so", dir);
	struct pa_symbols *s;
	CHECK_EQ_INT(pa_symbols_new(&s), 0);
	struct pa_module m;
	symbols_t_fake_module(&m, path);
	/* Under the cap: the .symtab is read. */
	symbols_t_synthetic_elf(path, 1000);
	CHECK_EQ_STR(pa_symbols_lookup(s, &m, 0x1000 + 16 * 500 + 3, NULL),
		     "symtab_fn");
	pa_symbols_forget(&m);
	/* Over it: .dynsym only. */
	symbols_t_synthetic_elf(path, (2u << 20) + 10);
	uint64_t start = 0;
	CHECK_EQ_STR(pa_symbols_lookup(s, &m, 0x1012, &start), "dyn_second");
	CHECK_EQ_INT(start, 0x1010);
	CHECK_EQ_STR(pa_symbols_lookup(s, &m, 0x1001, NULL), "dyn_first");
	CHECK(pa_symbols_lookup(s, &m, 0x1000 + 16 * 500 + 3, NULL) == NULL);
	pa_symbols_forget(&m);
	/* A file over 256 MiB (sparse): not mapped at all. */
	symbols_t_synthetic_elf(path, 1000);
	CHECK_EQ_INT(truncate(path, (off_t)300 << 20), 0);
	CHECK(pa_symbols_lookup(s, &m, 0x1010, NULL) == NULL);
	pa_symbols_forget(&m);
	pa_symbols_free(s);
	symbols_t_rmdir(dir);
}

/* Random byte changes in headers, section headers, symbol and string
 * tables of a real shared object: no crash, no hang, sane answers. */
TEST_TIMEOUT(symbols_fuzz_mutations, 120)
{
	char dir[64], good[128], path[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	symbols_t_build_so(dir, "good.so", symbols_t_lib_src, "-DEXTRA=3");
	snprintf(good, sizeof(good), "%s/good.so", dir);
	snprintf(path, sizeof(path), "%s/mut.so", dir);
	size_t len;
	uint8_t *elf = symbols_t_read(good, &len);
	uint8_t *buf = malloc(len);
	CHECK(buf != NULL);
	uint64_t shoff;
	memcpy(&shoff, elf + 0x28, 8);
	struct pa_symbols *s;
	CHECK_EQ_INT(pa_symbols_new(&s), 0);
	uint64_t x = 88172645463325252ull;
	int named = 0;
	for (int iter = 0; iter < 1500; iter++) {
		memcpy(buf, elf, len);
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		int nflips = 1 + (int)(x % 8);
		for (int k = 0; k < nflips; k++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			size_t at;
			switch ((x >> 32) % 4) {
			case 0:
				at = (x >> 8) % 64; /* ELF header */
				break;
			case 1:
				at = shoff +
				     (x >> 8) %
					 (len - shoff); /* section headers */
				break;
			case 2:
				at = 64 + (x >> 8) %
					      0x600; /* phdrs, notes, dynsym */
				break;
			default:
				at = (x >> 8) % len;
				break;
			}
			buf[at] =
			    (x >> 40) & 1
				? (uint8_t)(x >> 48)
				: (uint8_t)(buf[at] ^ (1u << ((x >> 44) & 7)));
		}
		symbols_t_write(path, buf, len);
		named += symbols_t_probe(s, path) > 0;
	}
	CHECK(named > 100); /* most mutations leave the symbol table usable */
	pa_symbols_free(s);
	free(buf);
	free(elf);
	symbols_t_rmdir(dir);
}

TEST(symbols_forget_and_reload)
{
	struct symbols_t_env e;
	symbols_t_open(&e);
	uint64_t fn = ADDR(&symbols_t_global_fn);
	struct pa_module *m = symbols_t_module(&e, fn);
	const char *name = pa_symbols_lookup(e.syms, m, fn, NULL);
	CHECK_EQ_STR(name, "symbols_t_global_fn");
	CHECK(m->symbols != NULL);
	pa_symbols_forget(m);
	CHECK(m->symbols == NULL);
	pa_symbols_forget(m); /* twice: harmless */
	CHECK_EQ_STR(pa_symbols_lookup(e.syms, m, fn + 1, NULL),
		     "symbols_t_global_fn");
	/* A refresh keeps the cache of a module that stays. */
	void *cache = m->symbols;
	pa_modules_changed();
	CHECK_EQ_INT(pa_modules_refresh(e.mods, true), 0);
	m = symbols_t_module(&e, fn);
	CHECK(m->symbols == cache);
	/* dlclose: the module goes, its cache is forgotten with it. */
	void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	pa_symbols_free(NULL);
	symbols_t_close(&e);
}

/* The debug log names each module's count, source and memory. */
TEST(symbols_debug_log)
{
	char dir[64], log[128];
	symbols_t_tmpdir(dir, sizeof(dir));
	snprintf(log, sizeof(log), "%s/log", dir);
	int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	int saved = dup(2);
	dup2(fd, 2);
	close(fd);
	pa_log_level = PA_LOG_DEBUG;
	struct symbols_t_env e;
	symbols_t_open(&e);
	/* Not malloc: a sanitizer runtime would own that name. */
	const char *(*volatile v)(void) = gnu_get_libc_version;
	symbols_t_expect(&e, ADDR(v), "gnu_get_libc_version", ADDR(v));
	symbols_t_close(&e);
	dup2(saved, 2);
	size_t len;
	char *text = symbols_t_read(log, &len);
	text[len - 1] = 0;
	CHECK(strstr(text, "libc.so.6: ") != NULL);
	CHECK(strstr(text,
		     " functions from debug file /usr/lib/debug/.build-id/") !=
	      NULL);
	CHECK(strstr(text, " KiB; all modules ") != NULL);
	free(text);
	symbols_t_rmdir(dir);
}
