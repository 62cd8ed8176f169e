/*
 * main: command line, start-up order, signals and shutdown.
 *
 * Start-up: config -> key file -> time zones -> event loop -> Redis -> HTTP.
 * Everything that reads files happens here or in a reload, never while a
 * request waits.  Signals arrive through the event loop:
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
#include <time.h>

#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/notify.h"
#include "capgate/pseudonym.h"
#include "capgate/tz.h"
#include "capgate/worker.h"

#define DRAIN_TICK_MS 20

static void usage(FILE *out)
{
    fprintf(out,
            "usage: capgate [-t] -c FILE\n"
            "       capgate -V | -h\n"
            "\n"
            "  -c FILE   configuration file (YAML)\n"
            "  -t        check the configuration (and key file) and exit: 0 ok, 1 not\n"
            "  -V        print the version and exit\n"
            "  -h        print this help and exit\n"
            "\n"
            "capgate runs in the foreground and logs to stderr (logfmt).\n"
            "SIGHUP reloads the configuration; SIGTERM drains and exits.\n");
}

struct daemon_state {
    struct event_base *base;
    struct worker *w;
    struct event *drain;
    uint64_t deadline_us;   /* monotonic */
    bool stopping;
};

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct daemon_state *d = arg;
    (void)fd; (void)what;
    unsigned active = worker_active_requests(d->w);
    if (active == 0 || http_now_us() >= d->deadline_us) {
        if (active)
            log_warn("shutdown timeout: answering the rest as unavailable", "unfinished=%u", active);
        event_base_loopbreak(d->base);
        return;
    }
    struct timeval tv = { 0, DRAIN_TICK_MS * 1000 };
    evtimer_add(d->drain, &tv);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon_state *d = arg;
    (void)what;
    if (d->stopping) {
        log_warn("second stop signal: exiting now", "signal=%d", (int)sig);
        event_base_loopbreak(d->base);
        return;
    }
    d->stopping = true;
    notify_stopping();
    log_info("stopping", "signal=%s unfinished=%u", sig == SIGTERM ? "TERM" : "INT",
             worker_active_requests(d->w));
    worker_quiesce(d->w);
    d->deadline_us = http_now_us() + (uint64_t)d->w->cfg->shutdown_timeout_s * 1000000u;
    on_drain_tick(-1, 0, d);
}

static void on_reload_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon_state *d = arg;
    char err[CONFIG_ERR_LEN];
    (void)sig; (void)what;
    if (!d->stopping)
        worker_reload(d->w, err, sizeof err);
}

int main(int argc, char **argv)
{
    const char *config_path = NULL;
    bool test_only = false;
    char err[CONFIG_ERR_LEN];
    int opt;

    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
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
    if (!cfg || worker_load_support(cfg, &pseud, &tz, err, sizeof err) != 0) {
        fprintf(stderr, "capgate: %s\n", err);
        config_release(cfg);
        return 1;
    }
    cfg->generation = 1;
    if (test_only) {
        fprintf(stderr, "capgate: configuration file %s test is successful (OK)\n", config_path);
        tz_db_free(tz);
        pseudonym_free(pseud);
        config_release(cfg);
        return 0;
    }
    log_set_level(cfg->log_level);

    /* A client that hangs up mid-response must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);

    struct daemon_state d = { 0 };
    d.base = event_base_new();
    if (!d.base) {
        fprintf(stderr, "capgate: cannot create the event loop\n");
        return 1;
    }
    d.w = worker_create(d.base, cfg, pseud, tz, err, sizeof err);
    if (!d.w) {
        fprintf(stderr, "capgate: %s\n", err);
        tz_db_free(tz);
        pseudonym_free(pseud);
        config_release(cfg);
        event_base_free(d.base);
        return 1;
    }
    d.drain = evtimer_new(d.base, on_drain_tick, &d);
    struct event *sigterm = evsignal_new(d.base, SIGTERM, on_stop_signal, &d);
    struct event *sigint = evsignal_new(d.base, SIGINT, on_stop_signal, &d);
    struct event *sighup = evsignal_new(d.base, SIGHUP, on_reload_signal, &d);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    evsignal_add(sighup, NULL);
    unsigned watchdog_ms = notify_watchdog_start(d.base);

    log_info("capgate started", "version=%s listen=%s redis=%s tz_zones=%zu caps=%zu watchdog_ms=%u",
             CAPGATE_VERSION, cfg->listen, cfg->redis.url, tz_db_count(tz), cfg->n_caps,
             watchdog_ms);
    event_base_dispatch(d.base);

    worker_free(d.w);
    notify_watchdog_stop();
    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    event_free(d.drain);
    event_base_free(d.base);
    log_info("capgate stopped", NULL);
    return 0;
}
