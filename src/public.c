/* public: the unsubscribe and preference pages.  See public.h. */
#include "capgate/public.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/form.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/receipt.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/textbuf.h"
#include "capgate/token.h"

#define ROUTE "/u/{token}"
#define SOURCE_ONE_CLICK "one-click"
#define SOURCE_PAGE "preference-page"
#define FORM_PAIRS_MAX 512      /* what a page's form can hold, and more */
#define CHOICES_MAX 256         /* (channel, category) pairs a page shows */
#define RECORDS_MAX 512         /* consent records read back */

/* ---- the page, as HTML --------------------------------------------------- */

/* S as HTML text or attribute value. */
static void put_text(struct textbuf *p, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': textbuf_printf(p, "&amp;"); break;
        case '<': textbuf_printf(p, "&lt;"); break;
        case '>': textbuf_printf(p, "&gt;"); break;
        case '"': textbuf_printf(p, "&quot;"); break;
        case '\'': textbuf_printf(p, "&#39;"); break;
        default: textbuf_printf(p, "%c", *s);
        }
    }
}

/* A config name as people read it: "email" -> "Email", "push_news" -> "Push news". */
static void put_label(struct textbuf *p, const char *name)
{
    char buf[CONFIG_NAME_MAX + 1];
    size_t n = 0;
    for (; name[n] && n < CONFIG_NAME_MAX; n++)
        buf[n] = name[n] == '_' || name[n] == '-' || name[n] == '.' ? ' ' : name[n];
    buf[n] = '\0';
    if (strcasecmp(buf, "sms") == 0) {
        textbuf_printf(p, "SMS");
        return;
    }
    if (buf[0] >= 'a' && buf[0] <= 'z')
        buf[0] = (char)(buf[0] - 'a' + 'A');
    put_text(p, buf);
}

static const char STYLE[] =
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f6f6;color:#1a1a1a}"
    "main{max-width:34rem;margin:0 auto;padding:1.5rem 1rem}"
    "h1{font-size:1.4rem;margin:0 0 1rem}"
    "fieldset{border:1px solid #ccc;border-radius:.5rem;background:#fff;margin:0 0 1rem;"
    "padding:.5rem 1rem 1rem}"
    "legend{font-weight:600;padding:0 .3rem}"
    ".choice{display:flex;align-items:center;gap:.6rem;padding:.35rem 0}"
    ".choice input{width:1.3rem;height:1.3rem;margin:0}"
    ".note{color:#555;font-size:.9rem}"
    ".saved{background:#e6f4ea;border:1px solid #9ccfaa;border-radius:.5rem;padding:.6rem 1rem}"
    "button{font:inherit;padding:.6rem 1.2rem;border-radius:.4rem;border:1px solid #1a5fb4;"
    "background:#1a5fb4;color:#fff;margin:.3rem .5rem .3rem 0;cursor:pointer}"
    "button.all{background:#fff;color:#a51d2d;border-color:#a51d2d}";

static void page_head(struct textbuf *p, const struct config *cfg, const char *title)
{
    textbuf_printf(p, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           "<meta name=\"robots\" content=\"noindex\"><title>");
    put_text(p, title);
    if (cfg->public.organisation) {
        textbuf_printf(p, " \xe2\x80\x94 ");
        put_text(p, cfg->public.organisation);
    }
    textbuf_printf(p, "</title><style>%s</style></head><body><main>", STYLE);
}

static void page_end(struct textbuf *p)
{
    textbuf_printf(p, "</main></body></html>\n");
}

/* What every page is sent with: nothing cached, the token not passed on in a
 * Referer, nothing loaded from anywhere, the form posted only back here. */
static const char *const PAGE_HEADERS[] = {
    "Cache-Control", "no-store",
    "Referrer-Policy", "no-referrer",
    "X-Content-Type-Options", "nosniff",
    "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    NULL,
};

static void send_page(struct loop *l, struct http_request *req, unsigned status, struct textbuf *p)
{
    if (p->failed || !p->buf) {
        static const char oom[] = "<!DOCTYPE html><title>Error</title><p>Please try again later.";
        reply_text(l, req, 500, "text/html; charset=utf-8", oom, sizeof oom - 1, PAGE_HEADERS);
    } else {
        reply_text(l, req, status, "text/html; charset=utf-8", p->buf, p->len, PAGE_HEADERS);
    }
    free(p->buf);
}

/* A page of one message (a bad link, an error, a one-click answer). */
static void message_page(struct loop *l, struct http_request *req, unsigned status,
                         const char *title, const char *text)
{
    struct textbuf p = { 0 };
    page_head(&p, l->cfg, title);
    textbuf_printf(&p, "<h1>");
    put_text(&p, title);
    textbuf_printf(&p, "</h1><p>");
    put_text(&p, text);
    textbuf_printf(&p, "</p>");
    page_end(&p);
    send_page(l, req, status, &p);
}

/* ---- what the person chose ----------------------------------------------- */

struct record {
    char scope[2 * CONFIG_NAME_MAX + 8];     /* "<channel|*>|<category|*>", or bounce|<ch> */
    char state[12];                          /* in, out, bounced */
};

struct records {
    struct record r[RECORDS_MAX];
    size_t n;
};

/* history.lua's answer: {now, n, [scope, state, at, source] * n, the history}:
 * the records only (the page shows the choices, not how they came). */
static void read_records(const struct store_reply *r, struct records *out)
{
    out->n = 0;
    if (r->n < 2 || r->items[1].type != STORE_INT)
        return;
    size_t end = 2 + 4 * (size_t)(r->items[1].i > 0 ? r->items[1].i : 0);
    for (size_t k = 2; k + 4 <= r->n && k < end && out->n < RECORDS_MAX; k += 4) {
        const struct store_item *s = &r->items[k], *st = &r->items[k + 1];
        if (s->type != STORE_STR || st->type != STORE_STR)
            continue;
        struct record *rec = &out->r[out->n++];
        snprintf(rec->scope, sizeof rec->scope, "%.*s", (int)s->len, s->s);
        snprintf(rec->state, sizeof rec->state, "%.*s", (int)st->len, st->s);
    }
}

static const char *state_of(const struct records *rs, const char *channel, const char *category)
{
    char scope[sizeof rs->r[0].scope];
    snprintf(scope, sizeof scope, "%s|%s", channel, category);
    for (size_t k = 0; k < rs->n; k++)
        if (strcmp(rs->r[k].scope, scope) == 0)
            return rs->r[k].state;
    return NULL;
}

/* Whether decide.lua would let a message of CAT on CH through on consent
 * (the same lookup: the narrowest record wins; a bounce stops the channel). */
static bool receives(const struct records *rs, const struct cfg_channel *ch,
                     const struct cfg_category *cat)
{
    char bounce[CONFIG_NAME_MAX + 8];
    snprintf(bounce, sizeof bounce, "bounce|%s", ch->name);
    for (size_t k = 0; k < rs->n; k++)
        if (strcmp(rs->r[k].scope, bounce) == 0)
            return false;
    const char *st = state_of(rs, ch->name, cat->name);
    if (!st)
        st = state_of(rs, ch->name, "*");
    if (!st)
        st = state_of(rs, "*", cat->name);
    if (!st)
        st = state_of(rs, "*", "*");
    bool in = st && strcmp(st, "in") == 0, out = st && strcmp(st, "out") == 0;
    if (out && !cat->ignores_opt_out)
        return false;
    if ((ch->requires_opt_in || cat->requires_opt_in) && !in)
        return false;
    return true;
}

/* ---- one call --------------------------------------------------------------- */

enum public_action { SHOW, ONE_CLICK, SAVE };

struct change {
    char channel[CONFIG_NAME_MAX + 2], category[CONFIG_NAME_MAX + 2];   /* or "*" */
    bool opt_in;
};

struct public_call {
    struct loop *loop;
    struct http_request *req;
    const struct config *cfg;        /* retained */
    struct token tok;
    enum public_action action;
    bool everything;                 /* SAVE: "unsubscribe from everything" */
    bool saved;                      /* changes were recorded: say so */
    char *body;                      /* SAVE: the form, copied */
    size_t body_len;
    struct change *changes;
    size_t n_changes, pending;
    bool failed;
    struct records rs;
};

static void call_free(struct public_call *c)
{
    config_release(c->cfg);
    free(c->body);
    free(c->changes);
    free(c);
}

static void unavailable(struct public_call *c)
{
    message_page(c->loop, c->req, 503, "Please try again",
                 c->n_changes ? "Your choices could not all be saved just now; please try "
                                "again in a minute."
                              : "This page cannot be shown just now; please try again in a "
                                "minute.");
    call_free(c);
}

static void render(struct public_call *c)
{
    const struct config *cfg = c->cfg;
    struct textbuf p = { 0 };
    page_head(&p, cfg, "Your choices");
    textbuf_printf(&p, "<h1>Your choices");
    if (cfg->public.organisation) {
        textbuf_printf(&p, " for ");
        put_text(&p, cfg->public.organisation);
    }
    textbuf_printf(&p, "</h1>");
    if (c->saved)
        textbuf_printf(&p, "<p class=\"saved\" role=\"status\" id=\"saved\">Your choices are saved.</p>");
    textbuf_printf(&p, "<p>Choose what you would like to receive. A change applies to the very next "
            "message.</p><form method=\"post\">");
    size_t shown = 0;
    for (size_t i = 0; i < cfg->n_channels; i++) {
        const struct cfg_channel *ch = &cfg->channels[i];
        textbuf_printf(&p, "<fieldset><legend>");
        put_label(&p, ch->name);
        textbuf_printf(&p, "</legend>");
        for (size_t j = 0; j < cfg->n_categories; j++) {
            const struct cfg_category *cat = &cfg->categories[j];
            if (cat->ignores_opt_out || shown == CHOICES_MAX)
                continue;
            shown++;
            textbuf_printf(&p, "<div class=\"choice\"><input type=\"checkbox\" id=\"c-%s-%s\" "
                    "name=\"c.%s.%s\" value=\"1\"%s><label for=\"c-%s-%s\">",
                ch->name, cat->name, ch->name, cat->name,
                receives(&c->rs, ch, cat) ? " checked" : "", ch->name, cat->name);
            put_label(&p, cat->name);
            textbuf_printf(&p, "</label><input type=\"hidden\" name=\"shown\" value=\"%s.%s\"></div>",
                ch->name, cat->name);
        }
        /* What the person cannot turn off is said, not offered. */
        for (size_t j = 0; j < cfg->n_categories; j++) {
            if (!cfg->categories[j].ignores_opt_out)
                continue;
            textbuf_printf(&p, "<p class=\"note\">");
            put_label(&p, cfg->categories[j].name);
            textbuf_printf(&p, " messages are always sent, as part of a service you use.</p>");
        }
        textbuf_printf(&p, "</fieldset>");
    }
    textbuf_printf(&p, "<button type=\"submit\" name=\"action\" value=\"save\">Save my choices</button>"
            "<button type=\"submit\" class=\"all\" name=\"action\" value=\"everything\">"
            "Unsubscribe from everything</button></form>");
    char until[32];
    time_t exp = (time_t)c->tok.expires_s;
    struct tm tm;
    strftime(until, sizeof until, "%d %B %Y", gmtime_r(&exp, &tm));
    textbuf_printf(&p, "<p class=\"note\">This page shows no name or address. Its link works until %s.</p>",
        until);
    page_end(&p);
    send_page(c->loop, c->req, 200, &p);
    call_free(c);
}

static void save_changes(struct public_call *c);

static void on_prefs(void *arg, const struct store_reply *r)
{
    struct public_call *c = arg;
    if (r->status != STORE_OK) {
        unavailable(c);
        return;
    }
    read_records(r, &c->rs);
    if (c->action == SAVE && !c->saved) {
        save_changes(c);
        return;
    }
    render(c);
}

static void read_prefs(struct public_call *c)
{
    struct script_args a;
    decision_history_args(c->cfg, c->tok.user, &a);
    if (!c->loop->store ||
        store_eval(c->loop->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_prefs, c) != 0)
        unavailable(c);
}

static void audit_change(struct public_call *c, const struct change *ch, const char *source)
{
    if (!loop_audit_wanted(c->loop))
        return;
    loop_audit(c->loop, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "consent",
                                  "pseudonym", c->tok.user, "channel", ch->channel,
                                  "category", ch->category,
                                  "state", ch->opt_in ? "opt_in" : "opt_out", "source", source));
}

/* Every consent call of C has answered (or was refused). */
static void recorded_all(struct public_call *c)
{
    if (c->failed) {
        unavailable(c);
        return;
    }
    for (size_t k = 0; k < c->n_changes; k++) {
        COUNTER_INC(c->loop->metrics.consents);
        audit_change(c, &c->changes[k], c->action == ONE_CLICK ? SOURCE_ONE_CLICK : SOURCE_PAGE);
    }
    if (c->action == ONE_CLICK) {
        message_page(c->loop, c->req, 200, "You are unsubscribed",
                     "You will not receive these messages any more.");
        call_free(c);
        return;
    }
    c->saved = true;
    read_prefs(c);              /* show what is stored now */
}

static void on_recorded(void *arg, const struct store_reply *r)
{
    struct public_call *c = arg;
    if (r->status != STORE_OK || decision_consent_result(r) < 0)
        c->failed = true;
    if (--c->pending == 0)
        recorded_all(c);
}

/* Records C's changes, one consent call each (a page holds a few). */
static void record(struct public_call *c)
{
    const char *source = c->action == ONE_CLICK ? SOURCE_ONE_CLICK : SOURCE_PAGE;
    c->pending = c->n_changes + 1;       /* + 1: none answers before all are sent */
    for (size_t k = 0; k < c->n_changes; k++) {
        struct script_args a;
        /* Each change is a receipt of its own in the person's history. */
        struct consent_proof proof = { .method = source };
        receipt_new_id(proof.record_id);
        decision_consent_args(c->cfg, c->tok.user, c->changes[k].channel, c->changes[k].category,
                              c->changes[k].opt_in, source, &proof, &a);
        if (!c->loop->store || store_eval(c->loop->store, a.script, a.nkeys, a.argc, a.argv,
                                          a.argvlen, on_recorded, c) != 0) {
            c->failed = true;
            c->pending--;
        }
    }
    if (--c->pending == 0)
        recorded_all(c);
}

static void add_change(struct public_call *c, const char *channel, const char *category,
                       bool opt_in)
{
    struct change *ch = &c->changes[c->n_changes++];
    snprintf(ch->channel, sizeof ch->channel, "%s", channel);
    snprintf(ch->category, sizeof ch->category, "%s", category);
    ch->opt_in = opt_in;
}

/* Whether the form holds a pair named NAME (any value). */
static bool form_has(const char *body, const struct form_pair *pairs, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (form_name_is(body, &pairs[k], name))
            return true;
    return false;
}

/* The page's form against what is stored: each choice that differs. */
static void save_changes(struct public_call *c)
{
    const struct config *cfg = c->cfg;
    struct form_pair *pairs = calloc(FORM_PAIRS_MAX, sizeof *pairs);
    c->changes = calloc(CHOICES_MAX + 1, sizeof *c->changes);
    if (!pairs || !c->changes) {
        free(pairs);
        unavailable(c);
        return;
    }
    size_t n = form_parse(c->body, c->body_len, pairs, FORM_PAIRS_MAX);
    if (n > FORM_PAIRS_MAX)
        n = FORM_PAIRS_MAX;
    for (size_t k = 0; k < n && !c->everything; k++) {
        if (!form_name_is(c->body, &pairs[k], "action"))
            continue;
        size_t vlen;
        char *v = form_value(c->body, &pairs[k], &vlen);
        c->everything = v && strcmp(v, "everything") == 0;
        free(v);
    }
    if (c->everything) {
        add_change(c, "*", "*", false);
    } else {
        /* Only the pairs the page showed (named in "shown"): a choice left
         * out of the form is not an opt-out of something never offered. */
        size_t shown = 0;
        for (size_t k = 0; k < n && shown < CHOICES_MAX; k++) {
            if (!form_name_is(c->body, &pairs[k], "shown"))
                continue;
            size_t vlen;
            char *v = form_value(c->body, &pairs[k], &vlen);
            char *dot = v ? strchr(v, '.') : NULL;
            if (dot) {
                *dot = '\0';
                const struct cfg_channel *ch = config_channel(cfg, v);
                const struct cfg_category *cat = config_category(cfg, dot + 1);
                *dot = '.';
                if (ch && cat && !cat->ignores_opt_out) {
                    char field[2 * CONFIG_NAME_MAX + 4];
                    snprintf(field, sizeof field, "c.%s.%s", ch->name, cat->name);
                    bool want = form_has(c->body, pairs, n, field);
                    shown++;
                    if (want != receives(&c->rs, ch, cat))
                        add_change(c, ch->name, cat->name, want);
                }
            }
            free(v);
        }
    }
    free(pairs);
    record(c);
}

/* ---- the handler ---------------------------------------------------------- */

/* RFC 8058's body: List-Unsubscribe=One-Click, as a urlencoded form or as
 * multipart/form-data (both are allowed; mailbox providers use either). */
static bool one_click(struct http_request *req, const char *body, size_t len)
{
    const char *ct = http_header(req, "Content-Type");
    if (ct && strncasecmp(ct, "multipart/form-data", 19) == 0) {
        char *copy = strndup(body, len);
        bool yes = copy && strstr(copy, "name=\"List-Unsubscribe\"") && strstr(copy, "One-Click");
        free(copy);
        return yes;
    }
    struct form_pair pairs[8];
    size_t n = form_parse(body, len, pairs, 8);
    for (size_t k = 0; k < n && k < 8; k++) {
        if (!form_name_is(body, &pairs[k], "List-Unsubscribe"))
            continue;
        size_t vlen;
        char *v = form_value(body, &pairs[k], &vlen);
        bool yes = v && strcmp(v, "One-Click") == 0;
        free(v);
        if (yes)
            return true;
    }
    return false;
}

void public_dispatch(struct http_request *req, void *arg)
{
    struct loop *l = arg;
    const char *path = http_path(req), *method = http_method(req);
    size_t len;
    const char *body = http_body(req, &len);

    /* The token is a secret: the access log and metrics name the route. */
    bool ours = strncmp(path, "/u/", 3) == 0 && path[3] && !strchr(path + 3, '/');
    http_note_route(req, ours ? ROUTE : "(other)");
    if (http_framing_error(req)) {
        message_page(l, req, 400, "Bad request", "This request could not be read.");
        return;
    }
    if (!ours) {
        message_page(l, req, 404, "Not found", "There is nothing here.");
        return;
    }
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (!get && strcmp(method, "POST") != 0) {
        static const char *const allow[] = { "Allow", "GET, HEAD, POST", NULL };
        static const char text[] = "<!DOCTYPE html><title>Method not allowed</title>"
                                   "<p>Method not allowed.</p>\n";
        reply_text(l, req, 405, "text/html; charset=utf-8", text, sizeof text - 1, allow);
        return;
    }
    if (http_body_too_large(req)) {
        message_page(l, req, 413, "Too large", "This form is larger than any of ours.");
        return;
    }
    struct token t;
    const char *s = path + 3;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    enum token_status ts = token_read(l->pseudonym, s, strlen(s), now.tv_sec, &t);
    if (ts != TOKEN_OK) {
        /* A token is a bearer secret: only a short hash of it is logged. */
        char fp[17];
        token_fingerprint(s, strlen(s), fp);
        log_debug("public link refused", "token=%s why=%s", fp,
                  ts == TOKEN_EXPIRED ? "expired" : "invalid");
    }
    switch (ts) {
    case TOKEN_OK:
        break;
    case TOKEN_EXPIRED:
        message_page(l, req, 410, "This link has expired",
                     "Please use the link in a more recent message from us.");
        return;
    case TOKEN_INVALID:
        message_page(l, req, 404, "This link is not valid",
                     "It may have been cut short: please copy the whole link from the message.");
        return;
    }
    http_note_user(req, t.user);
    struct public_call *c = calloc(1, sizeof *c);
    if (!c) {
        message_page(l, req, 503, "Please try again", "Please try again in a minute.");
        return;
    }
    *c = (struct public_call){ .loop = l, .req = req, .cfg = config_retain(l->cfg), .tok = t,
                               .action = get ? SHOW : SAVE };
    if (!get && one_click(req, body, len)) {
        c->action = ONE_CLICK;
        c->changes = calloc(1, sizeof *c->changes);
        if (!c->changes) {
            unavailable(c);
            return;
        }
        add_change(c, t.channel[0] ? t.channel : "*", t.category[0] ? t.category : "*", false);
        record(c);
        return;
    }
    if (!get && !(c->body = malloc(len + 1))) {
        unavailable(c);
        return;
    }
    if (c->body) {
        memcpy(c->body, body, len);
        c->body[len] = '\0';
        c->body_len = len;
    }
    read_prefs(c);
}
