"""/v1/users/show names the campaigns of a person's sends (issue 16): the
send records keep a 24-bit id only, and a bounded dictionary in Redis
(cg:{n}:names) that every gateway writes off the request path gives the
names back."""

import time

import harness as h


def show(g, user):
    r = g.post("/v1/users/show", {"user": user})
    h.expect_status(r, 200)
    return r.body


def campaigns_in(body):
    return ([s["campaign"] for s in body["sends"]],
            [c.get("campaign") for c in body["caps"] if "campaign" in c])


def test_show_names_the_campaigns_every_gateway_met():
    redis = h.start_redis()
    g1 = h.Gateway(redis=redis)
    g2 = h.Gateway(redis=redis, key_file=g1.key_file)
    u = h.uid("names")
    h.expect_status(g1.decide(u, "email", campaign="spring-sale"), 200)
    h.expect_status(g1.decide(u, "push", campaign="Winter 2026 / é"), 200)
    h.expect_status(g1.decide(u, "push"), 200)
    # Written within a second or so, by g1, off the request path: g2 reads them.
    h.wait_until(lambda: {"spring-sale", "Winter 2026 / é"} <= set(campaigns_in(show(g2, u))[0]),
                 5, interval=0.2, what="the names written")
    sends, caps = campaigns_in(show(g2, u))
    h.check(sorted(x for x in sends if x) == ["Winter 2026 / é", "spring-sale"] and None in sends,
            "each send names its campaign (none: null): %r" % sends)
    h.check("spring-sale" in caps, "a per-campaign cap's standing names it: %r" % caps)
    keys = [k for k in redis.keys() if b":names" in k]
    h.check(keys == [b"cg:{n}:names"], "one dictionary, on its own slot: %r" % keys)
    h.check(u.encode() not in repr(redis.dump()).encode(), "no raw id in Redis")


def test_the_dictionary_is_bounded():
    redis = h.start_redis()
    g = h.Gateway(redis=redis)
    redis.cmd("EVAL", "for i = 1, 100000 do redis.call('HSET', KEYS[1], 'x' .. i, 'n') end",
              "1", "cg:{n}:names", timeout=60)
    u = h.uid("names")
    h.expect_status(g.decide(u, "email", campaign="one-too-many"), 200)
    time.sleep(1.5)                      # a flush has run
    h.check(int(redis.cmd("HLEN", "cg:{n}:names")) == 100000, "still at most 100000 names")
    sends, _ = campaigns_in(show(g, u))
    h.check(len(sends) == 1 and sends[0].startswith("#") and len(sends[0]) == 7,
            "an unknown campaign keeps its id: %r" % sends)
