/* notify: sd_notify from the event loop.  See notify.h. */
#include "capgate/notify.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "capgate/log.h"

static struct event *watchdog_timer;

void notify_ready(void)
{
    sd_notify(0, "READY=1");
}

void notify_reloading(void)
{
    sd_notify(0, "RELOADING=1");
}

void notify_stopping(void)
{
    sd_notify(0, "STOPPING=1");
}

void notify_status(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sd_notifyf(0, "STATUS=%s", line);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what; (void)arg;
    sd_notify(0, "WATCHDOG=1");
}

unsigned notify_watchdog_start(struct event_base *base)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return 0;
    uint64_t half = usec / 2;
    struct timeval tv = { (time_t)(half / 1000000), (suseconds_t)(half % 1000000) };
    watchdog_timer = event_new(base, -1, EV_PERSIST, on_watchdog, NULL);
    if (!watchdog_timer || event_add(watchdog_timer, &tv) != 0) {
        log_warn("cannot start the watchdog timer", NULL);
        return 0;
    }
    sd_notify(0, "WATCHDOG=1");
    return (unsigned)(half / 1000);
}

void notify_watchdog_stop(void)
{
    if (watchdog_timer)
        event_free(watchdog_timer);
    watchdog_timer = NULL;
}
