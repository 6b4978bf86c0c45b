/*
 * dblock.h - one owner per database. The process that opens a database (the
 * server, or replay given a --db) holds an exclusive flock(2) on
 * "<db>-lock", a file beside it that names the holder (pid and command
 * line). A second process is refused with that name; the holder is not
 * disturbed.
 *
 * The kernel drops the lock when the holder's descriptor closes, which a
 * kill -9 does too, so a crash never leaves a stale lock behind (the file
 * stays, with the dead holder's text, until the next owner rewrites it).
 * Not a POSIX fcntl lock on the SQLite file: SQLite takes its own fcntl
 * locks there, and closing any descriptor of a file drops every fcntl lock
 * the process holds on it. A flock is held per open file description, so a
 * second open in the same process is refused too.
 *
 * Threads: acquire and release from the thread that opens and closes the
 * database.
 */
#ifndef HOGREC_DBLOCK_H
#define HOGREC_DBLOCK_H

#include "hogrec/common.h"

typedef struct hr_dblock hr_dblock;

/* Takes the lock of database path db (the lock file is db + "-lock",
 * created if absent) and writes this process's pid and command line in it.
 * *out is new; give it back with hr_dblock_release. HR_EBUSY with err
 * (field "db") naming the holder's pid and command when another process
 * (or another open in this one) holds it; HR_EIO with err when the lock
 * file cannot be opened or locked. Does not block. */
hr_status hr_dblock_acquire(const char *db, hr_dblock **out, hr_error *err);

/* Empties the lock file and releases the lock. NULL is a no-op. */
void hr_dblock_release(hr_dblock *l);

#endif
