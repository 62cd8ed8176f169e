/* audit_file: a writer thread behind a bounded queue.  See audit_file.h. */
#include "capgate/audit_file.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUEUE_MAX_BYTES (8u << 20)   /* 8 MiB waiting for the disk, at most */

struct audit_file {
    int fd;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    char *buf;                 /* lines waiting, newline-terminated */
    size_t len;
    bool stop;
    uint64_t dropped;          /* guarded by lock */
};

static void *writer(void *arg)
{
    struct audit_file *f = arg;
    char *out = malloc(QUEUE_MAX_BYTES);
    for (;;) {
        pthread_mutex_lock(&f->lock);
        while (f->len == 0 && !f->stop)
            pthread_cond_wait(&f->wake, &f->lock);
        size_t n = f->len;
        if (out && n)
            memcpy(out, f->buf, n);
        f->len = 0;
        bool stop = f->stop;
        pthread_mutex_unlock(&f->lock);
        for (size_t off = 0; out && off < n;) {
            ssize_t w = write(f->fd, out + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;      /* disk full or gone: the lines are lost, not the daemon */
            off += (size_t)w;
        }
        if (stop)
            break;
    }
    free(out);
    return NULL;
}

struct audit_file *audit_file_open(const char *path, char *err, size_t errlen)
{
    struct audit_file *f = calloc(1, sizeof *f);
    if (!f || !(f->buf = malloc(QUEUE_MAX_BYTES))) {
        free(f);
        snprintf(err, errlen, "audit.file: out of memory");
        return NULL;
    }
    f->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (f->fd < 0) {
        snprintf(err, errlen, "audit.file: %s: %s", path, strerror(errno));
        free(f->buf);
        free(f);
        return NULL;
    }
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->wake, NULL);
    if (pthread_create(&f->thread, NULL, writer, f) != 0) {
        snprintf(err, errlen, "audit.file: cannot start the writer thread");
        close(f->fd);
        free(f->buf);
        free(f);
        return NULL;
    }
    return f;
}

void audit_file_write(struct audit_file *f, const char *line, size_t len)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->lock);
    if (f->len + len + 1 > QUEUE_MAX_BYTES) {
        f->dropped++;
    } else {
        memcpy(f->buf + f->len, line, len);
        f->len += len;
        f->buf[f->len++] = '\n';
        pthread_cond_signal(&f->wake);
    }
    pthread_mutex_unlock(&f->lock);
}

uint64_t audit_file_dropped(const struct audit_file *f)
{
    if (!f)
        return 0;
    pthread_mutex_lock((pthread_mutex_t *)&f->lock);
    uint64_t n = f->dropped;
    pthread_mutex_unlock((pthread_mutex_t *)&f->lock);
    return n;
}

void audit_file_close(struct audit_file *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->lock);
    f->stop = true;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->thread, NULL);
    close(f->fd);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->wake);
    free(f->buf);
    free(f);
}
