/*
 * helper_faultvfs.h - an SQLite VFS shim for fault injection in tests.
 *
 * fv_install() registers a VFS that wraps the default one and makes it the
 * default, so every connection opened afterwards (hogrec's store included)
 * goes through it. Faults are chosen per file by the end of its path:
 *   fv_fail_writes(".db-events-wal", SQLITE_FULL)  - writes and syncs fail
 *   fv_fail_writes(NULL, 0)                        - no more faults
 *   fv_on_write(".db-wal", 50, fn)                 - fn() runs at the 50th
 *                                                    write to such a file
 * Thread-safe (settings are atomics / set before use).
 */
#ifndef HOGREC_HELPER_FAULTVFS_H
#define HOGREC_HELPER_FAULTVFS_H

void fv_install(void);
void fv_fail_writes(const char *suffix, int sqlite_rc);

/* A cmocka teardown: no more faults, so a fault test leaves none behind,
 * also when it fails. */
int fv_clear_faults(void **state);
void fv_on_write(const char *suffix, long nth, void (*fn)(void));
/* Writes that failed because of fv_fail_writes so far. */
long fv_failed_writes(void);

#endif
