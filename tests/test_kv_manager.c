/* test_kv_manager.c - the coordinator's KV block manager: allocation and free without leaks,
 * prefix sharing with reference counts, hash collisions that must not share, LRU eviction order,
 * out-of-blocks failures that change nothing, copy-on-write after a fork, and a seeded random
 * stress run (block sizes 1, 4 and 16) under kvm_check with a shadow of the workers' KV. */
#include <stdlib.h>
#include <string.h>

#include "kv_manager.h"
#include "rng.h"
#include "test.h"

static void check_ok(const kvm *m, int line) {
    cinder_error err = {0};
    cinder_status st = kvm_check(m, &err);
    CHECK_MSG(st == CINDER_OK, "line %d: %s", line, err.msg);
}
#define CHECK_INVARIANTS(m) check_ok((m), __LINE__)

/* The pool is whole: nothing referenced, every block free or cached. */
static void check_whole(const kvm *m, int line) {
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_MSG(st.used == 0 && st.free + st.cached == st.n_blocks && st.n_seqs == 0,
              "line %d: used %d free %d cached %d of %d, %d sequences", line, st.used, st.free,
              st.cached, st.n_blocks, st.n_seqs);
    check_ok(m, line);
}
#define CHECK_WHOLE(m) check_whole((m), __LINE__)

static uint64_t hash_constant(uint64_t parent, const int32_t *tokens, int n) {
    return 42;
}

static void fill(int32_t *t, int n, int32_t base) {
    for (int i = 0; i < n; i++) t[i] = base + i;
}

static void test_alloc_free(void) {
    cinder_error err = {0};
    CHECK(kvm_create(0, 16, &err) == NULL && err.status == CINDER_ERR_ARG);
    CHECK(kvm_create(16, 0, &err) == NULL && err.status == CINDER_ERR_ARG);
    kvm_free(NULL);

    kvm *m = kvm_create(64, 4, &err);
    CHECK(m != NULL);
    kvm_set_watermark(m, 0);
    int32_t p[32];
    fill(p, 32, 100);
    kvm_seq *s = NULL;
    int cached = -1;
    CHECK(kvm_seq_alloc(m, 1, p, 0, &s, &cached, &err) == CINDER_ERR_ARG);
    CHECK(kvm_seq_alloc(m, 1, NULL, 3, &s, &cached, &err) == CINDER_ERR_ARG);
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, p, 10, &s, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 0);
    int nb;
    const int32_t *tab = kvm_seq_block_table(s, &nb);
    CHECK_EQ_INT(nb, 3);
    CHECK_EQ_INT(kvm_block_refcount(m, tab[0]), 1);
    CHECK_EQ_INT(kvm_seq_id(s), 1);
    CHECK_EQ_INT(kvm_seq_n_tokens(s), 10);
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.used, 3);
    CHECK_EQ_INT(st.free, 61);
    CHECK_INVARIANTS(m);

    /* Appends fill the partial block, then take new ones. */
    int32_t one = 7;
    for (int i = 0; i < 7; i++) CHECK_EQ_INT(kvm_seq_append(m, s, &one, 1, &err), CINDER_OK);
    kvm_seq_block_table(s, &nb);
    CHECK_EQ_INT(nb, 5);
    CHECK_EQ_INT(kvm_seq_append(m, s, p, 20, &err), CINDER_OK);
    kvm_seq_block_table(s, &nb);
    CHECK_EQ_INT(nb, 10);
    CHECK_EQ_INT(kvm_seq_n_tokens(s), 37);
    CHECK_INVARIANTS(m);
    /* Nothing computed, so nothing cached: everything goes back to the free list. */
    kvm_seq_free(m, s);
    CHECK_WHOLE(m);
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.free, 64);
    CHECK_EQ_INT(st.registered, 0);

    /* Computed full blocks are cached after the free; the partial one is freed. */
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, p, 10, &s, &cached, &err), CINDER_OK);
    kvm_seq_set_computed(m, s, 10);
    CHECK_EQ_INT(kvm_seq_n_computed(s), 10);
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.registered, 2);
    kvm_seq_free(m, s);
    CHECK_WHOLE(m);
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.cached, 2);
    CHECK_EQ_INT(st.free, 62);

    /* kvm_free releases live sequences too (ASan sees a leak otherwise). */
    CHECK_EQ_INT(kvm_seq_alloc(m, 3, p, 30, &s, &cached, &err), CINDER_OK);
    kvm_free(m);
}

static void test_prefix_sharing(void) {
    cinder_error err = {0};
    kvm *m = kvm_create(64, 4, &err);
    kvm_set_watermark(m, 0);
    int32_t a[43], b[43], c[45];
    fill(a, 40, 1000); /* the system prompt: 10 full blocks */
    memcpy(b, a, sizeof(int32_t) * 40);
    memcpy(c, a, sizeof(int32_t) * 40);
    fill(a + 40, 3, 1);
    fill(b + 40, 3, 2);
    fill(c + 40, 5, 3);

    kvm_seq *sa, *sb, *sc;
    int cached = -1, na, nb;
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, a, 43, &sa, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 0);
    CHECK_EQ_INT(kvm_prefix_match(m, b, 43), 0); /* not computed yet: not cached */
    kvm_seq_set_computed(m, sa, 43);
    CHECK_EQ_INT(kvm_prefix_match(m, b, 43), 40);

    CHECK_EQ_INT(kvm_seq_alloc(m, 2, b, 43, &sb, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 40);
    const int32_t *ta = kvm_seq_block_table(sa, &na), *tb = kvm_seq_block_table(sb, &nb);
    CHECK_EQ_INT(na, 11);
    CHECK_EQ_INT(nb, 11);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ_INT(ta[i], tb[i]);
        CHECK_EQ_INT(kvm_block_refcount(m, ta[i]), 2);
    }
    CHECK(ta[10] != tb[10]); /* partial last blocks are never shared */
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.used, 12);
    CHECK_EQ_INT(st.hit_blocks, 10);
    CHECK_EQ_INT(st.hit_tokens, 40);
    CHECK_EQ_INT(st.query_blocks, 20);
    CHECK_EQ_INT(st.query_tokens, 86);
    CHECK_INVARIANTS(m);
    kvm_seq_set_computed(m, sb, 43);
    kvm_seq_free(m, sa);
    CHECK_EQ_INT(kvm_block_refcount(m, tb[0]), 1);
    kvm_seq_free(m, sb);
    CHECK_WHOLE(m);
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.cached, 10);

    /* A third request after both finished: the cached blocks (refcount 0) are reused. */
    CHECK_EQ_INT(kvm_seq_alloc(m, 3, c, 45, &sc, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 40);
    const int32_t *tc = kvm_seq_block_table(sc, &nb);
    CHECK_EQ_INT(kvm_block_refcount(m, tc[0]), 1);
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.cached, 0);
    CHECK_EQ_INT(st.used, 12);
    CHECK_EQ_INT(st.hit_blocks, 20);
    CHECK_INVARIANTS(m);
    kvm_seq_free(m, sc);
    CHECK_WHOLE(m);

    /* A prompt wholly made of cached blocks still computes its last token: one block less. */
    CHECK_EQ_INT(kvm_seq_alloc(m, 4, a, 40, &sa, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 36);
    kvm_seq_free(m, sa);
    CHECK_EQ_INT(kvm_seq_alloc(m, 5, a, 41, &sa, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 40);
    kvm_seq_free(m, sa);
    CHECK_WHOLE(m);
    kvm_free(m);
}

static void test_collisions(void) {
    cinder_error err = {0};
    kvm *m = kvm_create(32, 4, &err);
    kvm_set_watermark(m, 0);
    kvm_set_hash_fn(m, hash_constant); /* every block hashes the same */
    int32_t x[9], y[9], z[9];
    fill(x, 9, 10);
    fill(y, 9, 50); /* other tokens, same hash */
    kvm_seq *sx, *sy, *sz;
    int cached;
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, x, 9, &sx, &cached, &err), CINDER_OK);
    kvm_seq_set_computed(m, sx, 9);
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, y, 9, &sy, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 0);
    int n;
    const int32_t *tx = kvm_seq_block_table(sx, &n), *ty = kvm_seq_block_table(sy, &n);
    for (int i = 0; i < 3; i++) CHECK(tx[i] != ty[i]);
    kvm_seq_set_computed(m, sy, 9);
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.hit_blocks, 0);
    CHECK_EQ_INT(st.registered, 4);
    CHECK_INVARIANTS(m);

    /* Same second block, different first block: the parent differs, so no sharing either. */
    memcpy(z, y, sizeof z);
    memcpy(z + 4, x + 4, sizeof(int32_t) * 4);
    kvm_seq_free(m, sy);
    CHECK_EQ_INT(kvm_seq_alloc(m, 3, z, 9, &sz, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 4); /* y's first block only */
    const int32_t *tz = kvm_seq_block_table(sz, &n);
    CHECK(tz[1] != tx[1]);
    kvm_seq_set_computed(m, sz, 9);
    CHECK_INVARIANTS(m);

    /* The real prefix still hits through the colliding entries. */
    kvm_seq_free(m, sx);
    CHECK_EQ_INT(kvm_prefix_match(m, x, 9), 8);
    CHECK_EQ_INT(kvm_seq_alloc(m, 4, x, 9, &sx, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 8);
    kvm_seq_free(m, sx);
    kvm_seq_free(m, sz);
    CHECK_WHOLE(m);
    kvm_free(m);
}

static void test_lru(void) {
    cinder_error err = {0};
    kvm *m = kvm_create(8, 2, &err);
    kvm_set_watermark(m, 0);
    int32_t a[5], b[5], d[16];
    fill(a, 5, 100);
    fill(b, 5, 200);
    fill(d, 16, 300);
    kvm_seq *s;
    int cached, n;
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, a, 5, &s, &cached, &err), CINDER_OK);
    int a0 = kvm_seq_block_table(s, &n)[0], a1 = kvm_seq_block_table(s, &n)[1];
    kvm_seq_set_computed(m, s, 5);
    kvm_seq_free(m, s); /* LRU: a1 a0 (tail blocks first) */
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, b, 5, &s, &cached, &err), CINDER_OK);
    int b0 = kvm_seq_block_table(s, &n)[0], b1 = kvm_seq_block_table(s, &n)[1];
    kvm_seq_set_computed(m, s, 5);
    kvm_seq_free(m, s); /* LRU: a1 a0 b1 b0 */
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.cached, 4);
    CHECK_EQ_INT(st.free, 4);

    /* Touch a: its blocks leave the LRU list and come back at its recent end. */
    CHECK_EQ_INT(kvm_seq_alloc(m, 3, a, 5, &s, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 4);
    kvm_seq_free(m, s); /* LRU: b1 b0 a1 a0 */

    /* Five blocks: four free ones, then the least recently used cached one, b1. */
    CHECK_EQ_INT(kvm_seq_alloc(m, 4, d, 10, &s, &cached, &err), CINDER_OK);
    CHECK(!kvm_block_is_registered(m, b1));
    CHECK(kvm_block_is_registered(m, b0) && kvm_block_is_registered(m, a0) &&
          kvm_block_is_registered(m, a1));
    CHECK_EQ_INT(kvm_prefix_match(m, b, 5), 2);
    CHECK_EQ_INT(kvm_prefix_match(m, a, 5), 4);
    CHECK_EQ_INT(kvm_seq_append(m, s, d + 10, 1, &err), CINDER_OK); /* evicts b0 */
    CHECK(!kvm_block_is_registered(m, b0));
    CHECK_EQ_INT(kvm_prefix_match(m, b, 5), 0);
    CHECK_EQ_INT(kvm_seq_append(m, s, d + 11, 2, &err), CINDER_OK); /* evicts a1 */
    CHECK(!kvm_block_is_registered(m, a1) && kvm_block_is_registered(m, a0));
    CHECK_EQ_INT(kvm_prefix_match(m, a, 5), 2);
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.evictions, 3);
    CHECK_INVARIANTS(m);
    kvm_seq_free(m, s);
    CHECK_WHOLE(m);
    kvm_free(m);
}

static void test_out_of_blocks(void) {
    cinder_error err = {0};
    kvm *m = kvm_create(8, 4, &err);
    kvm_set_watermark(m, 0);
    int32_t p[64];
    fill(p, 64, 1);
    kvm_seq *a, *b = NULL;
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, p, 20, &a, NULL, &err), CINDER_OK);
    kvm_seq_set_computed(m, a, 20);
    kvm_stats before, after;
    kvm_get_stats(m, &before);
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, p + 32, 16, &b, NULL, &err), CINDER_ERR_NOMEM);
    CHECK(b == NULL);
    CHECK(test_contains(err.msg, "needs 4 new blocks"));
    kvm_get_stats(m, &after);
    CHECK(memcmp(&before, &after, sizeof before) == 0);
    CHECK_INVARIANTS(m);

    CHECK_EQ_INT(kvm_seq_append(m, a, p, 12, &err), CINDER_OK); /* exactly the 3 left */
    kvm_get_stats(m, &before);
    CHECK_EQ_INT(before.free, 0);
    int n;
    const int32_t *t = kvm_seq_block_table(a, &n);
    int32_t table_before[8];
    memcpy(table_before, t, sizeof(int32_t) * n);
    CHECK_EQ_INT(kvm_seq_append(m, a, p, 1, &err), CINDER_ERR_NOMEM);
    kvm_get_stats(m, &after);
    CHECK(memcmp(&before, &after, sizeof before) == 0);
    CHECK_EQ_INT(kvm_seq_n_tokens(a), 32);
    t = kvm_seq_block_table(a, &n);
    CHECK_EQ_INT(n, 8);
    CHECK(memcmp(t, table_before, sizeof(int32_t) * 8) == 0);
    CHECK_INVARIANTS(m);
    kvm_seq_free(m, a);
    CHECK_WHOLE(m);

    /* Cached hits that are unreferenced count as available only once. */
    kvm_free(m);
    m = kvm_create(4, 2, &err);
    kvm_set_watermark(m, 0);
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, p, 7, &a, NULL, &err), CINDER_OK);
    kvm_seq_set_computed(m, a, 7);
    kvm_seq_free(m, a); /* 3 cached, 1 free */
    int cached;
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, p, 7, &a, &cached, &err), CINDER_OK);
    CHECK_EQ_INT(cached, 6);
    CHECK_EQ_INT(kvm_seq_alloc(m, 3, p + 10, 1, &b, NULL, &err), CINDER_ERR_NOMEM);
    kvm_seq_free(m, a);
    CHECK_EQ_INT(kvm_seq_alloc(m, 3, p + 10, 8, &b, &cached, &err), CINDER_OK); /* evicts 3 */
    CHECK_EQ_INT(cached, 0);
    kvm_seq_free(m, b);
    CHECK_WHOLE(m);
    kvm_free(m);

    /* The watermark is kept from new sequences, not from appends. */
    m = kvm_create(100, 1, &err);
    CHECK(kvm_can_allocate(m, 99));
    CHECK(!kvm_can_allocate(m, 100));
    kvm_set_watermark(m, 10);
    CHECK(kvm_can_allocate(m, 90) && !kvm_can_allocate(m, 91));
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, p, 64, &a, NULL, &err), CINDER_OK);
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, p + 1, 27, &b, NULL, &err), CINDER_ERR_NOMEM);
    CHECK_EQ_INT(kvm_seq_alloc(m, 2, p + 1, 26, &b, NULL, &err), CINDER_OK);
    CHECK_EQ_INT(kvm_seq_append(m, a, p, 10, &err), CINDER_OK);
    CHECK_EQ_INT(kvm_num_available(m), 0);
    kvm_seq_free(m, a);
    kvm_seq_free(m, b);
    CHECK_WHOLE(m);
    kvm_free(m);
}

static void test_fork_cow(void) {
    cinder_error err = {0};
    kvm *m = kvm_create(16, 4, &err);
    kvm_set_watermark(m, 0);
    int32_t p[6];
    fill(p, 6, 1);
    kvm_seq *a, *b;
    CHECK_EQ_INT(kvm_seq_alloc(m, 1, p, 6, &a, NULL, &err), CINDER_OK);
    kvm_seq_set_computed(m, a, 6);
    CHECK_EQ_INT(kvm_seq_fork(m, a, 2, &b, &err), CINDER_OK);
    int n;
    const int32_t *ta = kvm_seq_block_table(a, &n);
    int full = ta[0], partial = ta[1];
    CHECK_EQ_INT(kvm_block_refcount(m, full), 2);
    CHECK_EQ_INT(kvm_block_refcount(m, partial), 2);
    CHECK_EQ_INT(kvm_seq_n_computed(b), 6);
    CHECK_INVARIANTS(m);

    int32_t t1 = 77, t2 = 88;
    CHECK_EQ_INT(kvm_seq_append(m, a, &t1, 1, &err), CINDER_OK);
    ta = kvm_seq_block_table(a, &n);
    CHECK(ta[1] != partial);
    CHECK_EQ_INT(ta[0], full);
    CHECK_EQ_INT(kvm_block_refcount(m, partial), 1);
    CHECK_EQ_INT(kvm_block_refcount(m, ta[1]), 1);
    int nc;
    const kvm_copy *c = kvm_copies_pending(m, &nc);
    CHECK_EQ_INT(nc, 1);
    CHECK_EQ_INT(c[0].src, partial);
    CHECK_EQ_INT(c[0].dst, ta[1]);
    /* b now owns the old partial block alone: no copy. */
    CHECK_EQ_INT(kvm_seq_append(m, b, &t2, 1, &err), CINDER_OK);
    CHECK_EQ_INT(kvm_seq_block_table(b, &n)[1], partial);
    kvm_copies_pending(m, &nc);
    CHECK_EQ_INT(nc, 1);
    kvm_copies_clear(m);
    kvm_copies_pending(m, &nc);
    CHECK_EQ_INT(nc, 0);
    CHECK_INVARIANTS(m);

    /* Both fill their second block with different tokens: two cache entries, same parent. */
    kvm_seq_set_computed(m, a, 7);
    kvm_seq_set_computed(m, b, 7);
    CHECK_EQ_INT(kvm_seq_append(m, a, &t1, 1, &err), CINDER_OK);
    CHECK_EQ_INT(kvm_seq_append(m, b, &t2, 1, &err), CINDER_OK);
    kvm_seq_set_computed(m, a, 8);
    kvm_seq_set_computed(m, b, 8);
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(st.registered, 3);
    CHECK_EQ_INT(st.cow_copies, 1);

    /* A fork at a block boundary shares only full blocks: appending takes a new block. */
    kvm_seq *c2;
    CHECK_EQ_INT(kvm_seq_fork(m, a, 3, &c2, &err), CINDER_OK);
    CHECK_EQ_INT(kvm_seq_append(m, c2, &t1, 1, &err), CINDER_OK);
    kvm_copies_pending(m, &nc);
    CHECK_EQ_INT(nc, 0);
    CHECK_INVARIANTS(m);
    kvm_seq_free(m, a);
    kvm_seq_free(m, c2);
    kvm_seq_free(m, b);
    CHECK_WHOLE(m);
    kvm_free(m);
}

/* ---------------------------------------------------------------- random stress */

#define STRESS_MAX_SEQS 12
#define STRESS_MAX_LEN  96

typedef struct stress_seq {
    kvm_seq *s;
    int32_t tokens[STRESS_MAX_LEN];
    int n;
} stress_seq;

static uint64_t hash_weak(uint64_t parent, const int32_t *tokens, int n) {
    return (parent * 31 + (uint64_t)tokens[0]) & 7; /* many collisions, a few buckets */
}

/* shadow[block * bs + slot]: the token whose KV a worker wrote there (-1: none yet). Writes
 * happen at set_computed, copies at copy orders; a prefix-cache hit must find the prompt's
 * own tokens there. */
static void stress(int n_blocks, int bs, kvm_hash_fn hash, uint64_t seed, int n_ops) {
    cinder_error err = {0};
    kvm *m = kvm_create(n_blocks, bs, &err);
    kvm_set_watermark(m, n_blocks / 50);
    if (hash) kvm_set_hash_fn(m, hash);
    int32_t *shadow = malloc(sizeof(int32_t) * n_blocks * bs);
    for (int i = 0; i < n_blocks * bs; i++) shadow[i] = -1;
    rng_state r;
    rng_seed(&r, seed);
    int32_t prefixes[3][48];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 48; j++) prefixes[i][j] = (int32_t)(rng_next(&r) % 5);
    stress_seq seqs[STRESS_MAX_SEQS] = {0};
    int n_nomem = 0, bad_kv = 0, shared_write = 0, failures_before = test_failures;
    int64_t next_id = 1;

    for (int op = 0; op < n_ops && test_failures == failures_before; op++) {
        int i = (int)(rng_next(&r) % STRESS_MAX_SEQS), what = (int)(rng_next(&r) % 10);
        stress_seq *q = &seqs[i];
        int nb;
        if (!q->s && what < 6) { /* a new request */
            const int32_t *pre = prefixes[rng_next(&r) % 3];
            int lp = 1 + (int)(rng_next(&r) % 48), ls = (int)(rng_next(&r) % 6);
            memcpy(q->tokens, pre, sizeof(int32_t) * lp);
            for (int j = 0; j < ls; j++) q->tokens[lp + j] = 5 + (int32_t)(rng_next(&r) % 3);
            int cached = -1;
            cinder_status st =
                kvm_seq_alloc(m, next_id++, q->tokens, lp + ls, &q->s, &cached, &err);
            if (st == CINDER_ERR_NOMEM) {
                n_nomem++;
                q->s = NULL;
            } else {
                CHECK_EQ_INT(st, CINDER_OK);
                q->n = lp + ls;
                CHECK(cached % bs == 0 && cached < q->n);
                CHECK_EQ_INT(kvm_seq_n_computed(q->s), cached);
                const int32_t *t = kvm_seq_block_table(q->s, &nb);
                for (int p = 0; p < cached; p++)
                    bad_kv += shadow[t[p / bs] * bs + p % bs] != q->tokens[p];
            }
        } else if (!q->s) {
            continue;
        } else if (what < 4) { /* a step computed some of its tokens */
            int done = kvm_seq_n_computed(q->s),
                upto = done + (int)(rng_next(&r) % (q->n - done + 1));
            const int32_t *t = kvm_seq_block_table(q->s, &nb);
            for (int p = done; p < upto; p++) {
                shared_write += kvm_block_refcount(m, t[p / bs]) != 1;
                shadow[t[p / bs] * bs + p % bs] = q->tokens[p];
            }
            kvm_seq_set_computed(m, q->s, upto);
        } else if (what < 7) { /* decode: append sampled tokens once the KV is there */
            if (kvm_seq_n_computed(q->s) < q->n) continue;
            int k = 1 + (int)(rng_next(&r) % 3);
            if (q->n + k > STRESS_MAX_LEN) continue;
            int32_t tok[3];
            for (int j = 0; j < k; j++) tok[j] = (int32_t)(rng_next(&r) % 8);
            cinder_status st = kvm_seq_append(m, q->s, tok, k, &err);
            if (st == CINDER_ERR_NOMEM) {
                n_nomem++;
            } else {
                CHECK_EQ_INT(st, CINDER_OK);
                memcpy(q->tokens + q->n, tok, sizeof tok[0] * k);
                q->n += k;
            }
        } else if (what == 7 && kvm_seq_n_computed(q->s) == q->n) { /* fork (n > 1) */
            int j = (i + 1 + (int)(rng_next(&r) % (STRESS_MAX_SEQS - 1))) % STRESS_MAX_SEQS;
            if (seqs[j].s) continue;
            CHECK_EQ_INT(kvm_seq_fork(m, q->s, next_id++, &seqs[j].s, &err), CINDER_OK);
            memcpy(seqs[j].tokens, q->tokens, sizeof q->tokens);
            seqs[j].n = q->n;
        } else { /* finished, cancelled or preempted */
            kvm_seq_free(m, q->s);
            q->s = NULL;
        }
        /* The workers run the copy orders before the step. */
        int nc;
        const kvm_copy *c = kvm_copies_pending(m, &nc);
        for (int j = 0; j < nc; j++)
            memcpy(shadow + c[j].dst * bs, shadow + c[j].src * bs, sizeof(int32_t) * bs);
        kvm_copies_clear(m);
        cinder_status st = kvm_check(m, &err);
        CHECK_MSG(st == CINDER_OK, "op %d: %s", op, err.msg);
    }
    for (int i = 0; i < STRESS_MAX_SEQS; i++) kvm_seq_free(m, seqs[i].s);
    CHECK_WHOLE(m);
    kvm_stats st;
    kvm_get_stats(m, &st);
    CHECK_EQ_INT(bad_kv, 0);
    CHECK_EQ_INT(shared_write, 0);
    CHECK(st.hit_blocks > 0);
    CHECK(st.evictions > 0);
    CHECK(st.cow_copies > 0 || bs == 1);
    printf("stress bs %2d blocks %3d%s: hits %llu/%llu blocks, %llu evictions, %llu copies, "
           "%d out-of-blocks\n",
           bs, n_blocks, hash ? " weak hash" : "", (unsigned long long)st.hit_blocks,
           (unsigned long long)st.query_blocks, (unsigned long long)st.evictions,
           (unsigned long long)st.cow_copies, n_nomem);
    free(shadow);
    kvm_free(m);
}

int main(void) {
    test_alloc_free();
    test_prefix_sharing();
    test_collisions();
    test_lru();
    test_out_of_blocks();
    test_fork_cow();
    stress(120, 1, NULL, 1, 10000);
    stress(40, 4, NULL, 2, 10000);
    stress(14, 16, NULL, 3, 10000);
    stress(40, 4, hash_weak, 4, 10000);
    return test_summary("test_kv_manager");
}
