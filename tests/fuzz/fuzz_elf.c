/* Fuzz target: ELF symbol loading (symbols.c) from a fuzzed file. The input
 * is written to a private temp file and looked up through a synthetic
 * module (no loaded image, so only the file is read). Input: byte 0 = k,
 * then k little-endian u32 offsets to look up, then the file. */
#include <fcntl.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "modules.h"
#include "symbols.h"

#define BIAS	   0x10000000ull
#define SPAN	   (1ull << 30)
#define GRID	   0x2000u /* every 8 bytes of the first 8 KiB */
#define MAX_LOOKUP 16

static struct pa_symbols *syms;
static char dir[64], path[96];

static void cleanup(void)
{
	unlink(path);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	snprintf(dir, sizeof(dir), "/tmp/pa-fuzz-elf-XXXXXX");
	if (!mkdtemp(dir) || pa_symbols_new(&syms))
		abort();
	snprintf(path, sizeof(path), "%s/module.so", dir);
	atexit(cleanup);
	return 0;
}

static void put_file(const uint8_t *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		abort();
	for (size_t off = 0; off < size;) {
		ssize_t w = write(fd, data + off, size - off);
		if (w <= 0)
			abort();
		off += (size_t)w;
	}
	close(fd);
}

/* Looks pc up twice (the second from the cache): same answer, a sane
 * name, a start at or below pc inside the module. */
static void lookup(struct pa_module *m, uint64_t pc)
{
	uint64_t start = 0, start2 = 0;
	const char *name = pa_symbols_lookup(syms, m, pc, &start);
	const char *name2 = pa_symbols_lookup(syms, m, pc, &start2);
	FZ_CHECK(m->symbols != NULL); /* loaded, even if empty */
	FZ_CHECK(!name == !name2);
	if (!name)
		return;
	FZ_CHECK(name == name2 && start == start2);
	FZ_CHECK(start <= pc && start >= m->start && start < m->end);
	size_t n = strnlen(name, 1u << 16);
	FZ_CHECK(n > 0 && n < (1u << 16));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	int k = fz_u8(&in) % (MAX_LOOKUP + 1);
	uint64_t offs[MAX_LOOKUP];
	for (int i = 0; i < k; i++)
		offs[i] = fz_uint(&in, 4);
	put_file(in.p, in.n);

	struct pa_module m;
	memset(&m, 0, sizeof(m));
	m.path = path;
	m.bias = BIAS;
	m.start = BIAS;
	m.end = BIAS + SPAN;
	m.exec_start = BIAS;
	m.exec_end = BIAS + SPAN;
	for (int i = 0; i < k; i++)
		lookup(&m, BIAS + offs[i]);
	for (uint64_t off = 0; off < GRID; off += 8)
		lookup(&m, BIAS + off);
	lookup(&m, BIAS + SPAN - 1);
	/* Below the module: never a hit. */
	FZ_CHECK(pa_symbols_lookup(syms, &m, BIAS - 1, NULL) == NULL);
	pa_symbols_forget(&m);
	FZ_CHECK(m.symbols == NULL);
	return 0;
}
