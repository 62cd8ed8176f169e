/*
 * upstream: libcurl's multi interface on a libevent loop.  See upstream.h.
 *
 * The glue follows curl's docs/examples/hiperfifo.c: curl tells us, through
 * CURLMOPT_SOCKETFUNCTION, which sockets to watch for what (one libevent
 * event per socket, hung on the socket with curl_multi_assign), and through
 * CURLMOPT_TIMERFUNCTION when it next wants to be called (one libevent
 * timer); both land in curl_multi_socket_action, after which finished
 * transfers are collected with curl_multi_info_read.
 *
 * Re-entrancy.  curl must not be re-entered from its own callbacks, and our
 * caller's callback may well call upstream_send again (a retry) or even
 * upstream_pool_free.  So:
 *   - curl_multi_socket_action is only ever called from a libevent callback,
 *     never from upstream_send: curl_multi_add_handle asks (through the
 *     timer function) to be called "now", which arms the timer with 0 ms;
 *   - the caller's callbacks run only once curl_multi_socket_action has
 *     returned (or from our own deadline timer, or from upstream_pool_free),
 *     and the handle is already out of the multi by then;
 *   - upstream_pool_free from inside a callback answers everything at once
 *     but leaves the last free() to the outermost of our frames.
 *
 * Deadlines.  CURLOPT_TIMEOUT_MS covers a transfer once it runs, but a
 * transfer queued behind CURLMOPT_MAX_HOST_CONNECTIONS sits in curl's
 * PENDING state, where libcurl 7.88 checks no timeout at all: a stalled
 * upstream would hold the queued requests forever.  Each request therefore
 * also has its own libevent timer for the whole exchange, queueing included.
 */
#include "capgate/upstream.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "capgate/log.h"

#ifndef CAPGATE_VERSION
#define CAPGATE_VERSION "dev"
#endif

/* Response header bytes kept, all lines together: libcurl 7.88 limits one
 * line (100 KiB) but not their number. */
#define HEADERS_MAX    (64u * 1024)
/* Idle connections kept per allowed connection to a host, across hosts. */
#define CACHE_PER_CONN 8
#define CACHE_MIN      16
#define CACHE_MAX      1024
/* TCP keep-alive on idle pooled connections: first probe, then interval. */
#define KEEPIDLE_S     30
#define KEEPINTVL_S    15

struct xfer;

/* One socket curl asked us to watch (curl_multi_assign'ed to it). */
struct sock {
    struct upstream_pool *p;
    struct event *ev;
    short kind;                     /* EV_READ|EV_WRITE of ev, 0 before the first */
    struct sock *prev, *next;       /* p->socks, to free any curl never removed */
};

#define SPARE_EASY_MAX 64

struct upstream_pool {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;            /* curl's next timeout */
    size_t max_body;
    unsigned active;                /* accepted, not yet answered */
    unsigned depth;                 /* caller callbacks running (nested) */
    bool closing;                   /* upstream_pool_free has begun */
    struct xfer *xfers;             /* in flight (doubly linked) */
    struct sock *socks;
    /* Easy handles of finished transfers, reset, for the next ones: a
     * handle's set-up was a good part of a forward's cost (callgrind). */
    CURL *spare[SPARE_EASY_MAX];
    unsigned n_spare;
};

/* One request, from upstream_send to its answer. */
struct xfer {
    struct upstream_pool *p;
    CURL *easy;
    struct curl_slist *req_headers;
    struct event *deadline;
    upstream_cb *cb;
    void *arg;
    struct xfer *prev, *next;

    char *body;                     /* response body, NUL-terminated */
    size_t len, cap;
    bool too_large;

    char **hdr;                     /* final response's header lines, NULL-terminated */
    size_t n_hdr, cap_hdr, hdr_bytes;
    bool headers_too_large;

    char errbuf[CURL_ERROR_SIZE];
};

static const char *const no_headers[1] = { NULL };

static void pool_destroy(struct upstream_pool *p);

/* ---- process-wide set-up --------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static bool global_ok;
static bool env_proxy;              /* a proxy named in the environment */

/* curl_global_init is not thread-safe and must run before any other curl
 * call; pools are made per worker thread, hence the once.  There is no
 * matching curl_global_cleanup: it would race other workers' pools, and the
 * process is about to exit anyway. */
static void global_init(void)
{
    global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    if (!global_ok)
        return;
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (!(v->features & CURL_VERSION_ASYNCHDNS))
        log_warn("libcurl resolves names synchronously",
                 "curl=%s effect=\"a slow DNS answer stalls the event loop\"", v->version);
    /* libcurl looks for these at every transfer (five getenv a forward);
     * when none is set it is told so once and for all (no proxy). */
    static const char *const names[] = { "http_proxy", "https_proxy", "HTTPS_PROXY",
                                         "all_proxy", "ALL_PROXY" };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const char *value = getenv(names[k]);
        if (value && *value)
            env_proxy = true;
    }
}

/* ---- response accumulation ---------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb;

    if (n > x->p->max_body - x->len) {
        x->too_large = true;
        return 0;                   /* != n: curl aborts with CURLE_WRITE_ERROR */
    }
    if (x->len + n + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 1024;
        while (cap < x->len + n + 1)
            cap *= 2;
        char *b = realloc(x->body, cap);
        if (!b)
            return 0;
        x->body = b;
        x->cap = cap;
    }
    memcpy(x->body + x->len, data, n);
    x->len += n;
    x->body[x->len] = '\0';
    return n;
}

static void headers_clear(struct xfer *x)
{
    for (size_t k = 0; k < x->n_hdr; k++)
        free(x->hdr[k]);
    x->n_hdr = 0;
    x->hdr_bytes = 0;
    if (x->hdr)
        x->hdr[0] = NULL;
}

static bool headers_push(struct xfer *x, char *line)
{
    if (x->n_hdr + 2 > x->cap_hdr) {
        size_t cap = x->cap_hdr ? x->cap_hdr * 2 : 16;
        char **h = realloc(x->hdr, cap * sizeof *h);
        if (!h)
            return false;
        x->hdr = h;
        x->cap_hdr = cap;
    }
    x->hdr[x->n_hdr++] = line;
    x->hdr[x->n_hdr] = NULL;
    return true;
}

/* One header line per call, CRLF included, status lines and the blank line
 * that ends a header block too.  Each status line (1xx, a redirect, the
 * final answer, HTTP/2's synthesized "HTTP/2 200") starts a fresh block, so
 * only the final response's headers remain; trailers are appended. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb, len = n;

    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        headers_clear(x);
        return n;
    }
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;
    if (len == 0)
        return n;
    if (x->hdr_bytes + len > HEADERS_MAX) {
        x->headers_too_large = true;
        return 0;
    }
    x->hdr_bytes += len;
    if ((data[0] == ' ' || data[0] == '\t') && x->n_hdr) {
        /* obs-fold: a continuation of the previous line */
        char **last = &x->hdr[x->n_hdr - 1];
        size_t old = strlen(*last);
        char *s = realloc(*last, old + len + 1);
        if (!s)
            return 0;
        s[old] = ' ';
        size_t skip = 0;
        while (skip < len && (data[skip] == ' ' || data[skip] == '\t'))
            skip++;
        memcpy(s + old + 1, data + skip, len - skip);
        s[old + 1 + len - skip] = '\0';
        *last = s;
        return n;
    }
    char *line = strndup(data, len);
    if (!line || !headers_push(x, line)) {
        free(line);
        return 0;
    }
    return n;
}

/* ---- answering ------------------------------------------------------------ */

/* (X's handle is in no multi by now: finished, failed, or never added.) */
static void xfer_free(struct xfer *x)
{
    struct upstream_pool *p = x->p;
    if (x->easy && !p->closing && p->n_spare < SPARE_EASY_MAX) {
        curl_easy_reset(x->easy);
        p->spare[p->n_spare++] = x->easy;
    } else if (x->easy) {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->req_headers);
    if (x->deadline)
        event_free(x->deadline);
    headers_clear(x);
    free(x->hdr);
    free(x->body);
    free(x);
}

static void xfer_unlink(struct xfer *x)
{
    struct upstream_pool *p = x->p;
    if (x->prev)
        x->prev->next = x->next;
    else
        p->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

/* Takes X out of the multi and the pool, answers its caller with R (body
 * and headers filled in here for an OK) and frees it. */
static void xfer_finish(struct xfer *x, struct upstream_response *r)
{
    struct upstream_pool *p = x->p;

    curl_multi_remove_handle(p->multi, x->easy);
    event_del(x->deadline);
    xfer_unlink(x);
    p->active--;
    if (r->status == UPSTREAM_OK) {
        r->body = x->body ? x->body : "";
        r->body_len = x->len;
        r->headers = x->hdr ? (const char *const *)x->hdr : no_headers;
        r->n_headers = x->n_hdr;
    } else {
        r->body = "";
        r->body_len = 0;
        r->headers = no_headers;
        r->n_headers = 0;
    }
    p->depth++;
    x->cb(x->arg, r);
    p->depth--;
    xfer_free(x);
}

static void xfer_fail(struct xfer *x, const char *error)
{
    struct upstream_response r = { .status = UPSTREAM_FAILED, .error = error,
                                   .timed_out = strcmp(error, "timeout") == 0 };
    xfer_finish(x, &r);
}

/* A short, stable reason for the caller (and its metrics); curl's detailed
 * message goes to the debug log. */
static const char *failure_reason(const struct xfer *x, CURLcode rc)
{
    if (x->too_large)
        return "response too large";
    if (x->headers_too_large)
        return "response headers too large";
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:       return "timeout";
    case CURLE_FILESIZE_EXCEEDED:        return "response too large";
    case CURLE_COULDNT_RESOLVE_HOST:     return "name not resolved";
    case CURLE_COULDNT_CONNECT:          return "connect failed";
    case CURLE_SSL_CONNECT_ERROR:        return "tls handshake failed";
    case CURLE_PEER_FAILED_VERIFICATION: return "tls certificate not trusted";
    case CURLE_GOT_NOTHING:              return "empty reply";
    case CURLE_WEIRD_SERVER_REPLY:       return "malformed response";
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:             return "connection lost";
    case CURLE_URL_MALFORMAT:            return "bad url";
    case CURLE_OUT_OF_MEMORY:            return "out of memory";
    default:                             return curl_easy_strerror(rc);
    }
}

static void xfer_done(struct xfer *x, CURLcode rc)
{
    struct upstream_response r = { .status = UPSTREAM_OK };

    if (rc == CURLE_OK) {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r.http_status);
    } else {
        r.status = UPSTREAM_FAILED;
        r.error = failure_reason(x, rc);
        r.timed_out = rc == CURLE_OPERATION_TIMEDOUT;
        log_debug("upstream request failed", "error=%s detail=%s", r.error,
                  x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    }
    xfer_finish(x, &r);
}

/* Collects every finished transfer.  Called only once curl_multi_socket_action
 * has returned, so the callbacks may add transfers (curl_multi_info_read
 * then simply goes on) or free the pool (we stop and let the caller of
 * check_done free it). */
static void check_done(struct upstream_pool *p)
{
    CURLMsg *msg;
    int left;

    while (!p->closing && (msg = curl_multi_info_read(p->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;     /* MSG dies with the handle's removal */
        struct xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        xfer_done(x, rc);
    }
}

/* Frees P if upstream_pool_free was called from a callback that has now
 * returned.  The last thing any of our event callbacks does. */
static void maybe_destroy(struct upstream_pool *p)
{
    if (p->closing && p->depth == 0)
        pool_destroy(p);
}

/* ---- the loop glue ------------------------------------------------------ */

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *p = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) |
                 ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;

    curl_multi_socket_action(p->multi, fd, action, &running);
    check_done(p);
    maybe_destroy(p);
}

static void on_timer_event(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *p = arg;
    int running;
    (void)fd; (void)what;

    curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(p);
    maybe_destroy(p);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct xfer *x = arg;
    struct upstream_pool *p = x->p;
    (void)fd; (void)what;

    xfer_fail(x, "timeout");
    maybe_destroy(p);
}

static void sock_free(struct sock *s)
{
    struct upstream_pool *p = s->p;
    if (s->prev)
        s->prev->next = s->next;
    else
        p->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->ev)
        event_free(s->ev);
    free(s);
}

/* CURLMOPT_SOCKETFUNCTION: watch FD for WHAT, or stop watching it (curl
 * says REMOVE before it closes a socket, so the fd is never reused under a
 * live event). */
static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *arg, void *sockp)
{
    struct upstream_pool *p = arg;
    struct sock *s = sockp;
    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(p->multi, fd, NULL);
            sock_free(s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;              /* curl fails the transfer */
        s->p = p;
        s->next = p->socks;
        if (s->next)
            s->next->prev = s;
        p->socks = s;
        curl_multi_assign(p->multi, fd, s);
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                         ((what & CURL_POLL_OUT) ? EV_WRITE : 0));
    if (s->ev && kind == s->kind)
        return 0;
    if (s->ev)
        event_free(s->ev);
    s->ev = event_new(p->base, fd, kind | EV_PERSIST, on_socket_event, p);
    s->kind = kind;
    if (!s->ev || event_add(s->ev, NULL) != 0)
        return -1;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 cancels, anything else (0 included: "as soon
 * as possible") arms our single timer.  Never act from here: curl may be
 * inside curl_multi_add_handle or curl_multi_socket_action. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *arg)
{
    struct upstream_pool *p = arg;
    (void)multi;

    if (timeout_ms < 0) {
        evtimer_del(p->timer);
        return 0;
    }
    struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)((timeout_ms % 1000) * 1000) };
    return evtimer_add(p->timer, &tv) == 0 ? 0 : -1;
}

/* ---- the pool ------------------------------------------------------------- */

struct upstream_pool *upstream_pool_new(struct event_base *base, unsigned max_connections,
                                        size_t max_body)
{
    pthread_once(&global_once, global_init);
    if (!global_ok) {
        log_error("curl_global_init failed", NULL);
        return NULL;
    }
    struct upstream_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->base = base;
    p->max_body = max_body;
    p->multi = curl_multi_init();
    p->timer = evtimer_new(base, on_timer_event, p);
    if (!p->multi || !p->timer) {
        pool_destroy(p);
        return NULL;
    }
    /* Idle keep-alive connections are cached per multi handle, shared by
     * every host it talks to; a few per allowed connection keeps the usual
     * handful of campaign APIs warm without hoarding sockets. */
    unsigned long cache = (unsigned long)max_connections * CACHE_PER_CONN;
    cache = cache < CACHE_MIN ? CACHE_MIN : cache > CACHE_MAX ? CACHE_MAX : cache;
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)max_connections);
    curl_multi_setopt(p->multi, CURLMOPT_MAXCONNECTS, (long)cache);
    return p;
}

unsigned upstream_pool_active(const struct upstream_pool *p)
{
    return p ? p->active : 0;
}

static void pool_destroy(struct upstream_pool *p)
{
    while (p->n_spare)
        curl_easy_cleanup(p->spare[--p->n_spare]);
    if (p->multi)
        curl_multi_cleanup(p->multi);   /* closes cached connections: REMOVE callbacks */
    while (p->socks)
        sock_free(p->socks);
    if (p->timer)
        event_free(p->timer);
    free(p);
}

/* Answers every request still in flight (its callback may not send more:
 * upstream_send refuses once closing), then frees.  From inside one of our
 * callbacks the final free waits until that callback has returned. */
void upstream_pool_free(struct upstream_pool *p)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    while (p->xfers)
        xfer_fail(p->xfers, "shutting down");
    if (p->depth == 0)
        pool_destroy(p);
}

/* ---- requests ------------------------------------------------------------- */

/* Header lines and the method go onto the wire as they are: a CR or LF in
 * them would let a value smuggle in headers of its own. */
static bool clean_line(const char *s)
{
    return s && strpbrk(s, "\r\n") == NULL;
}

static bool is_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", c))
            return false;
    }
    return true;
}

static bool has_header(const char *const *headers, const char *name)
{
    size_t n = strlen(name);
    for (size_t k = 0; headers && headers[k]; k++)
        if (strncasecmp(headers[k], name, n) == 0 &&
            (headers[k][n] == ':' || headers[k][n] == ';'))
            return true;
    return false;
}

static struct curl_slist *build_headers(const struct upstream_request *req, bool with_body)
{
    struct curl_slist *list = NULL, *t;

    for (size_t k = 0; req->headers && req->headers[k]; k++) {
        if (!(t = curl_slist_append(list, req->headers[k])))
            goto fail;
        list = t;
    }
    /* No "Expect: 100-continue" round trip before a larger body: the
     * campaign APIs answer in one go, and the wait would cost up to 1 s. */
    if (!(t = curl_slist_append(list, "Expect:")))
        goto fail;
    list = t;
    /* With a body curl would claim application/x-www-form-urlencoded,
     * which it never is here; send none unless the caller says. */
    if (with_body && !has_header(req->headers, "Content-Type")) {
        if (!(t = curl_slist_append(list, "Content-Type:")))
            goto fail;
        list = t;
    }
    return list;
fail:
    curl_slist_free_all(list);
    return NULL;
}

#define SET(opt, val) do { if (curl_easy_setopt(e, opt, val) != CURLE_OK) return false; } while (0)

static bool configure(struct xfer *x, const struct upstream_request *req)
{
    CURL *e = x->easy;
    bool with_body = req->body != NULL || req->body_len > 0;
    const char *m = req->method;

    SET(CURLOPT_PRIVATE, (char *)x);
    SET(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_FOLLOWLOCATION, 0L);    /* a redirect is the answer (3xx) */
    SET(CURLOPT_NOSIGNAL, 1L);          /* no SIGALRM from resolver timeouts in a threaded daemon */
    SET(CURLOPT_TIMEOUT_MS, req->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, req->timeout_ms);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TCP_KEEPIDLE, (long)KEEPIDLE_S);
    SET(CURLOPT_TCP_KEEPINTVL, (long)KEEPINTVL_S);
    SET(CURLOPT_USERAGENT, "capgate/" CAPGATE_VERSION);
    if (!env_proxy) {
        SET(CURLOPT_PROXY, "");
        SET(CURLOPT_NOPROXY, "");       /* (else no_proxy is still looked up) */
    }
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, x);
    /* Refuse a too big Content-Length before reading any of it. */
    if (strcmp(m, "HEAD") != 0 && x->p->max_body < (size_t)INT64_MAX)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->p->max_body);

    if (strcmp(m, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (with_body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_COPYPOSTFIELDS, req->body ? req->body : "");
        if (strcmp(m, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, m);
    } else if (strcmp(m, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "POST") == 0) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);   /* Content-Length: 0 */
        SET(CURLOPT_COPYPOSTFIELDS, "");
    } else {
        SET(CURLOPT_CUSTOMREQUEST, m);
    }
    if (!(x->req_headers = build_headers(req, with_body)))
        return false;
    SET(CURLOPT_HTTPHEADER, x->req_headers);
    return true;
}

#undef SET

int upstream_send(struct upstream_pool *p, const struct upstream_request *req,
                  upstream_cb *cb, void *arg)
{
    if (!p || p->closing || !req || !cb || !req->url || !clean_line(req->url) ||
        !is_token(req->method) || req->timeout_ms <= 0 || (!req->body && req->body_len))
        return -1;
    for (size_t k = 0; req->headers && req->headers[k]; k++)
        if (!clean_line(req->headers[k]))
            return -1;

    struct xfer *x = calloc(1, sizeof *x);
    if (!x)
        return -1;
    x->p = p;
    x->cb = cb;
    x->arg = arg;
    x->easy = p->n_spare ? p->spare[--p->n_spare] : curl_easy_init();
    x->deadline = evtimer_new(p->base, on_deadline, x);
    if (!x->easy || !x->deadline || !configure(x, req)) {
        xfer_free(x);
        return -1;
    }
    struct timeval tv = { (time_t)(req->timeout_ms / 1000),
                          (suseconds_t)((req->timeout_ms % 1000) * 1000) };
    /* add_handle only arms our timer (0 ms): the transfer starts on the
     * next loop iteration, so CB cannot run before we return. */
    if (evtimer_add(x->deadline, &tv) != 0 ||
        curl_multi_add_handle(p->multi, x->easy) != CURLM_OK) {
        xfer_free(x);
        return -1;
    }
    x->next = p->xfers;
    if (x->next)
        x->next->prev = x;
    p->xfers = x;
    p->active++;
    return 0;
}
