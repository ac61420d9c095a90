/* kv_manager.c - KV block manager with prefix caching. See kv_manager.h for the model.
 *
 * Cache identity: a registered block carries a key (a serial number, never reused) and its
 * parent's key. A lookup for block i of a prompt matches an entry only when hash, parent key and
 * tokens are all equal, and the parent key is the key that block i-1 itself matched; by
 * induction a hit means the whole prefix is token-for-token equal, whatever the hash does. */
#include "kv_manager.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rng.h"

#define KVM_ROOT_HASH 0xcbf29ce484222325ull

typedef struct kvm_block {
    int32_t ref;         /* number of block tables holding the block */
    uint8_t registered;  /* in the hash index (then key != 0) */
    uint64_t hash;       /* chain hash, while registered */
    uint64_t key;        /* unique content id, while registered */
    uint64_t parent_key; /* key of the previous block of the chain (0 for the first block) */
    int32_t hnext;       /* next entry in the same hash bucket */
    int32_t prev, next;  /* LRU list when cached and unreferenced; free list (next) when free */
} kvm_block;

struct kvm_seq {
    int64_t id;
    int32_t *table; /* [cap] block ids; n_table used */
    int n_table, cap;
    int n_tokens;        /* tokens with a reserved slot */
    int n_computed;      /* tokens whose KV exists */
    int n_registered;    /* leading full blocks whose chain key is known */
    uint64_t chain_hash; /* hash and key of block n_registered-1 (root values when 0) */
    uint64_t chain_key;
    kvm_seq *prev, *next; /* the manager's list of live sequences */
};

struct kvm {
    int n_blocks, block_size, watermark;
    kvm_block *blocks; /* [n_blocks] */
    int32_t *tokens;   /* [n_blocks, block_size] the token ids each block holds */
    int32_t *buckets;  /* [n_buckets] hash index heads */
    uint64_t bucket_mask;
    kvm_hash_fn hash;
    int32_t free_head;          /* free list (LIFO) */
    int32_t lru_head, lru_tail; /* cached unreferenced blocks, head = least recently used */
    int n_free, n_lru, n_registered;
    uint64_t next_key;
    kvm_seq *seqs;
    int n_seqs;
    kvm_copy *copies;
    int n_copies, cap_copies;
    uint64_t query_blocks, hit_blocks, query_tokens, hit_tokens, evictions, cow_copies;
};

/* ---------------------------------------------------------------- hashing and the index */

uint64_t kvm_hash_default(uint64_t parent_hash, const int32_t *tokens, int n_tokens) {
    uint64_t h = parent_hash ^ ((uint64_t)n_tokens << 32);
    for (int i = 0; i < n_tokens; i++) {
        uint64_t x = h ^ (uint32_t)tokens[i];
        h = rng_splitmix64(&x);
    }
    return h;
}

static const int32_t *block_tokens(const kvm *m, int b) {
    return m->tokens + (size_t)b * m->block_size;
}

/* The registered block with this hash, parent key and tokens, or -1. */
static int index_find(const kvm *m, uint64_t hash, uint64_t parent_key, const int32_t *tokens) {
    for (int b = m->buckets[hash & m->bucket_mask]; b >= 0; b = m->blocks[b].hnext) {
        const kvm_block *e = &m->blocks[b];
        if (e->hash == hash && e->parent_key == parent_key &&
            memcmp(block_tokens(m, b), tokens, sizeof(int32_t) * m->block_size) == 0)
            return b;
    }
    return -1;
}

static void index_insert(kvm *m, int b, uint64_t hash, uint64_t parent_key) {
    kvm_block *e = &m->blocks[b];
    CN_ASSERT(!e->registered);
    e->registered = 1;
    e->hash = hash;
    e->parent_key = parent_key;
    e->key = ++m->next_key;
    int32_t *head = &m->buckets[hash & m->bucket_mask];
    e->hnext = *head;
    *head = b;
    m->n_registered++;
}

static void index_remove(kvm *m, int b) {
    kvm_block *e = &m->blocks[b];
    CN_ASSERT(e->registered);
    int32_t *link = &m->buckets[e->hash & m->bucket_mask];
    while (*link != b) {
        CN_ASSERT(*link >= 0);
        link = &m->blocks[*link].hnext;
    }
    *link = e->hnext;
    e->hnext = -1;
    e->registered = 0;
    e->hash = e->key = e->parent_key = 0;
    m->n_registered--;
}

/* ---------------------------------------------------------------- free list and LRU */

static void lru_remove(kvm *m, int b) {
    kvm_block *e = &m->blocks[b];
    if (e->prev >= 0)
        m->blocks[e->prev].next = e->next;
    else
        m->lru_head = e->next;
    if (e->next >= 0)
        m->blocks[e->next].prev = e->prev;
    else
        m->lru_tail = e->prev;
    e->prev = e->next = -1;
    m->n_lru--;
}

static void lru_push_tail(kvm *m, int b) {
    kvm_block *e = &m->blocks[b];
    e->prev = m->lru_tail;
    e->next = -1;
    if (m->lru_tail >= 0)
        m->blocks[m->lru_tail].next = b;
    else
        m->lru_head = b;
    m->lru_tail = b;
    m->n_lru++;
}

static void free_push(kvm *m, int b) {
    m->blocks[b].next = m->free_head;
    m->blocks[b].prev = -1;
    m->free_head = b;
    m->n_free++;
}

/* A block for new content, refcount 1: a free one, else the LRU cached one (evicted). The
 * caller has checked that one is available. */
static int block_take(kvm *m) {
    int b = m->free_head;
    if (b >= 0) {
        m->free_head = m->blocks[b].next;
        m->blocks[b].next = -1;
        m->n_free--;
    } else {
        b = m->lru_head;
        CN_ASSERT(b >= 0);
        lru_remove(m, b);
        index_remove(m, b);
        m->evictions++;
    }
    m->blocks[b].ref = 1;
    return b;
}

/* Takes one more reference on a block (a prefix-cache hit or a fork). */
static void block_ref(kvm *m, int b) {
    if (m->blocks[b].ref++ == 0) {
        CN_ASSERT(m->blocks[b].registered);
        lru_remove(m, b);
    }
}

static void block_unref(kvm *m, int b) {
    kvm_block *e = &m->blocks[b];
    CN_ASSERT(e->ref > 0);
    if (--e->ref > 0) return;
    if (e->registered)
        lru_push_tail(m, b);
    else
        free_push(m, b);
}

/* ---------------------------------------------------------------- the manager */

kvm *kvm_create(int n_blocks, int block_size, cinder_error *err) {
    if (n_blocks <= 0 || block_size <= 0 || n_blocks > (1 << 30) / block_size) {
        cinder_error_set(err, CINDER_ERR_ARG, "kv manager: bad pool %d blocks x %d tokens",
                         n_blocks, block_size);
        return NULL;
    }
    kvm *m = calloc(1, sizeof(*m));
    if (!m) goto nomem;
    m->n_blocks = n_blocks;
    m->block_size = block_size;
    m->watermark = n_blocks / 100;
    m->hash = kvm_hash_default;
    size_t n_buckets = 16;
    while (n_buckets < 2 * (size_t)n_blocks) n_buckets *= 2;
    m->bucket_mask = n_buckets - 1;
    m->blocks = calloc((size_t)n_blocks, sizeof(*m->blocks));
    m->tokens = calloc((size_t)n_blocks * block_size, sizeof(*m->tokens));
    m->buckets = malloc(n_buckets * sizeof(*m->buckets));
    if (!m->blocks || !m->tokens || !m->buckets) goto nomem;
    for (size_t i = 0; i < n_buckets; i++) m->buckets[i] = -1;
    m->free_head = m->lru_head = m->lru_tail = -1;
    for (int b = n_blocks - 1; b >= 0; b--) {
        m->blocks[b].hnext = -1;
        free_push(m, b);
    }
    return m;
nomem:
    kvm_free(m);
    cinder_error_set(err, CINDER_ERR_NOMEM, "kv manager: out of memory for %d blocks", n_blocks);
    return NULL;
}

void kvm_free(kvm *m) {
    if (!m) return;
    while (m->seqs) {
        kvm_seq *s = m->seqs;
        m->seqs = s->next;
        free(s->table);
        free(s);
    }
    free(m->blocks);
    free(m->tokens);
    free(m->buckets);
    free(m->copies);
    free(m);
}

void kvm_set_watermark(kvm *m, int n_blocks) {
    CN_ASSERT(n_blocks >= 0 && n_blocks <= m->n_blocks);
    m->watermark = n_blocks;
}

void kvm_set_hash_fn(kvm *m, kvm_hash_fn fn) {
    CN_ASSERT(m->n_registered == 0);
    m->hash = fn ? fn : kvm_hash_default;
}

int kvm_blocks_for_tokens(const kvm *m, int n_tokens) {
    return (n_tokens + m->block_size - 1) / m->block_size;
}

int kvm_num_available(const kvm *m) {
    return m->n_free + m->n_lru;
}

bool kvm_can_allocate(const kvm *m, int n_blocks) {
    return n_blocks <= kvm_num_available(m) - m->watermark;
}

/* Walks the cache along the prompt's full blocks (never the block holding the last token);
 * stores the hit blocks in hits (if not NULL) and returns their number, with the chain hash and
 * key of the last hit. */
static int prefix_walk(const kvm *m, const int32_t *prompt, int n_prompt, int32_t *hits,
                       uint64_t *chain_hash, uint64_t *chain_key) {
    int bs = m->block_size, max_blocks = (n_prompt - 1) / bs, k = 0;
    uint64_t h = KVM_ROOT_HASH, key = 0;
    for (; k < max_blocks; k++) {
        const int32_t *t = prompt + (size_t)k * bs;
        uint64_t hk = m->hash(h, t, bs);
        int b = index_find(m, hk, key, t);
        if (b < 0) break;
        if (hits) hits[k] = b;
        h = hk;
        key = m->blocks[b].key;
    }
    *chain_hash = h;
    *chain_key = key;
    return k;
}

int kvm_prefix_match(const kvm *m, const int32_t *prompt, int n_prompt) {
    if (!prompt || n_prompt <= 0) return 0;
    uint64_t h, key;
    return prefix_walk(m, prompt, n_prompt, NULL, &h, &key) * m->block_size;
}

static void seq_link(kvm *m, kvm_seq *s) {
    s->prev = NULL;
    s->next = m->seqs;
    if (m->seqs) m->seqs->prev = s;
    m->seqs = s;
    m->n_seqs++;
}

static kvm_seq *seq_new(int64_t id, int cap) {
    kvm_seq *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->id = id;
    s->cap = cap > 4 ? cap : 4;
    s->table = malloc(sizeof(int32_t) * s->cap);
    if (!s->table) {
        free(s);
        return NULL;
    }
    return s;
}

cinder_status kvm_seq_alloc(kvm *m, int64_t seq_id, const int32_t *prompt, int n_prompt,
                            kvm_seq **out, int *n_cached, cinder_error *err) {
    if (!prompt || n_prompt <= 0 || !out)
        return cinder_error_set(err, CINDER_ERR_ARG, "kv manager: sequence %lld: empty prompt",
                                (long long)seq_id);
    if (n_prompt > INT32_MAX - m->block_size)
        return cinder_error_set(err, CINDER_ERR_RANGE, "kv manager: prompt of %d tokens", n_prompt);
    int n_total = kvm_blocks_for_tokens(m, n_prompt);
    kvm_seq *s = seq_new(seq_id, n_total + 1);
    if (!s) return cinder_error_set(err, CINDER_ERR_NOMEM, "kv manager: out of memory");

    int k = prefix_walk(m, prompt, n_prompt, s->table, &s->chain_hash, &s->chain_key);
    int hits_unref = 0; /* hits now counted as evictable; taking them shrinks what is left */
    for (int i = 0; i < k; i++) hits_unref += m->blocks[s->table[i]].ref == 0;
    int n_new = n_total - k;
    if (n_new > kvm_num_available(m) - hits_unref - m->watermark) {
        free(s->table);
        free(s);
        return cinder_error_set(err, CINDER_ERR_NOMEM,
                                "kv manager: sequence %lld needs %d new blocks, %d available "
                                "(%d kept back for decodes)",
                                (long long)seq_id, n_new, kvm_num_available(m) - hits_unref,
                                m->watermark);
    }

    /* Hits leave the LRU list before anything is evicted, so they cannot be evicted here. */
    for (int i = 0; i < k; i++) block_ref(m, s->table[i]);
    int bs = m->block_size;
    for (int i = k; i < n_total; i++) {
        int b = block_take(m);
        int n = n_prompt - i * bs < bs ? n_prompt - i * bs : bs;
        memcpy(m->tokens + (size_t)b * bs, prompt + (size_t)i * bs, sizeof(int32_t) * n);
        s->table[i] = b;
    }
    s->n_table = n_total;
    s->n_tokens = n_prompt;
    s->n_registered = k;
    s->n_computed = k * bs;
    seq_link(m, s);

    m->query_blocks += (uint64_t)((n_prompt - 1) / bs);
    m->hit_blocks += (uint64_t)k;
    m->query_tokens += (uint64_t)n_prompt;
    m->hit_tokens += (uint64_t)k * bs;
    if (n_cached) *n_cached = k * bs;
    *out = s;
    return CINDER_OK;
}

cinder_status kvm_seq_append(kvm *m, kvm_seq *s, const int32_t *tokens, int n, cinder_error *err) {
    if (n <= 0) return CINDER_OK;
    if (!tokens)
        return cinder_error_set(err, CINDER_ERR_ARG, "kv manager: sequence %lld: no tokens",
                                (long long)s->id);
    if (n > INT32_MAX - m->block_size - s->n_tokens)
        return cinder_error_set(err, CINDER_ERR_RANGE, "kv manager: sequence %lld too long",
                                (long long)s->id);
    int bs = m->block_size, off = s->n_tokens % bs;
    int n_total = kvm_blocks_for_tokens(m, s->n_tokens + n);
    bool cow = off != 0 && m->blocks[s->table[s->n_table - 1]].ref > 1;
    int need = n_total - s->n_table + (cow ? 1 : 0);
    if (need > kvm_num_available(m))
        return cinder_error_set(err, CINDER_ERR_NOMEM,
                                "kv manager: sequence %lld needs %d blocks, %d available",
                                (long long)s->id, need, kvm_num_available(m));
    /* Grow the arrays first, so that nothing has changed if this fails. */
    if (n_total > s->cap) {
        int cap = s->cap * 2 > n_total ? s->cap * 2 : n_total;
        int32_t *t = realloc(s->table, sizeof(int32_t) * cap);
        if (!t) return cinder_error_set(err, CINDER_ERR_NOMEM, "kv manager: out of memory");
        s->table = t;
        s->cap = cap;
    }
    if (cow && m->n_copies == m->cap_copies) {
        int cap = m->cap_copies ? m->cap_copies * 2 : 16;
        kvm_copy *c = realloc(m->copies, sizeof(kvm_copy) * cap);
        if (!c) return cinder_error_set(err, CINDER_ERR_NOMEM, "kv manager: out of memory");
        m->copies = c;
        m->cap_copies = cap;
    }

    if (cow) {
        int src = s->table[s->n_table - 1], dst = block_take(m);
        memcpy(m->tokens + (size_t)dst * bs, block_tokens(m, src), sizeof(int32_t) * off);
        block_unref(m, src); /* still referenced by the other sharers */
        s->table[s->n_table - 1] = dst;
        m->copies[m->n_copies++] = (kvm_copy){src, dst};
        m->cow_copies++;
    }
    for (int i = 0; i < n; i++) {
        int pos = s->n_tokens + i;
        if (pos % bs == 0) s->table[s->n_table++] = block_take(m);
        m->tokens[(size_t)s->table[pos / bs] * bs + pos % bs] = tokens[i];
    }
    s->n_tokens += n;
    CN_ASSERT(s->n_table == n_total);
    return CINDER_OK;
}

/* Registers full block n_registered of s, whose KV now exists. When an equal entry is already
 * registered (another sequence computed the same tokens at the same time), this block stays out
 * of the index and the chain continues from that entry. */
static void seq_register_next(kvm *m, kvm_seq *s) {
    int b = s->table[s->n_registered];
    const int32_t *t = block_tokens(m, b);
    uint64_t h = m->hash(s->chain_hash, t, m->block_size);
    int e = index_find(m, h, s->chain_key, t);
    if (e < 0) {
        CN_ASSERT(!m->blocks[b].registered);
        index_insert(m, b, h, s->chain_key);
        e = b;
    }
    s->chain_hash = h;
    s->chain_key = m->blocks[e].key;
    s->n_registered++;
}

void kvm_seq_set_computed(kvm *m, kvm_seq *s, int n_computed) {
    CN_ASSERT(n_computed >= s->n_computed && n_computed <= s->n_tokens);
    s->n_computed = n_computed;
    while ((s->n_registered + 1) * m->block_size <= n_computed) seq_register_next(m, s);
}

cinder_status kvm_seq_fork(kvm *m, kvm_seq *s, int64_t seq_id, kvm_seq **out, cinder_error *err) {
    kvm_seq *c = seq_new(seq_id, s->cap);
    if (!c) return cinder_error_set(err, CINDER_ERR_NOMEM, "kv manager: out of memory");
    memcpy(c->table, s->table, sizeof(int32_t) * s->n_table);
    c->n_table = s->n_table;
    c->n_tokens = s->n_tokens;
    c->n_computed = s->n_computed;
    c->n_registered = s->n_registered;
    c->chain_hash = s->chain_hash;
    c->chain_key = s->chain_key;
    for (int i = 0; i < c->n_table; i++) block_ref(m, c->table[i]);
    seq_link(m, c);
    *out = c;
    return CINDER_OK;
}

void kvm_seq_free(kvm *m, kvm_seq *s) {
    if (!s) return;
    /* Last block first: a prompt's tail blocks go to the LRU end that is evicted first, so a
     * shared prefix outlives the tails that hang off it. */
    for (int i = s->n_table - 1; i >= 0; i--) block_unref(m, s->table[i]);
    if (s->prev)
        s->prev->next = s->next;
    else
        m->seqs = s->next;
    if (s->next) s->next->prev = s->prev;
    m->n_seqs--;
    free(s->table);
    free(s);
}

int64_t kvm_seq_id(const kvm_seq *s) {
    return s->id;
}

int kvm_seq_n_tokens(const kvm_seq *s) {
    return s->n_tokens;
}

int kvm_seq_n_computed(const kvm_seq *s) {
    return s->n_computed;
}

const int32_t *kvm_seq_block_table(const kvm_seq *s, int *n_blocks) {
    *n_blocks = s->n_table;
    return s->table;
}

const kvm_copy *kvm_copies_pending(const kvm *m, int *n_copies) {
    *n_copies = m->n_copies;
    return m->copies;
}

void kvm_copies_clear(kvm *m) {
    m->n_copies = 0;
}

void kvm_get_stats(const kvm *m, kvm_stats *out) {
    *out = (kvm_stats){
        .n_blocks = m->n_blocks,
        .block_size = m->block_size,
        .used = m->n_blocks - m->n_free - m->n_lru,
        .free = m->n_free,
        .cached = m->n_lru,
        .registered = m->n_registered,
        .n_seqs = m->n_seqs,
        .watermark = m->watermark,
        .query_blocks = m->query_blocks,
        .hit_blocks = m->hit_blocks,
        .query_tokens = m->query_tokens,
        .hit_tokens = m->hit_tokens,
        .evictions = m->evictions,
        .cow_copies = m->cow_copies,
    };
}

int kvm_block_refcount(const kvm *m, int block) {
    CN_ASSERT(block >= 0 && block < m->n_blocks);
    return m->blocks[block].ref;
}

bool kvm_block_is_registered(const kvm *m, int block) {
    CN_ASSERT(block >= 0 && block < m->n_blocks);
    return m->blocks[block].registered;
}

/* ---------------------------------------------------------------- invariants */

cinder_status kvm_check(const kvm *m, cinder_error *err) {
    int n = m->n_blocks, bs = m->block_size;
    /* seen: 1 on the free list, 2 on the LRU list, 4 in the hash index. */
    uint8_t *seen = calloc((size_t)n, 1);
    int32_t *refs = calloc((size_t)n, sizeof(int32_t));
    int32_t *stamp = calloc((size_t)n, sizeof(int32_t)); /* last sequence seen holding a block */
    cinder_status st = CINDER_OK;
    if (!seen || !refs || !stamp) {
        st = cinder_error_set(err, CINDER_ERR_NOMEM, "kvm_check: out of memory");
        goto done;
    }
#define KVM_FAIL(...)                                                                              \
    do {                                                                                           \
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "kvm_check: " __VA_ARGS__);                  \
        goto done;                                                                                 \
    } while (0)

    int count = 0;
    for (int b = m->free_head; b >= 0; b = m->blocks[b].next) {
        if (b >= n || seen[b] || ++count > n) KVM_FAIL("free list broken at block %d", b);
        seen[b] |= 1;
    }
    if (count != m->n_free) KVM_FAIL("free list has %d blocks, counter says %d", count, m->n_free);
    count = 0;
    for (int b = m->lru_head, prev = -1; b >= 0; prev = b, b = m->blocks[b].next) {
        if (b >= n || seen[b] || ++count > n) KVM_FAIL("LRU list broken at block %d", b);
        if (m->blocks[b].prev != prev) KVM_FAIL("LRU back link of block %d", b);
        if (m->blocks[b].next < 0 && m->lru_tail != b) KVM_FAIL("LRU tail is not block %d", b);
        seen[b] |= 2;
    }
    if (count != m->n_lru) KVM_FAIL("LRU list has %d blocks, counter says %d", count, m->n_lru);

    count = 0;
    for (uint64_t i = 0; i <= m->bucket_mask; i++) {
        for (int b = m->buckets[i]; b >= 0; b = m->blocks[b].hnext) {
            const kvm_block *e = &m->blocks[b];
            if (b >= n || (seen[b] & 4) || ++count > n)
                KVM_FAIL("hash bucket %llu broken", (unsigned long long)i);
            seen[b] |= 4;
            if (!e->registered || e->key == 0 || (e->hash & m->bucket_mask) != i)
                KVM_FAIL("block %d in bucket %llu is not registered there", b,
                         (unsigned long long)i);
            if (index_find(m, e->hash, e->parent_key, block_tokens(m, b)) != b)
                KVM_FAIL("block %d has a duplicate entry in the index", b);
        }
    }
    if (count != m->n_registered)
        KVM_FAIL("index has %d blocks, counter says %d", count, m->n_registered);

    int n_seqs = 0;
    for (const kvm_seq *s = m->seqs; s; s = s->next) {
        if (++n_seqs > m->n_seqs) KVM_FAIL("sequence list longer than %d", m->n_seqs);
        if (s->n_table != (s->n_tokens + bs - 1) / bs || s->n_table > s->cap)
            KVM_FAIL("sequence %lld: %d blocks for %d tokens", (long long)s->id, s->n_table,
                     s->n_tokens);
        if (s->n_computed > s->n_tokens || s->n_registered > s->n_computed / bs)
            KVM_FAIL("sequence %lld: computed %d, registered %d of %d tokens", (long long)s->id,
                     s->n_computed, s->n_registered, s->n_tokens);
        if (s->n_registered != s->n_computed / bs)
            KVM_FAIL("sequence %lld: computed full blocks not registered", (long long)s->id);
        for (int i = 0; i < s->n_table; i++) {
            int b = s->table[i];
            if (b < 0 || b >= n) KVM_FAIL("sequence %lld: bad block %d", (long long)s->id, b);
            if (stamp[b] == n_seqs)
                KVM_FAIL("sequence %lld holds block %d twice", (long long)s->id, b);
            stamp[b] = n_seqs;
            refs[b]++;
        }
        /* A partial last block is shared only by forks, never through the cache. */
        if (s->n_tokens % bs && m->blocks[s->table[s->n_table - 1]].registered)
            KVM_FAIL("sequence %lld: partial block %d is registered", (long long)s->id,
                     s->table[s->n_table - 1]);
    }
    if (n_seqs != m->n_seqs) KVM_FAIL("sequence list has %d, counter says %d", n_seqs, m->n_seqs);

    for (int b = 0; b < n; b++) {
        const kvm_block *e = &m->blocks[b];
        if (e->ref != refs[b])
            KVM_FAIL("block %d: refcount %d but %d tables hold it", b, e->ref, refs[b]);
        int state = seen[b] & 3;
        if (e->ref > 0 && state) KVM_FAIL("block %d referenced but on a free/LRU list", b);
        if (e->ref == 0 && e->registered && state != 2) KVM_FAIL("cached block %d not in LRU", b);
        if (e->ref == 0 && !e->registered && state != 1) KVM_FAIL("block %d lost (not free)", b);
        if (e->registered != ((seen[b] & 4) != 0)) KVM_FAIL("block %d: index flag wrong", b);
    }
done:
    free(seen);
    free(refs);
    free(stamp);
    return st;
}
