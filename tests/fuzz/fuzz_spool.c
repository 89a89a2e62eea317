/* Fuzz target: the spool file format (pa_spool_decode, pa_spool_encode).
 * Input byte 0 picks a mode: 0 decodes the rest as a file; 1 first writes
 * the magic and repairs both CRCs so that mutations reach the header and
 * the zstd frame; 2 builds a record from the rest and round-trips it.
 * Whatever decodes must re-encode and decode to the same record. */
#include <zlib.h>

#include "fuzz.h"
#include "spool.h"

#define MAGIC	  "PYROSPL1"
#define PAYLOAD_0 ((uint8_t *)(uintptr_t)0x5a5a5a5a) /* never dereferenced */

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* A C string that lies inside [buf, buf + len). */
static bool inside(const char *s, const uint8_t *buf, size_t len)
{
	const uint8_t *p = (const uint8_t *)s;
	return p >= buf && p < buf + len &&
	       memchr(p, 0, len - (size_t)(p - buf)) != NULL;
}

static bool same_record(const struct pa_spool_record *a,
			const struct pa_spool_record *b)
{
	if (a->time_ns != b->time_ns || a->nlabels != b->nlabels ||
	    a->len != b->len || memcmp(a->gz, b->gz, a->len) != 0)
		return false;
	for (int i = 0; i < a->nlabels; i++)
		if (strcmp(a->labels[i].name, b->labels[i].name) ||
		    strcmp(a->labels[i].value, b->labels[i].value))
			return false;
	return true;
}

/* Decodes and checks the contract; returns the rc. On success the caller
 * frees *payload. */
static int decode(const uint8_t *buf, size_t len, struct pa_spool_record *r,
		  uint8_t **payload)
{
	*payload = PAYLOAD_0;
	int rc = pa_spool_decode(buf, len, r, payload);
	FZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ENOMEM);
	if (rc) {
		FZ_CHECK(*payload == PAYLOAD_0); /* nothing handed out */
		return rc;
	}
	FZ_CHECK(*payload && r->gz == *payload);
	FZ_CHECK(r->len > 0 && r->len <= PA_SPOOL_MAX_PROFILE);
	FZ_CHECK(r->nlabels >= 0 && r->nlabels <= PA_SPOOL_MAX_LABELS);
	for (int i = 0; i < r->nlabels; i++) {
		FZ_CHECK(inside(r->labels[i].name, buf, len));
		FZ_CHECK(inside(r->labels[i].value, buf, len));
	}
	return 0;
}

/* Encode, decode, compare; the encoding is deterministic. */
static void round_trip(const struct pa_spool_record *r)
{
	uint8_t *enc = NULL, *enc2 = NULL;
	size_t len = 0, len2 = 0;
	int rc = pa_spool_encode(r, &enc, &len);
	FZ_CHECK(rc == 0 || rc == -ENOMEM);
	if (rc)
		return;
	FZ_CHECK(pa_spool_encode(r, &enc2, &len2) == 0);
	FZ_CHECK(len == len2 && memcmp(enc, enc2, len) == 0);
	struct pa_spool_record back;
	uint8_t *payload;
	rc = decode(enc, len, &back, &payload);
	FZ_CHECK(rc == 0 || rc == -ENOMEM);
	if (rc == 0) {
		FZ_CHECK(same_record(r, &back));
		free(payload);
	}
	/* Any cut of a good file is refused. */
	if (len > 1) {
		rc = decode(enc, len - 1 - (len - 1) % 7, &back, &payload);
		FZ_CHECK(rc == -EINVAL);
	}
	free(enc);
	free(enc2);
}

static void from_file(const uint8_t *data, size_t size, bool repair)
{
	/* Exact size: ASan sees an overread. */
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		abort();
	if (size)
		memcpy(buf, data, size);
	if (repair && size >= 20) {
		memcpy(buf, MAGIC, 8);
		uint32_t hlen = get_le32(buf + 8);
		if (hlen <= size - 20)
			put_le32(buf + 12, (uint32_t)crc32(0, buf + 16, hlen));
		put_le32(buf + size - 4,
			 (uint32_t)crc32(0, buf, (uInt)size - 4));
	}
	struct pa_spool_record r;
	uint8_t *payload;
	if (decode(buf, size, &r, &payload) == 0) {
		round_trip(&r);
		free(payload);
	}
	free(buf);
}

static void from_record(struct fz_in *in)
{
	struct pa_spool_record r;
	memset(&r, 0, sizeof(r));
	r.time_ns = (int64_t)fz_uint(in, 8);
	int n = fz_u8(in) % (PA_SPOOL_MAX_LABELS + 3);
	char *strs[2 * (PA_SPOOL_MAX_LABELS + 2)];
	int ns = 0;
	for (int i = 0; i < n; i++) {
		strs[ns++] = fz_piece(in, NULL);
		strs[ns++] = fz_piece(in, NULL);
		if (i < PA_SPOOL_MAX_LABELS)
			r.labels[i] =
			    (struct pa_label){strs[ns - 2], strs[ns - 1]};
	}
	r.nlabels = n;
	uint8_t *gz = malloc(in->n ? in->n : 1);
	if (!gz)
		abort();
	if (in->n)
		memcpy(gz, in->p, in->n);
	r.gz = gz;
	r.len = in->n;
	uint8_t *enc;
	size_t len;
	int rc = pa_spool_encode(&r, &enc, &len);
	bool valid = n <= PA_SPOOL_MAX_LABELS && r.len > 0;
	if (!valid)
		FZ_CHECK(rc == -EINVAL);
	else
		FZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ENOMEM);
	if (rc == 0) {
		free(enc);
		round_trip(&r);
	}
	free(gz);
	for (int i = 0; i < ns; i++)
		free(strs[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = {data, size};
	switch (fz_u8(&in) % 3) {
	case 0:
		from_file(in.p, in.n, false);
		break;
	case 1:
		from_file(in.p, in.n, true);
		break;
	default:
		from_record(&in);
		break;
	}
	return 0;
}
