/*
 * dblock.c - one owner per database: flock(2) on "<db>-lock"; see dblock.h.
 *
 * The lock file holds "pid\ncommand line\n" of the owner. A refused process
 * reads it to say who holds the database; the owner writes it just after
 * locking, so a reader that finds it empty tries again a few times (the
 * owner is between the two steps) before saying the holder is unknown.
 */
#include "hogrec/dblock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/log.h"

struct hr_dblock {
    int fd;          /* the lock file, flock'ed exclusive */
    char path[4096]; /* its path */
};

/* This process's command line, arguments separated by spaces. */
static void own_command(char *out, size_t cap)
{
    snprintf(out, cap, "?");
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n <= 0) {
        snprintf(out, cap, "?");
        return;
    }
    while (n > 0 && out[n - 1] == '\0')
        n--;
    for (ssize_t i = 0; i < n; i++)
        if (out[i] == '\0' || out[i] == '\n')
            out[i] = ' ';
    out[n] = '\0';
}

/* Reads the holder's pid and command from fd into *pid and cmd; false if
 * the file is empty or malformed. */
static bool read_holder(int fd, long *pid, char *cmd, size_t cap)
{
    char buf[4200];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    char *end;
    errno = 0;
    *pid = strtol(buf, &end, 10);
    if (errno || end == buf || *end != '\n' || *pid <= 0)
        return false;
    char *nl = strchr(end + 1, '\n');
    if (nl)
        *nl = '\0';
    snprintf(cmd, cap, "%s", end + 1);
    return true;
}

hr_status hr_dblock_acquire(const char *db, hr_dblock **out, hr_error *err)
{
    *out = NULL;
    hr_dblock *l = calloc(1, sizeof *l);
    if (!l)
        return hr_error_set(err, HR_ENOMEM, "db", "out of memory");
    int len = snprintf(l->path, sizeof l->path, "%s-lock", db);
    if (len < 0 || (size_t)len >= sizeof l->path) {
        free(l);
        return hr_error_set(err, HR_EINVAL, "db", "database path too long: %s", db);
    }
    l->fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->fd < 0) {
        hr_status st = hr_error_set(err, HR_EIO, "db", "cannot open the lock file %s: %s",
                                    l->path, strerror(errno));
        free(l);
        return st;
    }
    int rc;
    while ((rc = flock(l->fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (rc != 0) {
        int e = errno;
        hr_status st;
        if (e == EWOULDBLOCK) {
            long pid = 0;
            char cmd[256];
            bool known = false;
            for (int i = 0; i < 50 && !(known = read_holder(l->fd, &pid, cmd, sizeof cmd)); i++)
                nanosleep(&(struct timespec){0, 10000000L}, NULL); /* 10 ms, 0.5 s at most */
            if (known)
                st = hr_error_set(err, HR_EBUSY, "db",
                                  "database %s is in use by process %ld (%s); one process owns "
                                  "a database: stop that one or choose another --db",
                                  db, pid, cmd);
            else
                st = hr_error_set(err, HR_EBUSY, "db",
                                  "database %s is in use by another process (see %s); one "
                                  "process owns a database: stop that one or choose another "
                                  "--db",
                                  db, l->path);
        } else {
            st = hr_error_set(err, HR_EIO, "db", "cannot lock %s: %s", l->path, strerror(e));
        }
        close(l->fd);
        free(l);
        return st;
    }
    char cmd[4096], text[4200];
    own_command(cmd, sizeof cmd);
    int n = snprintf(text, sizeof text, "%ld\n%s\n", (long)getpid(), cmd);
    if (n < 0 || (size_t)n >= sizeof text)
        n = (int)strlen(text);
    if (ftruncate(l->fd, 0) != 0 || pwrite(l->fd, text, (size_t)n, 0) != n)
        hr_log("warn", "cannot write the owner into the lock file (the lock holds)",
               json_pack("{s:s,s:s}", "file", l->path, "detail", strerror(errno)));
    *out = l;
    return HR_OK;
}

void hr_dblock_release(hr_dblock *l)
{
    if (!l)
        return;
    /* Emptied while still locked, so no next owner's text is lost. */
    if (ftruncate(l->fd, 0) != 0)
        hr_log("warn", "cannot empty the lock file",
               json_pack("{s:s,s:s}", "file", l->path, "detail", strerror(errno)));
    close(l->fd);
    free(l);
}
