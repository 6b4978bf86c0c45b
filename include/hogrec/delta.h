/*
 * delta.h - row deltas: what changed in a model since the last delta, as
 * compact binary a follower applies to a model of the same shape, after
 * which it scores exactly as the leader did when the delta was encoded.
 *
 * A delta is one or more parts; each part is self-contained (its own
 * header and checksum) and parts are applied in order. Layout of a part,
 * little-endian, no alignment:
 *
 *   header   magic "HRDL", version u16, flags u16 (1: last part), length u32
 *            (of the whole part), k u32, row floats u32, state u8, loss u8,
 *            event id length u8, 0 u8, epoch u64, seq u64, schedule version
 *            u64, part index u32, id records u32, row records u32, context
 *            rows u32, seed u64, then the event id's bytes
 *   ids      table u8, row u32, key length u16 (0: the row's id was
 *            removed), key bytes
 *   rows     table u8, row u32, the packed row (hr_sgd_row_read: weights
 *            then optimizer state), row floats x u32 bit patterns
 *   trailer  hr_hash64 of everything before it, u64
 *
 * Change tracking: the model's HR_MARK_DELTA and HR_MARK_ID bits (model.h),
 * apart from the checkpoints' bit. The encoder takes a row's bit and then
 * reads the row or its id, so a change after the take goes in the next
 * delta. An id record always comes with its row's contents (in the same or
 * an earlier part of the delta).
 *
 * Threads: encode runs on one thread (the publisher) while trainers write
 * rows and HTTP threads add ids; it copies each row as hr_sgd_row_read
 * does (Hogwild: each float one consistent value). Apply runs on one thread
 * (the follower's) while queries read, as a checkpoint restore does; it
 * must not run while the same model trains. Two encoders, or two appliers,
 * on one model at once are not supported.
 */
#ifndef HOGREC_DELTA_H
#define HOGREC_DELTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/model.h"

#define HR_DELTA_VERSION 1
#define HR_DELTA_EVENT_ID_MAX 64 /* bytes of the covered event id */

/* What the publisher says about a delta; copied into every part. */
typedef struct {
    uint64_t epoch;            /* the leader's fencing epoch */
    uint64_t seq;              /* the publisher's delta number in its epoch: 1, 2, ... */
    uint64_t schedule_version; /* version of the live schedule when encoded */
    char event_id[HR_DELTA_EVENT_ID_MAX + 1]; /* opaque, NUL-terminated, may be "": the
                                                 last event the rows cover */
} hr_delta_header;

/* An encoded delta: its parts back to back in data. Reusable: each encode
 * starts it over. Zero-initialize, free with hr_delta_buf_free. */
typedef struct {
    uint8_t *data;     /* the parts, owned */
    size_t len, cap;   /* bytes used, allocated */
    size_t *ends;      /* part i is data[i ? ends[i-1] : 0, ends[i]), owned */
    size_t nparts;     /* parts of the last encode (>= 1 after HR_OK) */
    size_t ends_cap;   /* entries allocated in ends */
    uint64_t ids;      /* id assignments in the last encode */
    uint64_t removals; /* id removals in the last encode */
    uint64_t rows;     /* rows in the last encode */
} hr_delta_buf;

void hr_delta_buf_free(hr_delta_buf *b); /* NULL is a no-op; leaves *b zeroed */

/* Encodes what changed since the last encode of this model: every row of
 * the four tables whose HR_MARK_DELTA bit is set (user and item rows only
 * while they hold an id), and every id assigned or removed (HR_MARK_ID).
 * max_part_bytes 0 makes one part; otherwise parts of at most that many
 * bytes (a part holds at least one record, so a limit below the header plus
 * one row is exceeded by that much). An empty delta (nothing changed) is
 * one part with no record: it still carries the header's event id.
 * Errors: HR_EINVAL (event id too long), HR_ENOMEM; on error every mark
 * taken is set again, so the next encode has those changes.
 * Thread: the one publisher thread (see the top). */
hr_status hr_delta_encode(hr_model *m, const hr_delta_header *h, size_t max_part_bytes,
                          hr_delta_buf *out, hr_error *err);

/* Writes the length field and the checksum of a part of len bytes (buf
 * borrowed) as the encoder does, whatever the rest holds: for tests and
 * fuzzing, which build parts whose damage the checksum would hide. No-op if
 * len is shorter than a header. */
void hr_delta_seal(void *buf, size_t len);

/* What a follower has applied. Zero-initialize (nothing applied yet: the
 * first part 0 of any epoch and seq is taken). */
typedef struct {
    bool started;              /* a part has been applied */
    bool complete;             /* the last part applied was its delta's last */
    uint64_t epoch;            /* of the newest part applied */
    uint64_t seq;              /* its delta number */
    uint32_t part;             /* its index */
    uint64_t schedule_version; /* of the last complete delta */
    char event_id[HR_DELTA_EVENT_ID_MAX + 1]; /* covered by the last complete delta */
    /* the last call: */
    bool stale;                /* the part was older than what was applied; ignored */
    uint32_t ids, removals, rows; /* records applied (rows skipped: see below) */
} hr_delta_state;

/* Applies one part (buf, len borrowed). Checks everything first: magic,
 * version, length, checksum, the model's shape (k, row floats, state, loss,
 * context rows, seed), every record's table, row and length, and that the
 * weights and optimizer state are finite; a part that fails is HR_ECORRUPT
 * (damaged: magic, length, checksum, layout) or HR_EINVAL (a well-formed
 * part for another version or shape, or a row past this model's tables) and
 * leaves the model and *st unchanged. A part older than the last applied
 * (an older epoch, or an earlier seq or part of the same epoch) is HR_OK
 * with st->stale set, and changes nothing. A part that does not follow the
 * last applied (a part or a delta of the same epoch missing in between, or
 * a new epoch not starting at part 0) is HR_ENOTFOUND: the follower must
 * re-bootstrap. Otherwise the ids are applied in order (an assignment
 * first frees the row and the key where this model has them elsewhere),
 * then the rows (a user or item row that holds no id here after the ids is
 * skipped: its id comes with its contents in a later delta), each changed
 * row marked HR_MARK_CKPT for this model's own checkpoints; the last part
 * of a delta records its epoch, event id and schedule version in *st.
 * HR_ENOMEM from the id table can stop an apply half-way (the model then
 * holds some of the part: re-bootstrap). */
hr_status hr_delta_apply(hr_model *m, const void *buf, size_t len, hr_delta_state *st,
                         hr_error *err);

/* A delta's parts held back until its last part came (hr_delta_take).
 * Zero-initialize; free with hr_delta_parts_free. */
typedef struct {
    uint8_t *data;        /* the held parts back to back, owned */
    size_t len, cap;      /* bytes held, allocated */
    size_t *ends;         /* part i is data[i ? ends[i-1] : 0, ends[i]), owned */
    size_t nparts;        /* parts held (0: none) */
    size_t ends_cap;
    uint64_t epoch, seq;  /* of the delta held (nparts > 0) */
    size_t max_bytes;     /* bound on len; 0: hr_delta_max_bytes of the model */
    uint64_t dropped;     /* incomplete deltas dropped so far */
} hr_delta_parts;

/* Drops the parts held (an incomplete delta: its leader died before its
 * last part); returns how many there were. Keeps the memory. */
size_t hr_delta_parts_drop(hr_delta_parts *p);
void hr_delta_parts_free(hr_delta_parts *p); /* NULL is a no-op; leaves *p zeroed */

/* The most bytes one delta of model m can hold, over all its parts: every
 * row of every table (max_rows) once as a row record, every user and item
 * row once as an id record of the longest id, and a header and trailer per
 * record (a part holds at least one). What a leader of the same shape can
 * produce, so the bound on hr_delta_take's buffer. Pure. */
size_t hr_delta_max_bytes(const hr_model *m);

/* A follower's apply of one part (buf, len borrowed) that applies a delta
 * only whole: a part that is not its delta's last is checked as
 * hr_delta_apply checks it (nothing written) and copied into *p; when the
 * last part comes, the held parts and it are applied in order
 * (hr_delta_apply on *st) and *applied is set. So a delta cut short (its
 * leader died between two parts) changes nothing: its parts are dropped
 * when a newer delta's first part comes, or by hr_delta_parts_drop (a node
 * that takes the lease). Order as hr_delta_apply's, against the parts held
 * when there are some: an older part is HR_OK with st->stale set; a part
 * that does not follow is HR_ENOTFOUND (the parts held are dropped);
 * HR_EFULL (the parts held are dropped) when the delta would pass
 * p->max_bytes. Errors of the check leave *p and the model unchanged.
 * HR_ENOMEM (copying, or the id table while applying: the model may then
 * hold part of the delta, as with hr_delta_apply). st counts the records
 * of every part applied by this call. */
hr_status hr_delta_take(hr_model *m, const void *buf, size_t len, hr_delta_parts *p,
                        hr_delta_state *st, bool *applied, hr_error *err);

#endif
