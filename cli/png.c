/* png.c - the tune report's bar chart as a PNG, with no image library:
 * rows of RGB pixels in stored (uncompressed) deflate blocks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tune.h"

static unsigned long crc_table[256];

static unsigned long crc(unsigned long c, const unsigned char *p, size_t n)
{
	if (!crc_table[1])
		for (unsigned long i = 0; i < 256; i++) {
			unsigned long x = i;
			for (int k = 0; k < 8; k++)
				x = x & 1 ? 0xedb88320UL ^ (x >> 1) : x >> 1;
			crc_table[i] = x;
		}
	c ^= 0xffffffffUL;
	while (n--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffUL;
}

static void be32(unsigned char *p, unsigned long v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static int chunk(FILE *f, const char *tag, const unsigned char *data, size_t n)
{
	unsigned char hdr[8], tail[4];
	be32(hdr, n);
	memcpy(hdr + 4, tag, 4);
	be32(tail, crc(crc(0, hdr + 4, 4), data, n));
	return fwrite(hdr, 1, 8, f) == 8 && fwrite(data, 1, n, f) == n && fwrite(tail, 1, 4, f) == 4;
}

/* zlib stream of stored blocks around raw scanlines. */
static unsigned char *zstore(const unsigned char *raw, size_t n, size_t *out_n)
{
	size_t blocks = n / 65535 + 1, cap = 2 + n + blocks * 5 + 4, o = 0;
	unsigned char *z = malloc(cap);
	unsigned long a = 1, b = 0;
	if (!z)
		return NULL;
	z[o++] = 0x78;
	z[o++] = 0x01;
	for (size_t i = 0; i < n || i == 0;) {
		size_t len = n - i < 65535 ? n - i : 65535;
		z[o++] = i + len == n ? 1 : 0;
		z[o++] = (unsigned char)len;
		z[o++] = (unsigned char)(len >> 8);
		z[o++] = (unsigned char)~len;
		z[o++] = (unsigned char)(~len >> 8);
		memcpy(z + o, raw + i, len);
		o += len;
		i += len;
		if (len == 0)
			break;
	}
	for (size_t i = 0; i < n; i++) {
		a = (a + raw[i]) % 65521;
		b = (b + a) % 65521;
	}
	be32(z + o, (b << 16) | a);
	*out_n = o + 4;
	return z;
}

static void bar(unsigned char *img, int w, int x0, int x1, int y0, int y1, const unsigned char rgb[3])
{
	for (int y = y0; y < y1; y++)
		for (int x = x0; x < x1; x++)
			memcpy(img + (size_t)y * (1 + 3 * w) + 1 + 3 * x, rgb, 3);
}

int tune_plot_png(const char *path, const tune_group *g, int ngroups)
{
	static const unsigned char grey[3] = {90, 110, 160}, pick[3] = {235, 140, 30}, axis[3] = {0, 0, 0};
	int bw = 14, gap = 18, h = 260, m = 20, w = 2 * m, rc = -1;
	for (int i = 0; i < ngroups; i++)
		w += g[i].ncand * bw + gap;
	size_t rowb = 1 + 3 * (size_t)w, n = rowb * h, zn;
	unsigned char *img = malloc(n), *z = NULL, ihdr[13];
	FILE *f = NULL;
	if (!img)
		return -1;
	memset(img, 255, n);
	for (int y = 0; y < h; y++)
		img[(size_t)y * rowb] = 0;	/* filter: none */
	bar(img, w, m, w - m, h - m, h - m + 1, axis);
	for (int i = 0, x = m + gap / 2; i < ngroups; i++, x += gap) {
		double best = 0;
		for (int c = 0; c < g[i].ncand; c++)
			if (g[i].med[c] > 0 && (best == 0 || g[i].med[c] < best))
				best = g[i].med[c];
		for (int c = 0; c < g[i].ncand; c++, x += bw) {
			/* the axis runs from half the fastest speed to the fastest */
			double rel = g[i].med[c] > 0 ? best / g[i].med[c] : 0, y = (rel - 0.5) / 0.5;
			int top = (int)((h - 2 * m) * (1 - (y < 0 ? 0 : y))) + m;
			bar(img, w, x + 1, x + bw - 1, top, h - m, c == g[i].pick ? pick : grey);
		}
	}
	be32(ihdr, (unsigned long)w);
	be32(ihdr + 4, (unsigned long)h);
	memcpy(ihdr + 8, "\x08\x02\x00\x00\x00", 5);	/* 8-bit RGB */
	if (!(z = zstore(img, n, &zn)) || !(f = fopen(path, "wb")))
		goto out;
	if (fwrite("\x89PNG\r\n\x1a\n", 1, 8, f) == 8 && chunk(f, "IHDR", ihdr, 13) &&
	    chunk(f, "IDAT", z, zn) && chunk(f, "IEND", (const unsigned char *)"", 0))
		rc = 0;
out:
	if (f && fclose(f) != 0)
		rc = -1;
	free(z);
	free(img);
	return rc;
}
