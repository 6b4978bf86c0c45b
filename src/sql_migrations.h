/*
 * sql_migrations.h - the schema, embedded in the binary (private to store.c).
 *
 * The table is generated at build time from the files in sql/ by
 * cmake/embed_sql.cmake, in file-name order. Migration `version` of a target
 * brings that database from user_version version-1 to version.
 */
#ifndef HOGREC_SQL_MIGRATIONS_H
#define HOGREC_SQL_MIGRATIONS_H

typedef struct {
    const char *name; /* file name under sql/ */
    int target;       /* 0 = main database, 1 = event-log database */
    int version;      /* user_version after it is applied */
    const char *sql;  /* the statements */
} hr_sql_migration;

extern const hr_sql_migration hr_sql_migrations[];
extern const int hr_sql_migration_count;

#endif
