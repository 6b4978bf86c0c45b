-- log_002_arrival (event-log database): the wall time each event arrived.
--
-- De-duplication windows and popularity decay are measured from when an
-- event reached the server; a log replay after a restart needs that time to
-- rebuild them as they were. NULL for events logged before this version
-- (a replay treats them as arriving at replay time).

ALTER TABLE event_log ADD COLUMN arrived REAL; -- epoch seconds
