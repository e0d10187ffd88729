/* memtab.c - the in-memory table from variant names to loaded kernels.
 *
 * Open addressing with linear probing over a power-of-two array kept at
 * most half full, so a miss ends after a probe or two.  Each slot keeps
 * the full 64-bit hash: most non-matching slots are rejected without
 * touching the key, but a hit always compares the whole key, because a
 * hash collision must never hand back another variant's kernel.
 * There is no delete (the cache only grows), hence no tombstones.
 * Not thread-safe: the caller holds its lock around every call. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MIN_CAP 16

typedef struct slot {
	uint64_t hash;
	char *key;		/* NULL = empty slot; owned, NUL-terminated */
	void *value;		/* the caller's */
} slot;

struct msa_memtab {
	slot *slots;
	size_t cap;		/* power of two */
	size_t count;
};

/* Multiply-xor in the manner of FNV-1a, but a 64-bit word at a time: an
 * 80-byte variant name costs ten multiplies instead of eighty, which is
 * most of a lookup.  The murmur3 finaliser then spreads the long shared
 * prefixes' differences into the low bits the bucket mask keeps.  The
 * value depends on host byte order; it never leaves the process. */
static uint64_t hash_key(const char *key, size_t *len)
{
	const uint64_t m = 0x9e3779b97f4a7c15ull;
	size_t n = strlen(key), i = 0;
	uint64_t h = 0xcbf29ce484222325ull ^ (n * m), w;

	for (; i + 8 <= n; i += 8) {
		memcpy(&w, key + i, 8);
		h = (h ^ w) * m;
		h ^= h >> 29;
	}
	if (i < n) {
		w = 0;
		memcpy(&w, key + i, n - i);
		h = (h ^ w) * m;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	*len = n;
	return h;
}

static slot *find(const msa_memtab *t, const char *key, uint64_t h)
{
	size_t mask = t->cap - 1;

	for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
		slot *s = &t->slots[i];
		if (!s->key || (s->hash == h && strcmp(s->key, key) == 0))
			return s;
	}
}

static int grow(msa_memtab *t)
{
	size_t ncap = t->cap * 2, mask = ncap - 1;
	slot *ns = calloc(ncap, sizeof *ns);

	if (!ns)
		return MSA_ENOMEM;
	for (size_t i = 0; i < t->cap; i++) {
		slot *s = &t->slots[i];
		size_t j;
		if (!s->key)
			continue;
		for (j = (size_t)s->hash & mask; ns[j].key; j = (j + 1) & mask)
			;
		ns[j] = *s;
	}
	free(t->slots);
	t->slots = ns;
	t->cap = ncap;
	return MSA_OK;
}

msa_memtab *msa_memtab_new(void)
{
	msa_memtab *t = calloc(1, sizeof *t);

	if (!t)
		return NULL;
	t->slots = calloc(MIN_CAP, sizeof *t->slots);
	if (!t->slots) {
		free(t);
		return NULL;
	}
	t->cap = MIN_CAP;
	return t;
}

void msa_memtab_free(msa_memtab *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->cap; i++)
		free(t->slots[i].key);
	free(t->slots);
	free(t);
}

void *msa_memtab_get(const msa_memtab *t, const char *key)
{
	size_t len;
	slot *s;

	if (!t || !key)
		return NULL;
	s = find(t, key, hash_key(key, &len));
	return s->key ? s->value : NULL;
}

/* Inserts or replaces; MSA_OK, MSA_EINVAL or MSA_ENOMEM (table unchanged). */
int msa_memtab_put(msa_memtab *t, const char *key, void *value)
{
	size_t len;
	uint64_t h;
	slot *s;
	char *copy;

	if (!t || !key)
		return MSA_EINVAL;
	h = hash_key(key, &len);
	s = find(t, key, h);
	if (s->key) {
		s->value = value;
		return MSA_OK;
	}
	if (t->count >= INT_MAX)
		return MSA_ENOMEM;	/* count() returns int */
	/* Keep the load at most 1/2 after this insert. */
	if (2 * (t->count + 1) > t->cap) {
		int rc = grow(t);
		if (rc != MSA_OK)
			return rc;
		s = find(t, key, h);
	}
	copy = malloc(len + 1);
	if (!copy)
		return MSA_ENOMEM;
	memcpy(copy, key, len + 1);
	s->hash = h;
	s->key = copy;
	s->value = value;
	t->count++;
	return MSA_OK;
}

int msa_memtab_count(const msa_memtab *t)
{
	return t ? (int)t->count : 0;
}

void msa_memtab_each(const msa_memtab *t, void (*fn)(void *arg, const char *key, void *value), void *arg)
{
	if (!t || !fn)
		return;
	for (size_t i = 0; i < t->cap; i++)
		if (t->slots[i].key)
			fn(arg, t->slots[i].key, t->slots[i].value);
}
