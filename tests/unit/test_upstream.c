/*
 * test_upstream: the libcurl + libevent pool against a real HTTP server,
 * tests/blackbox/upstream_server.py --serve (a subprocess: the test's own
 * thread is busy running the event loop).  The server counts connections,
 * so keep-alive reuse and the per-host limit are checked from its side.
 */
#include "capgate/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "unit.h"

#define MAX_BODY (64 * 1024)

static struct event_base *base;
static pid_t server_pid = -1;
static int server_stdin = -1;
static int server_port;
static char base_url[64];

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the server process ------------------------------------------------ */

static const char *server_script(void)
{
    static char path[512];
    const char *env = getenv("CAPGATE_UPSTREAM_SERVER");
    if (env)
        return env;
    if (access("tests/blackbox/upstream_server.py", R_OK) == 0)
        return "tests/blackbox/upstream_server.py";
    /* Not run from the top of the tree: relative to this source file. */
    snprintf(path, sizeof path, "%s", __FILE__);
    char *slash = strrchr(path, '/');
    snprintf(slash ? slash + 1 : path, sizeof path - (size_t)(slash ? slash + 1 - path : 0),
             "../blackbox/upstream_server.py");
    return path;
}

static bool start_server(void)
{
    int out[2], in[2];
    if (pipe(out) != 0 || pipe(in) != 0)
        return false;
    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    const char *script = server_script();
    server_pid = fork();
    if (server_pid < 0)
        return false;
    if (server_pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        execlp(py, py, script, "--serve", "--until-eof", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    server_stdin = in[1];       /* held open: the server exits when we do */

    char line[32] = "";
    size_t n = 0;
    uint64_t deadline = now_ms() + 10000;
    while (n < sizeof line - 1 && !strchr(line, '\n') && now_ms() < deadline) {
        struct pollfd pfd = { out[0], POLLIN, 0 };
        if (poll(&pfd, 1, 200) <= 0)
            continue;
        ssize_t r = read(out[0], line + n, sizeof line - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        line[n] = '\0';
    }
    close(out[0]);
    server_port = atoi(line);
    if (server_port <= 0) {
        printf("    cannot start %s %s (got %s)\n", py, script, line);
        return false;
    }
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d", server_port);
    return true;
}

static void stop_server(void)
{
    if (server_pid <= 0)
        return;
    close(server_stdin);
    kill(server_pid, SIGTERM);
    waitpid(server_pid, NULL, 0);
    server_pid = -1;
}

/* A blocking HTTP/1.0 exchange with the control API (not counted by the
 * server as a connection).  Returns the whole response in BUF. */
static bool control(const char *method, const char *path, const char *body, char *buf, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)server_port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", method,
                     path, body ? strlen(body) : 0, body ? body : "");
    bool ok = send(fd, req, (size_t)n, MSG_NOSIGNAL) == n;
    size_t got = 0;
    while (ok && got < size - 1) {
        ssize_t r = recv(fd, buf + got, size - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    buf[got] = '\0';
    close(fd);
    return ok && got > 0;
}

static long stat_value(const char *name)
{
    char buf[2048], key[64];
    if (!control("GET", "/_control/stats", NULL, buf, sizeof buf))
        return -1;
    snprintf(key, sizeof key, "\"%s\": ", name);
    const char *p = strstr(buf, key);
    return p ? atol(p + strlen(key)) : -1;
}

static void reset_server(void)
{
    char buf[1024];
    control("POST", "/_control/reset", NULL, buf, sizeof buf);
}

/* ---- collecting answers -------------------------------------------------- */

struct result {
    int calls;
    enum upstream_status status;
    long http_status;
    char error[64];
    char *body;
    size_t body_len;
    bool body_terminated;
    char headers[4096];         /* "Name: value\n"... */
    size_t n_headers;
    uint64_t at_ms;
    /* what the callback does next */
    struct upstream_pool *pool;
    const struct upstream_request *resend;  /* send this from the callback */
    struct result *resend_result;
    int resend_rc;
    bool free_pool;                          /* upstream_pool_free from the callback */
};

static int answered;

static void on_answer(void *arg, const struct upstream_response *r)
{
    struct result *res = arg;
    res->calls++;
    res->at_ms = now_ms();
    res->status = r->status;
    res->http_status = r->http_status;
    snprintf(res->error, sizeof res->error, "%s", r->error ? r->error : "");
    free(res->body);
    res->body = malloc(r->body_len + 1);
    memcpy(res->body, r->body, r->body_len + 1);
    res->body_len = r->body_len;
    res->body_terminated = r->body[r->body_len] == '\0';
    res->headers[0] = '\0';
    res->n_headers = r->n_headers;
    for (size_t k = 0; k < r->n_headers; k++) {
        size_t used = strlen(res->headers);
        snprintf(res->headers + used, sizeof res->headers - used, "%s\n", r->headers[k]);
    }
    answered++;
    if (res->resend) {
        res->resend_rc = upstream_send(res->pool, res->resend, on_answer, res->resend_result);
        res->resend = NULL;
    }
    if (res->free_pool)
        upstream_pool_free(res->pool);
}

static bool has_header(const struct result *r, const char *line)
{
    char want[256];
    snprintf(want, sizeof want, "%s\n", line);
    for (const char *p = r->headers; (p = strcasestr(p, want)); p++)
        if (p == r->headers || p[-1] == '\n')
            return true;
    return false;
}

static void result_clear(struct result *r, size_t n)
{
    for (size_t k = 0; k < n; k++)
        free(r[k].body);
    memset(r, 0, n * sizeof *r);
}

static void wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what; (void)arg;
}

/* Runs the loop until WANT answers arrived in all, or MS passed. */
static void run_until(int want, int ms)
{
    uint64_t deadline = now_ms() + (uint64_t)ms;
    struct event *guard = evtimer_new(base, wake, NULL);
    while (answered < want && now_ms() < deadline) {
        struct timeval tv = { 0, 20 * 1000 };
        evtimer_add(guard, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(guard);
}

static void run_for(int ms)
{
    run_until(1 << 30, ms);
}

static struct upstream_request request(const char *method, const char *path, long timeout_ms)
{
    static char urls[64][128];
    static unsigned next;
    char *url = urls[next++ % 64];
    snprintf(url, sizeof urls[0], "%s%s", base_url, path);
    return (struct upstream_request){ .method = method, .url = url, .timeout_ms = timeout_ms };
}

/* ---- tests ------------------------------------------------------------------ */

TEST(post_with_body_and_headers_is_echoed)
{
    struct upstream_pool *p = upstream_pool_new(base, 4, MAX_BODY);
    const char *hdrs[] = { "Content-Type: application/json", "Idempotency-Key: key-1",
                           "X-Custom: hello there", NULL };
    struct upstream_request req = request("POST", "/echo/send?campaign=c1", 2000);
    req.headers = hdrs;
    req.body = "{\"a\":1}";
    req.body_len = strlen(req.body);
    struct result r[1] = { 0 };
    answered = 0;

    CHECK_EQ_INT(upstream_send(p, &req, on_answer, &r[0]), 0);
    CHECK_EQ_INT(r[0].calls, 0);                /* never from inside upstream_send */
    CHECK_EQ_INT(upstream_pool_active(p), 1);
    run_until(1, 3000);
    CHECK_EQ_INT(r[0].calls, 1);
    CHECK_EQ_INT(r[0].status, UPSTREAM_OK);
    CHECK_EQ_INT(r[0].http_status, 200);
    CHECK(r[0].body_terminated);
    CHECK(r[0].body && strstr(r[0].body, "\"method\": \"POST\""));
    CHECK(r[0].body && strstr(r[0].body, "\"path\": \"/echo/send\""));
    CHECK(r[0].body && strstr(r[0].body, "\"campaign\": [\"c1\"]"));
    CHECK(r[0].body && strstr(r[0].body, "[\"Idempotency-Key\", \"key-1\"]"));
    CHECK(r[0].body && strstr(r[0].body, "[\"X-Custom\", \"hello there\"]"));
    CHECK(r[0].body && strstr(r[0].body, "[\"Content-Type\", \"application/json\"]"));
    CHECK(r[0].body && strstr(r[0].body, "\"body\": \"{\\\"a\\\":1}\""));
    CHECK(r[0].body && !strstr(r[0].body, "Expect"));
    CHECK(has_header(&r[0], "X-Upstream: yes"));
    CHECK(has_header(&r[0], "X-Echo-Method: POST"));
    CHECK(has_header(&r[0], "Content-Type: application/json"));
    CHECK(strstr(r[0].headers, "HTTP/") == NULL);   /* no status line */
    CHECK(r[0].n_headers >= 4);
    CHECK_EQ_INT(upstream_pool_active(p), 0);

    /* Other methods, with and without a body; no form content type made up. */
    struct upstream_request put = request("PUT", "/echo/x", 2000);
    put.body = "raw";
    put.body_len = 3;
    struct upstream_request del = request("DELETE", "/echo/y", 2000);
    struct upstream_request get = request("GET", "/echo/z", 2000);
    struct upstream_request head = request("HEAD", "/echo/h", 2000);
    struct result m[4] = { 0 };
    answered = 0;
    CHECK_EQ_INT(upstream_send(p, &put, on_answer, &m[0]), 0);
    CHECK_EQ_INT(upstream_send(p, &del, on_answer, &m[1]), 0);
    CHECK_EQ_INT(upstream_send(p, &get, on_answer, &m[2]), 0);
    CHECK_EQ_INT(upstream_send(p, &head, on_answer, &m[3]), 0);
    run_until(4, 3000);
    CHECK(has_header(&m[0], "X-Echo-Method: PUT"));
    CHECK(m[0].body && strstr(m[0].body, "\"body\": \"raw\""));
    CHECK(m[0].body && !strstr(m[0].body, "urlencoded"));
    CHECK(has_header(&m[1], "X-Echo-Method: DELETE"));
    CHECK(has_header(&m[2], "X-Echo-Method: GET"));
    CHECK_EQ_INT(m[2].http_status, 200);
    CHECK_EQ_INT(m[3].http_status, 200);
    CHECK(has_header(&m[3], "X-Echo-Method: HEAD"));
    CHECK_EQ_INT(m[3].body_len, 0);

    result_clear(r, 1);
    result_clear(m, 4);
    upstream_pool_free(p);
}

TEST(any_status_is_an_answer)
{
    struct upstream_pool *p = upstream_pool_new(base, 4, MAX_BODY);
    struct upstream_request a = request("POST", "/status/500", 2000);
    struct upstream_request b = request("GET", "/status/302", 2000);
    struct upstream_request c = request("GET", "/status/429", 2000);
    struct upstream_request d = request("POST", "/informational", 2000);
    struct result r[4] = { 0 };
    answered = 0;
    CHECK_EQ_INT(upstream_send(p, &a, on_answer, &r[0]), 0);
    CHECK_EQ_INT(upstream_send(p, &b, on_answer, &r[1]), 0);
    CHECK_EQ_INT(upstream_send(p, &c, on_answer, &r[2]), 0);
    CHECK_EQ_INT(upstream_send(p, &d, on_answer, &r[3]), 0);
    run_until(4, 3000);
    CHECK_EQ_INT(r[0].status, UPSTREAM_OK);
    CHECK_EQ_INT(r[0].http_status, 500);
    CHECK(r[0].body && strstr(r[0].body, "500"));
    CHECK_EQ_INT(r[1].status, UPSTREAM_OK);     /* a redirect is not followed */
    CHECK_EQ_INT(r[1].http_status, 302);
    CHECK_EQ_INT(r[2].http_status, 429);
    /* Only the final answer's headers, not those of the 103 before it. */
    CHECK_EQ_INT(r[3].http_status, 200);
    CHECK(has_header(&r[3], "X-Upstream: yes"));
    CHECK(strstr(r[3].headers, "Link:") == NULL);
    result_clear(r, 4);
    upstream_pool_free(p);
}

TEST(connection_refused_fails_fast)
{
    /* A port nobody listens on: bind one, learn it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", ntohs(sa.sin_port));

    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    struct upstream_request req = { .method = "POST", .url = url, .body = "x", .body_len = 1,
                                    .timeout_ms = 5000 };
    struct result r[1] = { 0 };
    answered = 0;
    uint64_t t0 = now_ms();
    CHECK_EQ_INT(upstream_send(p, &req, on_answer, &r[0]), 0);
    run_until(1, 6000);
    CHECK_EQ_INT(r[0].calls, 1);
    CHECK_EQ_INT(r[0].status, UPSTREAM_FAILED);
    CHECK_EQ_STR(r[0].error, "connect failed");
    CHECK(r[0].at_ms - t0 < 500);
    CHECK_EQ_INT(r[0].body_len, 0);
    CHECK_EQ_INT(r[0].n_headers, 0);
    result_clear(r, 1);
    upstream_pool_free(p);
}

TEST(stall_beyond_timeout_fails_in_time)
{
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    struct upstream_request req = request("POST", "/stall/3", 300);
    struct result r[1] = { 0 };
    answered = 0;
    uint64_t t0 = now_ms();
    CHECK_EQ_INT(upstream_send(p, &req, on_answer, &r[0]), 0);
    run_until(1, 3000);
    uint64_t took = r[0].at_ms - t0;
    CHECK_EQ_INT(r[0].calls, 1);
    CHECK_EQ_INT(r[0].status, UPSTREAM_FAILED);
    CHECK_EQ_STR(r[0].error, "timeout");
    CHECK(took >= 290 && took <= 400);
    if (took < 290 || took > 400)
        printf("    timed out after %llu ms\n", (unsigned long long)took);
    result_clear(r, 1);
    upstream_pool_free(p);
}

/* Requests queued behind the per-host limit keep their own deadline: curl
 * checks none while a transfer waits for a connection, so without ours they
 * would wait for the slow one ahead of them. */
TEST(queued_requests_time_out_too)
{
    struct upstream_pool *p = upstream_pool_new(base, 1, MAX_BODY);
    struct upstream_request slow = request("GET", "/stall/1", 3000);
    struct upstream_request queued = request("GET", "/echo/queued", 300);
    struct result r[5] = { 0 };
    answered = 0;
    uint64_t t0 = now_ms();
    CHECK_EQ_INT(upstream_send(p, &slow, on_answer, &r[0]), 0);
    for (int k = 1; k < 5; k++)
        CHECK_EQ_INT(upstream_send(p, &queued, on_answer, &r[k]), 0);
    run_until(4, 900);
    for (int k = 1; k < 5; k++) {
        CHECK_EQ_INT(r[k].calls, 1);
        CHECK_EQ_STR(r[k].error, "timeout");
        CHECK(r[k].at_ms - t0 <= 400);
    }
    CHECK_EQ_INT(r[0].calls, 0);
    run_until(5, 3000);
    CHECK_EQ_INT(r[0].calls, 1);
    CHECK_EQ_INT(r[0].http_status, 200);
    result_clear(r, 5);
    upstream_pool_free(p);
}

TEST(per_host_limit_holds_and_everything_completes)
{
    enum { N = 20 };
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    struct upstream_request req = request("POST", "/stall/0.05", 5000);
    req.body = "{}";
    req.body_len = 2;
    struct result r[N] = { 0 };
    reset_server();
    answered = 0;
    for (int k = 0; k < N; k++)
        CHECK_EQ_INT(upstream_send(p, &req, on_answer, &r[k]), 0);
    CHECK_EQ_INT(upstream_pool_active(p), N);
    run_until(N, 8000);
    int ok = 0;
    for (int k = 0; k < N; k++)
        ok += r[k].calls == 1 && r[k].status == UPSTREAM_OK && r[k].http_status == 200;
    CHECK_EQ_INT(ok, N);
    long max = stat_value("connections_max"), total = stat_value("connections_total");
    CHECK(max >= 1 && max <= 2);
    CHECK(total >= 1 && total <= 2);             /* kept alive, not reopened */
    CHECK_EQ_INT(stat_value("requests"), N);
    CHECK_EQ_INT(upstream_pool_active(p), 0);
    result_clear(r, N);
    upstream_pool_free(p);
}

TEST(sequential_requests_reuse_one_connection)
{
    struct upstream_pool *p = upstream_pool_new(base, 4, MAX_BODY);
    struct upstream_request req = request("POST", "/v1/send", 2000);
    req.body = "{\"n\":1}";
    req.body_len = strlen(req.body);
    struct result r[10] = { 0 };
    reset_server();
    for (int k = 0; k < 10; k++) {
        answered = 0;
        CHECK_EQ_INT(upstream_send(p, &req, on_answer, &r[k]), 0);
        run_until(1, 3000);
        CHECK_EQ_INT(r[k].http_status, 200);
        CHECK(has_header(&r[k], "X-Upstream: yes"));
    }
    CHECK_EQ_INT(stat_value("connections_total"), 1);
    CHECK_EQ_INT(stat_value("requests"), 10);
    result_clear(r, 10);
    upstream_pool_free(p);
}

TEST(response_bigger_than_max_body_fails)
{
    struct upstream_pool *p = upstream_pool_new(base, 2, 1000);
    struct upstream_request fits = request("GET", "/big/1000", 2000);
    struct upstream_request big = request("GET", "/big/1001", 2000);          /* Content-Length */
    struct upstream_request chunked = request("GET", "/big/5000?chunked", 2000); /* no length */
    struct upstream_request chunked_fits = request("GET", "/big/1000?chunked", 2000);
    struct result r[4] = { 0 };
    answered = 0;
    CHECK_EQ_INT(upstream_send(p, &fits, on_answer, &r[0]), 0);
    CHECK_EQ_INT(upstream_send(p, &big, on_answer, &r[1]), 0);
    CHECK_EQ_INT(upstream_send(p, &chunked, on_answer, &r[2]), 0);
    CHECK_EQ_INT(upstream_send(p, &chunked_fits, on_answer, &r[3]), 0);
    run_until(4, 3000);
    CHECK_EQ_INT(r[0].status, UPSTREAM_OK);
    CHECK_EQ_INT(r[0].body_len, 1000);
    CHECK_EQ_INT(r[1].status, UPSTREAM_FAILED);
    CHECK_EQ_STR(r[1].error, "response too large");
    CHECK_EQ_INT(r[2].status, UPSTREAM_FAILED);
    CHECK_EQ_STR(r[2].error, "response too large");
    CHECK_EQ_INT(r[3].status, UPSTREAM_OK);
    CHECK_EQ_INT(r[3].body_len, 1000);
    result_clear(r, 4);
    upstream_pool_free(p);
}

TEST(broken_answers_fail)
{
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    struct upstream_request garbage = request("POST", "/garbage", 2000);
    struct upstream_request closed = request("POST", "/close", 2000);
    struct upstream_request badurl = { .method = "GET", .url = "ftp://127.0.0.1/x",
                                       .timeout_ms = 1000 };
    struct result r[3] = { 0 };
    answered = 0;
    CHECK_EQ_INT(upstream_send(p, &garbage, on_answer, &r[0]), 0);
    CHECK_EQ_INT(upstream_send(p, &closed, on_answer, &r[1]), 0);
    CHECK_EQ_INT(upstream_send(p, &badurl, on_answer, &r[2]), 0);
    run_until(3, 3000);
    CHECK_EQ_INT(r[0].calls, 1);
    CHECK_EQ_INT(r[0].status, UPSTREAM_FAILED);
    CHECK_EQ_INT(r[1].calls, 1);
    CHECK_EQ_INT(r[1].status, UPSTREAM_FAILED);
    CHECK_EQ_STR(r[1].error, "empty reply");
    CHECK_EQ_INT(r[2].status, UPSTREAM_FAILED);  /* http and https only */
    CHECK(r[0].error[0] && r[2].error[0]);
    result_clear(r, 3);
    upstream_pool_free(p);
}

TEST(bad_requests_are_refused_at_once)
{
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    const char *smuggle[] = { "X-A: b\r\nX-Injected: 1", NULL };
    struct upstream_request a = request("POST", "/echo", 1000);
    a.headers = smuggle;
    struct upstream_request b = request("POST", "/echo", 0);
    struct upstream_request c = request("PO ST", "/echo", 1000);
    struct upstream_request d = request("POST", "/echo\r\nX: y", 1000);
    struct upstream_request e = request("POST", "/echo", 1000);
    e.body_len = 10;                /* and no body */
    struct result r[1] = { 0 };
    CHECK_EQ_INT(upstream_send(p, &a, on_answer, &r[0]), -1);
    CHECK_EQ_INT(upstream_send(p, &b, on_answer, &r[0]), -1);
    CHECK_EQ_INT(upstream_send(p, &c, on_answer, &r[0]), -1);
    CHECK_EQ_INT(upstream_send(p, &d, on_answer, &r[0]), -1);
    CHECK_EQ_INT(upstream_send(p, &e, on_answer, &r[0]), -1);
    CHECK_EQ_INT(upstream_send(NULL, &e, on_answer, &r[0]), -1);
    CHECK_EQ_INT(upstream_pool_active(p), 0);
    run_for(50);
    CHECK_EQ_INT(r[0].calls, 0);
    upstream_pool_free(p);
}

/* A callback may send again (a retry): curl is not re-entered. */
TEST(callback_may_send_again)
{
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    struct upstream_request first = request("POST", "/status/503", 2000);
    struct upstream_request retry = request("POST", "/echo/retry", 2000);
    struct result r[2] = { 0 };
    r[0].pool = p;
    r[0].resend = &retry;
    r[0].resend_result = &r[1];
    r[0].resend_rc = -2;
    answered = 0;
    CHECK_EQ_INT(upstream_send(p, &first, on_answer, &r[0]), 0);
    run_until(2, 3000);
    CHECK_EQ_INT(r[0].http_status, 503);
    CHECK_EQ_INT(r[0].resend_rc, 0);
    CHECK_EQ_INT(r[1].calls, 1);
    CHECK_EQ_INT(r[1].http_status, 200);
    CHECK(has_header(&r[1], "X-Echo-Method: POST"));
    result_clear(r, 2);
    upstream_pool_free(p);
}

TEST(free_with_requests_in_flight_answers_each_once)
{
    enum { N = 6 };
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    struct upstream_request req = request("POST", "/stall/5", 10000);
    struct upstream_request retry = request("POST", "/echo", 1000);
    struct result r[N] = { 0 };
    answered = 0;
    for (int k = 0; k < N; k++)
        CHECK_EQ_INT(upstream_send(p, &req, on_answer, &r[k]), 0);
    /* One callback tries a retry during shutdown: refused, no callback. */
    struct result extra[1] = { 0 };
    r[0].pool = p;
    r[0].resend = &retry;
    r[0].resend_result = &extra[0];
    r[0].resend_rc = -2;
    run_for(200);                   /* connected, requests sent, 4 of them queued */
    CHECK_EQ_INT(answered, 0);
    CHECK_EQ_INT(upstream_pool_active(p), N);
    upstream_pool_free(p);
    for (int k = 0; k < N; k++) {
        CHECK_EQ_INT(r[k].calls, 1);
        CHECK_EQ_INT(r[k].status, UPSTREAM_FAILED);
        CHECK_EQ_STR(r[k].error, "shutting down");
    }
    CHECK_EQ_INT(r[0].resend_rc, -1);
    run_for(50);
    CHECK_EQ_INT(extra[0].calls, 0);
    for (int k = 0; k < N; k++)
        CHECK_EQ_INT(r[k].calls, 1);
    result_clear(r, N);
}

/* upstream_pool_free from inside a callback: the others are answered, the
 * pool goes away once that callback has returned. */
TEST(free_from_inside_a_callback)
{
    enum { N = 4 };
    struct upstream_pool *p = upstream_pool_new(base, 4, MAX_BODY);
    struct upstream_request quick = request("GET", "/status/200", 2000);
    struct upstream_request slow = request("GET", "/stall/5", 10000);
    struct result r[N] = { 0 };
    r[0].pool = p;
    r[0].free_pool = true;
    answered = 0;
    CHECK_EQ_INT(upstream_send(p, &quick, on_answer, &r[0]), 0);
    for (int k = 1; k < N; k++)
        CHECK_EQ_INT(upstream_send(p, &slow, on_answer, &r[k]), 0);
    run_until(N, 3000);
    CHECK_EQ_INT(r[0].calls, 1);
    CHECK_EQ_INT(r[0].http_status, 200);
    for (int k = 1; k < N; k++) {
        CHECK_EQ_INT(r[k].calls, 1);
        CHECK_EQ_STR(r[k].error, "shutting down");
    }
    run_for(50);
    result_clear(r, N);
}

TEST(pool_free_of_an_idle_pool)
{
    struct upstream_pool *p = upstream_pool_new(base, 2, MAX_BODY);
    CHECK(p != NULL);
    CHECK_EQ_INT(upstream_pool_active(p), 0);
    upstream_pool_free(p);
    upstream_pool_free(NULL);
}

int main(void)
{
    /* A proxy from the environment would sit between us and 127.0.0.1. */
    const char *proxies[] = { "http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy",
                              "ALL_PROXY", NULL };
    for (size_t k = 0; proxies[k]; k++)
        unsetenv(proxies[k]);
    signal(SIGPIPE, SIG_IGN);

    base = event_base_new();
    if (!start_server()) {
        printf("FAIL start_server\n");
        unit_failed++;
        return unit_done("test_upstream");
    }
    RUN(post_with_body_and_headers_is_echoed);
    RUN(any_status_is_an_answer);
    RUN(connection_refused_fails_fast);
    RUN(stall_beyond_timeout_fails_in_time);
    RUN(queued_requests_time_out_too);
    RUN(per_host_limit_holds_and_everything_completes);
    RUN(sequential_requests_reuse_one_connection);
    RUN(response_bigger_than_max_body_fails);
    RUN(broken_answers_fail);
    RUN(bad_requests_are_refused_at_once);
    RUN(callback_may_send_again);
    RUN(free_with_requests_in_flight_answers_each_once);
    RUN(free_from_inside_a_callback);
    RUN(pool_free_of_an_idle_pool);
    stop_server();
    event_base_free(base);
    return unit_done("test_upstream");
}
