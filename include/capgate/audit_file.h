/*
 * audit_file: the optional JSON-lines copy of the audit trail (audit.file).
 *
 * Workers hand lines over; one writer thread appends them, so no event loop
 * ever waits on the disk.  The queue is bounded: when the disk cannot keep
 * up, lines are dropped and counted (capgate_audit_file_dropped_total),
 * never queued without limit.  The file is append-only: an erasure appends
 * an "erase" line naming the pseudonym, which a log pipeline must honour.
 */
#ifndef CAPGATE_AUDIT_FILE_H
#define CAPGATE_AUDIT_FILE_H

#include <stddef.h>
#include <stdint.h>

struct audit_file;

/* Opens PATH for appending (creating it 0640) and starts the writer. */
struct audit_file *audit_file_open(const char *path, char *err, size_t errlen);
/* From any thread; LINE without its newline. */
void audit_file_write(struct audit_file *f, const char *line, size_t len);
uint64_t audit_file_dropped(const struct audit_file *f);
/* Writes what is queued, then stops the writer and closes the file. */
void audit_file_close(struct audit_file *f);

#endif
