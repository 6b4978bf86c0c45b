-- 002_schedule_history (main database): the learning-rate schedule history
-- saved with each checkpoint, so schedules swapped at run time survive a
-- restart.

CREATE TABLE schedule_history (
    checkpoint  INTEGER NOT NULL,          -- checkpoint.id
    version     INTEGER NOT NULL,          -- 1 = the initial schedule
    wall_time   REAL,                      -- when it was installed
    at_update   INTEGER,                   -- update count when installed
    loss_before REAL,                      -- NULL if unknown
    loss_after  REAL,                      -- NULL if unknown
    schedule    TEXT    NOT NULL,          -- JSON, as hr_schedule_from_json accepts
    PRIMARY KEY (checkpoint, version)
) WITHOUT ROWID;
