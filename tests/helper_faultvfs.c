/*
 * helper_faultvfs.c - SQLite VFS shim for fault injection; see
 * helper_faultvfs.h. Wraps every method of the default VFS and of its files;
 * only xWrite, xSync and xTruncate consult the fault settings.
 */
#include "helper_faultvfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sqlite3_file base;      /* our methods */
    sqlite3_file *real;     /* the wrapped file, allocated right after us */
    char name[512];         /* path as opened */
} fv_file;

static sqlite3_vfs *real_vfs;
static sqlite3_vfs fv_vfs;
static pthread_mutex_t fv_mu = PTHREAD_MUTEX_INITIALIZER;
static char fail_suffix[128];
static atomic_int fail_rc;
static char hook_suffix[128];
static long hook_nth;
static void (*hook_fn)(void);
static atomic_long hook_count, failed_count;

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return b > 0 && a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Returns the error to inject for a write to f (0 = none); runs hooks. */
static int fault(fv_file *f, bool is_write)
{
    void (*fn)(void) = NULL;
    int rc = 0;
    pthread_mutex_lock(&fv_mu);
    if (atomic_load(&fail_rc) && ends_with(f->name, fail_suffix))
        rc = atomic_load(&fail_rc);
    if (is_write && hook_fn && ends_with(f->name, hook_suffix) &&
        atomic_fetch_add(&hook_count, 1) + 1 == hook_nth)
        fn = hook_fn;
    pthread_mutex_unlock(&fv_mu);
    if (fn)
        fn();
    if (rc)
        atomic_fetch_add(&failed_count, 1);
    return rc;
}

#define REAL(f) (((fv_file *)(f))->real)

static int x_close(sqlite3_file *f)
{
    int rc = REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
    return rc;
}
static int x_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int x_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    int rc = fault((fv_file *)f, true);
    return rc ? rc : REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int x_truncate(sqlite3_file *f, sqlite3_int64 s)
{
    int rc = fault((fv_file *)f, false);
    return rc ? rc : REAL(f)->pMethods->xTruncate(REAL(f), s);
}
static int x_sync(sqlite3_file *f, int flags)
{
    int rc = fault((fv_file *)f, false);
    return rc ? rc : REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int x_file_size(sqlite3_file *f, sqlite3_int64 *s)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), s);
}
static int x_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int x_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int x_check_reserved(sqlite3_file *f, int *r)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r);
}
static int x_file_control(sqlite3_file *f, int op, void *a)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, a);
}
static int x_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int x_device_char(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int x_shm_map(sqlite3_file *f, int i, int sz, int e, void volatile **p)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), i, sz, e, p);
}
static int x_shm_lock(sqlite3_file *f, int o, int n, int fl)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), o, n, fl);
}
static void x_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int x_shm_unmap(sqlite3_file *f, int d) { return REAL(f)->pMethods->xShmUnmap(REAL(f), d); }
static int x_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p)
{
    return REAL(f)->pMethods->xFetch(REAL(f), o, n, p);
}
static int x_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}

static const sqlite3_io_methods fv_methods = {
    3,           x_close,        x_read,         x_write,       x_truncate,
    x_sync,      x_file_size,    x_lock,         x_unlock,      x_check_reserved,
    x_file_control, x_sector_size, x_device_char, x_shm_map,    x_shm_lock,
    x_shm_barrier, x_shm_unmap,  x_fetch,        x_unfetch,
};

static int x_open(sqlite3_vfs *v, const char *name, sqlite3_file *file, int flags, int *out)
{
    (void)v;
    fv_file *f = (fv_file *)file;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    snprintf(f->name, sizeof f->name, "%s", name ? name : "");
    int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out);
    f->base.pMethods = f->real->pMethods ? &fv_methods : NULL;
    return rc;
}
static int x_delete(sqlite3_vfs *v, const char *n, int s)
{
    (void)v;
    return real_vfs->xDelete(real_vfs, n, s);
}
static int x_access(sqlite3_vfs *v, const char *n, int fl, int *r)
{
    (void)v;
    return real_vfs->xAccess(real_vfs, n, fl, r);
}
static int x_full_path(sqlite3_vfs *v, const char *n, int sz, char *out)
{
    (void)v;
    return real_vfs->xFullPathname(real_vfs, n, sz, out);
}
static void *x_dl_open(sqlite3_vfs *v, const char *n)
{
    (void)v;
    return real_vfs->xDlOpen(real_vfs, n);
}
static void x_dl_error(sqlite3_vfs *v, int n, char *m)
{
    (void)v;
    real_vfs->xDlError(real_vfs, n, m);
}
static void (*x_dl_sym(sqlite3_vfs *v, void *h, const char *s))(void)
{
    (void)v;
    return real_vfs->xDlSym(real_vfs, h, s);
}
static void x_dl_close(sqlite3_vfs *v, void *h)
{
    (void)v;
    real_vfs->xDlClose(real_vfs, h);
}
static int x_randomness(sqlite3_vfs *v, int n, char *o)
{
    (void)v;
    return real_vfs->xRandomness(real_vfs, n, o);
}
static int x_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return real_vfs->xSleep(real_vfs, us);
}
static int x_current_time(sqlite3_vfs *v, double *t)
{
    (void)v;
    return real_vfs->xCurrentTime(real_vfs, t);
}
static int x_last_error(sqlite3_vfs *v, int n, char *b)
{
    (void)v;
    return real_vfs->xGetLastError(real_vfs, n, b);
}
static int x_current_time64(sqlite3_vfs *v, sqlite3_int64 *t)
{
    (void)v;
    return real_vfs->xCurrentTimeInt64(real_vfs, t);
}

void fv_install(void)
{
    pthread_mutex_lock(&fv_mu);
    if (!real_vfs) {
        sqlite3_initialize();
        real_vfs = sqlite3_vfs_find(NULL);
        fv_vfs = (sqlite3_vfs){
            .iVersion = 2,
            .szOsFile = (int)sizeof(fv_file) + real_vfs->szOsFile,
            .mxPathname = real_vfs->mxPathname,
            .zName = "hogrec-faultvfs",
            .xOpen = x_open,
            .xDelete = x_delete,
            .xAccess = x_access,
            .xFullPathname = x_full_path,
            .xDlOpen = x_dl_open,
            .xDlError = x_dl_error,
            .xDlSym = x_dl_sym,
            .xDlClose = x_dl_close,
            .xRandomness = x_randomness,
            .xSleep = x_sleep,
            .xCurrentTime = x_current_time,
            .xGetLastError = x_last_error,
            .xCurrentTimeInt64 = x_current_time64,
        };
        sqlite3_vfs_register(&fv_vfs, 1);
    }
    pthread_mutex_unlock(&fv_mu);
}

void fv_fail_writes(const char *suffix, int sqlite_rc)
{
    pthread_mutex_lock(&fv_mu);
    snprintf(fail_suffix, sizeof fail_suffix, "%s", suffix ? suffix : "");
    atomic_store(&fail_rc, suffix ? sqlite_rc : 0);
    pthread_mutex_unlock(&fv_mu);
}

void fv_on_write(const char *suffix, long nth, void (*fn)(void))
{
    pthread_mutex_lock(&fv_mu);
    snprintf(hook_suffix, sizeof hook_suffix, "%s", suffix ? suffix : "");
    hook_nth = nth;
    hook_fn = fn;
    atomic_store(&hook_count, 0);
    pthread_mutex_unlock(&fv_mu);
}

long fv_failed_writes(void) { return atomic_load(&failed_count); }

int fv_clear_faults(void **state)
{
    (void)state;
    fv_fail_writes(NULL, 0);
    return 0;
}
