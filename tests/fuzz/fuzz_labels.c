/* Fuzz target: pa_config_parse_labels (PYROSCOPE_LABELS "k=v,k2=v2"), its
 * bounds (max, buffer size), and its agreement with the loader. Input:
 * byte 0 picks max, byte 1 the buffer size, the rest is the string. */
#include "config.h"
#include "fuzz_pairs.h"

extern char **environ;

static bool is_control(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return true;
		/* C1 controls U+0080..U+009F are C2 80..C2 9F in UTF-8. */
		if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 &&
		    p[i + 1] <= 0x9f)
			return true;
	}
	return false;
}

/* Everything a successful parse promises. */
static void check_labels(const struct pa_label *l, int n, int max,
			 const char *buf, size_t cap)
{
	FZ_CHECK(n >= 0 && n <= max && n <= 64);
	for (int i = 0; i < n; i++) {
		FZ_CHECK(fz_inside(l[i].name, buf, cap));
		FZ_CHECK(fz_inside(l[i].value, buf, cap));
		FZ_CHECK(pa_config_label_name_ok(l[i].name));
		const char *v = l[i].value;
		size_t vn = strlen(v);
		FZ_CHECK(vn > 0 && vn <= PA_LABEL_VALUE_MAX);
		FZ_CHECK(fz_utf8_ok(v, vn));
		FZ_CHECK(!is_control((const unsigned char *)v, vn));
		/* Split at ',', trimmed of blanks. */
		FZ_CHECK(!strchr(v, ','));
		FZ_CHECK(v[0] != ' ' && v[0] != '\t');
		FZ_CHECK(v[vn - 1] != ' ' && v[vn - 1] != '\t');
		for (int j = 0; j < i; j++)
			FZ_CHECK(strcmp(l[i].name, l[j].name) != 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	int max = fz_u8(&in) % 67;
	unsigned mode = fz_u8(&in);
	char *s = fz_cstr(in.p, in.n);
	size_t len = strlen(s);
	struct fz_pairs r = fz_pairs_call(pa_config_parse_labels, s, max, mode);
	int rc = r.rc, n = r.n;
	struct pa_label *out = r.out;
	if (rc == 0)
		check_labels(out, n, max, r.buf, r.cap);

	/* The documented sufficient room: strlen + 1 bytes, 64 labels. */
	struct pa_label full[64];
	char *fbuf = malloc(len + 1);
	int fn = -1;
	int frc = pa_config_parse_labels(s, full, 64, &fn, fbuf, len + 1);
	FZ_CHECK(frc == 0 || frc == -EINVAL);
	if (rc == 0) {
		/* More room never hurts. */
		FZ_CHECK(frc == 0 && fz_pairs_same(out, n, full, fn));
	}
	if (frc == 0) {
		check_labels(full, fn, 64, fbuf, len + 1);
		/* Written back as text, the labels read the same. */
		size_t tcap = 1;
		for (int i = 0; i < fn; i++)
			tcap +=
			    strlen(full[i].name) + strlen(full[i].value) + 2;
		char *t = malloc(tcap), *o = t;
		for (int i = 0; i < fn; i++)
			o += sprintf(o, "%s%s=%s", i ? "," : "", full[i].name,
				     full[i].value);
		*o = 0;
		struct pa_label again[64];
		char *abuf = malloc(tcap);
		int an = -1;
		FZ_CHECK(
		    pa_config_parse_labels(t, again, 64, &an, abuf, tcap) == 0);
		FZ_CHECK(fz_pairs_same(full, fn, again, an));
		free(abuf);
		free(t);

		/* The loader reads what the strict parser reads. */
		if (fn <= PA_MAX_USER_LABELS && len <= 128 * 1024) {
			size_t en = len + sizeof("PYROSCOPE_LABELS=");
			char *e = malloc(en);
			snprintf(e, en, "PYROSCOPE_LABELS=%s", s);
			char *env[] = {e, "PYROSCOPE_LOG_LEVEL=error", NULL};
			char **saved = environ;
			struct pa_config cfg;
			environ = env;
			pa_config_load(&cfg);
			environ = saved;
			FZ_CHECK(
			    fz_pairs_same(cfg.labels, cfg.nlabels, full, fn));
			pa_config_free(&cfg);
			free(e);
		}
	}
	free(fbuf);
	fz_pairs_free(&r);
	free(s);
	return 0;
}
