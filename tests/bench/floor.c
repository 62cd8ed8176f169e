/*
 * floor: the floor of capgate's stack, for `make bench`.
 *
 *   floor PORT REDIS_PORT [UPSTREAM_URL]
 *
 * The cheapest honest version of what capgate does with the same libraries
 * and the same loop glue (src/http.c, src/store.c): libmicrohttpd in external
 * epoll mode inside one libevent loop, every POST body read, the connection
 * suspended, ONE hiredis async EVALSHA of a small rolling-window script on a
 * key derived from the body, and the connection resumed with a small JSON
 * answer.  No validation, no JSON library, no pseudonym, no config, no
 * timeouts, no reconnects: whatever capgate costs above this is capgate's.
 *
 * With UPSTREAM_URL (the forward floor, issue 15): an allowed request's body
 * is then POSTed there with libcurl multi on the same loop (keep-alive, one
 * reused easy handle per request slot) and answered with the upstream's
 * status -- what /v1/send does, without anything of capgate's.
 *
 * Listens on 127.0.0.1:PORT; Redis at 127.0.0.1:REDIS_PORT.  Exits 0 on
 * SIGTERM/SIGINT, 1 when it cannot start, 2 when Redis goes away.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BODY_MAX 4096

/* A 1-hour rolling window of at most 100 sends per key: trim, count, record. */
static const char SCRIPT[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)\n"
    "local n = redis.call('ZCARD', KEYS[1])\n"
    "if n >= 100 then return {1, n} end\n"
    "redis.call('ZADD', KEYS[1], now, ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], 3600000)\n"
    "return {0, n + 1}\n";

static struct event_base *base;
static struct MHD_Daemon *mhd;
static struct event *mhd_io, *mhd_timer;
static redisAsyncContext *ac;
static char sha[41];
static int exit_code;
static int stopping;

struct req {
    struct MHD_Connection *conn;
    size_t len;
    int state;                       /* 0 reading, 1 waiting on Redis, 2 answered */
    unsigned status;
    struct MHD_Response *resp;
    CURL *easy;                      /* forward mode: the transfer under way */
    char body[BODY_MAX];
};

static const char *upstream_url;     /* forward mode */
static CURLM *multi;
static struct event *curl_timer;
static struct curl_slist *json_header;
static CURL *spare[4096];            /* easy handles kept for reuse */
static size_t n_spare;

/* ---- MHD inside libevent -------------------------------------------------- */

static void rearm_timer(void)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(mhd, &ms) == MHD_YES) {
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
        evtimer_add(mhd_timer, &tv);
    } else {
        evtimer_del(mhd_timer);
    }
}

static void run_mhd(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what; (void)arg;
    MHD_run(mhd);
    rearm_timer();
}

/* ---- the one Redis call --------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t k = 0; k < n; k++) {
        h ^= (unsigned char)s[k];
        h *= 1099511628211ull;
    }
    return h;
}

/* The value of "name":"..." in BODY (no escapes handled), else the whole body. */
static const char *field(const char *body, size_t len, const char *name, size_t *out)
{
    const char *p = strstr(body, name);
    if (p) {
        p += strlen(name);
        const char *e = memchr(p, '"', len - (size_t)(p - body));
        if (e) {
            *out = (size_t)(e - p);
            return p;
        }
    }
    *out = len;
    return body;
}

static void answer(struct req *r, unsigned status, const char *buf, size_t n)
{
    r->status = status;
    r->resp = MHD_create_response_from_buffer(n, (void *)buf, MHD_RESPMEM_MUST_COPY);
    if (r->resp)
        MHD_add_response_header(r->resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    r->state = 2;
    MHD_resume_connection(r->conn);
    /* MHD 0.9.75 in external mode does not wake the loop on resume. */
    event_active(mhd_io, EV_READ, 0);
}

/* ---- forward mode: libcurl multi on the loop ------------------------------ */

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p; (void)arg;
    return size * n;
}

static void check_done(void)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct req *r;
        long code = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(multi, m->easy_handle);
        if (n_spare < sizeof spare / sizeof spare[0])
            spare[n_spare++] = m->easy_handle;
        else
            curl_easy_cleanup(m->easy_handle);
        r->easy = NULL;
        char buf[64];
        int n = snprintf(buf, sizeof buf, "{\"decision\":\"allow\",\"upstream_status\":%ld}",
                         code);
        answer(r, m->data.result == CURLE_OK && code / 100 == 2 ? MHD_HTTP_OK : 502, buf,
               (size_t)n);
    }
}

static void on_curl_event(evutil_socket_t fd, short what, void *arg)
{
    int running, flags = (what & EV_READ ? CURL_CSELECT_IN : 0) |
                         (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    (void)arg;
    curl_multi_socket_action(multi, fd, flags, &running);
    check_done();
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg)
{
    int running;
    (void)fd; (void)what; (void)arg;
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

static int curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct event *ev = socketp;
    (void)e; (void)userp;
    if (what == CURL_POLL_REMOVE) {
        if (ev)
            event_free(ev);
        curl_multi_assign(multi, s, NULL);
        return 0;
    }
    short kind = (short)(EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) |
                         (what & CURL_POLL_OUT ? EV_WRITE : 0));
    if (ev)
        event_free(ev);
    ev = event_new(base, s, kind, on_curl_event, NULL);
    event_add(ev, NULL);
    curl_multi_assign(multi, s, ev);
    return 0;
}

static int curl_timer_set(CURLM *m, long ms, void *userp)
{
    (void)m; (void)userp;
    if (ms < 0) {
        evtimer_del(curl_timer);
    } else {
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        evtimer_add(curl_timer, &tv);
    }
    return 0;
}

static void forward(struct req *r)
{
    CURL *e = n_spare ? spare[--n_spare] : curl_easy_init();
    if (!e) {
        answer(r, 503, "{\"error\":\"curl\"}", 16);
        return;
    }
    curl_easy_setopt(e, CURLOPT_URL, upstream_url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)r->len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, json_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    r->easy = e;
    curl_multi_add_handle(multi, e);
}

static void on_reply(redisAsyncContext *c, void *reply, void *privdata)
{
    struct req *r = privdata;
    redisReply *rep = reply;
    char buf[96];
    int n;
    (void)c;

    if (upstream_url && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->integer == 0) {
        forward(r);
        return;
    }
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
        n = snprintf(buf, sizeof buf, "{\"decision\":\"%s\",\"count\":%lld}",
                     rep->element[0]->integer == 0 ? "allow" : "defer",
                     rep->element[1]->integer);
        answer(r, MHD_HTTP_OK, buf, (size_t)n);
    } else {
        n = snprintf(buf, sizeof buf, "{\"error\":\"store\"}");
        answer(r, MHD_HTTP_SERVICE_UNAVAILABLE, buf, (size_t)n);
    }
}

static void send_call(struct req *r)
{
    size_t ulen, mlen;
    const char *user = field(r->body, r->len, "\"user\":\"", &ulen);
    const char *msg = field(r->body, r->len, "\"message_id\":\"", &mlen);
    char key[32];
    int klen = snprintf(key, sizeof key, "fl:{%016llx}",
                        (unsigned long long)fnv1a(user, ulen));
    const char *argv[5] = { "EVALSHA", sha, "1", key, msg };
    size_t argvlen[5] = { 7, 40, 1, (size_t)klen, mlen };
    if (!ac || redisAsyncCommandArgv(ac, on_reply, r, 5, argv, argvlen) != REDIS_OK)
        on_reply(NULL, NULL, r);             /* Redis gone: 503 at once */
}

/* ---- requests ------------------------------------------------------------- */

static enum MHD_Result queue(struct req *r)
{
    if (!r->resp)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    return rc;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    struct req *r = *req_cls;
    (void)cls; (void)url; (void)method; (void)version;

    if (!r) {
        r = malloc(sizeof *r);
        if (!r)
            return MHD_NO;
        r->conn = conn;
        r->len = 0;
        r->state = 0;
        r->resp = NULL;
        r->easy = NULL;
        r->body[0] = '\0';
        *req_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        if (n > BODY_MAX - 1 - r->len)
            n = BODY_MAX - 1 - r->len;          /* keep what fits */
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        r->body[r->len] = '\0';
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->state == 0) {
        r->state = 1;
        MHD_suspend_connection(conn);
        send_call(r);
        return MHD_YES;
    }
    if (r->state == 2)
        return queue(r);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct req *r = *req_cls;
    (void)cls; (void)conn; (void)toe;
    if (!r)
        return;
    if (r->easy) {                   /* (only when stopping: MHD completes every request) */
        curl_multi_remove_handle(multi, r->easy);
        curl_easy_cleanup(r->easy);
    }
    if (r->resp)
        MHD_destroy_response(r->resp);
    free(r);
    *req_cls = NULL;
}

/* ---- start-up ------------------------------------------------------------- */

static void on_disconnect(const redisAsyncContext *c, int status)
{
    (void)c; (void)status;
    ac = NULL;
    if (stopping)
        return;
    fprintf(stderr, "floor: Redis connection lost\n");
    exit_code = 2;
    event_base_loopbreak(base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig; (void)what; (void)arg;
    stopping = 1;
    event_base_loopbreak(base);
}

static int load_script(int rport)
{
    redisContext *c = redisConnect("127.0.0.1", rport);
    if (!c || c->err) {
        fprintf(stderr, "floor: cannot connect to Redis on port %d\n", rport);
        return -1;
    }
    redisReply *rep = redisCommand(c, "SCRIPT LOAD %s", SCRIPT);
    int ok = rep && rep->type == REDIS_REPLY_STRING && rep->len == 40;
    if (ok)
        memcpy(sha, rep->str, 41);
    else
        fprintf(stderr, "floor: SCRIPT LOAD failed: %s\n", rep && rep->str ? rep->str : "?");
    freeReplyObject(rep);
    redisFree(c);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: floor PORT REDIS_PORT [UPSTREAM_URL]\n");
        return 1;
    }
    upstream_url = argc == 4 ? argv[3] : NULL;
    int port = atoi(argv[1]), rport = atoi(argv[2]);
    if (port <= 0 || port > 65535 || rport <= 0 || rport > 65535) {
        fprintf(stderr, "floor: bad port\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (load_script(rport) != 0)
        return 1;

    base = event_base_new();
    ac = redisAsyncConnect("127.0.0.1", rport);
    if (!base || !ac || ac->err) {
        fprintf(stderr, "floor: cannot set up the Redis connection\n");
        return 1;
    }
    redisLibeventAttach(ac, base);
    if (upstream_url) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        multi = curl_multi_init();
        curl_timer = evtimer_new(base, on_curl_timer, NULL);
        json_header = curl_slist_append(NULL, "Content-Type: application/json");
        if (!multi || !curl_timer || !json_header) {
            fprintf(stderr, "floor: cannot set up libcurl\n");
            return 1;
        }
        curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, curl_socket);
        curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, curl_timer_set);
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 1024L);
    }
    redisAsyncSetDisconnectCallback(ac, on_disconnect);

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, (uint16_t)port,
                           NULL, NULL, on_access, NULL,
                           MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                           MHD_OPTION_CONNECTION_LIMIT, 20000u,
                           MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                           MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                           MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1,
                           MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                           MHD_OPTION_END);
    if (!mhd) {
        fprintf(stderr, "floor: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_EPOLL_FD);
    mhd_io = event_new(base, info->epoll_fd, EV_READ | EV_PERSIST, run_mhd, NULL);
    mhd_timer = evtimer_new(base, run_mhd, NULL);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, NULL);
    if (!mhd_io || !mhd_timer || !sigterm || !sigint || event_add(mhd_io, NULL) != 0 ||
        event_add(sigterm, NULL) != 0 || event_add(sigint, NULL) != 0) {
        fprintf(stderr, "floor: cannot watch events\n");
        return 1;
    }
    rearm_timer();
    fprintf(stderr, "floor: listening on 127.0.0.1:%d, Redis 127.0.0.1:%d\n", port, rport);
    event_base_dispatch(base);

    stopping = 1;
    if (ac)
        redisAsyncFree(ac);      /* answers pending calls (503), resuming their connections */
    MHD_stop_daemon(mhd);        /* completes (frees) the requests still open */
    if (multi) {
        while (n_spare)
            curl_easy_cleanup(spare[--n_spare]);
        curl_multi_cleanup(multi);
        curl_slist_free_all(json_header);
        event_free(curl_timer);
    }
    event_free(mhd_io);
    event_free(mhd_timer);
    event_free(sigterm);
    event_free(sigint);
    event_base_free(base);
    return exit_code;
}
