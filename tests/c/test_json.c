/* test_json.c - the checked JSON intake (json_util.h). */
#include "ctest.h"
#include "fusechat.h"
#include "../../csrc/core/json_util.h"

static int parse(const char *s, const char *want_rule) {
    cJSON *root = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = fc_json_parse(s, strlen(s), 8, "x.json", FC_ERR_FORMAT, "hdr", &root, &err);
    cJSON_Delete(root);
    if (!want_rule) return st == FC_OK;
    if (st != FC_ERR_FORMAT || strcmp(err.rule, want_rule) != 0) {
        fprintf(stderr, "  %s -> %d %s\n", s, st, err.rule);
        return 0;
    }
    return strstr(err.msg, "x.json") != NULL;
}

int main(void) {
    size_t at;
    CHECK(fc_utf8_valid("abc\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 13, &at));
    CHECK(!fc_utf8_valid("ab\xc0\xaf", 4, &at) && at == 2);          /* overlong */
    CHECK(!fc_utf8_valid("\xed\xa0\x80", 3, &at) && at == 0);        /* surrogate */
    CHECK(!fc_utf8_valid("a\xe2\x82", 3, &at) && at == 1);           /* truncated */
    CHECK(!fc_utf8_valid("\xf4\x90\x80\x80", 4, &at));                 /* > U+10FFFF */
    CHECK(!fc_utf8_valid("\xff", 1, &at));

    CHECK(parse(" {\"a\": [1, 2]}  \n", NULL));
    CHECK(parse("{\"a\": 1} x", "hdr_not_json"));
    CHECK(parse("{\"a\": 1", "hdr_not_json"));
    CHECK(parse("\xef\xbb\xbf{}", "hdr_not_utf8"));
    CHECK(parse("{\"a\": \"\xff\"}", "hdr_not_utf8"));
    CHECK(parse("[[[[[[[[[1]]]]]]]]]", "hdr_too_deep"));
    CHECK(parse("{\"a\": \"[[[[[[[[[[[\"}", NULL)); /* brackets inside strings do not count */
    /* an embedded NUL ends cJSON's view early: refused, not silently truncated */
    {
        const char s[] = "{\"a\": 1}\0{\"b\": 2}";
        cJSON *root = NULL;
        fc_error err;
        CHECK(fc_json_parse(s, sizeof s - 1, 8, "x", FC_ERR_FORMAT, "h", &root, &err) != FC_OK);
    }

    cJSON *o = cJSON_Parse("{\"k\": 1, \"K\": 2, \"z\": 3, \"k\": 4}");
    CHECK(fc_json_duplicate_key(o) && strcmp(fc_json_duplicate_key(o), "k") == 0);
    CHECK(cJSON_GetNumberValue(fc_json_get(o, "K")) == 2);
    cJSON_Delete(o);
    o = cJSON_Parse("{\"a\": 1, \"b\": 2}");
    CHECK(fc_json_duplicate_key(o) == NULL);
    cJSON_Delete(o);

    uint64_t v;
    o = cJSON_Parse("[0, 9007199254740992, 1.5, -1, 1e300, \"3\"]");
    CHECK(fc_json_uint(cJSON_GetArrayItem(o, 0), &v) && v == 0);
    CHECK(fc_json_uint(cJSON_GetArrayItem(o, 1), &v) && v == 9007199254740992ull);
    CHECK(!fc_json_uint(cJSON_GetArrayItem(o, 2), &v));
    CHECK(!fc_json_uint(cJSON_GetArrayItem(o, 3), &v));
    CHECK(!fc_json_uint(cJSON_GetArrayItem(o, 4), &v));
    CHECK(!fc_json_uint(cJSON_GetArrayItem(o, 5), &v));
    cJSON_Delete(o);

    const char *good = "{\"t\": {\"shape\": [0, 10, 9007199254740992], \"n\": \"1.5e3\"}}";
    CHECK(fc_json_scan_numbers(good, strlen(good), &at));
    const char *bads[] = {"[1.0]", "[1e3]", "[-1]", "[01]", "[9007199254740993]",
                          "[12345678901234567]"};
    for (size_t i = 0; i < sizeof bads / sizeof *bads; i++)
        CHECK_MSG(!fc_json_scan_numbers(bads[i], strlen(bads[i]), &at) && at == 1, "%s", bads[i]);
    return ctest_report("test_json");
}
