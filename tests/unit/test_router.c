/* Unit tests: the endpoint table (src/router.c, included for its static
 * lookups). */
#include "../../src/router.c"

#include "../fuzz/fuzz_common.h"
#include "unit.h"

TEST(endpoints_by_method_and_path)
{
    const struct route *known;
    const struct route *r = find_endpoint("POST", "/v1/decide", &known);
    CHECK(r && r->handler == api_decide && r->scope == SCOPE_SEND);
    CHECK(known == r);
    CHECK(find_endpoint("GET", "/v1/decide", &known) == NULL);
    CHECK(known && strcmp(known->method, "POST") == 0);        /* a 405, not a 404 */
    r = find_endpoint("HEAD", "/metrics", &known);
    CHECK(r && r->handler == api_metrics);                     /* HEAD is GET's */
    CHECK(find_endpoint("HEAD", "/v1/send", &known) == NULL);  /* but not POST's */
    CHECK(find_endpoint("GET", "/v1/decide/", &known) == NULL && known == NULL);
    CHECK(find_endpoint("GET", "/healthz", &known)->scope == 0);
}

TEST(every_endpoint_has_one_path_and_a_scope_that_exists)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        CHECK(routes[i].path[0] == '/');
        CHECK((routes[i].scope & ~(SCOPE_SEND | SCOPE_CONSENT | SCOPE_ADMIN)) == 0);
        for (size_t j = i + 1; j < sizeof routes / sizeof routes[0]; j++)
            CHECK(strcmp(routes[i].path, routes[j].path) != 0);
    }
}

TEST(transparent_routes_only_where_no_endpoint_is)
{
    struct config cfg = fz_config();
    struct cfg_route rs[] = { { .path = "/v3/mail/send", .channel = "email" },
                              { .path = "/v1/decide", .channel = "email" } };
    cfg.routes = rs;
    cfg.n_routes = 2;
    CHECK(find_proxied(&cfg, "/v3/mail/send") == &rs[0]);
    CHECK(find_proxied(&cfg, "/v3/mail/send/") == NULL);
    /* The dispatcher asks only when no endpoint has the path (config
     * refuses such a route; the order is the guard if one slips through). */
    const struct route *known;
    CHECK(find_endpoint("POST", "/v1/decide", &known) != NULL);
}

int main(void)
{
    RUN(endpoints_by_method_and_path);
    RUN(every_endpoint_has_one_path_and_a_scope_that_exists);
    RUN(transparent_routes_only_where_no_endpoint_is);
    return unit_done("test_router");
}
