-- 003_serving_state (main database): what serving remembers besides the
-- model, saved in the same transaction as each checkpoint: the recent items
-- of each user (exclude_seen), the recently-popular scores (the fallback for
-- unknown users) and the event ids within the de-duplication window.
--
-- Ids are stored as their external keys, never as row numbers: rows are
-- reused after expiry and a restore or log replay may give an id another row.
-- A restart loads the newest complete checkpoint's state and replays the
-- event log after its seq on top of it.

CREATE TABLE serving_state (
    checkpoint INTEGER PRIMARY KEY,          -- checkpoint.id
    seq        INTEGER NOT NULL,             -- every event with seq <= this is in the state, no later one in the scores
    taken      REAL    NOT NULL              -- wall time the popularity scores are as of, epoch seconds
);

-- One row per user whose recent items changed since the previous checkpoint
-- (every user in a full one); a restore reads the chain newest first and
-- keeps the first row of each user, like embedding rows.
CREATE TABLE serving_history (
    checkpoint INTEGER NOT NULL,             -- checkpoint.id
    user       BLOB    NOT NULL,             -- external user id
    seq        INTEGER NOT NULL,             -- seq of the last event the user's ring took
    items      BLOB    NOT NULL,             -- item ids, most recent first: 2-byte length (host order), bytes
    PRIMARY KEY (checkpoint, user)
) WITHOUT ROWID;

-- Whole-state parts written by every checkpoint:
--   popularity: records of float score (as of `taken`), 2-byte key length, item id
--   dedup:      records of 8-byte id hash, 8-byte double arrival time
-- (host byte order, like the embedding rows; the model shape records it).
CREATE TABLE serving_blob (
    checkpoint INTEGER NOT NULL,             -- checkpoint.id
    kind       TEXT    NOT NULL CHECK (kind IN ('popularity', 'dedup')),
    part       INTEGER NOT NULL,             -- 0, 1, ... in write order
    data       BLOB    NOT NULL,
    PRIMARY KEY (checkpoint, kind, part)
) WITHOUT ROWID;
