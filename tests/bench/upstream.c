/*
 * upstream: the campaign API of the proxy-mode part of `make bench`.
 *
 *   upstream PORT
 *
 * Stands for the upstream of every channel while wrk drives POST /v1/send
 * through capgate: it reads each request's body (and throws it away), then
 * answers 200 with {"ok":true} at once, so that what the benchmark measures
 * is capgate's forwarding, not an upstream's work.  libmicrohttpd with its
 * own internal polling thread (epoll), keep-alive, no per-connection threads.
 *
 * GET /count answers {"requests":N}: the requests answered so far, /count
 * itself left out, so bench.py can compare what reached the upstream with
 * the sends capgate allowed.
 *
 * Listens on 127.0.0.1:PORT.  Prints nothing unless something goes wrong;
 * exits 0 on SIGTERM/SIGINT, 1 when it cannot start.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char OK_BODY[] = "{\"ok\":true}";

static struct MHD_Response *ok_resp;   /* shared by every answer (refcounted by MHD) */
static atomic_ullong requests;
static char body_seen;                 /* *req_cls of a request whose headers were seen */

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    (void)cls; (void)version; (void)upload_data;

    if (!*req_cls) {                   /* headers only: wait for the body */
        *req_cls = &body_seen;
        return MHD_YES;
    }
    if (*upload_data_size) {           /* read it, keep nothing */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/count") == 0) {
        char buf[48];
        int n = snprintf(buf, sizeof buf, "{\"requests\":%llu}",
                         (unsigned long long)atomic_load(&requests));
        struct MHD_Response *r = MHD_create_response_from_buffer((size_t)n, buf,
                                                                 MHD_RESPMEM_MUST_COPY);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    atomic_fetch_add(&requests, 1);
    return MHD_queue_response(conn, MHD_HTTP_OK, ok_resp);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: upstream PORT\n");
        return 1;
    }
    int port = atoi(argv[1]);
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "upstream: bad port\n");
        return 1;
    }

    /* Blocked before MHD's thread starts, so that it inherits the mask and
     * the signals wait for sigwait() below. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    if (pthread_sigmask(SIG_BLOCK, &stop, NULL) != 0) {
        fprintf(stderr, "upstream: cannot block signals\n");
        return 1;
    }

    ok_resp = MHD_create_response_from_buffer(sizeof OK_BODY - 1, (void *)OK_BODY,
                                              MHD_RESPMEM_PERSISTENT);
    if (!ok_resp ||
        MHD_add_response_header(ok_resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                "application/json") != MHD_YES) {
        fprintf(stderr, "upstream: cannot build the answer\n");
        return 1;
    }

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *mhd =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, (uint16_t)port,
                         NULL, NULL, on_access, NULL,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_CONNECTION_LIMIT, 4000u,
                         MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                         MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1,
                         MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                         MHD_OPTION_END);
    if (!mhd) {
        fprintf(stderr, "upstream: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }

    int sig;
    while (sigwait(&stop, &sig) != 0)
        ;
    MHD_stop_daemon(mhd);
    MHD_destroy_response(ok_resp);
    return 0;
}
