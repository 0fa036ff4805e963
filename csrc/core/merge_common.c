/* merge_common.c - machinery shared by the merge kernels (see merge_internal.h). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "fp_convert.h"
#include "merge_internal.h"

/* n 16-bit floats from src (unaligned) to float32 through conv; inlined per format */
static inline void load_half(const void *src, int64_t begin, int64_t n, float *dst,
                             float (*conv)(uint16_t)) {
    const uint16_t *s = (const uint16_t *)src + begin;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + i, 2);
        dst[i] = conv(h);
    }
}

void mg_load(const void *src, fc_dtype dt, int64_t begin, int64_t n, float *dst) {
    switch (dt) {
    case FC_F32: memcpy(dst, (const float *)src + begin, (size_t)n * sizeof(float)); break;
    case FC_BF16: load_half(src, begin, n, dst, fcx_bf16_to_f32); break;
    case FC_F16: load_half(src, begin, n, dst, fcx_f16_to_f32); break;
    case FC_F64: {
        const double *s = (const double *)src + begin;
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + i, 8);
            dst[i] = (float)d;
        }
        break;
    }
    default: memset(dst, 0, (size_t)n * sizeof(float)); break; /* refused by the caller */
    }
}

/* n float32 values rounded to a 16-bit float format through conv, stored unaligned */
static inline void store_half(void *dst, int64_t begin, int64_t n, const float *src,
                              uint16_t (*conv)(float)) {
    uint16_t *d = (uint16_t *)dst + begin;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = conv(src[i]);
        memcpy(d + i, &h, 2);
    }
}

void mg_store(void *dst, fc_dtype dt, int64_t begin, int64_t n, const float *src) {
    switch (dt) {
    case FC_F32: memcpy((float *)dst + begin, src, (size_t)n * sizeof(float)); break;
    case FC_BF16: store_half(dst, begin, n, src, fcx_f32_to_bf16); break;
    case FC_F16: store_half(dst, begin, n, src, fcx_f32_to_f16); break;
    case FC_F64: {
        double *d = (double *)dst + begin;
        for (int64_t i = 0; i < n; i++) {
            double v = src[i];
            memcpy(d + i, &v, 8);
        }
        break;
    }
    default: break;
    }
}

void *mg_calloc(const mg_tensor *t, size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fc_error_set(t->err, FC_ERR_NOMEM, "merge: out of memory (%zu x %zu bytes)", count, size);
    return p;
}

typedef struct {
    const mg_tensor *t;
    int64_t total, block, nblocks;
    size_t scratch_floats;
    mg_block_fn fn;
    void *user;
    atomic_int_fast64_t next; /* the next block to take */
    atomic_int failed;
} blocks_ctx;

/* One worker: takes blocks from the shared counter until none are left. Blocks are handed
 * out dynamically (a worker whose core is busy with another process takes fewer), while
 * every block's result depends only on its index. */
static fc_status blocks_worker(void *vctx, int64_t w0, int64_t w1) {
    (void)w0;
    (void)w1;
    blocks_ctx *c = (blocks_ctx *)vctx;
    float *scratch = mg_buffer_take(c->t->ctx, (c->scratch_floats ? c->scratch_floats : 1) * sizeof(float));
    if (!scratch) {
        atomic_store(&c->failed, 1);
        return FC_ERR_NOMEM;
    }
    fc_status st = FC_OK;
    while (st == FC_OK && !atomic_load(&c->failed)) {
        int64_t b = atomic_fetch_add(&c->next, 1);
        if (b >= c->nblocks) break;
        int64_t begin = b * c->block;
        int64_t len = c->total - begin < c->block ? c->total - begin : c->block;
        st = c->fn(c->t, c->user, begin, len, scratch, b);
    }
    if (st != FC_OK) atomic_store(&c->failed, 1);
    mg_buffer_give(c->t->ctx, scratch);
    return st;
}

fc_status mg_for_blocks(const mg_tensor *t, int64_t total, int64_t block, size_t scratch_floats,
                        mg_block_fn fn, void *user) {
    if (total <= 0) return FC_OK;
    blocks_ctx c = {t, total, block, (total + block - 1) / block, scratch_floats, fn, user};
    atomic_init(&c.next, 0);
    atomic_init(&c.failed, 0);
    int workers = t->nthreads > 0 ? t->nthreads : fc_default_threads();
    if (workers > c.nblocks) workers = (int)c.nblocks;
    fc_status st = fc_parallel_for(workers, 1, workers, blocks_worker, &c);
    if (st == FC_ERR_NOMEM && t->err->code == FC_OK)
        fc_error_set(t->err, FC_ERR_NOMEM, "merge: out of memory for working buffers");
    return st;
}

void mg_add_agreeing(int64_t len, const float *restrict d, const float *restrict sign,
                     float scale, float w, float *restrict mix, float *restrict div) {
    uint32_t wb;
    memcpy(&wb, &w, 4);
    for (int64_t k = 0; k < len; k++) { /* float compares would not vectorise */
        uint32_t db, sb;
        memcpy(&db, d + k, 4);
        memcpy(&sb, sign + k, 4);
        uint32_t m = (uint32_t)0 - (uint32_t)((((db ^ sb) >> 31) == 0) & ((db << 1) != 0));
        uint32_t dm = db & m, wm = wb & m;
        float dk, wk;
        memcpy(&dk, &dm, 4);
        memcpy(&wk, &wm, 4);
        mix[k] += scale * dk;
        div[k] += wk;
    }
}

double mg_dot(const float *a, const float *b, int64_t len) {
    double acc[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= len; k += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)a[k + j] * (double)b[k + j];
    double s = 0;
    for (; k < len; k++) s += (double)a[k] * (double)b[k];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

double mg_sum_abs(const float *a, int64_t len) {
    double acc[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= len; k += 8)
        for (int j = 0; j < 8; j++) acc[j] += fabs((double)a[k + j]);
    double s = 0;
    for (; k < len; k++) s += fabs((double)a[k]);
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

/* ---- Gram matrices ---- */

typedef struct {
    mg_layout lay;
    int sub_base, with_base, m;
    double *gram;     /* per vector (ROWS, COLS) or per block (FLAT) */
} gram_ctx;

/* Loads the m vectors' values of elements [e, e + len) into v[i * len + ...]. */
static void gram_load(const mg_tensor *t, const gram_ctx *g, int64_t e, int64_t len, float *v) {
    float *b = v + (size_t)g->m * len; /* spare row for the base */
    if (t->base && (g->sub_base || g->with_base)) mg_load(t->base, t->base_dt, e, len, b);
    for (int i = 0; i < t->n; i++) {
        float *x = v + (size_t)i * len;
        mg_load(t->in[i], t->in_dt[i], e, len, x);
        if (g->sub_base && t->base)
            for (int64_t j = 0; j < len; j++) x[j] -= b[j];
    }
    if (g->with_base && !g->sub_base) memcpy(v + (size_t)t->n * len, b, (size_t)len * sizeof(float));
}

static void gram_accumulate(int m, const float *v, int64_t len, double *G) {
    for (int i = 0; i < m; i++)
        for (int j = i; j < m; j++) {
            G[i * m + j] += mg_dot(v + (size_t)i * len, v + (size_t)j * len, len);
        }
}

static fc_status gram_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                            float *v, int64_t index) {
    gram_ctx *g = (gram_ctx *)user;
    if (g->lay == MG_FLAT) {
        gram_load(t, g, begin, len, v);
        gram_accumulate(g->m, v, len, g->gram + (size_t)index * g->m * g->m);
        return FC_OK;
    }
    /* ROWS: the block is whole rows; one Gram matrix per row */
    for (int64_t r = begin / t->cols; r < (begin + len) / t->cols; r++) {
        double *G = g->gram + (size_t)r * g->m * g->m;
        for (int64_t e = r * t->cols; e < (r + 1) * t->cols; e += MG_BLOCK) {
            int64_t l = (r + 1) * t->cols - e < MG_BLOCK ? (r + 1) * t->cols - e : MG_BLOCK;
            gram_load(t, g, e, l, v);
            gram_accumulate(g->m, v, l, G);
        }
    }
    return FC_OK;
}

/* COLS: a block of columns [c0, c1), rows visited in order, one Gram matrix per column. */
static fc_status gram_cols(const mg_tensor *t, void *user, int64_t c0, int64_t len, float *v,
                           int64_t index) {
    (void)index;
    gram_ctx *g = (gram_ctx *)user;
    for (int64_t r = 0; r < t->rows; r++) {
        gram_load(t, g, r * t->cols + c0, len, v);
        for (int64_t c = 0; c < len; c++) {
            double *G = g->gram + (size_t)(c0 + c) * g->m * g->m;
            for (int i = 0; i < g->m; i++)
                for (int j = i; j < g->m; j++)
                    G[i * g->m + j] += (double)v[(size_t)i * len + c] * v[(size_t)j * len + c];
        }
    }
    return FC_OK;
}

int64_t mg_vector_count(const mg_tensor *t, mg_layout lay) {
    return lay == MG_FLAT ? 1 : lay == MG_ROWS ? t->rows : t->cols;
}

static int64_t rows_per_block(const mg_tensor *t) {
    int64_t r = MG_BLOCK / (t->cols ? t->cols : 1);
    return r < 1 ? 1 : r;
}

fc_status mg_gram(const mg_tensor *t, mg_layout lay, int sub_base, int with_base, double *gram) {
    gram_ctx g = {lay, sub_base, with_base && t->base && !sub_base, 0, NULL};
    g.m = t->n + (g.with_base ? 1 : 0);
    size_t mm = (size_t)g.m * g.m, scratch = (size_t)(g.m + 1) * MG_BLOCK;
    int64_t nvec = mg_vector_count(t, lay);
    memset(gram, 0, (size_t)nvec * mm * sizeof(double));
    fc_status st;
    if (lay == MG_FLAT) {
        int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
        g.gram = mg_calloc(t, (size_t)nblocks * mm, sizeof(double));
        if (!g.gram) return FC_ERR_NOMEM;
        st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, gram_block, &g);
        for (int64_t b = 0; b < nblocks; b++) /* fixed order: thread-count independent */
            for (size_t k = 0; k < mm; k++) gram[k] += g.gram[(size_t)b * mm + k];
        free(g.gram);
    } else if (lay == MG_ROWS) {
        g.gram = gram;
        st = mg_for_blocks(t, t->numel, rows_per_block(t) * t->cols, scratch, gram_block, &g);
    } else {
        g.gram = gram;
        st = mg_for_blocks(t, t->cols, 64, (size_t)(g.m + 1) * 64, gram_cols, &g);
    }
    for (int64_t v = 0; v < nvec; v++) /* mirror the upper triangle */
        for (int i = 0; i < g.m; i++)
            for (int j = 0; j < i; j++)
                gram[(size_t)v * mm + i * g.m + j] = gram[(size_t)v * mm + j * g.m + i];
    return st;
}

/* ---- linear combination output ---- */

typedef struct {
    mg_layout lay;
    const float *coef;
} combine_ctx;

static fc_status combine_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                               float *s, int64_t index) {
    (void)index;
    combine_ctx *c = (combine_ctx *)user;
    float *acc = s, *x = s + len;
    int stride = t->n + 1;
    memset(acc, 0, (size_t)len * sizeof(float));
    for (int i = 0; i <= t->n; i++) {
        const void *src = i < t->n ? t->in[i] : t->base;
        if (!src) continue;
        mg_load(src, i < t->n ? t->in_dt[i] : t->base_dt, begin, len, x);
        for (int64_t k = 0; k < len; k++) {
            int64_t e = begin + k;
            int64_t v = c->lay == MG_FLAT ? 0 : c->lay == MG_ROWS ? e / t->cols : e % t->cols;
            acc[k] += c->coef[(size_t)v * stride + i] * x[k];
        }
    }
    mg_store(t->out, t->out_dt, begin, len, acc);
    return FC_OK;
}

fc_status mg_combine(const mg_tensor *t, mg_layout lay, const float *coef) {
    combine_ctx c = {lay, coef};
    return mg_for_blocks(t, t->numel, MG_BLOCK, 2 * MG_BLOCK, combine_block, &c);
}
