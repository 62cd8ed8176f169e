/* api_body: the prologue every JSON endpoint shares.  See api.h. */
#include "capgate/api.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/validate.h"

json_t *api_body(struct worker *w, struct http_request *req, const char *const *fields)
{
    struct field_error e;
    size_t len;
    const char *body = http_body(req, &len);
    json_t *obj = validate_object(body, len, &e);

    if (obj && validate_known_fields(obj, fields, &e) != 0) {
        /* e.field points into OBJ: answer before letting it go. */
        reply_error(w, req, e.code, e.field, "%s", e.message);
        json_decref(obj);
        return NULL;
    }
    if (!obj)
        reply_error(w, req, e.code, e.field, "%s", e.message);
    return obj;
}
