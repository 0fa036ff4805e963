/* align_fixture.h - the small hand-made tokenizers shared by test_align.c and test_project.c,
 * and their parser (include after ctest.h and fusechat.h). */
#ifndef FC_TEST_ALIGN_FIXTURE_H
#define FC_TEST_ALIGN_FIXTURE_H

#include <string.h>

/* SentencePiece-style BPE with byte fallback (one byte piece, id 4: BYTE_PIECE, e.g.
 * "<0xC3>"), a dummy prefix and the Llama-2/Mistral decoder chain: ids 0-2 <unk> <s> </s>,
 * 3 <0x0A>, 5 ▁, 6 a, 7 b, 8 ▁a, 9 ab, 10 ▁ab */
#define METASPACE_BPE(BYTE_PIECE)                                                               \
    "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0,"          \
    " \"<s>\": 1, \"</s>\": 2, \"<0x0A>\": 3, \"" BYTE_PIECE "\": 4, \"\xe2\x96\x81\": 5,"       \
    " \"a\": 6, \"b\": 7, \"\xe2\x96\x81" "a\": 8, \"ab\": 9, \"\xe2\x96\x81" "ab\": 10},"        \
    " \"merges\": [\"\xe2\x96\x81 a\", \"a b\", \"\xe2\x96\x81" "a b\"]},"                        \
    " \"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"                \
    " {\"id\": 1, \"content\": \"<s>\", \"special\": true},"                                      \
    " {\"id\": 2, \"content\": \"</s>\", \"special\": true}],"                                    \
    " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\xe2\x96\x81\","           \
    " \"prepend_scheme\": \"first\", \"split\": false},"                                          \
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\":" \
    " {\"String\": \"\xe2\x96\x81\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"},"        \
    " {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}}"

/* its tokenizer_config.json: bos, eos (in the dict form), unk */
static const char *METASPACE_CONFIG = "{\"bos_token\": \"<s>\", \"eos_token\": {\"content\":"
                                      " \"</s>\"}, \"unk_token\": \"<unk>\"}";

/* a vocabulary from tokenizer.json text and an optional tokenizer_config.json text */
static fc_vocab_t *parse(const char *json, const char *config) {
    fc_vocab_t *v = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = fc_vocab_parse(json, strlen(json), "t.json", config,
                                  config ? strlen(config) : 0, "c.json", NULL, 0, NULL, &v, &err);
    CHECK_MSG(st == FC_OK, "%s", err.msg);
    return v;
}

#endif
