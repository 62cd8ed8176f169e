/*
 * config: capgate.yaml -> an immutable, validated struct config.
 *
 * A config is loaded once, validated completely, and never changed
 * afterwards; a reload builds a new one (with a higher generation) and
 * swaps the pointer.  Every error names the file, the line and the key:
 *     capgate.yaml:14: caps[2].window: bad duration "1x"
 * Unknown keys are errors: a typo must never silently disable a cap.
 */
#ifndef CAPGATE_CONFIG_H
#define CAPGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_ERR_LEN 512

#define CAP_LIMIT_MAX 1000
#define CAP_NAME_MAX 64
#define CONFIG_NAME_MAX 32   /* channel and category names */

/* An upstream's send rate, for every gateway together (shape.h). */
struct cfg_rate {
    bool enabled;           /* the section is present */
    int per_second;         /* forwards a second, smoothed (GCRA) */
    int burst;              /* more at once after a quiet spell; default per_second/10, >= 1 */
};

enum over_rate { OVER_RATE_QUEUE, OVER_RATE_REJECT };

#define WARMUP_DAYS_MAX 64
/* A new IP or domain warmed up: day N's ceiling of forwards (shape.h). */
struct cfg_warmup {
    bool enabled;           /* the section is present */
    char *start;            /* "YYYY-MM-DD": day 0, in quiet_hours.default_tz; or an
                               instant, "YYYY-MM-DDTHH:MM:SSZ": days run from it */
    int64_t start_day;      /* days since 1970-01-01 of START's date */
    int64_t start_ms;       /* START as an instant (unix ms), when it is one; else -1 */
    int daily[WARMUP_DAYS_MAX];   /* day N's ceiling; past the last day: none */
    size_t n_daily;
    int64_t day_ms;         /* a day's length: 1d (then days start at local midnight) */
};

#define PUSHBACK_STATUSES_MAX 8
/* An upstream's "slow down": these statuses pause it for every gateway. */
struct cfg_pushback {
    int statuses[PUSHBACK_STATUSES_MAX];    /* default 429, 503; [] turns it off */
    size_t n_statuses;
    int64_t max_pause_ms;   /* default 10m */
};

/* Proxy mode: where a channel's allowed messages are forwarded. */
struct cfg_upstream {
    bool enabled;
    char *url;              /* http:// or https:// */
    int timeout_ms;         /* default 5000 */
    unsigned max_connections; /* per gateway, default 64 */
    char **headers;         /* "Name: value", ${VAR} expanded at load */
    size_t n_headers;
    struct cfg_rate rate;
    struct cfg_warmup warmup;
    enum over_rate over_rate;   /* a fresh send the rate (or a pause) holds: queued or 429 */
    struct cfg_pushback pushback;
    char *unsubscribe_headers;  /* "json:<pointer>" in a /v1/send payload (public); NULL: none */
};

struct cfg_channel {
    char *name;
    bool requires_opt_in;
    struct cfg_upstream upstream;
};

/* A send rate per campaign (throttles[]), counted per upstream. */
struct cfg_throttle {
    char *name;
    char *channel;          /* NULL: every channel's upstream */
    int per;                /* THROTTLE_PER_CAMPAIGN: the only kind so far */
    int per_second;
    int burst;              /* default per_second/10, >= 1 */
};
#define THROTTLE_PER_CAMPAIGN 0
#define THROTTLES_MAX 8

struct cfg_delivery {
    int max_attempts;       /* default 8 */
    int64_t backoff_ms;     /* first retry after, default 2s; doubles */
    int64_t max_backoff_ms; /* default 10m */
    int max_deferred;       /* messages waiting, default 1000000 */
    int64_t lease_ms;       /* a claimed message is someone's for this long, default 30s */
    int64_t sweep_ms;       /* every queue looked at this often at least, default 120s */
};

/* Transparent mode: a path proxied as-is to a channel's upstream.  Where a
 * value is read: "json:/pointer" (a pointer may say "*" for every element
 * of an array), "header:Name" or "form:Name" (an urlencoded body). */
#define ROUTE_USERS_MAX 8
#define ROUTE_REPLAY_HEADERS_MAX 16
struct cfg_route {
    char *path;
    char *channel;
    char **users;           /* every spec naming recipients, in order (1..ROUTE_USERS_MAX) */
    size_t n_users;
    char *campaign;         /* optional */
    char *message_id;
    char *category;         /* optional */
    char **replay_headers;  /* the upstream's headers a replay repeats (e.g. X-Message-Id) */
    size_t n_replay_headers;
    /* "json:/personalizations/STAR/headers" (STAR: "*"): the object each outer
     * element's List-Unsubscribe headers go in (public section); NULL: none. */
    char *unsubscribe_headers;
};

struct cfg_category {
    char *name;
    bool exempt_from_caps;
    bool exempt_from_quiet_hours;
    bool ignores_opt_out;
    bool requires_opt_in;
    int priority;        /* 0..9: a send's queue priority when it names none */
};

enum cap_per { CAP_PER_USER, CAP_PER_CAMPAIGN };
enum cap_action { CAP_DEFER, CAP_DENY };
enum cap_mode { CAP_ENFORCE, CAP_SHADOW };

struct cfg_cap {
    char *name;          /* unique, [A-Za-z0-9_.-]{1,64} */
    char *channel;       /* NULL: any channel */
    char *category;      /* NULL: any category */
    enum cap_per per;    /* default CAP_PER_USER */
    int limit;           /* 1..CAP_LIMIT_MAX */
    int64_t window_ms;   /* > 0 */
    enum cap_action on_exceed; /* default CAP_DEFER */
    enum cap_mode mode;  /* shadow: evaluated and reported, never blocks */
};

/* The campaign circuit breaker (breaker.h). */
struct cfg_breaker {
    bool enabled;           /* the section is present */
    int64_t window_ms;      /* rolling window, default 1d */
    int min_sends;          /* a campaign's sends in the window before it can trip, default 1000 */
    char *complaint_rate_s, *unsubscribe_rate_s;   /* as written */
    double complaint_rate;  /* complaints / sends, default 0.003 */
    double unsubscribe_rate;/* unsubscribes / sends, default 0.02 */
    enum cap_mode mode;     /* shadow: report would_pause, pause nothing */
};

/* Access control: who may call what.  Scopes are bits. */
#define SCOPE_SEND    1u   /* decide, send, release, events */
#define SCOPE_CONSENT 2u   /* consent, users/show, users/erase */
#define SCOPE_ADMIN   4u   /* status details, metrics, audit, reload */

struct cfg_token {
    char *name;
    char *sha256;        /* 64 lowercase hex digits of SHA-256(token) */
    unsigned scopes;
};

struct cfg_auth {
    bool enabled;        /* the section is present */
    struct cfg_token *tokens;
    size_t n_tokens;
};

struct cfg_tls {
    bool enabled;
    char *cert_file;     /* PEM */
    char *key_file;      /* PEM */
    int min_version;     /* 12 or 13 (TLS 1.2, 1.3), default 12 */
    char *priorities;    /* GnuTLS priority string as written, default "NORMAL" */
    char *priority_string; /* what MHD is given: priorities, versions from min_version */
};

/* What the people capgate messages can reach: the /u/ pages (public.c). */
struct cfg_public {
    bool enabled;
    char *base_url;      /* how recipients reach the public listener, no trailing '/' */
    char *listen;        /* as written */
    char *listen_host;   /* numeric IPv4/IPv6 address */
    uint16_t listen_port;
    int64_t token_ttl_ms;    /* default 180d */
    char *organisation;  /* shown on the page; NULL: none */
    int max_connections;         /* default 1000 */
    int max_connections_per_ip;  /* default 16 */
};

/* A tighter cap for people who ignore what they get. */
struct cfg_fatigue {
    bool enabled;
    int unengaged_after; /* this many sends without an open or click... */
    int limit;           /* ...and this cap applies */
    int64_t window_ms;
    enum cap_action on_exceed;
};

struct cfg_audit {
    bool enabled;        /* default true */
    int max_entries;     /* kept in Redis, default 1000000 */
    int64_t retention_ms;/* default 30d (never beyond privacy.retention) */
    char *file;          /* optional JSON-lines copy */
};

struct cfg_quiet_hours {
    bool enabled;        /* false when the section is absent */
    int start_min;       /* minutes after local midnight, 0..1439 */
    int end_min;         /* ditto; start > end means "over midnight" */
    char *default_tz;    /* IANA name, default "UTC" */
    char **channels;     /* channels quiet hours apply to */
    size_t n_channels;
    char *zoneinfo_dir;  /* default "/usr/share/zoneinfo" */
};

enum redis_transport { REDIS_TCP, REDIS_UNIX };

#define REDIS_SEEDS_MAX 64

/* A Redis Cluster seed node: host:port as written, host unresolved (a
 * name is resolved once, when the store is created). */
struct cfg_redis_seed {
    char *host;
    int port;
};

struct cfg_redis {
    char *url;           /* as written, for display (password masked); with
                            redis.cluster: "redis-cluster://seed,seed..." */
    enum redis_transport transport;
    char *host;          /* TCP */
    int port;            /* TCP, default 6379 */
    char *path;          /* UNIX socket path */
    char *user;          /* NULL: no ACL user (url, or redis.user with cluster) */
    char *password;      /* NULL: no AUTH (url, or redis.password with cluster) */
    struct cfg_redis_seed *cluster;  /* redis.cluster seeds; n_cluster == 0: */
    size_t n_cluster;                /* one Redis at url */
    int db;              /* default 0 */
    int timeout_ms;      /* default 250, 1..60000 */
    bool fail_open;      /* on_unavailable: allow */
    int bucket_bits;     /* 2^bits buckets of people share the send records,
                            12..24, default 16; see decision.h */
};

struct cfg_limits {
    size_t max_body_bytes;          /* default 65536 */
    unsigned max_connections;       /* default 4096 */
    unsigned max_connections_per_ip;/* 0 = unlimited; default 0 on loopback,
                                       else max_connections / 16 */
    unsigned connection_timeout_s;  /* idle timeout, default 30 */
    unsigned header_timeout_s;      /* a request's headers are due within it, default 10 */
    size_t connection_memory_bytes; /* per connection, default 16384 */
    unsigned max_pending;           /* requests waiting on Redis, default 10000 */
    unsigned max_recipients;        /* of one proxied request, default 1000 */
};

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };
enum log_format { LOG_FORMAT_LOGFMT, LOG_FORMAT_JSON };

struct config {
    uint64_t generation;     /* set by the caller that installs it */
    unsigned refs;           /* config_retain / config_release; 1 after load */
    char *path;              /* file it came from */

    char *listen;            /* as written, e.g. "127.0.0.1:8425" */
    char *listen_host;       /* numeric IPv4/IPv6 address */
    uint16_t listen_port;
    unsigned listen_line;           /* where listen was set (0: the default), for errors */

    struct cfg_redis redis;
    char *key_file;          /* privacy.key_file */
    char *previous_key_file; /* privacy.previous_key_file, or NULL: no rotation */
    int64_t retention_ms;    /* privacy.retention, default 400d: bounds every
                                record that is not an active suppression */
    char *controller;        /* privacy.controller, named in consent receipts; NULL:
                                public.organisation (config_controller) */
    struct cfg_auth auth;
    struct cfg_tls tls;
    struct cfg_public public;
    struct cfg_fatigue fatigue;
    struct cfg_audit audit;
    struct cfg_delivery delivery;
    struct cfg_route *routes; size_t n_routes;

    struct cfg_channel *channels;   size_t n_channels;
    struct cfg_category *categories; size_t n_categories;
    char *default_category;  /* must name a category */
    struct cfg_cap *caps;    size_t n_caps;
    struct cfg_throttle *throttles;  size_t n_throttles;
    struct cfg_breaker breaker;
    struct cfg_quiet_hours quiet_hours;

    int64_t max_defer_ms;    /* default 7d */
    int64_t idempotency_ms;  /* replay horizon, default 1d */
    struct cfg_limits limits;
    enum log_level log_level;/* default info */
    enum log_format log_format; /* default logfmt */
    bool access_log;         /* one logfmt line per request, default false */
    unsigned shutdown_timeout_s; /* drain time on SIGTERM, default 10 */
    int workers;             /* event loops (threads); 0 = one per CPU */
};

/* Parses and validates PATH.  Returns NULL and fills ERR on any error. */
struct config *config_load(const char *path, char *err, size_t errlen);
void config_free(struct config *cfg);

/* A request keeps the config it started with alive across a reload:
 * retain when it starts, release when it is answered.  The last release
 * frees.  (Atomic, so loops on several threads may share a config.) */
const struct config *config_retain(const struct config *cfg);
void config_release(const struct config *cfg);

/* Lookups by name; NULL when not configured. */
const struct cfg_channel *config_channel(const struct config *cfg, const char *name);
const struct cfg_category *config_category(const struct config *cfg, const char *name);
bool config_quiet_channel(const struct config *cfg, const char *channel);

/* Longest cap window (or idempotency horizon), bounded by
 * privacy.retention: how long any per-user send record is kept, and so the
 * TTL of those keys. */
int64_t config_retention_ms(const struct config *cfg);

/* Who consent receipts name as the controller: privacy.controller, else
 * public.organisation, else NULL (none configured). */
const char *config_controller(const struct config *cfg);

/* "2s", "90m", "1d", "2w" -> milliseconds.  Units: s m h d w (ms too).
 * Returns 0 on success, -1 on a malformed or out-of-range value. */
int config_parse_duration(const char *s, int64_t *ms);

/* "21:00" -> 1260.  Returns 0 or -1. */
int config_parse_clock(const char *s, int *minutes);

#endif
