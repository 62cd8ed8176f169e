/*
 * notify: telling systemd what capgate is doing (sd_notify, Type=notify).
 * Harmless without systemd: every call is a no-op when NOTIFY_SOCKET is
 * unset.  The watchdog ping is sent by a timer on the event loop itself, so
 * a loop that hangs stops pinging and systemd restarts the service.
 */
#ifndef CAPGATE_NOTIFY_H
#define CAPGATE_NOTIFY_H

struct event_base;

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Starts WATCHDOG=1 pings at half of WATCHDOG_USEC when systemd asked for
 * them; returns the interval in ms (0: no watchdog). */
unsigned notify_watchdog_start(struct event_base *base);
void notify_watchdog_stop(void);

#endif
