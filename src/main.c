/*
 * main: command line, start-up order, signals and shutdown.
 *
 * Start-up: config -> key file -> time zones -> event loop -> Redis -> HTTP.
 * Everything that touches files happens here, before the loop serves a
 * single request.  SIGTERM/SIGINT: stop accepting, let in-flight requests
 * finish (each is bounded by redis.timeout_ms), then exit 0.
 */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/pseudonym.h"
#include "capgate/router.h"
#include "capgate/store.h"
#include "capgate/tz.h"
#include "capgate/worker.h"

#define SHUTDOWN_TIMEOUT_S 10
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
            "capgate runs in the foreground and logs to stderr (logfmt).\n");
}

struct shutdown {
    struct worker *w;
    struct event *drain;
    time_t deadline;
    bool started;
};

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct shutdown *sd = arg;
    (void)fd; (void)what;
    unsigned active = http_server_active_requests(sd->w->http);
    if (active == 0 || time(NULL) >= sd->deadline) {
        if (active)
            log_warn("shutdown timeout", "unfinished=%u", active);
        event_base_loopbreak(sd->w->base);
        return;
    }
    struct timeval tv = { 0, DRAIN_TICK_MS * 1000 };
    evtimer_add(sd->drain, &tv);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct shutdown *sd = arg;
    (void)what;
    if (sd->started) {
        log_warn("second stop signal: exiting now", "signal=%d", (int)sig);
        event_base_loopbreak(sd->w->base);
        return;
    }
    sd->started = true;
    log_info("stopping", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
    http_server_quiesce(sd->w->http);
    sd->deadline = time(NULL) + SHUTDOWN_TIMEOUT_S;
    on_drain_tick(-1, 0, sd);
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
    if (!cfg) {
        fprintf(stderr, "capgate: %s\n", err);
        return 1;
    }
    cfg->generation = 1;
    log_set_level(cfg->log_level);

    struct pseudonym *pseud = pseudonym_load(cfg->key_file, err, sizeof err);
    if (!pseud) {
        fprintf(stderr, "capgate: %s\n", err);
        config_free(cfg);
        return 1;
    }
    const char *zoneinfo = cfg->quiet_hours.zoneinfo_dir ? cfg->quiet_hours.zoneinfo_dir
                                                         : "/usr/share/zoneinfo";
    struct tz_db *tz = tz_db_load(zoneinfo, err, sizeof err);
    if (!tz || (cfg->quiet_hours.enabled && !tz_db_find(tz, cfg->quiet_hours.default_tz))) {
        if (tz)
            snprintf(err, sizeof err, "quiet_hours.default_tz: unknown time zone \"%s\"",
                     cfg->quiet_hours.default_tz);
        fprintf(stderr, "capgate: %s\n", err);
        tz_db_free(tz);
        pseudonym_free(pseud);
        config_free(cfg);
        return 1;
    }
    if (test_only) {
        fprintf(stderr, "capgate: configuration file %s test is successful (OK)\n", config_path);
        tz_db_free(tz);
        pseudonym_free(pseud);
        config_free(cfg);
        return 0;
    }

    /* A client that hangs up mid-response must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);

    struct worker w = { .cfg = cfg, .pseudonym = pseud, .tz = tz, .started = time(NULL) };
    w.base = event_base_new();
    if (!w.base) {
        fprintf(stderr, "capgate: cannot create the event loop\n");
        return 1;
    }
    w.store = store_create(w.base, &cfg->redis, cfg->limits.max_pending, decision_scripts,
                           SCRIPT__COUNT, err, sizeof err);
    if (!w.store) {
        fprintf(stderr, "capgate: %s\n", err);
        return 1;
    }
    struct http_options hopt = {
        .host = cfg->listen_host,
        .port = cfg->listen_port,
        .max_body_bytes = cfg->limits.max_body_bytes,
        .max_connections = cfg->limits.max_connections,
        .max_connections_per_ip = cfg->limits.max_connections_per_ip,
        .connection_timeout_s = cfg->limits.connection_timeout_s,
        .connection_memory_bytes = cfg->limits.connection_memory_bytes,
    };
    w.http = http_server_start(w.base, &hopt, router_dispatch, &w, err, sizeof err);
    if (!w.http) {
        fprintf(stderr, "capgate: %s\n", err);
        store_free(w.store);
        return 1;
    }

    struct shutdown sd = { .w = &w };
    sd.drain = evtimer_new(w.base, on_drain_tick, &sd);
    struct event *sigterm = evsignal_new(w.base, SIGTERM, on_stop_signal, &sd);
    struct event *sigint = evsignal_new(w.base, SIGINT, on_stop_signal, &sd);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);

    log_info("capgate started", "version=%s listen=%s redis=%s tz_zones=%zu caps=%zu",
             CAPGATE_VERSION, cfg->listen, cfg->redis.url, tz_db_count(tz), cfg->n_caps);
    event_base_dispatch(w.base);

    /* Answer whatever still waits on Redis (UNAVAILABLE), then stop HTTP. */
    store_free(w.store);
    w.store = NULL;
    for (int k = 0; k < 100 && http_server_active_requests(w.http); k++)
        event_base_loop(w.base, EVLOOP_NONBLOCK);
    http_server_free(w.http);
    event_free(sigterm);
    event_free(sigint);
    event_free(sd.drain);
    event_base_free(w.base);
    tz_db_free(tz);
    pseudonym_free(pseud);
    config_free(cfg);
    log_info("capgate stopped", "%s", "");
    return 0;
}
