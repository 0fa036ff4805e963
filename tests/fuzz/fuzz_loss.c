/* fuzz_loss.c - libFuzzer target: the loss, top-k and fusion kernels on arbitrary labels,
 * sparse ids/values, CSR offsets and options must return a status, never crash or read out
 * of bounds (with validation on or off). Built with ASan + UBSan by `make fuzz`. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fusechat.h"

#include "fuzz_reader.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    int64_t n = take8(&r) % 9, v = 1 + take8(&r) % 40, k = take8(&r) % 7;
    uint8_t flags = take8(&r);
    float logits[8 * 40];
    int64_t labels[8];
    int32_t ids[8 * 6];
    float vals[8 * 6];
    for (int i = 0; i < n * v; i++) logits[i] = (float)(int8_t)take8(&r) / 8.0f;
    for (int i = 0; i < n; i++) labels[i] = (flags & 1) ? (int8_t)take8(&r) : take8(&r) % v;
    for (int i = 0; i < n * k; i++) {
        ids[i] = (flags & 2) ? take32(&r) : (int32_t)(take8(&r) % (v + 1)) - 1;
        vals[i] = (flags & 4) && take8(&r) == 0 ? NAN : (float)(int8_t)take8(&r);
    }
    fc_error err;
    fc_fusion_loss_opts o;
    fc_fusion_loss_opts_init(&o);
    o.validate = (flags & 8) != 0;
    o.reduction = (fc_reduction)((flags >> 4) % 4);
    o.nthreads = 1 + (flags >> 6);
    fc_sparse_target t = {ids, vals, k};
    float grad[8 * 40];
    double loss;
    fc_fusion_loss(logits, FC_F32, n, v, labels, &t, &t, &o, &loss, NULL, grad, NULL, &err);

    int32_t tid[8 * 40];
    float tl[8 * 40], ce[8], sce[4];
    uint8_t has[4];
    int64_t offs[5] = {0, take8(&r) % 9, take8(&r) % 9, take8(&r) % 9, n};
    fc_topk_ce(logits, FC_F32, n, v, 1 + take8(&r) % 45, labels, -100, tid, tl, ce, offs, 4, sce,
               has, 1, &err);

    /* two models of n positions as CSR over the padded rows */
    int64_t ip[2][9];
    int32_t fid[2][48];
    float fval[2][48];
    for (int m = 0; m < 2; m++) {
        ip[m][0] = 0;
        for (int t2 = 0; t2 < n; t2++) ip[m][t2 + 1] = ip[m][t2] + (int64_t)(take8(&r) % 7) - 1;
        for (int j = 0; j < 48; j++) {
            fid[m][j] = (int32_t)take8(&r) - 8;
            fval[m][j] = (float)(int8_t)take8(&r);
        }
        if (ip[m][n] > 48) return 0; /* a CSR larger than its arrays is the caller's bug */
    }
    const int64_t *ips[2] = {ip[0], ip[1]};
    const int32_t *fids[2] = {fid[0], fid[1]};
    const float *fvals[2] = {fval[0], fval[1]};
    fc_ragged_dists d = {2, n, ips, fids, fvals};
    float c0[8], c1[8];
    for (int i = 0; i < 8; i++) {
        c0[i] = (float)(int8_t)take8(&r);
        c1[i] = take8(&r) == 7 ? NAN : (float)(int8_t)take8(&r);
    }
    const float *ces[2] = {c0, c1};
    int64_t so[3] = {0, take8(&r) % 9, n};
    int level = take8(&r) & 1;
    int32_t choice[8];
    if (fc_fuse_min_ce(&d, so, 2, ces, level, 1, choice, &err) == FC_OK) {
        int64_t oi[9];
        int32_t oid[96];
        float ov[96];
        fc_fuse_gather(&d, choice, oi, oid, ov, &err);
    }
    int64_t oi[9];
    int32_t oid[96];
    float ol[96];
    fc_fuse_avg_ce(&d, so, 2, ces, level, 1.0, oi, oid, ol, &err);
    return 0;
}
