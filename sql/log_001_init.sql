-- log_001_init (event-log database, <db>-events): the append-only event log.
--
-- It lives in its own file so that a long checkpoint transaction in the main
-- database (SQLite allows one writer per file) never holds up the commits
-- that acknowledge events.

CREATE TABLE event_log (
    seq   INTEGER PRIMARY KEY,             -- ingest sequence number (increasing, may have gaps)
    event TEXT    NOT NULL                 -- canonical JSON text (hr_api_event_text)
);

-- One row: every seq <= trimmed_to was deleted because a checkpoint covers
-- it; keeps the highest seq known after the log is emptied.
CREATE TABLE log_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    trimmed_to INTEGER NOT NULL
);
INSERT INTO log_state (id, trimmed_to) VALUES (1, 0);
