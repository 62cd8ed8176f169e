"""Quiet hours: request tz, default_tz, midnight wrap, DST (synthetic TZif)."""

import datetime
import math
import os
import shutil
import time
import zoneinfo

import harness as h

UTC = datetime.timezone.utc


def hhmm(dt):
    return "%02d:%02d" % (dt.hour, dt.minute)


def floor_minute(dt):
    return dt.replace(second=0, microsecond=0)


def window_around_now(offset_s, before_s=3600, after_s=3660):
    """start/end wall times (zone with fixed OFFSET_S) such that now is inside:
    start = local now - before (floored to the minute), end = local now + after
    (floored).  Returns (start "HH:MM", end "HH:MM", end_minutes)."""
    local = datetime.datetime.now(UTC) + datetime.timedelta(seconds=offset_s)
    start = floor_minute(local - datetime.timedelta(seconds=before_s))
    end = floor_minute(local + datetime.timedelta(seconds=after_s))
    return hhmm(start), hhmm(end), end.hour * 60 + end.minute


def seconds_until_wall(minutes, offset_s, now=None):
    """Seconds from now until the next local wall time MINUTES (after
    midnight) in a zone with fixed OFFSET_S."""
    now = time.time() if now is None else now
    local_secs = (now + offset_s) % 86400
    d = (minutes * 60 - local_secs) % 86400
    return d if d > 0 else 86400


def expect_quiet(r, expected_s, tol=2):
    return h.expect_decision(r, "defer", "quiet_hours", rule=False,
                             retry_after=math.ceil(expected_s), tolerance=tol)


def qh_gateway(start, end, default_tz="UTC", channels=("push", "sms"), zoneinfo_dir=None, **extra):
    q = {"start": start, "end": end, "default_tz": default_tz, "channels": list(channels)}
    if zoneinfo_dir:
        q["zoneinfo_dir"] = zoneinfo_dir
    return h.Gateway(overrides=dict({"quiet_hours": q}, **extra))


def test_quiet_hours_default_tz_utc():
    start, end, end_min = window_around_now(0)
    g = qh_gateway(start, end, "UTC")
    u = h.uid("qh")
    expect_quiet(g.decide(u, "push"), seconds_until_wall(end_min, 0))
    expect_quiet(g.decide(u, "push", tz="UTC"), seconds_until_wall(end_min, 0))
    # dry runs are judged the same way
    expect_quiet(g.decide(u, "push", dry_run=True), seconds_until_wall(end_min, 0))
    # +05:00 in the request: local time is 5 h later, outside the quiet period
    h.expect_decision(g.decide(u, "push", tz="Etc/GMT-5"), "allow", "ok")
    # email is not a quiet-hours channel
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    # transactional is exempt
    h.expect_decision(g.decide(u, "push", category="transactional"), "allow", "ok")


def test_quiet_hours_after_consent_checks():
    start, end, end_min = window_around_now(0)
    g = qh_gateway(start, end, "UTC")
    u = h.uid("qh")
    # sms without opt-in: consent is checked before quiet hours
    h.expect_decision(g.decide(u, "sms"), "deny", "consent_required")
    h.expect_status(g.consent(u, "sms", "*", "opt_in"), 200)
    expect_quiet(g.decide(u, "sms"), seconds_until_wall(end_min, 0))
    v = h.uid("qh")
    h.expect_status(g.consent(v, "push", "*", "opt_out"), 200)
    h.expect_decision(g.decide(v, "push"), "deny", "opted_out")


def test_quiet_hours_before_caps_and_not_counted():
    start, end, end_min = window_around_now(0)
    g = qh_gateway(start, end, "UTC",
                   caps=[{"name": "one", "limit": 1, "window": "1d", "on_exceed": "deny"}])
    u = h.uid("qh")
    for _ in range(3):
        expect_quiet(g.decide(u, "push"), seconds_until_wall(end_min, 0))
    # the deferred pushes were not counted: the one allowed send is still free
    h.expect_decision(g.decide(u, "push", tz="Etc/GMT-5"), "allow", "ok")
    # quiet hours come before caps even when a cap would deny
    expect_quiet(g.decide(u, "push"), seconds_until_wall(end_min, 0))
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="one")


def test_quiet_hours_in_request_tz():
    # quiet period around now in +05:00; default_tz UTC is outside it
    start, end, end_min = window_around_now(5 * 3600)
    g = qh_gateway(start, end, "UTC")
    u = h.uid("qh")
    expect_quiet(g.decide(u, "push", tz="Etc/GMT-5"), seconds_until_wall(end_min, 5 * 3600))
    h.expect_decision(g.decide(u, "push"), "allow", "ok")
    h.expect_decision(g.decide(u, "push", tz="UTC"), "allow", "ok")


def test_quiet_hours_in_default_tz():
    start, end, end_min = window_around_now(5 * 3600)
    g = qh_gateway(start, end, "Etc/GMT-5")
    u = h.uid("qh")
    expect_quiet(g.decide(u, "push"), seconds_until_wall(end_min, 5 * 3600))
    expect_quiet(g.decide(u, "push", tz="Etc/GMT-5"), seconds_until_wall(end_min, 5 * 3600))
    # the request's tz overrides default_tz
    h.expect_decision(g.decide(u, "push", tz="UTC"), "allow", "ok")


def test_unknown_tz_is_400():
    start, end, _ = window_around_now(0)
    g = qh_gateway(start, end, "UTC")
    u = h.uid("qh")
    n = g.redis.dbsize()
    for tz in ("Mars/Olympus_Mons", "Etc/GMT-15", "../UTC"):
        r = g.decide(u, "push", tz=tz)
        h.expect_error(r, 400, "invalid_field", field="tz", forbidden=[u])
    h.check(g.redis.dbsize() == n, "a request with a bad tz changed Redis")


def _avoid_hour_boundary():
    t = time.time() % 3600
    if t > 3600 - 5:
        time.sleep(3600 - t + 0.5)


def _zone_with_local_hour(hour):
    """(zone name, offset seconds) of an Etc/GMT zone whose local hour is HOUR now."""
    utc_hour = datetime.datetime.now(UTC).hour
    r = (hour - utc_hour) % 24
    off = r if r <= 14 else r - 24
    return h.etc_zone(off), off * 3600


def test_quiet_period_across_midnight():
    g = qh_gateway("22:00", "02:00", "UTC")
    u = h.uid("qh")
    _avoid_hour_boundary()
    # local 23:xx: quiet until 02:00 tomorrow
    z, off = _zone_with_local_hour(23)
    expect_quiet(g.decide(u, "push", tz=z), seconds_until_wall(2 * 60, off))
    # local 00:xx: quiet until 02:00 today
    z, off = _zone_with_local_hour(0)
    expect_quiet(g.decide(u, "push", tz=z), seconds_until_wall(2 * 60, off))
    # local 22:xx
    z, off = _zone_with_local_hour(22)
    expect_quiet(g.decide(u, "push", tz=z), seconds_until_wall(2 * 60, off))
    # local 12:xx and 02:xx (end is exclusive): not quiet
    for hour in (12, 2, 21):
        z, off = _zone_with_local_hour(hour)
        h.expect_decision(g.decide(u, "push", tz=z), "allow", "ok")


def test_dst_transition_inside_quiet_period():
    """Zone Test/Dst: +01:00 until T (30 min from now), +02:00 after.  The
    quiet period ends at a wall time after T, so the expected retry_after
    uses +02:00 for its end (a gateway that used the offset of 'now' would
    be an hour off)."""
    zdir = h.mkdtemp("capgate-zoneinfo-")
    now = time.time()
    T = (int(now) // 60 + 1) * 60 + 1800          # minute-aligned, ~30 min ahead
    data = h.tzif_bytes([(T, 1)], [(3600, 0, "+01"), (7200, 0, "+02")], "<+02>-2")
    path = h.write_zone(zdir, "Test/Dst", data)
    shutil.copyfile("/usr/share/zoneinfo/UTC", os.path.join(zdir, "UTC"))
    # our own reading of the file agrees with what we meant
    z = zoneinfo.ZoneInfo.from_file(open(path, "rb"), key="Test/Dst")
    off_before = datetime.datetime.fromtimestamp(T - 1, UTC).astimezone(z).utcoffset()
    off_after = datetime.datetime.fromtimestamp(T, UTC).astimezone(z).utcoffset()
    assert off_before == datetime.timedelta(hours=1) and off_after == datetime.timedelta(hours=2), \
        (off_before, off_after)

    local_now_pre = datetime.datetime.fromtimestamp(now + 3600, UTC)   # +01:00 wall clock
    start = floor_minute(local_now_pre - datetime.timedelta(minutes=30))
    end_utc = T + 1800                                                # 1 h from now
    end_wall = datetime.datetime.fromtimestamp(end_utc + 7200, UTC)  # +02:00 wall clock
    g = qh_gateway(hhmm(start), hhmm(end_wall), "Test/Dst", zoneinfo_dir=zdir)
    u = h.uid("qh")
    r = g.decide(u, "push")
    expected = end_utc - time.time()
    b = h.expect_decision(r, "defer", "quiet_hours", rule=False)
    h.check(abs(b["retry_after"] - math.ceil(expected)) <= 2,
            "retry_after %s, expected %d (end %s local after the switch to +02:00 at %s UTC; "
            "%d would mean the +01:00 offset was used for the end)"
            % (b["retry_after"], math.ceil(expected), hhmm(end_wall),
               datetime.datetime.fromtimestamp(T, UTC).strftime("%H:%M"), math.ceil(expected) + 3600), r)
    r = g.decide(u, "push", tz="Test/Dst")
    h.expect_decision(r, "defer", "quiet_hours", retry_after=math.ceil(end_utc - time.time()), tolerance=2)
    # UTC (copied into the custom zoneinfo dir): now is before the quiet period there
    h.expect_decision(g.decide(u, "push", tz="UTC"), "allow", "ok")
