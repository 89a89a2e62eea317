/* Signal-safe logging: a small printf-like formatter into a stack buffer and
 * one write(2) per line; every line comes out as one clean line of UTF-8. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* A whole line, prefix and '\n' included, is at most this long. */
#define LINE_MAX_BYTES 1024
/* A width or precision larger than this is taken as this (bounds padding). */
#define FIELD_MAX 1024

int pa_log_level = PA_LOG_INFO;

/* Output cursor. Text goes in whole units (a character, an escape, a
 * number): a unit that does not fit sets `cut` and nothing is appended
 * after it, so a cut line never ends in half a character or half an escape
 * and never skips a piece to show a later one. */
struct out {
	char *buf;
	size_t cap; /* usable bytes, not counting the NUL or '\n' */
	size_t len;
	bool cut;
};

static bool room(struct out *o, size_t n)
{
	if (o->cut)
		return false;
	if (n > o->cap - o->len) {
		o->cut = true;
		return false;
	}
	return true;
}

static void put_bytes(struct out *o, const char *s, size_t n)
{
	if (!room(o, n))
		return;
	memcpy(o->buf + o->len, s, n);
	o->len += n;
}

static void put_fill(struct out *o, char c, size_t n)
{
	if (!room(o, n))
		return;
	memset(o->buf + o->len, c, n);
	o->len += n;
}

/* Length of the well-formed UTF-8 sequence at s (n bytes readable), 0 if
 * the bytes there are not one; *cp gets the code point. Rejects overlong
 * forms, surrogates and values above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		*cp = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		*cp = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if (i > 1 && (s[i] < 0x80 || s[i] > 0xbf))
			return 0;
		*cp = (*cp << 6) | (s[i] & 0x3f);
	}
	return len;
}

/* Characters that would break the line or the terminal: C0, DEL, C1 and
 * the Unicode line/paragraph separators. */
static bool is_control(uint32_t cp)
{
	return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 ||
	       cp == 0x2029;
}

static const char hexdig[] = "0123456789abcdef";

/* The escape for one unit of s: writes it into esc (at most 6 bytes) and
 * returns its length; *adv gets the bytes consumed. Returns 0 when the
 * unit is printable and can be copied as is (*adv bytes). */
static size_t escape_unit(const unsigned char *s, size_t n, char *esc,
			  size_t *adv)
{
	uint32_t cp;
	size_t len = utf8_seq(s, n, &cp);
	if (len == 0) { /* not UTF-8: show the byte */
		*adv = 1;
		esc[0] = '\\';
		esc[1] = 'x';
		esc[2] = hexdig[s[0] >> 4];
		esc[3] = hexdig[s[0] & 15];
		return 4;
	}
	*adv = len;
	if (!is_control(cp))
		return 0;
	esc[0] = '\\';
	if (cp == '\n' || cp == '\r' || cp == '\t') {
		esc[1] = cp == '\n' ? 'n' : cp == '\r' ? 'r' : 't';
		return 2;
	}
	if (cp < 0x80) {
		esc[1] = 'x';
		esc[2] = hexdig[cp >> 4];
		esc[3] = hexdig[cp & 15];
		return 4;
	}
	esc[1] = 'u';
	for (int i = 0; i < 4; i++)
		esc[2 + i] = hexdig[(cp >> (12 - 4 * i)) & 15];
	return 6;
}

/* Appends n bytes of untrusted text with escapes; with o == NULL only
 * returns the length it would take. */
static size_t put_text(struct out *o, const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t total = 0;
	while (n) {
		char esc[8];
		size_t adv, elen = escape_unit(s, n, esc, &adv);
		if (o) {
			if (elen)
				put_bytes(o, esc, elen);
			else
				put_bytes(o, (const char *)s, adv);
			if (o->cut)
				break;
		}
		total += elen ? elen : adv;
		s += adv;
		n -= adv;
	}
	return total;
}

struct spec {
	bool left, zero, plus, space, alt;
	int width;     /* 0: none */
	int precision; /* -1: none */
};

static void put_padded_text(struct out *o, const char *s, size_t n,
			    const struct spec *sp)
{
	size_t w = sp->width > 0 ? (size_t)sp->width : 0;
	size_t len = w ? put_text(NULL, s, n) : 0;
	size_t pad = w > len ? w - len : 0;
	if (!sp->left)
		put_fill(o, ' ', pad);
	put_text(o, s, n);
	if (sp->left)
		put_fill(o, ' ', pad);
}

static void put_number(struct out *o, uint64_t v, bool neg, unsigned base,
		       bool upper, const struct spec *sp)
{
	char digits[24];
	size_t nd = 0;
	const char *dig = upper ? "0123456789ABCDEF" : hexdig;
	/* C: precision 0 with value 0 prints no digits. */
	if (!(v == 0 && sp->precision == 0)) {
		do {
			digits[nd++] = dig[v % base];
			v /= base;
		} while (v);
	}
	char prefix[3];
	size_t np = 0;
	if (neg)
		prefix[np++] = '-';
	else if (sp->plus)
		prefix[np++] = '+';
	else if (sp->space)
		prefix[np++] = ' ';
	if (sp->alt && base == 16 && nd && !(nd == 1 && digits[0] == '0')) {
		prefix[np++] = '0';
		prefix[np++] = upper ? 'X' : 'x';
	}
	size_t prec = sp->precision > 0 ? (size_t)sp->precision : 0;
	size_t body = nd > prec ? nd : prec;
	size_t total = np + body;
	size_t w = sp->width > 0 ? (size_t)sp->width : 0;
	size_t pad = w > total ? w - total : 0;
	bool zero_pad = sp->zero && !sp->left && sp->precision < 0;
	/* A number is one unit: whole or not at all. */
	if (!room(o, total + pad))
		return;
	if (!sp->left && !zero_pad)
		put_fill(o, ' ', pad);
	put_bytes(o, prefix, np);
	if (zero_pad)
		put_fill(o, '0', pad);
	put_fill(o, '0', body - nd);
	while (nd)
		put_bytes(o, &digits[--nd], 1);
	if (sp->left)
		put_fill(o, ' ', pad);
}

static int read_field(const char **pp, va_list *ap)
{
	const char *p = *pp;
	long v = 0;
	if (*p == '*') {
		*pp = p + 1;
		return va_arg(*ap, int);
	}
	while (*p >= '0' && *p <= '9') {
		if (v <= FIELD_MAX)
			v = v * 10 + (*p - '0');
		p++;
	}
	*pp = p;
	return (int)(v > FIELD_MAX ? FIELD_MAX : v);
}

enum length { LEN_NONE, LEN_HH, LEN_H, LEN_L, LEN_LL, LEN_Z, LEN_J, LEN_T };

static void format(struct out *o, const char *fmt, va_list *ap)
{
	const char *p = fmt;
	while (*p && !o->cut) {
		if (*p != '%') {
			const char *q = strchrnul(p, '%');
			put_text(o, p, (size_t)(q - p));
			p = q;
			continue;
		}
		const char *start = p++;
		struct spec sp = {.precision = -1};
		for (;; p++) {
			if (*p == '-')
				sp.left = true;
			else if (*p == '0')
				sp.zero = true;
			else if (*p == '+')
				sp.plus = true;
			else if (*p == ' ')
				sp.space = true;
			else if (*p == '#')
				sp.alt = true;
			else
				break;
		}
		sp.width = read_field(&p, ap);
		if (sp.width < 0) { /* printf: a negative '*' width means '-' */
			sp.left = true;
			sp.width =
			    sp.width == INT32_MIN ? FIELD_MAX : -sp.width;
		}
		if (sp.width > FIELD_MAX)
			sp.width = FIELD_MAX;
		if (*p == '.') {
			p++;
			sp.precision = read_field(&p, ap);
			if (sp.precision < 0) /* negative '*': no precision */
				sp.precision = -1;
		}
		enum length len = LEN_NONE;
		if (p[0] == 'h' && p[1] == 'h') {
			len = LEN_HH;
			p += 2;
		} else if (p[0] == 'l' && p[1] == 'l') {
			len = LEN_LL;
			p += 2;
		} else if (*p == 'h' || *p == 'l' || *p == 'z' || *p == 'j' ||
			   *p == 't') {
			len = *p == 'h'	  ? LEN_H
			      : *p == 'l' ? LEN_L
			      : *p == 'z' ? LEN_Z
			      : *p == 'j' ? LEN_J
					  : LEN_T;
			p++;
		}
		char conv = *p;
		if (conv)
			p++;
		switch (conv) {
		case 'd':
		case 'i': {
			int64_t v;
			switch (len) {
			case LEN_L:
				v = va_arg(*ap, long);
				break;
			case LEN_LL:
				v = va_arg(*ap, long long);
				break;
			case LEN_Z:
				v = va_arg(*ap, ssize_t);
				break;
			case LEN_J:
				v = va_arg(*ap, intmax_t);
				break;
			case LEN_T:
				v = va_arg(*ap, ptrdiff_t);
				break;
			case LEN_HH:
				v = (signed char)va_arg(*ap, int);
				break;
			case LEN_H:
				v = (short)va_arg(*ap, int);
				break;
			default:
				v = va_arg(*ap, int);
			}
			/* Negate in unsigned arithmetic: INT64_MIN has no
			 * positive int64_t. */
			uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
			put_number(o, mag, v < 0, 10, false, &sp);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v;
			switch (len) {
			case LEN_L:
				v = va_arg(*ap, unsigned long);
				break;
			case LEN_LL:
				v = va_arg(*ap, unsigned long long);
				break;
			case LEN_Z:
				v = va_arg(*ap, size_t);
				break;
			case LEN_J:
				v = va_arg(*ap, uintmax_t);
				break;
			case LEN_T:
				v = (uint64_t)va_arg(*ap, ptrdiff_t);
				break;
			case LEN_HH:
				v = (unsigned char)va_arg(*ap, unsigned);
				break;
			case LEN_H:
				v = (unsigned short)va_arg(*ap, unsigned);
				break;
			default:
				v = va_arg(*ap, unsigned);
			}
			sp.plus = sp.space = false;
			put_number(o, v, false, conv == 'u' ? 10 : 16,
				   conv == 'X', &sp);
			break;
		}
		case 'p': {
			void *ptr = va_arg(*ap, void *);
			if (!ptr) {
				sp.precision = -1;
				put_padded_text(o, "(nil)", 5, &sp);
				break;
			}
			sp.alt = true;
			sp.plus = sp.space = false;
			put_number(o, (uint64_t)(uintptr_t)ptr, false, 16,
				   false, &sp);
			break;
		}
		case 's': {
			const char *s = va_arg(*ap, const char *);
			if (!s)
				s = "(null)";
			/* With a precision the argument need not be
			 * NUL-terminated: never read past it. */
			size_t n = sp.precision >= 0
				       ? strnlen(s, (size_t)sp.precision)
				       : strlen(s);
			put_padded_text(o, s, n, &sp);
			break;
		}
		case 'c': {
			char c = (char)va_arg(*ap, int);
			put_padded_text(o, &c, 1, &sp);
			break;
		}
		case '%':
			put_bytes(o, "%", 1);
			break;
		default:
			/* Unknown conversion (or %n, never supported): the
			 * argument types are unknown from here on, so print
			 * the rest of the format as text and stop. */
			put_text(o, start, strlen(start));
			return;
		}
	}
}

int pa_log_format(char *buf, int cap, const char *fmt, va_list ap)
{
	if (!buf || cap <= 0)
		return 0;
	struct out o = {buf, (size_t)cap - 1, 0, false};
	va_list copy;
	va_copy(copy, ap);
	if (fmt)
		format(&o, fmt, &copy);
	va_end(copy);
	buf[o.len] = '\0';
	return (int)o.len;
}

static void put_uint(struct out *o, uint64_t v)
{
	struct spec sp = {.precision = -1};
	put_number(o, v, false, 10, false, &sp);
}

void pa_log_vwrite(int level, const char *fmt, va_list ap)
{
	static const char *const words[] = {"debug", "info", "warn", "error"};
	int saved = errno;
	char line[LINE_MAX_BYTES];
	/* Room is kept for "..." (marks a cut line) and the '\n'. */
	struct out o = {line, sizeof(line) - 4, 0, false};
	if (level < PA_LOG_DEBUG)
		level = PA_LOG_DEBUG;
	if (level > PA_LOG_ERROR)
		level = PA_LOG_ERROR;
	put_bytes(&o, "pyroagent[", 10);
	put_uint(&o, (uint64_t)getpid());
	put_bytes(&o, "]: ", 3);
	put_bytes(&o, words[level], strlen(words[level]));
	put_bytes(&o, ": ", 2);
	va_list copy;
	va_copy(copy, ap);
	if (fmt)
		format(&o, fmt, &copy);
	va_end(copy);
	if (o.cut) {
		memcpy(line + o.len, "...", 3);
		o.len += 3;
	}
	line[o.len++] = '\n';
	/* One write: a line up to PIPE_BUF reaches a pipe whole, never
	 * interleaved with another thread's. */
	while (write(STDERR_FILENO, line, o.len) < 0 && errno == EINTR)
		;
	errno = saved;
}

void pa_log_write(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pa_log_vwrite(level, fmt, ap);
	va_end(ap);
}
