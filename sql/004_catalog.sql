-- 004_catalog (main database): the catalog of users and items (their
-- features, categories, hidden flag and expiry), written by each PUT, bulk
-- POST and DELETE of /v1/users and /v1/items in its own transaction, outside
-- checkpoints, and loaded whole at start.

CREATE TABLE catalog (
    kind    TEXT    NOT NULL CHECK (kind IN ('user', 'item')),
    id      BLOB    NOT NULL,             -- external id
    record  TEXT    NOT NULL,             -- the record's canonical JSON (sorted keys)
    updated REAL    NOT NULL,             -- wall time of the write, epoch seconds
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
