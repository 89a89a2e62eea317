/* Fuzz target: the profile builder (pa_pprof_add/comment/reset/encode) with
 * fuzzed stacks, leaves, comments, values and limits, symbolized against
 * this process's real modules. Every encoding must be a profile Pyroscope
 * accepts, conserve the values added, and be deterministic. */
#include <zlib.h>

#include "fuzz.h"
#include "modules.h"
#include "pprof.h"
#include "profile.pb-c.h"
#include "symbols.h"

typedef Perftools__Profiles__Profile Profile;

#define NPAL	  32 /* frame palette: real code addresses and fuzzed ones */
#define MAX_OPS	  256
#define T_NANOS	  1700000000123456789LL
#define D_NANOS	  15000000000LL
#define RAW_LIMIT (8u << 20)

static struct pa_modules *mods;
static struct pa_symbols *syms;
static uint64_t palette0[NPAL];

static const struct pa_pprof_type types[PA_PPROF_MAX_VALUES] = {
    {"alloc_objects", "count"},
    {"alloc_space", "bytes"},
    {"inuse_objects", "count"},
    {"inuse_space", "bytes"},
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	if (pa_modules_new(&mods) || pa_modules_refresh(mods, true) ||
	    pa_symbols_new(&syms))
		abort();
	pa_modules_set_forget(mods, pa_symbols_forget);
	/* Real code: the executable, libc, libz; +1 lands inside. */
	const uint64_t real[] = {
	    (uint64_t)(uintptr_t)&LLVMFuzzerTestOneInput + 1,
	    (uint64_t)(uintptr_t)&pa_pprof_add + 4,
	    (uint64_t)(uintptr_t)&pa_pprof_encode + 17,
	    (uint64_t)(uintptr_t)&qsort + 3,
	    (uint64_t)(uintptr_t)&memmove + 9,
	    (uint64_t)(uintptr_t)&crc32 + 2,
	    (uint64_t)(uintptr_t)&inflate + 5,
	    (uint64_t)(uintptr_t)&pa_modules_find + 1,
	};
	for (int i = 0; i < NPAL; i++)
		palette0[i] = i < 8 ? real[i] : 0x1000ull * (uint64_t)i;
	return 0;
}

/* Whole-buffer gunzip, growing the output as needed (up to RAW_LIMIT). */
static uint8_t *gunzip(const uint8_t *gz, size_t len, size_t *out_len)
{
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	FZ_CHECK(inflateInit2(&zs, 15 + 16) == Z_OK);
	size_t cap = 16384;
	uint8_t *out = malloc(cap);
	if (!out)
		abort();
	zs.next_in = (Bytef *)(uintptr_t)gz;
	zs.avail_in = (uInt)len;
	int zrc;
	for (;;) {
		zs.next_out = out + zs.total_out;
		zs.avail_out = (uInt)(cap - zs.total_out);
		zrc = inflate(&zs, Z_FINISH);
		if (zrc != Z_BUF_ERROR || zs.avail_out || cap >= RAW_LIMIT)
			break;
		cap *= 4;
		if (!(out = realloc(out, cap)))
			abort();
	}
	FZ_CHECK(zrc == Z_STREAM_END && zs.avail_in == 0);
	*out_len = zs.total_out;
	inflateEnd(&zs);
	return out;
}

static bool str_ok(const Profile *pr, int64_t i)
{
	return i >= 0 && (size_t)i < pr->n_string_table;
}

struct model {
	int ntypes;
	size_t max_samples, max_bytes;
	int64_t sum[PA_PPROF_MAX_VALUES]; /* every value added since reset */
	uint64_t palette[NPAL];
	uint64_t used[NPAL + MAX_OPS]; /* every palette value ever set */
	int nused;
};

static bool in_palette(const struct model *m, uint64_t a)
{
	for (int i = 0; i < m->nused; i++)
		if (m->used[i] == a)
			return true;
	return false;
}

/* Encodes and checks what Pyroscope checks on ingest, plus conservation
 * of values and determinism. */
static void encode_check(struct pa_pprof *p, const struct model *m)
{
	uint8_t *gz = NULL, *gz2 = NULL;
	size_t len = 0, len2 = 0;
	pa_modules_read_lock();
	int rc = pa_pprof_encode(p, mods, syms, T_NANOS, D_NANOS, &gz, &len);
	int rc2 = pa_pprof_encode(p, mods, syms, T_NANOS, D_NANOS, &gz2, &len2);
	pa_modules_read_unlock();
	FZ_CHECK(rc == 0 || rc == -ENOMEM);
	if (rc) {
		free(gz2);
		return;
	}
	FZ_CHECK(rc2 == 0 && len == len2 && memcmp(gz, gz2, len) == 0);
	free(gz2);
	size_t raw_len;
	uint8_t *raw = gunzip(gz, len, &raw_len);
	free(gz);
	Profile *pr = perftools__profiles__profile__unpack(NULL, raw_len, raw);
	FZ_CHECK(pr);
	free(raw);

	FZ_CHECK(pr->n_string_table >= 1 && pr->string_table[0][0] == 0);
	for (size_t i = 0; i < pr->n_string_table; i++)
		FZ_CHECK(fz_utf8_ok(pr->string_table[i],
				    strlen(pr->string_table[i])));
	FZ_CHECK(pr->n_sample_type == (size_t)m->ntypes);
	for (int i = 0; i < m->ntypes; i++) {
		const Perftools__Profiles__ValueType *vt = pr->sample_type[i];
		FZ_CHECK(str_ok(pr, vt->type) && str_ok(pr, vt->unit));
		FZ_CHECK(!strcmp(pr->string_table[vt->type], types[i].type));
		FZ_CHECK(!strcmp(pr->string_table[vt->unit], types[i].unit));
	}
	FZ_CHECK(pr->period_type && str_ok(pr, pr->period_type->type) &&
		 str_ok(pr, pr->period_type->unit));
	FZ_CHECK(str_ok(pr, pr->default_sample_type));
	for (size_t i = 0; i < pr->n_comment; i++)
		FZ_CHECK(str_ok(pr, pr->comment[i]));
	FZ_CHECK(pr->time_nanos == T_NANOS && pr->duration_nanos == D_NANOS);
	/* Limits: samples always; bytes unless everything is folded. */
	FZ_CHECK(pr->n_sample <= m->max_samples);
	FZ_CHECK(raw_len <= m->max_bytes || pr->n_sample <= 1);
	for (size_t i = 0; i < pr->n_mapping; i++) {
		const Perftools__Profiles__Mapping *mp = pr->mapping[i];
		FZ_CHECK(mp->id == i + 1 && mp->has_functions);
		FZ_CHECK(str_ok(pr, mp->filename) && str_ok(pr, mp->build_id));
		FZ_CHECK(pr->string_table[mp->filename][0]);
		FZ_CHECK(mp->memory_start < mp->memory_limit);
	}
	for (size_t i = 0; i < pr->n_function; i++) {
		const Perftools__Profiles__Function *f = pr->function[i];
		FZ_CHECK(f->id == i + 1);
		FZ_CHECK(str_ok(pr, f->name) && pr->string_table[f->name][0]);
		FZ_CHECK(str_ok(pr, f->system_name) && str_ok(pr, f->filename));
	}
	for (size_t i = 0; i < pr->n_location; i++) {
		const Perftools__Profiles__Location *l = pr->location[i];
		FZ_CHECK(l->id == i + 1);
		FZ_CHECK(l->mapping_id <= pr->n_mapping);
		FZ_CHECK(l->n_line == 1 && l->line[0]->function_id >= 1 &&
			 l->line[0]->function_id <= pr->n_function);
		/* Addresses are what was added (synthetic frames: 0). */
		FZ_CHECK(l->address == 0 || in_palette(m, l->address));
		if (l->mapping_id) {
			const Perftools__Profiles__Mapping *mp =
			    pr->mapping[l->mapping_id - 1];
			FZ_CHECK(l->address >= mp->memory_start &&
				 l->address < mp->memory_limit);
		}
	}
	int64_t sum[PA_PPROF_MAX_VALUES] = {0};
	for (size_t i = 0; i < pr->n_sample; i++) {
		const Perftools__Profiles__Sample *s = pr->sample[i];
		FZ_CHECK(s->n_value == (size_t)m->ntypes);
		FZ_CHECK(s->n_location_id >= 1 && s->n_location_id <= 1000);
		for (size_t k = 0; k < s->n_location_id; k++)
			FZ_CHECK(s->location_id[k] >= 1 &&
				 s->location_id[k] <= pr->n_location);
		bool nonzero = false;
		for (int k = 0; k < m->ntypes; k++) {
			nonzero |= s->value[k] != 0;
			sum[k] += s->value[k];
		}
		FZ_CHECK(nonzero);
	}
	for (int k = 0; k < m->ntypes; k++)
		FZ_CHECK(sum[k] == m->sum[k]);
	perftools__profiles__profile__free_unpacked(pr, NULL);
}

/* A small signed value: what the input byte pair says, in +-32767. */
static int64_t value(struct fz_in *in)
{
	uint8_t b = fz_u8(in);
	if (b < 0x80)
		return b & 7 ? b : 0; /* plenty of zeros */
	return (int64_t)(int16_t)fz_uint(in, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	struct model m;
	memset(&m, 0, sizeof(m));
	memcpy(m.palette, palette0, sizeof(m.palette));
	memcpy(m.used, palette0, sizeof(palette0));
	m.nused = NPAL;
	m.ntypes = 1 + fz_u8(&in) % PA_PPROF_MAX_VALUES;
	uint8_t ms = fz_u8(&in), mb = fz_u8(&in), mx = fz_u8(&in);
	struct pa_pprof_desc d = {
	    .sample_types = types,
	    .ntypes = m.ntypes,
	    .period_type = {"space", "bytes"},
	    .period = 524288,
	    .max_samples = ms,
	    .max_bytes = mb ? 32u * mb : 0,
	    .max_stacks = mx,
	};
	m.max_samples = ms ? ms : 16000;
	m.max_bytes = mb ? 32u * mb : 1800u * 1024u;
	struct pa_pprof *p;
	if (pa_pprof_new(&p, &d))
		abort();
	static uint64_t pcs[255 * 5];
	char *texts[MAX_OPS];
	int ntexts = 0;
	for (int op = 0; op < MAX_OPS && in.n; op++) {
		uint8_t o = fz_u8(&in);
		switch (o % 8) {
		case 0: { /* a fuzzed address into the palette */
			int i = 8 + fz_u8(&in) % (NPAL - 8);
			m.palette[i] = m.used[m.nused++] = fz_uint(&in, 8);
			break;
		}
		case 1: { /* a comment */
			char *t = fz_piece(&in, NULL);
			int rc = pa_pprof_comment(p, t);
			FZ_CHECK(rc == 0 || rc == -ENOSPC || rc == -ENOMEM);
			texts[ntexts++] = t;
			break;
		}
		case 2: /* encode now; sometimes start a new interval */
			encode_check(p, &m);
			if (o & 0x80) {
				pa_pprof_reset(p);
				memset(m.sum, 0, sizeof(m.sum));
			}
			break;
		default: { /* a stack */
			int n = fz_u8(&in);
			if (o & 0x80)
				n = n * 5; /* up to 1275: past the depth cut */
			const uint8_t *frames = in.p;
			size_t nf = in.n < (size_t)n ? in.n : (size_t)n;
			in.p += nf;
			in.n -= nf;
			for (int i = 0; i < n; i++)
				pcs[i] = m.palette[(nf ? frames[(size_t)i % nf]
						       : (size_t)i) %
						   NPAL];
			const char *leaf = NULL;
			char *t = NULL;
			if (o & 0x40) {
				static const char *const names[] = {
				    "[anonymous mmap]", "[truncated]",
				    "[unknown]", ""};
				uint8_t l = fz_u8(&in);
				leaf = names[l % 4];
				if (l & 0x80)
					leaf = t = fz_piece(&in, NULL);
			}
			int64_t v[PA_PPROF_MAX_VALUES];
			for (int k = 0; k < m.ntypes; k++)
				v[k] = value(&in);
			int rc = pa_pprof_add(p, pcs, n, leaf, v);
			FZ_CHECK(rc == 0 || rc == -ENOMEM);
			for (int k = 0; k < m.ntypes; k++)
				m.sum[k] += v[k];
			if (t)
				texts[ntexts++] = t;
			break;
		}
		}
	}
	encode_check(p, &m);
	pa_pprof_free(p);
	for (int i = 0; i < ntexts; i++)
		free(texts[i]);
	return 0;
}
