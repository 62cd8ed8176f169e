/*
 * notify: telling systemd what capgate is doing (sd_notify, Type=notify).
 * Harmless without systemd: every call is a no-op when NOTIFY_SOCKET is
 * unset.  Safe from any thread.
 */
#ifndef CAPGATE_NOTIFY_H
#define CAPGATE_NOTIFY_H

#include <stdint.h>

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* WatchdogSec as systemd set it (WATCHDOG_USEC), 0 when off. */
uint64_t notify_watchdog_usec(void);
void notify_watchdog_ping(void);

#endif
