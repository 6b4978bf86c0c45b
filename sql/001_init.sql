-- 001_init (main database): checkpoints and their rows.
--
-- A checkpoint is written in one transaction: its `checkpoint` row is
-- inserted with complete = 0, its rows follow, and complete is set to 1 just
-- before COMMIT, so only complete checkpoints are ever visible.

CREATE TABLE checkpoint (
    id       INTEGER PRIMARY KEY,          -- increasing; 1, 2, ...
    kind     TEXT    NOT NULL CHECK (kind IN ('full', 'incremental')),
    base     INTEGER NOT NULL,             -- id of the full checkpoint its chain starts at
    seq      INTEGER NOT NULL,             -- every event with seq <= this is in the rows
    shape    TEXT    NOT NULL,             -- model shape the rows were written with (JSON)
    nrows    INTEGER NOT NULL DEFAULT 0,   -- rows written by this checkpoint
    updates  INTEGER NOT NULL DEFAULT 0,   -- trainer update count when taken
    started  REAL    NOT NULL,             -- wall time, epoch seconds
    seconds  REAL,                         -- how long writing took
    complete INTEGER NOT NULL DEFAULT 0    -- 1 once every row is written
);

-- Embedding rows with their optimizer state, and the id map (key).
-- id = checkpoint << 40 | table << 32 | row: rows are appended in rowid
-- order (the cheapest insert SQLite has), a checkpoint is one rowid range
-- (restore and pruning are range scans), and no secondary index is needed.
CREATE TABLE row (
    id   INTEGER PRIMARY KEY,
    key  BLOB,                             -- external id (user/item), NULL if none or free
    data BLOB NOT NULL                     -- `stride` floats, host byte order; empty if free
);
