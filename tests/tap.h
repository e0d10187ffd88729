/* tap.h - a tiny TAP producer for the tests (plan, ok, is_*, skip, bail). */
#ifndef MSA_TAP_H
#define MSA_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_planned, tap_run, tap_failed;

__attribute__((unused)) static void plan(int n)
{
	tap_planned = n;
	printf("1..%d\n", n);
	fflush(stdout);
}

__attribute__((unused, format(printf, 1, 2))) static void diag(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("# ", stdout);
	vprintf(fmt, ap);
	fputs("\n", stdout);
	va_end(ap);
	fflush(stdout);
}

__attribute__((unused, noreturn, format(printf, 1, 2))) static void skip_all(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("1..0 # skip ", stdout);
	vprintf(fmt, ap);
	fputs("\n", stdout);
	va_end(ap);
	exit(0);
}

__attribute__((unused, noreturn, format(printf, 1, 2))) static void bail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("Bail out! ", stdout);
	vprintf(fmt, ap);
	fputs("\n", stdout);
	va_end(ap);
	exit(255);
}

static int tap_ok(int cond, const char *file, int line, const char *fmt, va_list ap)
{
	tap_run++;
	if (!cond)
		tap_failed++;
	printf("%sok %d - ", cond ? "" : "not ", tap_run);
	vprintf(fmt, ap);
	printf("\n");
	if (!cond)
		printf("#   failed at %s:%d\n", file, line);
	fflush(stdout);
	return cond;
}

__attribute__((unused, format(printf, 4, 5))) static int ok_at(int cond, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = tap_ok(cond, file, line, fmt, ap);
	va_end(ap);
	return r;
}

__attribute__((unused, format(printf, 5, 6))) static int is_int_at(long got, long want, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = tap_ok(got == want, file, line, fmt, ap);
	va_end(ap);
	if (!r)
		printf("#        got: %ld\n#   expected: %ld\n", got, want);
	return r;
}

__attribute__((unused, format(printf, 5, 6))) static int is_string_at(const char *got, const char *want, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	int same = got && want ? strcmp(got, want) == 0 : got == want;
	va_start(ap, fmt);
	int r = tap_ok(same, file, line, fmt, ap);
	va_end(ap);
	if (!r)
		printf("#        got: '%s'\n#   expected: '%s'\n", got ? got : "(null)", want ? want : "(null)");
	return r;
}

/* Passes when needle occurs in hay; prints both otherwise. */
__attribute__((unused, format(printf, 5, 6))) static int like_at(const char *hay, const char *needle, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = tap_ok(hay && strstr(hay, needle) != NULL, file, line, fmt, ap);
	va_end(ap);
	if (!r)
		printf("#        got: '%s'\n#   expected to contain: '%s'\n", hay ? hay : "(null)", needle);
	return r;
}

__attribute__((unused, format(printf, 2, 3))) static void skip(int n, const char *fmt, ...)
{
	char why[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	for (int i = 0; i < n; i++)
		printf("ok %d # skip %s\n", ++tap_run, why);
	fflush(stdout);
}

/* Exit status: nonzero if anything failed, nothing ran, or the count is off. */
__attribute__((unused)) static int done_testing(void)
{
	if (tap_run == 0) {
		printf("# no checks ran\n");
		return 1;
	}
	if (tap_run != tap_planned)
		printf("# planned %d checks but ran %d\n", tap_planned, tap_run);
	return tap_failed || tap_run != tap_planned;
}

#define ok(c, ...) ok_at(!!(c), __FILE__, __LINE__, __VA_ARGS__)
#define is_int(g, w, ...) is_int_at((long)(g), (long)(w), __FILE__, __LINE__, __VA_ARGS__)
#define is_string(g, w, ...) is_string_at((g), (w), __FILE__, __LINE__, __VA_ARGS__)
#define like(h, n, ...) like_at((h), (n), __FILE__, __LINE__, __VA_ARGS__)

#endif
