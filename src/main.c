/*
 * main: command line, start-up order, signals and shutdown.
 *
 * Start-up: config -> key file -> time zones -> workers (each: event loop,
 * Redis connection, listener, thread).  Everything that reads files happens
 * here or in a reload, never while a request waits.  The main thread's own
 * loop handles only signals and the systemd watchdog:
 *   SIGHUP         reload the config (a bad one is refused, the old one stays)
 *   SIGTERM/SIGINT stop accepting, let in-flight requests finish within
 *                  shutdown_timeout, then exit 0 (a second signal: at once)
 */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/auth.h"
#include "capgate/config.h"
#include "capgate/gateway.h"
#include "capgate/log.h"
#include "capgate/notify.h"
#include "capgate/pseudonym.h"
#include "capgate/tz.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: capgate [-t] -c FILE\n"
            "       capgate --hash-token < token\n"
            "       capgate -V | -h\n"
            "\n"
            "  -c FILE   configuration file (YAML)\n"
            "  -t        check the configuration (and key file) and exit: 0 ok, 1 not\n"
            "  -V        print the version and exit\n"
            "  -h        print this help and exit\n"
            "  --hash-token  read an API token on stdin, print its auth.tokens config line\n"
            "\n"
            "capgate runs in the foreground and logs to stderr (logfmt).\n"
            "SIGHUP reloads the configuration; SIGTERM drains and exits.\n");
}

struct supervisor {
    struct event_base *base;
    struct gateway *gw;
    struct event *watchdog;
    struct event *status;
    uint64_t watchdog_us;
    bool stopping;
};

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct supervisor *s = arg;
    (void)what;
    if (s->stopping) {
        log_warn("second stop signal: exiting now", "signal=%d", (int)sig);
        gateway_stop_now(s->gw);
        return;
    }
    s->stopping = true;
    notify_stopping();
    log_info("stopping", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
    gateway_quiesce(s->gw);
    /* The workers drain and end; main joins them once this loop is left. */
    event_base_loopbreak(s->base);
}

static void on_reload_signal(evutil_socket_t sig, short what, void *arg)
{
    struct supervisor *s = arg;
    char err[CONFIG_ERR_LEN];
    (void)sig; (void)what;
    if (!s->stopping)
        gateway_reload(s->gw, err, sizeof err);
}

/* WATCHDOG=1 only while every worker's loop is ticking: a hung loop stops
 * the pings and systemd restarts the service. */
static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct supervisor *s = arg;
    (void)fd; (void)what;
    if (gateway_alive(s->gw, s->watchdog_us))
        notify_watchdog_ping();
    else
        log_error("a worker loop is not ticking: withholding the watchdog ping", NULL);
}

/* STATUS= for `systemctl status`: a one-line summary, every few seconds. */
static void on_status(evutil_socket_t fd, short what, void *arg)
{
    struct supervisor *s = arg;
    (void)fd; (void)what;
    struct totals *snap = calloc(1, sizeof *snap);
    if (!snap)
        return;
    gateway_totals(s->gw, snap);
    uint64_t d[OUTCOME__COUNT] = { 0 };
    for (int o = 0; o < OUTCOME__COUNT; o++)
        for (int r = 0; r < REASON__COUNT; r++)
            d[o] += snap->metrics.decisions[o][r];
    bool refused = snap->last_reload.at && !snap->last_reload.ok;
    notify_status("%u workers, redis %s, config generation %llu; %llu allow, %llu defer, %llu deny"
                  "%s%.200s",
                  snap->workers, snap->redis.connected ? "connected" : "UNAVAILABLE",
                  (unsigned long long)snap->generation, (unsigned long long)d[OUTCOME_ALLOW],
                  (unsigned long long)d[OUTCOME_DEFER], (unsigned long long)d[OUTCOME_DENY],
                  refused ? "; last reload refused: " : "", refused ? snap->last_reload.error : "");
    free(snap);
}

/* --hash-token: so that ops never hand-compute (or paste) a token's hash. */
static int hash_token(void)
{
    char token[1024], hex[65];
    size_t n = fread(token, 1, sizeof token - 1, stdin);
    while (n && (token[n - 1] == '\n' || token[n - 1] == '\r' || token[n - 1] == ' '))
        n--;
    if (n < 16) {
        fprintf(stderr, "capgate: give the token on stdin (at least 16 characters; "
                        "e.g. head -c 32 /dev/urandom | base64)\n");
        return 1;
    }
    auth_hash_token(token, n, hex);
    memset(token, 0, sizeof token);
    printf("    - { name: \"CHANGE-ME\", sha256: \"%s\", scopes: [send] }\n", hex);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "hash-token", no_argument, NULL, 'H' },
        { NULL, 0, NULL, 0 },
    };
    const char *config_path = NULL;
    bool test_only = false;
    char err[CONFIG_ERR_LEN];
    int opt;

    while ((opt = getopt_long(argc, argv, "c:tVh", long_options, NULL)) != -1) {
        switch (opt) {
        case 'H': return hash_token();
        case 'c': config_path = optarg; break;
        case 't': test_only = true; break;
        case 'V': printf("capgate %s\n", CAPGATE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (!config_path || optind != argc) {
        usage(stderr);
        return 1;
    }

    struct config *cfg = config_load(config_path, err, sizeof err);
    struct pseudonym *pseud = NULL;
    struct tz_db *tz = NULL;
    if (!cfg || gateway_load_support(cfg, &pseud, &tz, err, sizeof err) != 0) {
        fprintf(stderr, "capgate: %s\n", err);
        config_release(cfg);
        return 1;
    }
    cfg->generation = 1;
    if (!cfg->auth.enabled && !auth_is_loopback(cfg->listen_host)) {
        fprintf(stderr, "capgate: %s:%u: listen: %s is not a loopback address, and there is no "
                        "auth section: without access control capgate only listens on 127.0.0.1 "
                        "or [::1] (add auth.tokens; `capgate --hash-token` helps)\n",
                cfg->path, cfg->listen_line ? cfg->listen_line : 1, cfg->listen);
        tz_db_free(tz);
        pseudonym_free(pseud);
        config_release(cfg);
        return 1;
    }
    if (test_only) {
        fprintf(stderr, "capgate: configuration file %s test is successful (OK)\n", config_path);
        tz_db_free(tz);
        pseudonym_free(pseud);
        config_release(cfg);
        return 0;
    }
    log_set_level(cfg->log_level);
    log_set_format(cfg->log_format);

    /* A client that hangs up mid-response must not kill the daemon.  (No
     * evthread_use_pthreads(): no loop is touched by another thread, see
     * worker.c's wake().) */
    signal(SIGPIPE, SIG_IGN);

    struct supervisor s = { 0 };
    s.base = event_base_new();
    if (!s.base) {
        fprintf(stderr, "capgate: cannot create the event loop\n");
        return 1;
    }
    char listen[128], redis[256];
    size_t ncaps = cfg->n_caps, nzones = tz_db_count(tz);
    snprintf(listen, sizeof listen, "%s", cfg->listen);
    snprintf(redis, sizeof redis, "%s", cfg->redis.url);
    s.gw = gateway_start(cfg, pseud, tz, err, sizeof err);
    if (!s.gw) {
        fprintf(stderr, "capgate: %s\n", err);
        event_base_free(s.base);
        return 1;
    }
    struct event *sigterm = evsignal_new(s.base, SIGTERM, on_stop_signal, &s);
    struct event *sigint = evsignal_new(s.base, SIGINT, on_stop_signal, &s);
    struct event *sighup = evsignal_new(s.base, SIGHUP, on_reload_signal, &s);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    evsignal_add(sighup, NULL);
    s.watchdog_us = notify_watchdog_usec();
    if (s.watchdog_us) {
        struct timeval tv = { (time_t)(s.watchdog_us / 2000000),
                              (suseconds_t)(s.watchdog_us / 2 % 1000000) };
        s.watchdog = event_new(s.base, -1, EV_PERSIST, on_watchdog, &s);
        event_add(s.watchdog, &tv);
        notify_watchdog_ping();
    }

    struct timeval every = { 2, 0 };
    s.status = event_new(s.base, -1, EV_PERSIST, on_status, &s);
    event_add(s.status, &every);
    on_status(-1, 0, &s);

    if (!cfg->auth.enabled)
        log_warn("no auth section: every endpoint is open, so capgate listens on loopback only",
                 "listen=%s", listen);
    log_info("capgate started", "version=%s listen=%s redis=%s tz_zones=%zu caps=%zu watchdog_ms=%llu",
             CAPGATE_VERSION, listen, redis, nzones, ncaps,
             (unsigned long long)(s.watchdog_us / 2000));
    event_base_dispatch(s.base);

    /* Stop signal: the workers drain; SIGTERM/SIGINT again cuts it short. */
    event_base_loop(s.base, EVLOOP_NONBLOCK);
    gateway_wait(s.gw);
    gateway_free(s.gw);
    if (s.watchdog)
        event_free(s.watchdog);
    event_free(s.status);
    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    event_base_free(s.base);
    log_info("capgate stopped", NULL);
    return 0;
}
