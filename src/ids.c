/*
 * ids.c - collisionless concurrent id table: id strings -> dense row numbers.
 *
 * Workload: lookups (every request, every training event) outnumber inserts
 * by orders of magnitude, and removals (expiry) are rarer still. So lookups
 * take no lock and write no shared memory; inserts and removals serialize on
 * one mutex.
 *
 * Design
 *
 * Key records. Each insert bump-allocates an immutable record {hash, row,
 * len, bytes} in an arena of chunks that never move and are freed only by
 * hr_ids_destroy. A record is complete before it is published and never
 * written again, so a reader that reached it through an acquire load reads
 * it as plain memory. The bytes of a removed id are not reclaimed (the
 * contract keeps key pointers valid until destroy): the arena grows by one
 * record per insert.
 *
 * Index. Open addressing with linear probing over _Atomic uint64_t slots:
 * 0 is empty, 1 is a tombstone (an id was removed here), anything else is
 * the top 19 bits of the key's hash (a tag) above the record's address / 8
 * (records are 8-byte aligned; the arena refuses memory at or above 2^48, so
 * the address fits in 45 bits). The home slot is hash & mask, so tag and
 * position use different hash bits. A present-key lookup is: hash, load of
 * the index pointer (a line every reader shares and no one writes), one slot
 * line, the record (hash, length and the key's first bytes on one line),
 * memcmp. The row is in the record, so there is no third miss.
 *
 * Readers never lock, so the index keeps one invariant at every instant:
 * every slot from a live key's home up to the key's slot is non-empty. An
 * insert fills the first tombstone or empty slot of its probe run; a removal
 * leaves a tombstone, or an empty slot when no live key's probe path crosses
 * it (then the tombstones just before it are emptied too); a key never moves
 * inside one array. So a reader probing while writers work finds every key
 * that stays present and never reads freed memory.
 *
 * Growth: when live keys plus tombstones would pass 70% of the slots (about
 * a fifth are tombstones under steady churn), a new array of twice the
 * slots is built, the live slots are rehashed into it (using the hash kept
 * in each record), and it is published with a release store. The old array
 * may still be probed by readers that loaded it, so it is kept on a retired
 * list until hr_ids_destroy; as arrays only ever double, the retired ones
 * add up to less than the current one.
 *
 * Rows. rows[row >> 14][row & 16383] is an _Atomic pointer to the row's
 * record, NULL when the row holds no id. The chunk pointer array is sized
 * from max_rows at create; a chunk is allocated once when a row in it is
 * first used and never moves, so hr_ids_key is two acquire loads.
 *
 * Free rows. Removed rows, and rows skipped by hr_ids_insert_at, go on a
 * stack. hr_ids_insert_at may take a row from the middle of the stack; the
 * stale entry stays and is dropped when it reaches the top (a row is free
 * exactly when its row pointer is NULL). The stack always has room for
 * high_water - first_row entries, compacting (dropping stale entries and
 * duplicates) when full, so a removal never allocates.
 *
 * Ordering of an insert: record written, init(ctx, row) run, row pointer
 * stored (release), slot stored (release), count and high water updated.
 * A reader that finds the id (acquire on the slot) therefore sees the
 * record and everything init wrote.
 *
 * Threads: hr_ids_lookup, hr_ids_key, hr_ids_high_water, hr_ids_count,
 * hr_ids_removed and hr_ids_bytes from any thread at any time;
 * hr_ids_intern, hr_ids_insert_at and hr_ids_remove from any thread,
 * serialized internally. The init callback runs under the lock and must not
 * call hr_ids_intern, hr_ids_insert_at or hr_ids_remove on the same table.
 */
#include "hogrec/ids.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define ROW_CHUNK_BITS 14
#define ROW_CHUNK ((uint32_t)1 << ROW_CHUNK_BITS)

#define MIN_INDEX_BITS 6
#define MAX_INDEX_BITS 32

#define ARENA_FIRST_BYTES ((size_t)4096)
#define ARENA_MAX_BYTES ((size_t)1 << 20)
/* Records must lie below this address so that address / 8 fits PTR_BITS. */
#define ARENA_ADDR_LIMIT ((uintptr_t)1 << 48)

#define SLOT_EMPTY 0ull
#define SLOT_TOMB 1ull
#define PTR_BITS 45
#define PTR_MASK ((1ull << PTR_BITS) - 1)

/* An id's immutable record; lives in the arena until hr_ids_destroy. */
struct keyrec {
    uint64_t hash; /* hr_hash64 of bytes with the table's seed */
    uint32_t row;  /* row the id was given */
    uint32_t len;  /* length of bytes, 1..HR_ID_MAX_LEN */
    char bytes[];  /* the id, not NUL-terminated */
};

/* One index array. Only slots change after publication. */
struct index {
    uint64_t mask;        /* number of slots - 1 (a power of two - 1) */
    size_t bytes;         /* size of this allocation */
    struct index *older;  /* next on the retired list (writers only) */
    _Atomic uint64_t slots[];
};

struct arena_chunk {
    struct arena_chunk *prev; /* previously filled chunk */
    size_t size;              /* bytes in data */
    size_t used;              /* bytes handed out */
    uint64_t data[];          /* records, 8-byte aligned */
};

typedef _Atomic(const struct keyrec *) row_ref;

struct hr_ids {
    /* Read by lock-free readers; only `index` changes after create. */
    _Atomic(struct index *) index; /* current index array */
    _Atomic(row_ref *) *rows;      /* nchunks chunk pointers, NULL = none */
    uint64_t seed;                 /* hash seed, random per table */
    uint32_t first_row;            /* lowest row handed out */
    uint32_t max_rows;             /* rows are < max_rows */
    uint32_t nchunks;              /* ceil(max_rows / ROW_CHUNK) */

    /* Counters: written under the lock, read anywhere (relaxed). */
    _Alignas(HR_CACHE_LINE) _Atomic uint32_t high_water; /* one past top row */
    _Atomic uint32_t count;    /* ids present */
    _Atomic uint64_t removed;  /* removals so far */
    _Atomic size_t bytes;      /* memory held, bytes */

    /* Writer state, only under lock. */
    _Alignas(HR_CACHE_LINE) pthread_mutex_t lock;
    uint64_t tombs;             /* tombstones in the current index */
    struct index *retired;      /* replaced arrays, freed at destroy */
    struct arena_chunk *arena;  /* chunk being filled, links to older ones */
    uint32_t *free_rows;        /* stack of free rows (may hold stale ones) */
    size_t free_n;              /* entries on the stack */
    size_t free_cap;            /* capacity, >= high_water - first_row */
};

/* ---- small helpers ---------------------------------------------------- */

static void account(hr_ids *ids, size_t add, size_t sub)
{
    atomic_fetch_add_explicit(&ids->bytes, add, memory_order_relaxed);
    atomic_fetch_sub_explicit(&ids->bytes, sub, memory_order_relaxed);
}

static inline uint64_t make_slot(const struct keyrec *rec)
{
    /* the arena hands out 8-byte aligned records below 2^48 */
    assert(((uintptr_t)rec & 7) == 0 && (uintptr_t)rec < ARENA_ADDR_LIMIT);
    return (rec->hash >> PTR_BITS) << PTR_BITS | (uint64_t)((uintptr_t)rec >> 3);
}

static inline const struct keyrec *slot_rec(uint64_t v)
{
    return (const struct keyrec *)(uintptr_t)((v & PTR_MASK) << 3);
}

static inline bool slot_live(uint64_t v) { return v != SLOT_EMPTY && v != SLOT_TOMB; }

static inline uint64_t slot_load(const struct index *idx, uint64_t i)
{
    /* Writers under the lock also use this; their ordering comes from the
     * mutex, readers' from the acquire on the index pointer and here. */
    return atomic_load_explicit(&idx->slots[i], memory_order_acquire);
}

static inline void slot_store(struct index *idx, uint64_t i, uint64_t v)
{
    atomic_store_explicit(&idx->slots[i], v, memory_order_release);
}

static inline bool rec_is(const struct keyrec *rec, uint64_t hash, const char *key,
                          size_t len)
{
    return rec->hash == hash && rec->len == len && memcmp(rec->bytes, key, len) == 0;
}

static inline const struct keyrec *row_get(const hr_ids *ids, uint32_t row)
{
    row_ref *chunk = atomic_load_explicit(&ids->rows[row >> ROW_CHUNK_BITS],
                                          memory_order_acquire);
    if (!chunk)
        return NULL;
    return atomic_load_explicit(&chunk[row & (ROW_CHUNK - 1)], memory_order_acquire);
}

/* Lock held; the row's chunk exists. */
static inline void row_set(hr_ids *ids, uint32_t row, const struct keyrec *rec)
{
    row_ref *chunk = atomic_load_explicit(&ids->rows[row >> ROW_CHUNK_BITS],
                                          memory_order_relaxed);
    assert(chunk && row < ids->max_rows);
    atomic_store_explicit(&chunk[row & (ROW_CHUNK - 1)], rec, memory_order_release);
}

static bool valid_len(const char *key, size_t len)
{
    return key && len >= 1 && len <= HR_ID_MAX_LEN;
}

/* The lock-free probe: record of key in the current index, or NULL. */
static const struct keyrec *find(const hr_ids *ids, uint64_t hash, const char *key,
                                 size_t len)
{
    const struct index *idx = atomic_load_explicit(&ids->index, memory_order_acquire);
    uint64_t mask = idx->mask;
    for (uint64_t i = hash & mask;; i = (i + 1) & mask) {
        uint64_t v = slot_load(idx, i);
        if (v == SLOT_EMPTY)
            return NULL;
        if (((v ^ hash) >> PTR_BITS) == 0 && v != SLOT_TOMB) {
            const struct keyrec *rec = slot_rec(v);
            if (rec_is(rec, hash, key, len))
                return rec;
        }
    }
}

/* ---- index arrays (lock held) ----------------------------------------- */

static struct index *index_new(unsigned bits)
{
    uint64_t slots = 1ull << bits;
    size_t bytes = sizeof(struct index) + slots * sizeof(_Atomic uint64_t);
    struct index *idx = calloc(1, bytes); /* all slots SLOT_EMPTY */
    if (!idx)
        return NULL;
    idx->mask = slots - 1;
    idx->bytes = bytes;
    return idx;
}

static struct index *current(hr_ids *ids)
{
    return atomic_load_explicit(&ids->index, memory_order_relaxed);
}

/* Stores rec (absent from the index) at the first free slot of its run. */
static void index_put(hr_ids *ids, const struct keyrec *rec)
{
    struct index *idx = current(ids);
    uint64_t i = rec->hash & idx->mask, v;
    while (slot_live(v = slot_load(idx, i)))
        i = (i + 1) & idx->mask;
    if (v == SLOT_TOMB)
        ids->tombs--;
    slot_store(idx, i, make_slot(rec));
}

/* Replaces the index with a fresh array of 2^bits slots; the old one is
 * retired. */
static hr_status rebuild(hr_ids *ids, unsigned bits)
{
    struct index *old = current(ids), *idx = index_new(bits);
    if (!idx)
        return HR_ENOMEM;
    for (uint64_t i = 0; i <= old->mask; i++) {
        uint64_t v = slot_load(old, i);
        if (!slot_live(v))
            continue;
        uint64_t j = slot_rec(v)->hash & idx->mask;
        while (atomic_load_explicit(&idx->slots[j], memory_order_relaxed) != SLOT_EMPTY)
            j = (j + 1) & idx->mask;
        atomic_store_explicit(&idx->slots[j], v, memory_order_relaxed);
    }
    atomic_store_explicit(&ids->index, idx, memory_order_release);
    old->older = ids->retired;
    ids->retired = old;
    ids->tombs = 0;
    account(ids, idx->bytes, 0);
    return HR_OK;
}

/* Clears slot p of the current index (which holds a live key). */
static void index_clear(hr_ids *ids, uint64_t p)
{
    struct index *idx = current(ids);
    uint64_t mask = idx->mask;
    assert(slot_live(slot_load(idx, p)));
    /* Does a live key after p in the run have its home at or before p? */
    for (uint64_t q = (p + 1) & mask;; q = (q + 1) & mask) {
        uint64_t v = slot_load(idx, q);
        if (v == SLOT_EMPTY)
            break;
        if (v == SLOT_TOMB)
            continue;
        if (((q - slot_rec(v)->hash) & mask) >= ((q - p) & mask)) {
            slot_store(idx, p, SLOT_TOMB);
            ids->tombs++;
            return;
        }
    }
    slot_store(idx, p, SLOT_EMPTY);
    /* No key crosses p, so none crosses the tombstones just before it. */
    for (uint64_t q = (p - 1) & mask; slot_load(idx, q) == SLOT_TOMB; q = (q - 1) & mask) {
        slot_store(idx, q, SLOT_EMPTY);
        ids->tombs--;
    }
}

/* Makes sure one more key fits: live keys + tombstones at most 70% of the
 * slots, else the array doubles (dropping the tombstones). Arrays only ever
 * double, so the retired ones add up to less than the current one. Under
 * steady random churn tombstones settle at about a fifth of the slots
 * (removals empty the slots no probe path crosses; inserts reuse the rest),
 * so churn at a steady live count costs at most one extra doubling (seen
 * over 20M operations at 100 to 100k live ids). */
static hr_status make_room(hr_ids *ids)
{
    struct index *idx = current(ids);
    uint64_t cap = idx->mask + 1;
    uint64_t live = atomic_load_explicit(&ids->count, memory_order_relaxed);
    if ((live + ids->tombs + 1) * 10 <= cap * 7)
        return HR_OK;
    unsigned bits = 0;
    while ((1ull << bits) < cap)
        bits++;
    if (bits >= MAX_INDEX_BITS)
        return HR_ENOMEM;
    return rebuild(ids, bits + 1);
}

/* ---- arena (lock held) ------------------------------------------------ */

static struct keyrec *arena_alloc(hr_ids *ids, size_t size)
{
    struct arena_chunk *c = ids->arena;
    if (!c || c->size - c->used < size) {
        size_t csize = c ? c->size * 2 : ARENA_FIRST_BYTES;
        if (csize > ARENA_MAX_BYTES)
            csize = ARENA_MAX_BYTES;
        if (csize < size)
            csize = size;
        struct arena_chunk *n = malloc(sizeof *n + csize);
        if (!n)
            return NULL;
        if ((uintptr_t)n + sizeof *n + csize > ARENA_ADDR_LIMIT) {
            free(n);
            return NULL;
        }
        n->prev = c;
        n->size = csize;
        n->used = 0;
        ids->arena = c = n;
        account(ids, sizeof *n + csize, 0);
    }
    assert(size % 8 == 0 && c->size - c->used >= size); /* records stay 8-byte aligned */
    struct keyrec *rec = (struct keyrec *)((char *)c->data + c->used);
    c->used += size;
    return rec;
}

/* Gives back the last arena_alloc. */
static void arena_unalloc(hr_ids *ids, size_t size) { ids->arena->used -= size; }

/* ---- rows and the free stack (lock held) ------------------------------ */

static hr_status ensure_row_chunk(hr_ids *ids, uint32_t row)
{
    _Atomic(row_ref *) *slot = &ids->rows[row >> ROW_CHUNK_BITS];
    if (atomic_load_explicit(slot, memory_order_relaxed))
        return HR_OK;
    row_ref *chunk = calloc(ROW_CHUNK, sizeof *chunk); /* all NULL */
    if (!chunk)
        return HR_ENOMEM;
    atomic_store_explicit(slot, chunk, memory_order_release);
    account(ids, ROW_CHUNK * sizeof *chunk, 0);
    return HR_OK;
}

static int cmp_row_desc(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x < y) - (x > y);
}

/* Drops stale and duplicate entries; lowest rows end on top. */
static void compact_free(hr_ids *ids)
{
    if (ids->free_n == 0)
        return;
    qsort(ids->free_rows, ids->free_n, sizeof *ids->free_rows, cmp_row_desc);
    size_t out = 0;
    for (size_t i = 0; i < ids->free_n; i++) {
        uint32_t r = ids->free_rows[i];
        if ((out > 0 && ids->free_rows[out - 1] == r) || row_get(ids, r))
            continue;
        ids->free_rows[out++] = r;
    }
    ids->free_n = out;
}

/* Makes room to push `pushes` rows and keeps free_cap >= new_hw - first_row. */
static hr_status reserve_free(hr_ids *ids, size_t pushes, uint32_t new_hw)
{
    if (ids->free_n + pushes > ids->free_cap)
        compact_free(ids);
    size_t need = (size_t)(new_hw - ids->first_row);
    if (ids->free_n + pushes > need)
        need = ids->free_n + pushes;
    if (need <= ids->free_cap)
        return HR_OK;
    size_t limit = (size_t)(ids->max_rows - ids->first_row);
    size_t cap = ids->free_cap ? ids->free_cap * 2 : 64;
    while (cap < need)
        cap *= 2;
    if (cap > limit)
        cap = limit > need ? limit : need;
    uint32_t *p = realloc(ids->free_rows, cap * sizeof *p);
    if (!p)
        return HR_ENOMEM;
    account(ids, cap * sizeof *p, ids->free_cap * sizeof *p);
    ids->free_rows = p;
    ids->free_cap = cap;
    return HR_OK;
}

/* Top free row (dropping stale entries on the way), or HR_ID_NONE. */
static uint32_t peek_free(hr_ids *ids)
{
    while (ids->free_n > 0) {
        uint32_t r = ids->free_rows[ids->free_n - 1];
        if (!row_get(ids, r))
            return r;
        ids->free_n--;
    }
    return HR_ID_NONE;
}

/* ---- insert (lock held) ----------------------------------------------- */

/* Inserts the absent key at `want`, or at a free or new row if want is
 * HR_ID_NONE (want, if given, is free and in range). */
static hr_status insert_locked(hr_ids *ids, uint64_t hash, const char *key, size_t len,
                               uint32_t want, hr_ids_row_init_fn init, void *ctx,
                               uint32_t *row_out)
{
    uint32_t hw = atomic_load_explicit(&ids->high_water, memory_order_relaxed);
    uint32_t row = want;
    bool from_free = false;
    hr_status st;
    if (want == HR_ID_NONE) {
        st = reserve_free(ids, 0, hw < ids->max_rows ? hw + 1 : hw);
        if (st != HR_OK)
            return st;
        row = peek_free(ids);
        from_free = row != HR_ID_NONE;
        if (!from_free) {
            if (hw >= ids->max_rows)
                return HR_EFULL;
            row = hw;
        }
    } else {
        st = reserve_free(ids, row >= hw ? row - hw : 0, row >= hw ? row + 1 : hw);
        if (st != HR_OK)
            return st;
    }
    if ((st = ensure_row_chunk(ids, row)) != HR_OK || (st = make_room(ids)) != HR_OK)
        return st;

    size_t size = (sizeof(struct keyrec) + len + 7) & ~(size_t)7;
    struct keyrec *rec = arena_alloc(ids, size);
    if (!rec)
        return HR_ENOMEM;
    rec->hash = hash;
    rec->row = row;
    rec->len = (uint32_t)len;
    memcpy(rec->bytes, key, len);
    if (init && (st = init(ctx, row)) != HR_OK) {
        arena_unalloc(ids, size);
        return st;
    }

    /* Publish: row pointer, then the slot that makes the id findable. */
    assert(row < ids->max_rows && !row_get(ids, row));
    row_set(ids, row, rec);
    index_put(ids, rec);
    atomic_fetch_add_explicit(&ids->count, 1, memory_order_relaxed);
    if (from_free) {
        ids->free_n--;
    } else if (row >= hw) {
        assert(ids->free_n + (row - hw) <= ids->free_cap); /* reserve_free made room */
        for (uint32_t r = row; r-- > hw;) /* holes; lowest ends on top */
            ids->free_rows[ids->free_n++] = r;
        atomic_store_explicit(&ids->high_water, row + 1, memory_order_release);
    }
    *row_out = row;
    return HR_OK;
}

/* ---- public ----------------------------------------------------------- */

hr_status hr_ids_create(uint32_t first_row, uint32_t max_rows, hr_ids **out)
{
    if (!out)
        return HR_EINVAL;
    *out = NULL;
    if (max_rows == 0 || first_row > max_rows)
        return HR_EINVAL;
    size_t size = (sizeof(hr_ids) + HR_CACHE_LINE - 1) & ~(size_t)(HR_CACHE_LINE - 1);
    hr_ids *ids = aligned_alloc(HR_CACHE_LINE, size);
    if (!ids)
        return HR_ENOMEM;
    memset(ids, 0, size);
    ids->first_row = first_row;
    ids->max_rows = max_rows;
    ids->nchunks = (uint32_t)(((uint64_t)max_rows + ROW_CHUNK - 1) >> ROW_CHUNK_BITS);
    ids->rows = calloc(ids->nchunks, sizeof *ids->rows); /* all NULL */
    struct index *idx = index_new(MIN_INDEX_BITS);
    if (!ids->rows || !idx || pthread_mutex_init(&ids->lock, NULL) != 0) {
        free(idx);
        free(ids->rows);
        free(ids);
        return HR_ENOMEM;
    }
    atomic_init(&ids->index, idx);
    atomic_init(&ids->high_water, first_row);
    atomic_init(&ids->count, 0);
    atomic_init(&ids->removed, 0);
    atomic_init(&ids->bytes, size + ids->nchunks * sizeof *ids->rows + idx->bytes);
    /* A per-table seed so clients cannot aim ids at one probe run. */
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = hr_now_ns() ^ (uint64_t)(uintptr_t)ids;
    ids->seed = seed;
    *out = ids;
    return HR_OK;
}

void hr_ids_destroy(hr_ids *ids)
{
    if (!ids)
        return;
    free(current(ids));
    for (struct index *i = ids->retired, *next; i; i = next) {
        next = i->older;
        free(i);
    }
    for (struct arena_chunk *c = ids->arena, *prev; c; c = prev) {
        prev = c->prev;
        free(c);
    }
    for (uint32_t i = 0; i < ids->nchunks; i++)
        free(atomic_load_explicit(&ids->rows[i], memory_order_relaxed));
    free(ids->rows);
    free(ids->free_rows);
    pthread_mutex_destroy(&ids->lock);
    free(ids);
}

uint32_t hr_ids_lookup(const hr_ids *ids, const char *key, size_t len)
{
    if (!ids || !valid_len(key, len))
        return HR_ID_NONE;
    const struct keyrec *rec = find(ids, hr_hash64(key, len, ids->seed), key, len);
    return rec ? rec->row : HR_ID_NONE;
}

hr_status hr_ids_intern(hr_ids *ids, const char *key, size_t len,
                        hr_ids_row_init_fn init, void *ctx, uint32_t *row,
                        bool *created)
{
    if (created)
        *created = false;
    if (!ids || !row || !valid_len(key, len))
        return HR_EINVAL;
    uint64_t hash = hr_hash64(key, len, ids->seed);
    const struct keyrec *rec = find(ids, hash, key, len);
    if (rec) {
        *row = rec->row;
        return HR_OK;
    }
    pthread_mutex_lock(&ids->lock);
    hr_status st = HR_OK;
    rec = find(ids, hash, key, len); /* another writer may have won */
    if (rec) {
        *row = rec->row;
    } else {
        st = insert_locked(ids, hash, key, len, HR_ID_NONE, init, ctx, row);
        if (st == HR_OK && created)
            *created = true;
    }
    pthread_mutex_unlock(&ids->lock);
    return st;
}

hr_status hr_ids_insert_at(hr_ids *ids, const char *key, size_t len, uint32_t row)
{
    if (!ids || !valid_len(key, len) || row < ids->first_row || row >= ids->max_rows)
        return HR_EINVAL;
    uint64_t hash = hr_hash64(key, len, ids->seed);
    pthread_mutex_lock(&ids->lock);
    hr_status st = HR_EINVAL;
    uint32_t got;
    if (!row_get(ids, row) && !find(ids, hash, key, len))
        st = insert_locked(ids, hash, key, len, row, NULL, NULL, &got);
    pthread_mutex_unlock(&ids->lock);
    return st;
}

hr_status hr_ids_remove(hr_ids *ids, uint32_t row)
{
    if (!ids)
        return HR_EINVAL;
    if (row < ids->first_row || row >= ids->max_rows)
        return HR_ENOTFOUND;
    pthread_mutex_lock(&ids->lock);
    const struct keyrec *rec = row_get(ids, row);
    if (!rec) {
        pthread_mutex_unlock(&ids->lock);
        return HR_ENOTFOUND;
    }
    struct index *idx = current(ids);
    uint64_t want = (uint64_t)((uintptr_t)rec >> 3), i = rec->hash & idx->mask, v;
    while ((v = slot_load(idx, i)) != SLOT_EMPTY && (v == SLOT_TOMB || (v & PTR_MASK) != want))
        i = (i + 1) & idx->mask;
    if (v == SLOT_EMPTY) { /* cannot happen: a row's record is indexed */
        pthread_mutex_unlock(&ids->lock);
        return HR_ECORRUPT;
    }
    /* Room is guaranteed: after compaction the stack holds at most the
     * high_water - first_row - count free rows, and count >= 1 here. */
    if (ids->free_n == ids->free_cap)
        compact_free(ids);
    index_clear(ids, i);
    row_set(ids, row, NULL);
    ids->free_rows[ids->free_n++] = row;
    atomic_fetch_sub_explicit(&ids->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ids->removed, 1, memory_order_relaxed);
    pthread_mutex_unlock(&ids->lock);
    return HR_OK;
}

const char *hr_ids_key(const hr_ids *ids, uint32_t row, size_t *len)
{
    const struct keyrec *rec = ids && row < ids->max_rows ? row_get(ids, row) : NULL;
    if (len)
        *len = rec ? rec->len : 0;
    return rec ? rec->bytes : NULL;
}

uint32_t hr_ids_high_water(const hr_ids *ids)
{
    return ids ? atomic_load_explicit(&ids->high_water, memory_order_acquire) : 0;
}

uint32_t hr_ids_count(const hr_ids *ids)
{
    return ids ? atomic_load_explicit(&ids->count, memory_order_relaxed) : 0;
}

uint64_t hr_ids_removed(const hr_ids *ids)
{
    return ids ? atomic_load_explicit(&ids->removed, memory_order_relaxed) : 0;
}

size_t hr_ids_bytes(const hr_ids *ids)
{
    return ids ? atomic_load_explicit(&ids->bytes, memory_order_relaxed) : 0;
}
