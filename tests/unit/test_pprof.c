/* pprof encoder: aggregation, folding, Pyroscope's checks, and what `go tool
 * pprof` reads. */
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "modules.h"
#include "pprof.h"
#include "profile.pb-c.h"
#include "symbols.h"
#include "unit.h"

typedef Perftools__Profiles__Profile Profile;
typedef Perftools__Profiles__Sample Sample;

/* Stack frames: distinct bodies so the compiler neither folds nor inlines
 * them; their addresses + 1 lie inside them. */
__attribute__((noinline)) static int pprof_fn_leaf(int x)
{
	__asm__ volatile("" : "+r"(x));
	return x * 7 + 1;
}

__attribute__((noinline)) static int pprof_fn_mid(int x)
{
	__asm__ volatile("" : "+r"(x));
	return pprof_fn_leaf(x) * 11 + 2;
}

__attribute__((noinline)) int pprof_fn_root(int x);
__attribute__((noinline)) int pprof_fn_root(int x)
{
	__asm__ volatile("" : "+r"(x));
	return pprof_fn_mid(x) * 13 + 3;
}

#define PC(fn) ((uint64_t)(uintptr_t)(fn) + 1)

static const struct pa_pprof_type cpu_types[] = {
    {"samples", "count"},
    {"cpu", "nanoseconds"},
};
static const struct pa_pprof_type mem_types[] = {
    {"alloc_objects", "count"},
    {"alloc_space", "bytes"},
    {"inuse_objects", "count"},
    {"inuse_space", "bytes"},
};

#define PERIOD	10000000
#define T_NANOS 1700000000123456789LL
#define D_NANOS 15000000000LL

struct env {
	struct pa_modules *mods;
	struct pa_symbols *syms;
};

static struct env env_new(void)
{
	struct env e;
	CHECK_EQ_INT(pa_modules_new(&e.mods), 0);
	CHECK_EQ_INT(pa_modules_refresh(e.mods, true), 0);
	CHECK_EQ_INT(pa_symbols_new(&e.syms), 0);
	pa_modules_set_forget(e.mods, pa_symbols_forget);
	return e;
}

static void env_free(struct env *e)
{
	pa_modules_free(e->mods);
	pa_symbols_free(e->syms);
}

static struct pa_pprof *cpu_new(size_t max_samples, size_t max_bytes,
				size_t max_stacks)
{
	struct pa_pprof_desc d = {
	    .sample_types = cpu_types,
	    .ntypes = 2,
	    .period_type = {"cpu", "nanoseconds"},
	    .period = PERIOD,
	    .max_samples = max_samples,
	    .max_bytes = max_bytes,
	    .max_stacks = max_stacks,
	};
	struct pa_pprof *p = NULL;
	CHECK_EQ_INT(pa_pprof_new(&p, &d), 0);
	return p;
}

static void add_cpu(struct pa_pprof *p, const uint64_t *pcs, int n,
		    const char *leaf, int64_t count)
{
	int64_t v[2] = {count, count * PERIOD};
	CHECK_EQ_INT(pa_pprof_add(p, pcs, n, leaf, v), 0);
}

static uint8_t *gunzip(const uint8_t *gz, size_t len, size_t *out_len)
{
	CHECK(len >= 18 && gz[0] == 0x1f && gz[1] == 0x8b);
	size_t cap = 64 << 20;
	uint8_t *out = malloc(cap);
	CHECK(out);
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	CHECK_EQ_INT(inflateInit2(&zs, 15 + 16), Z_OK);
	zs.next_in = (Bytef *)(uintptr_t)gz;
	zs.avail_in = (uInt)len;
	zs.next_out = out;
	zs.avail_out = (uInt)cap;
	CHECK_EQ_INT(inflate(&zs, Z_FINISH), Z_STREAM_END);
	CHECK_EQ_INT(zs.avail_in, 0);
	*out_len = zs.total_out;
	inflateEnd(&zs);
	return out;
}

/* Independent strict UTF-8 check (the test's oracle, not the encoder's). */
static bool utf8_ok(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	while (*s) {
		uint32_t c = *s, cp;
		int n;
		if (c < 0x80) {
			s++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (int i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i] & 0x3f);
		}
		static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
		if (cp < min[n] || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		s += n + 1;
	}
	return true;
}

static bool str_ok(const Profile *pr, int64_t i)
{
	return i >= 0 && (size_t)i < pr->n_string_table;
}

static const char *str_at(const Profile *pr, int64_t i)
{
	CHECK(str_ok(pr, i));
	return pr->string_table[i];
}

/* Every check Pyroscope applies on ingest (DESIGN.md), plus dense ids. */
static void check_pyroscope(const Profile *pr, size_t raw_len,
			    size_t max_samples, size_t max_bytes)
{
	CHECK(pr->n_string_table >= 1);
	CHECK_EQ_STR(pr->string_table[0], "");
	for (size_t i = 0; i < pr->n_string_table; i++)
		CHECK(utf8_ok(pr->string_table[i]));
	CHECK(pr->n_sample_type >= 1);
	for (size_t i = 0; i < pr->n_sample_type; i++) {
		CHECK(!strchr(str_at(pr, pr->sample_type[i]->type), '-'));
		CHECK(str_at(pr, pr->sample_type[i]->unit)[0]);
	}
	CHECK(pr->period_type);
	str_at(pr, pr->period_type->type);
	str_at(pr, pr->period_type->unit);
	str_at(pr, pr->default_sample_type);
	for (size_t i = 0; i < pr->n_comment; i++)
		str_at(pr, pr->comment[i]);
	CHECK(pr->n_sample <= max_samples);
	CHECK(raw_len <= max_bytes);
	for (size_t i = 0; i < pr->n_mapping; i++) {
		const Perftools__Profiles__Mapping *m = pr->mapping[i];
		CHECK_EQ_INT(m->id, i + 1);
		CHECK(str_at(pr, m->filename)[0]);
		str_at(pr, m->build_id);
		/* has_functions exactly where a symbol named an address:
		 * the rest is left to the server's symbolizer. */
		int named = 0;
		for (size_t j = 0; j < pr->n_location; j++) {
			const Perftools__Profiles__Location *l =
			    pr->location[j];
			if (l->mapping_id != m->id || l->n_line == 0)
				continue;
			uint64_t fid = l->line[0]->function_id;
			if (fid >= 1 && fid <= pr->n_function &&
			    strcmp(str_at(pr, pr->function[fid - 1]->name),
				   "[unknown]") != 0)
				named = 1;
		}
		CHECK_EQ_INT(m->has_functions, named);
		CHECK(m->memory_start < m->memory_limit);
	}
	for (size_t i = 0; i < pr->n_function; i++) {
		const Perftools__Profiles__Function *f = pr->function[i];
		CHECK_EQ_INT(f->id, i + 1);
		CHECK(str_at(pr, f->name)[0]);
		str_at(pr, f->system_name);
		str_at(pr, f->filename);
	}
	for (size_t i = 0; i < pr->n_location; i++) {
		const Perftools__Profiles__Location *l = pr->location[i];
		CHECK_EQ_INT(l->id, i + 1);
		CHECK(l->mapping_id <= pr->n_mapping);
		CHECK_EQ_INT(l->n_line, 1);
		CHECK(l->line[0]->function_id >= 1 &&
		      l->line[0]->function_id <= pr->n_function);
		/* one location per address */
		for (size_t j = 0; j < i && l->address; j++)
			CHECK(pr->location[j]->address != l->address);
	}
	for (size_t i = 0; i < pr->n_sample; i++) {
		const Sample *s = pr->sample[i];
		CHECK_EQ_INT(s->n_value, pr->n_sample_type);
		CHECK(s->n_location_id >= 1 && s->n_location_id <= 1000);
		for (size_t k = 0; k < s->n_location_id; k++)
			CHECK(s->location_id[k] >= 1 &&
			      s->location_id[k] <= pr->n_location);
		bool nonzero = false;
		for (size_t k = 0; k < s->n_value; k++)
			nonzero |= s->value[k] != 0;
		CHECK(nonzero);
	}
}

/* Encodes, checks gzip + every Pyroscope rule, and decodes. */
static Profile *encode_check(struct pa_pprof *p, struct env *e,
			     size_t max_samples, size_t max_bytes,
			     uint8_t **gz_out, size_t *gz_len)
{
	uint8_t *gz = NULL;
	size_t len = 0;
	CHECK_EQ_INT(pa_pprof_encode(p, e ? e->mods : NULL, e ? e->syms : NULL,
				     T_NANOS, D_NANOS, &gz, &len),
		     0);
	size_t raw_len;
	uint8_t *raw = gunzip(gz, len, &raw_len);
	Profile *pr = perftools__profiles__profile__unpack(NULL, raw_len, raw);
	CHECK(pr);
	free(raw);
	check_pyroscope(pr, raw_len, max_samples, max_bytes);
	CHECK_EQ_INT(pr->time_nanos, T_NANOS);
	CHECK_EQ_INT(pr->duration_nanos, D_NANOS);
	if (gz_out) {
		*gz_out = gz;
		*gz_len = len;
	} else {
		free(gz);
	}
	return pr;
}

static const Perftools__Profiles__Location *loc(const Profile *pr, uint64_t id)
{
	CHECK(id >= 1 && id <= pr->n_location);
	return pr->location[id - 1];
}

static const char *loc_name(const Profile *pr, uint64_t id)
{
	uint64_t f = loc(pr, id)->line[0]->function_id;
	return str_at(pr, pr->function[f - 1]->name);
}

/* The stack of a sample as "leaf;caller;...". */
static void stack_names(const Profile *pr, const Sample *s, char *buf,
			size_t cap)
{
	buf[0] = 0;
	for (size_t k = 0; k < s->n_location_id; k++) {
		size_t len = strlen(buf);
		snprintf(buf + len, cap - len, "%s%s", k ? ";" : "",
			 loc_name(pr, s->location_id[k]));
	}
}

static const Sample *find_stack(const Profile *pr, const char *names)
{
	char buf[4096];
	const Sample *found = NULL;
	for (size_t i = 0; i < pr->n_sample; i++) {
		stack_names(pr, pr->sample[i], buf, sizeof(buf));
		if (strcmp(buf, names) == 0) {
			CHECK(!found); /* identical stacks were merged */
			found = pr->sample[i];
		}
	}
	return found;
}

static int64_t total(const Profile *pr, size_t k)
{
	int64_t t = 0;
	for (size_t i = 0; i < pr->n_sample; i++)
		t += pr->sample[i]->value[k];
	return t;
}

static bool has_comment(const Profile *pr, const char *part)
{
	for (size_t i = 0; i < pr->n_comment; i++)
		if (strstr(str_at(pr, pr->comment[i]), part))
			return true;
	return false;
}

/* Runs `go tool pprof <args> FILE` on the profile and returns its stdout
 * (malloc'd). go is part of `make deps`: missing go fails the test. */
static char *go_pprof(const char *args, const uint8_t *gz, size_t len)
{
	char path[] = "/tmp/pa-pprof-test-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	CHECK_EQ_INT(write(fd, gz, len), (long long)len);
	close(fd);
	char cmd[512];
	snprintf(cmd, sizeof(cmd),
		 "HOME=/tmp GOTOOLCHAIN=local GOFLAGS= go tool pprof %s %s "
		 "2>/dev/null",
		 args, path);
	FILE *f = popen(cmd, "r");
	CHECK(f);
	size_t cap = 1 << 20, n = 0;
	char *out = malloc(cap + 1);
	CHECK(out);
	size_t r;
	while ((r = fread(out + n, 1, cap - n, f)) > 0)
		n += r;
	out[n] = 0;
	int status = pclose(f);
	unlink(path);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		FAIL("go tool pprof %s failed (exit %d%s): is go installed "
		     "(make deps)?\n%s",
		     args, WIFEXITED(status) ? WEXITSTATUS(status) : -1,
		     WIFEXITED(status) && WEXITSTATUS(status) == 127
			 ? ", command not found"
			 : "",
		     out);
	return out;
}

/* `go tool pprof -raw` output as stacks: "v1 v2: name;name;...". */
static int raw_stacks(const char *raw, char lines[][512], int max)
{
	/* Locations: "     3: 0x55.. M=1 name :0 s=0" */
	static char names[4096][256];
	int nnames = 0;
	const char *l = strstr(raw, "\nLocations\n");
	CHECK(l);
	for (l = strchr(l + 1, '\n') + 1; *l && *l != 'M' && nnames < 4096;
	     l = strchr(l, '\n') + 1) {
		/* "<id>: <address> [M=<mapping> ]<name> :0 s=0" */
		const char *eol = strchr(l, '\n');
		CHECK(eol);
		char *q;
		long id = strtol(l, &q, 10);
		CHECK(id >= 1 && id < 4096 && *q == ':');
		q = strchr(q + 2, ' ') + 1; /* past the address */
		if (strncmp(q, "M=", 2) == 0)
			q = strchr(q, ' ') + 1;
		const char *end = NULL;
		for (const char *c = q; c < eol; c++)
			if (c[0] == ' ' && c[1] == ':')
				end = c;
		CHECK(end);
		snprintf(names[id], sizeof(names[id]), "%.*s", (int)(end - q),
			 q);
		nnames = (int)id > nnames ? (int)id : nnames;
	}
	const char *s = strstr(raw, "\nSamples:\n");
	CHECK(s);
	s = strchr(s + 10, '\n') + 1; /* skip the sample type line */
	int n = 0;
	for (; *s && *s != 'L' && n < max; s = strchr(s, '\n') + 1) {
		/* "<v1> <v2>...: <id> <id>..." */
		const char *eol = strchr(s, '\n');
		CHECK(eol);
		char line[1024];
		snprintf(line, sizeof(line), "%.*s", (int)(eol - s), s);
		char *colon = strchr(line, ':');
		CHECK(colon);
		*colon = 0;
		lines[n][0] = 0;
		char *save, *tok;
		for (tok = strtok_r(line, " ", &save); tok;
		     tok = strtok_r(NULL, " ", &save)) {
			size_t len = strlen(lines[n]);
			snprintf(lines[n] + len, 512 - len, "%s%s",
				 len ? " " : "", tok);
		}
		size_t len = strlen(lines[n]);
		snprintf(lines[n] + len, 512 - len, ":");
		int first = 1;
		for (tok = strtok_r(colon + 1, " ", &save); tok;
		     tok = strtok_r(NULL, " ", &save)) {
			long id = strtol(tok, NULL, 10);
			CHECK(id >= 1 && id <= nnames);
			len = strlen(lines[n]);
			snprintf(lines[n] + len, 512 - len, "%s%s",
				 first ? " " : ";", names[id]);
			first = 0;
		}
		n++;
	}
	return n;
}

static bool has_line(char lines[][512], int n, const char *want)
{
	for (int i = 0; i < n; i++)
		if (strcmp(lines[i], want) == 0)
			return true;
	return false;
}

TEST(pprof_go_tool_reads_cpu_profile)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(16000, 1 << 20, 1000);
	uint64_t a[] = {PC(pprof_fn_leaf), PC(pprof_fn_mid), PC(pprof_fn_root)};
	uint64_t b[] = {PC(malloc), PC(pprof_fn_mid), PC(pprof_fn_root)};
	add_cpu(p, a, 3, NULL, 2);
	add_cpu(p, b, 3, NULL, 1);
	add_cpu(p, a, 3, NULL, 3);
	add_cpu(p, a + 1, 2, "[anonymous mmap]", 4);
	CHECK_EQ_INT(pa_pprof_nsamples(p), 3);
	CHECK_EQ_INT(pa_pprof_comment(p, "hello from the test"), 0);
	uint8_t *gz;
	size_t len;
	Profile *pr = encode_check(p, &e, 16000, 1 << 20, &gz, &len);
	perftools__profiles__profile__free_unpacked(pr, NULL);

	char *raw = go_pprof("-raw", gz, len);
	CHECK(strstr(raw, "PeriodType: cpu nanoseconds\n"));
	CHECK(strstr(raw, "Period: 10000000\n"));
	CHECK(strstr(raw, "Duration: 15s\n"));
	CHECK(strstr(raw, "Comment: hello from the test\n"));
	/* cpu is the default type pprof shows */
	CHECK(strstr(raw, "\nsamples/count cpu/nanoseconds[dflt]\n"));
	static char lines[16][512];
	int n = raw_stacks(raw, lines, 16);
	CHECK_EQ_INT(n, 3);
	CHECK(has_line(lines, n,
		       "5 50000000: pprof_fn_leaf;pprof_fn_mid;pprof_fn_root"));
	CHECK(has_line(lines, n,
		       "1 10000000: malloc;pprof_fn_mid;pprof_fn_root"));
	CHECK(has_line(
	    lines, n,
	    "4 40000000: [anonymous mmap];pprof_fn_mid;pprof_fn_root"));
	/* The mappings: the test binary and libc, with build IDs, symbolized.
	 */
	CHECK(strstr(raw, "unit-tests") || strstr(raw, "build-"));
	const struct pa_module *libc = pa_modules_find(e.mods, PC(malloc));
	CHECK(libc && strstr(raw, strrchr(libc->path, '/')));
	CHECK(strstr(raw, "[FN]"));
	free(raw);

	char *top = go_pprof("-top -nodecount=3", gz, len);
	CHECK(strstr(top, "Type: cpu"));
	CHECK(strstr(top, "Total samples = 100ms"));
	CHECK(strstr(top, "pprof_fn_leaf"));
	free(top);
	free(gz);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_go_tool_reads_memory_profile)
{
	struct env e = env_new();
	struct pa_pprof_desc d = {
	    .sample_types = mem_types,
	    .ntypes = 4,
	    .period_type = {"space", "bytes"},
	    .period = 524288,
	    .max_samples = 16000,
	    .max_bytes = 1 << 20,
	    .max_stacks = 1000,
	};
	struct pa_pprof *p;
	CHECK_EQ_INT(pa_pprof_new(&p, &d), 0);
	uint64_t a[] = {PC(pprof_fn_mid), PC(pprof_fn_root)};
	CHECK_EQ_INT(pa_pprof_add(p, a, 2, NULL, (int64_t[]){3, 3000, 1, 1000}),
		     0);
	CHECK_EQ_INT(pa_pprof_add(p, a, 2, "[anonymous mmap]",
				  (int64_t[]){1, 65536, 1, 65536}),
		     0);
	CHECK_EQ_INT(
	    pa_pprof_add(p, a + 1, 1, NULL, (int64_t[]){0, 0, 2, 2048}), 0);
	uint8_t *gz;
	size_t len;
	Profile *pr = encode_check(p, &e, 16000, 1 << 20, &gz, &len);
	CHECK_EQ_STR(str_at(pr, pr->default_sample_type), "inuse_space");
	CHECK_EQ_INT(pr->period, 524288);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	char *raw = go_pprof("-raw", gz, len);
	CHECK(strstr(raw, "PeriodType: space bytes\n"));
	CHECK(strstr(
	    raw, "alloc_objects/count alloc_space/bytes inuse_objects/count "
		 "inuse_space/bytes[dflt]\n"));
	static char lines[16][512];
	int n = raw_stacks(raw, lines, 16);
	CHECK_EQ_INT(n, 3);
	CHECK(has_line(lines, n, "3 3000 1 1000: pprof_fn_mid;pprof_fn_root"));
	CHECK(has_line(
	    lines, n,
	    "1 65536 1 65536: [anonymous mmap];pprof_fn_mid;pprof_fn_root"));
	CHECK(has_line(lines, n, "0 0 2 2048: pprof_fn_root"));
	free(raw);
	char *top = go_pprof("-top", gz, len);
	CHECK(strstr(top, "Type: inuse_space"));
	free(top);
	free(gz);
	pa_pprof_free(p);
	env_free(&e);
}

/* A module the agent found no name in is left to Pyroscope's symbolizer:
 * has_functions only where something was named. */
TEST(pprof_unnamed_mapping_is_left_to_the_server)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	uint64_t a[] = {PC(pprof_fn_leaf), PC(pprof_fn_root)};
	add_cpu(p, a, 2, NULL, 1);
	/* The modules, but no symbol tables: every frame is [unknown]. */
	struct env bare = {e.mods, NULL};
	Profile *pr = encode_check(p, &bare, 16000, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_mapping, 1);
	CHECK(!pr->mapping[0]->has_functions);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	/* The same with symbols: named, so the server leaves it alone. */
	add_cpu(p, a, 2, NULL, 1);
	pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK(pr->mapping[0]->has_functions);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_mappings_locations_functions)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	/* Two addresses in one function: two locations, one function. */
	uint64_t a[] = {PC(pprof_fn_leaf), PC(pprof_fn_root)};
	uint64_t b[] = {PC(pprof_fn_leaf) + 1, PC(pprof_fn_root)};
	uint64_t c[] = {0x10, PC(pprof_fn_root)}; /* in no module */
	add_cpu(p, a, 2, NULL, 1);
	add_cpu(p, b, 2, NULL, 1);
	add_cpu(p, c, 2, NULL, 1);
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 3);
	CHECK_EQ_INT(pr->n_location, 4);
	CHECK_EQ_INT(pr->n_function, 3); /* leaf, root, [unknown] */
	CHECK_EQ_INT(pr->n_mapping, 1);

	const struct pa_module *exe =
	    pa_modules_find(e.mods, PC(pprof_fn_leaf));
	CHECK(exe && exe->build_id_len > 0);
	const Perftools__Profiles__Mapping *m = pr->mapping[0];
	CHECK_EQ_STR(str_at(pr, m->filename), exe->path);
	char hex[65] = "";
	for (int i = 0; i < exe->build_id_len; i++)
		sprintf(hex + 2 * i, "%02x", exe->build_id[i]);
	CHECK_EQ_STR(str_at(pr, m->build_id), hex);
	CHECK_EQ_INT(m->memory_start, exe->exec_start);
	CHECK_EQ_INT(m->memory_limit, exe->exec_end);
	CHECK_EQ_INT(m->file_offset, exe->exec_offset);
	CHECK(m->has_functions);

	for (size_t i = 0; i < pr->n_location; i++) {
		const Perftools__Profiles__Location *l = pr->location[i];
		const char *name = loc_name(pr, l->id);
		if (l->address == 0x10) {
			CHECK_EQ_STR(name, "[unknown]");
			CHECK_EQ_INT(l->mapping_id, 0);
		} else {
			CHECK_EQ_INT(l->mapping_id, 1);
			CHECK(l->address == a[0] || l->address == b[0] ||
			      l->address == a[1]);
			CHECK_EQ_STR(name, l->address == a[1]
					       ? "pprof_fn_root"
					       : "pprof_fn_leaf");
		}
	}
	CHECK(find_stack(pr, "[unknown];pprof_fn_root"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

__attribute__((noinline)) static void pprof_ra_inner(uint64_t *pcs)
{
	pcs[0] = PC(pprof_ra_inner);
	/* Return addresses point after the call: step back into it. */
	pcs[1] = (uint64_t)(uintptr_t)__builtin_return_address(0) - 1;
	__asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) static void pprof_ra_outer(uint64_t *pcs)
{
	pprof_ra_inner(pcs);
	pcs[2] = (uint64_t)(uintptr_t)__builtin_return_address(0) - 1;
	__asm__ volatile("" ::: "memory");
}

TEST(pprof_return_addresses_name_callers)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	uint64_t pcs[3];
	pprof_ra_outer(pcs);
	add_cpu(p, pcs, 3, NULL, 1);
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK(find_stack(pr, "pprof_ra_inner;pprof_ra_outer;"
			     "test_pprof_return_addresses_name_callers"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_merges_identical_stacks)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	uint64_t a[] = {PC(pprof_fn_leaf), PC(pprof_fn_mid), PC(pprof_fn_root)};
	uint64_t a2[] = {PC(pprof_fn_leaf), PC(pprof_fn_mid),
			 PC(pprof_fn_root)};
	for (int i = 0; i < 100; i++)
		add_cpu(p, i % 2 ? a : a2, 3, NULL, 1);
	add_cpu(p, a, 2, NULL, 1);	/* a prefix is another stack */
	add_cpu(p, a, 3, "[leaf]", 1);	/* so is the same with a leaf */
	add_cpu(p, a, 3, "[leaf2]", 1); /* and with another leaf */
	char leafbuf[16];
	strcpy(leafbuf, "[leaf]"); /* same text, another pointer: same leaf */
	add_cpu(p, a, 3, leafbuf, 1);
	strcpy(leafbuf, "[other]"); /* the buffer is reused: a copy was kept */
	CHECK_EQ_INT(pa_pprof_nsamples(p), 4);
	/* all-zero adds create nothing */
	CHECK_EQ_INT(pa_pprof_add(p, a, 1, NULL, (int64_t[]){0, 0}), 0);
	CHECK_EQ_INT(pa_pprof_nsamples(p), 4);
	/* a stack whose values cancel out is held but not encoded */
	add_cpu(p, a + 1, 2, NULL, 1);
	add_cpu(p, a + 1, 2, NULL, -1);
	CHECK_EQ_INT(pa_pprof_nsamples(p), 5);
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 4);
	const Sample *s =
	    find_stack(pr, "pprof_fn_leaf;pprof_fn_mid;pprof_fn_root");
	CHECK(s);
	CHECK_EQ_INT(s->value[0], 100);
	CHECK_EQ_INT(s->value[1], 100LL * PERIOD);
	s = find_stack(pr, "[leaf];pprof_fn_leaf;pprof_fn_mid;pprof_fn_root");
	CHECK(s && s->value[0] == 2);
	CHECK(
	    find_stack(pr, "[leaf2];pprof_fn_leaf;pprof_fn_mid;pprof_fn_root"));
	CHECK(find_stack(pr, "pprof_fn_leaf;pprof_fn_mid"));
	CHECK_EQ_INT(total(pr, 0), 104);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_synthetic_leaf_has_no_mapping)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	uint64_t a[] = {PC(pprof_fn_mid), PC(pprof_fn_root)};
	add_cpu(p, a, 2, "[anonymous mmap]", 3);
	add_cpu(p, a, 2, NULL, 1);
	add_cpu(p, NULL, 0, "[anonymous mmap]", 2); /* the leaf alone */
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 3);
	const Sample *s =
	    find_stack(pr, "[anonymous mmap];pprof_fn_mid;pprof_fn_root");
	CHECK(s && s->value[0] == 3);
	const Perftools__Profiles__Location *l = loc(pr, s->location_id[0]);
	CHECK_EQ_INT(l->address, 0);
	CHECK_EQ_INT(l->mapping_id, 0);
	CHECK(l->id != 0);
	CHECK(find_stack(pr, "pprof_fn_mid;pprof_fn_root"));
	s = find_stack(pr, "[anonymous mmap]");
	CHECK(s && s->value[0] == 2);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_max_stacks_folds_while_aggregating)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 10);
	uint64_t pcs[2] = {0, PC(pprof_fn_root)};
	for (int i = 0; i < 25; i++) {
		pcs[0] = PC(pprof_fn_leaf) + (uint64_t)i % 5;
		pcs[1] = PC(pprof_fn_root) + (uint64_t)i / 5;
		add_cpu(p, pcs, 2, NULL, 1);
	}
	/* an existing stack still merges */
	pcs[0] = PC(pprof_fn_leaf);
	pcs[1] = PC(pprof_fn_root);
	add_cpu(p, pcs, 2, NULL, 10);
	CHECK_EQ_INT(pa_pprof_nsamples(p), 11);
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 11);
	const Sample *t = find_stack(pr, "[truncated]");
	CHECK(t);
	CHECK_EQ_INT(t->value[0], 15);
	CHECK_EQ_INT(t->value[1], 15LL * PERIOD);
	CHECK_EQ_INT(loc(pr, t->location_id[0])->mapping_id, 0);
	CHECK_EQ_INT(total(pr, 0), 35);
	CHECK_EQ_INT(total(pr, 1), 35LL * PERIOD);
	CHECK(has_comment(pr,
			  "pyroagent: 15 samples past the aggregation limits"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_max_samples_folds_smallest)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(16000, 64 << 20, 50000);
	/* 20,000 distinct stacks over 100 x 200 addresses; stack i has
	 * cpu value i + 1, added in a shuffled order. */
	uint64_t pcs[2];
	int64_t want0 = 0, want1 = 0;
	for (int k = 0; k < 20000; k++) {
		int i = (int)(((uint64_t)k * 7919) % 20000);
		pcs[0] = 0x2000 + (uint64_t)(i % 100); /* in no module */
		pcs[1] = 0x1000 + (uint64_t)(i / 100);
		int64_t v[2] = {1, i + 1};
		CHECK_EQ_INT(pa_pprof_add(p, pcs, 2, NULL, v), 0);
		want0 += 1;
		want1 += i + 1;
	}
	CHECK_EQ_INT(pa_pprof_nsamples(p), 20000);
	Profile *pr = encode_check(p, &e, 16000, 64 << 20, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 16000);
	CHECK_EQ_INT(total(pr, 0), want0);
	CHECK_EQ_INT(total(pr, 1), want1);
	/* The 4,001 smallest went: values 1..4001. */
	const Sample *t = find_stack(pr, "[truncated]");
	CHECK(t);
	CHECK_EQ_INT(t->value[0], 4001);
	CHECK_EQ_INT(t->value[1], 4001LL * 4002 / 2);
	for (size_t i = 0; i < pr->n_sample; i++)
		if (pr->sample[i] != t)
			CHECK(pr->sample[i]->value[1] > 4001);
	CHECK(has_comment(
	    pr, "pyroagent: folded 4001 of 20000 stacks (4.0% of cpu) "
		"into [truncated]"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_max_bytes_folds_until_it_fits)
{
	struct env e = env_new();
	const size_t max_bytes = 8192;
	struct pa_pprof *p = cpu_new(16000, max_bytes, 50000);
	uint64_t pcs[20];
	int64_t want = 0;
	for (int i = 0; i < 2000; i++) {
		for (int k = 0; k < 20; k++)
			pcs[k] = 0x100000 + (uint64_t)i * 64 + (uint64_t)k;
		pcs[19] = PC(pprof_fn_root);
		int64_t v[2] = {1, (i % 37) + 1};
		CHECK_EQ_INT(pa_pprof_add(p, pcs, 20, NULL, v), 0);
		want += v[1];
	}
	Profile *pr = encode_check(p, &e, 16000, max_bytes, NULL, NULL);
	CHECK(pr->n_sample > 1 && pr->n_sample < 2000);
	CHECK_EQ_INT(total(pr, 0), 2000);
	CHECK_EQ_INT(total(pr, 1), want);
	CHECK(find_stack(pr, "[truncated]"));
	CHECK(has_comment(pr, "pyroagent: folded "));
	perftools__profiles__profile__free_unpacked(pr, NULL);

	/* So small that everything folds: one sample, totals kept. */
	pa_pprof_free(p);
	p = cpu_new(16000, 400, 50000);
	for (int i = 0; i < 200; i++) {
		for (int k = 0; k < 20; k++)
			pcs[k] = 0x100000 + (uint64_t)i * 64 + (uint64_t)k;
		add_cpu(p, pcs, 20, NULL, 1);
	}
	pr = encode_check(p, &e, 16000, 400, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 1);
	CHECK(find_stack(pr, "[truncated]"));
	CHECK_EQ_INT(total(pr, 0), 200);
	CHECK(has_comment(
	    pr, "pyroagent: folded 200 of 200 stacks (100.0% of cpu)"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_frame_and_address_caps_fold)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(16000, 256 << 20, 50000);
	static uint64_t pcs[1000];
	/* 140 stacks of 1,000 new addresses each: past 131,072 distinct
	 * addresses the rest fold. */
	for (int i = 0; i < 140; i++) {
		for (int k = 0; k < 1000; k++)
			pcs[k] = 0x10000000 + (uint64_t)i * 1000 + (uint64_t)k;
		add_cpu(p, pcs, 1000, NULL, 1);
	}
	CHECK_EQ_INT(pa_pprof_nsamples(p), 131 + 1);
	pa_pprof_reset(p);
	/* 1,100 stacks of 1,000 frames over few addresses: past 2^20 frames
	 * the rest fold. */
	for (int i = 0; i < 1100; i++) {
		for (int k = 0; k < 1000; k++)
			pcs[k] = 0x10000000 + (uint64_t)k;
		pcs[0] = 0x20000000 + (uint64_t)i;
		add_cpu(p, pcs, 1000, NULL, 1);
	}
	CHECK_EQ_INT(pa_pprof_nsamples(p), 1048 + 1);
	Profile *pr = encode_check(p, &e, 16000, 256 << 20, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 1049);
	CHECK_EQ_INT(total(pr, 0), 1100);
	const Sample *t = find_stack(pr, "[truncated]");
	CHECK(t && t->value[0] == 52);
	CHECK(has_comment(pr,
			  "pyroagent: 52 samples past the aggregation limits"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_invalid_utf8_is_replaced)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	uint64_t a[] = {PC(pprof_fn_root)};
	/* stray bytes, an overlong '/', a surrogate, a cut sequence */
	add_cpu(p, a, 1, "bad\xff\xfe name \xc0\xaf|\xed\xa0\x80|\xe2\x82", 1);
	add_cpu(p, a, 1, "ok \xe2\x82\xac \xf0\x9f\x98\x80",
		1); /* valid: kept as is */
	CHECK_EQ_INT(pa_pprof_comment(p, "comment \x80 end"), 0);
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK(find_stack(
	    pr, "bad\xef\xbf\xbd name \xef\xbf\xbd|\xef\xbf\xbd|\xef\xbf\xbd;"
		"pprof_fn_root"));
	CHECK(find_stack(pr, "ok \xe2\x82\xac \xf0\x9f\x98\x80;pprof_fn_root"));
	CHECK(has_comment(pr, "comment \xef\xbf\xbd end"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd; /* small blocks + mmapped ones */
}

TEST(pprof_reset_empties_and_bounds_memory)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(16000, 64 << 20, 50000);
	uint64_t pcs[16];
	size_t base = heap_in_use();
	for (int round = 0; round < 3; round++) {
		/* a huge interval (30,000 stacks of 16 frames), then a
		 * small one */
		for (int i = 0; i < 30000; i++) {
			for (int k = 0; k < 16; k++)
				pcs[k] = 0x200000 + (uint64_t)k;
			pcs[0] = 0x300000 + (uint64_t)i;
			add_cpu(p, pcs, 16, "[x]", 1);
		}
		CHECK_EQ_INT(pa_pprof_comment(p, "round"), 0);
		CHECK_EQ_INT(pa_pprof_nsamples(p), 30000);
		/* That took megabytes (visible unless a sanitizer's
		 * allocator hides them from mallinfo2)... */
		bool visible = heap_in_use() > base + (3 << 20);
		pa_pprof_reset(p);
		CHECK_EQ_INT(pa_pprof_nsamples(p), 0);
		/* ... that the reset gave back: at most ~1 MiB stays. */
		if (visible)
			CHECK(heap_in_use() < base + (1 << 20) + (256 << 10));
		else
			fprintf(stderr, "  (heap not visible to mallinfo2: "
					"not checked)\n");
		Profile *pr = encode_check(p, &e, 16000, 64 << 20, NULL, NULL);
		CHECK_EQ_INT(pr->n_sample, 0);
		CHECK_EQ_INT(pr->n_comment, 0);
		CHECK_EQ_INT(pr->n_location, 0);
		perftools__profiles__profile__free_unpacked(pr, NULL);
		uint64_t a[] = {PC(pprof_fn_leaf), PC(pprof_fn_root)};
		add_cpu(p, a, 2, NULL, 2);
		add_cpu(p, a, 2, NULL, 3);
		pr = encode_check(p, &e, 16000, 64 << 20, NULL, NULL);
		CHECK_EQ_INT(pr->n_sample, 1);
		CHECK_EQ_INT(pr->sample[0]->value[0], 5);
		perftools__profiles__profile__free_unpacked(pr, NULL);
		pa_pprof_reset(p);
	}
	pa_pprof_free(p);
	pa_pprof_free(NULL);
	env_free(&e);
}

TEST(pprof_empty_profile_is_valid)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	CHECK_EQ_INT(pa_pprof_nsamples(p), 0);
	uint8_t *gz;
	size_t len;
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, &gz, &len);
	CHECK_EQ_INT(pr->n_sample, 0);
	CHECK_EQ_INT(pr->n_sample_type, 2);
	CHECK_EQ_STR(str_at(pr, pr->sample_type[1]->type), "cpu");
	CHECK_EQ_STR(str_at(pr, pr->period_type->unit), "nanoseconds");
	CHECK_EQ_INT(pr->period, PERIOD);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	char *raw = go_pprof("-raw", gz, len);
	CHECK(strstr(raw, "PeriodType: cpu nanoseconds\n"));
	free(raw);
	free(gz);
	/* Without modules or symbols everything is [unknown], still valid. */
	uint64_t a[] = {PC(pprof_fn_leaf)};
	add_cpu(p, a, 1, NULL, 1);
	pr = encode_check(p, NULL, 16000, 1800 * 1024, NULL, NULL);
	CHECK(find_stack(pr, "[unknown]"));
	CHECK_EQ_INT(pr->n_mapping, 0);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_encode_is_repeatable)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(5, 0, 0);
	uint64_t pcs[2] = {0, PC(pprof_fn_root)};
	for (int i = 0; i < 10; i++) {
		pcs[0] = PC(pprof_fn_leaf) + (uint64_t)i;
		add_cpu(p, pcs, 2, NULL, i + 1);
	}
	uint8_t *g1, *g2;
	size_t l1, l2;
	CHECK_EQ_INT(pa_pprof_encode(p, e.mods, e.syms, 1, 2, &g1, &l1), 0);
	CHECK_EQ_INT(pa_pprof_encode(p, e.mods, e.syms, 1, 2, &g2, &l2), 0);
	CHECK_EQ_INT(l1, l2);
	CHECK(memcmp(g1, g2, l1) == 0);
	free(g1);
	free(g2);
	Profile *pr = encode_check(p, &e, 5, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 5);
	CHECK_EQ_INT(total(pr, 0), 55);
	CHECK(has_comment(pr, "pyroagent: folded 6 of 10 stacks"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_deep_stacks_are_cut)
{
	struct env e = env_new();
	struct pa_pprof *p = cpu_new(0, 0, 0);
	static uint64_t pcs[1500];
	for (int i = 0; i < 1500; i++)
		pcs[i] = 0x300000 + (uint64_t)i;
	add_cpu(p, pcs, 1500, NULL, 1);
	add_cpu(p, pcs, 1500, "[leaf]", 1);
	Profile *pr = encode_check(p, &e, 16000, 1800 * 1024, NULL, NULL);
	CHECK_EQ_INT(pr->n_sample, 2);
	CHECK_EQ_INT(pr->sample[0]->n_location_id, 1000);
	CHECK_EQ_INT(pr->sample[1]->n_location_id, 1000);
	CHECK_EQ_INT(loc(pr, pr->sample[0]->location_id[0])->address, 0x300000);
	CHECK(has_comment(
	    pr,
	    "pyroagent: 2 samples had stacks deeper than 1000 frames (cut)"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	pa_pprof_free(p);
	env_free(&e);
}

TEST(pprof_rejects_bad_descriptions)
{
	struct pa_pprof *p = NULL;
	static const struct pa_pprof_type dash[] = {
	    {"cpu-time", "nanoseconds"}};
	struct pa_pprof_desc d = {.sample_types = dash,
				  .ntypes = 1,
				  .period_type = {"cpu", "nanoseconds"}};
	CHECK_EQ_INT(pa_pprof_new(&p, &d), -EINVAL);
	d.sample_types = cpu_types;
	d.ntypes = 0;
	CHECK_EQ_INT(pa_pprof_new(&p, &d), -EINVAL);
	d.ntypes = PA_PPROF_MAX_VALUES + 1;
	CHECK_EQ_INT(pa_pprof_new(&p, &d), -EINVAL);
	d.ntypes = 2;
	CHECK_EQ_INT(pa_pprof_new(&p, &d), 0);
	CHECK_EQ_INT(pa_pprof_add(p, NULL, 1, NULL, (int64_t[]){1, 1}),
		     -EINVAL);
	CHECK_EQ_INT(pa_pprof_add(p, NULL, -1, NULL, (int64_t[]){1, 1}),
		     -EINVAL);
	for (int i = 0; i < 16; i++)
		CHECK_EQ_INT(pa_pprof_comment(p, "c"), 0);
	CHECK(pa_pprof_comment(p, "one too many") < 0);
	uint8_t *gz;
	size_t len;
	CHECK_EQ_INT(pa_pprof_encode(p, NULL, NULL, 0, 0, NULL, &len), -EINVAL);
	Profile *pr = encode_check(p, NULL, 16000, 1800 * 1024, &gz, &len);
	CHECK(has_comment(pr, "pyroagent: 1 comments dropped"));
	perftools__profiles__profile__free_unpacked(pr, NULL);
	free(gz);
	pa_pprof_free(p);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 +
	       (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Not a gate: prints what encoding a busy interval costs. */
TEST_TIMEOUT(pprof_timing_10000_stacks_30_frames, 60)
{
	struct env e = env_new();
	/* Real code addresses: 3,000 spots in libc's and the test's text. */
	const struct pa_module *libc = pa_modules_find(e.mods, PC(malloc));
	const struct pa_module *exe =
	    pa_modules_find(e.mods, PC(pprof_fn_leaf));
	CHECK(libc && exe);
	static uint64_t pool[3000];
	uint64_t seed = 88172645463325252ULL;
	for (int i = 0; i < 3000; i++) {
		const struct pa_module *m = i % 3 ? libc : exe;
		pool[i] = m->exec_start +
			  rng_next(&seed) % (m->exec_end - m->exec_start);
	}
	struct pa_pprof *p = cpu_new(15000, 1800 * 1024, 50000);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint64_t pcs[30];
	for (int i = 0; i < 10000; i++) {
		for (int k = 0; k < 30; k++)
			pcs[k] = pool[(k * 100 + rng_next(&seed) % 100) % 3000];
		add_cpu(p, pcs, 30, NULL, 1 + (int64_t)(rng_next(&seed) % 50));
	}
	double add_ms = ms_since(&t0);
	CHECK_EQ_INT(pa_pprof_nsamples(p), 10000);
	/* The first encode loads symbol tables; time the second. */
	uint8_t *gz;
	size_t len;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_EQ_INT(
	    pa_pprof_encode(p, e.mods, e.syms, T_NANOS, D_NANOS, &gz, &len), 0);
	double first_ms = ms_since(&t0);
	free(gz);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_EQ_INT(
	    pa_pprof_encode(p, e.mods, e.syms, T_NANOS, D_NANOS, &gz, &len), 0);
	double enc_ms = ms_since(&t0);
	size_t raw_len;
	uint8_t *raw = gunzip(gz, len, &raw_len);
	fprintf(stderr,
		"  pprof timing: 10000 stacks x 30 frames: add %.1f ms, encode "
		"%.1f ms "
		"(first, with symbol loading %.1f ms), %zu bytes raw, %zu "
		"gzipped\n",
		add_ms, enc_ms, first_ms, raw_len, len);
	Profile *pr = perftools__profiles__profile__unpack(NULL, raw_len, raw);
	CHECK(pr);
	check_pyroscope(pr, raw_len, 15000, 1800 * 1024);
	perftools__profiles__profile__free_unpacked(pr, NULL);
	free(raw);
	free(gz);
	pa_pprof_free(p);
	env_free(&e);
}
