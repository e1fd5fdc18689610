/* One greedy decode step of a pre-norm decoder-only transformer (Llama, Qwen2/3, Gemma 3 blocks) for one token,
 * in fp32, with every projection run by the GEMV kernels of gemv.c and dot8.c: the whole step is one call from
 * Python, so none of the model's hundreds of small tensor operations passes through the interpreter.
 *
 * What varies between those models is data, not code: which norms a block has (NULL: none), their weights as
 * multiplied ((1 + w) for Gemma, baked in by the caller), the activation, the attention scale, the window of a
 * sliding-window layer, and the RoPE tables (cos/sin per position and dimension, computed by the model's own
 * rotary module). Attention reads a KV cache of max_len positions per layer and only its filled positions. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

int lowbit_dot4(const float *x, int m, int k, const uint8_t *codes, int n, const int8_t *table, const float *s,
                const float *o, int group, int B, float *y, int threads);
int lowbit_dot8(const float *x, int m, int k, const int8_t *codes, int n, const float *s, const float *o, int group,
                int B, float *y, int threads);
void lowbit_gemv4(const float *x, int m, int k, const uint8_t *codes, int n, const float *table, const float *s,
                  const float *o, int group, float *y, int threads);
void lowbit_gemv8(const float *x, int m, int k, const int8_t *codes, int n, const float *s, const float *o,
                  int group, float *y, int threads, int fp8);

enum { LB_NONE, LB_DENSE, LB_GEMV4, LB_GEMV8, LB_DOT4, LB_DOT8 };
enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU };

typedef struct { /* one projection; codes is the fp32 [n, k] weight for LB_DENSE */
    int kind, n, k, group, block, fp8, threads;
    const void *codes, *table;
    const float *s, *o, *bias;
} lb_linear;

typedef struct {
    lb_linear attn_in[3], attn_out, mlp_in[2], mlp_out; /* q/k/v fused or not, gate/up fused or not (LB_NONE: unused) */
    int q_off, k_off, v_off, gate_off, up_off;        /* where each starts in the outputs of attn_in / mlp_in */
    const float *norm_in, *norm_attn_out, *norm_mlp_in, *norm_mlp_out, *q_norm, *k_norm; /* NULL: the block has none */
    const float *cos, *sin; /* [max_len, head_dim] */
    int window;             /* a sliding-window layer attends to its last `window` positions; 0: to all */
    float *k_cache, *v_cache; /* [kv_heads, max_len, head_dim] */
} lb_block;

typedef struct {
    int n_blocks, hidden, heads, kv_heads, head_dim, inter, max_len, act;
    float eps, scale, softcap; /* softcap 0: none */
    const float *norm_out;
    lb_linear head;
    const lb_block *blocks;
} lb_model;

static void dense(const float *x, int k, const float *w, int n, float *y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < n; i++) {
        const float *r = w + (size_t)i * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int j = 0;
        for (; j + 16 <= k; j += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(x + j), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 8), _mm256_loadu_ps(x + j + 8), a1);
        }
        float t[8], sum = 0.f;
        _mm256_storeu_ps(t, _mm256_add_ps(a0, a1));
        for (int q = 0; q < 8; q++) sum += t[q];
        for (; j < k; j++) sum += r[j] * x[j];
        y[i] = sum;
    }
}

static int linear(const lb_linear *l, const float *x, float *y) {
    int rc = 0;
    switch (l->kind) {
    case LB_NONE: return 0;
    case LB_DENSE: dense(x, l->k, (const float *)l->codes, l->n, y, l->threads); break;
    case LB_GEMV4: lowbit_gemv4(x, 1, l->k, l->codes, l->n, l->table, l->s, l->o, l->group, y, l->threads); break;
    case LB_GEMV8: lowbit_gemv8(x, 1, l->k, l->codes, l->n, l->s, l->o, l->group, y, l->threads, l->fp8); break;
    case LB_DOT4:
        rc = lowbit_dot4(x, 1, l->k, l->codes, l->n, l->table, l->s, l->o, l->group, l->block, y, l->threads);
        break;
    case LB_DOT8: rc = lowbit_dot8(x, 1, l->k, l->codes, l->n, l->s, l->o, l->group, l->block, y, l->threads); break;
    default: return -2;
    }
    if (l->bias)
        for (int i = 0; i < l->n; i++) y[i] += l->bias[i];
    return rc;
}

static int linears(const lb_linear *ls, int count, const float *x, float *y) { /* consecutive outputs */
    int rc = 0;
    for (int i = 0; i < count && ls[i].kind != LB_NONE && !rc; y += ls[i].n, i++) rc = linear(&ls[i], x, y);
    return rc;
}

static void rmsnorm(const float *x, const float *w, int n, float eps, float *y) {
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static void rope(float *v, const float *cos, const float *sin, int d) { /* rotate_half: (x1, x2) -> (-x2, x1) */
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        float a = v[i], b = v[i + h];
        v[i] = a * cos[i] - b * sin[i];
        v[i + h] = b * cos[i + h] + a * sin[i + h];
    }
}

static float act(float x, int kind) {
    if (kind == ACT_SILU) return x / (1.f + expf(-x));
    if (kind == ACT_GELU_TANH) return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
}

static void attend(const lb_model *m, const lb_block *b, const float *q, int pos, float *out, float *p) {
    int d = m->head_dim, group = m->heads / m->kv_heads;
    int start = b->window > 0 && pos >= b->window ? pos - b->window + 1 : 0;
    for (int h = 0; h < m->heads; h++) {
        const float *qh = q + (size_t)h * d;
        size_t head = (size_t)(h / group) * m->max_len * d;
        const float *kc = b->k_cache + head, *vc = b->v_cache + head;
        float top = -INFINITY, sum = 0.f;
        for (int t = start; t <= pos; t++) {
            float s = 0.f;
            for (int i = 0; i < d; i++) s += qh[i] * kc[(size_t)t * d + i];
            p[t] = s * m->scale;
            if (p[t] > top) top = p[t];
        }
        float *o = out + (size_t)h * d;
        memset(o, 0, sizeof(float) * d);
        for (int t = start; t <= pos; t++) {
            float e = expf(p[t] - top);
            sum += e;
            for (int i = 0; i < d; i++) o[i] += e * vc[(size_t)t * d + i];
        }
        for (int i = 0; i < d; i++) o[i] /= sum;
    }
}

static int block_step(const lb_model *m, const lb_block *b, float *h, int pos, float *x, float *qkv, float *att,
                      float *mlp, float *p) {
    int d = m->head_dim, hid = m->hidden;
    rmsnorm(h, b->norm_in, hid, m->eps, x);
    int rc = linears(b->attn_in, 3, x, qkv);
    if (rc) return rc;
    float *q = qkv + b->q_off, *k = qkv + b->k_off, *v = qkv + b->v_off;
    for (int i = 0; i < m->heads; i++) {
        if (b->q_norm) rmsnorm(q + i * d, b->q_norm, d, m->eps, q + i * d);
        rope(q + i * d, b->cos + (size_t)pos * d, b->sin + (size_t)pos * d, d);
    }
    for (int i = 0; i < m->kv_heads; i++) {
        if (b->k_norm) rmsnorm(k + i * d, b->k_norm, d, m->eps, k + i * d);
        rope(k + i * d, b->cos + (size_t)pos * d, b->sin + (size_t)pos * d, d);
        memcpy(b->k_cache + ((size_t)i * m->max_len + pos) * d, k + i * d, sizeof(float) * d);
        memcpy(b->v_cache + ((size_t)i * m->max_len + pos) * d, v + i * d, sizeof(float) * d);
    }
    attend(m, b, q, pos, att, p);
    if ((rc = linear(&b->attn_out, att, x))) return rc;
    if (b->norm_attn_out) rmsnorm(x, b->norm_attn_out, hid, m->eps, x);
    for (int i = 0; i < hid; i++) h[i] += x[i];
    rmsnorm(h, b->norm_mlp_in, hid, m->eps, x);
    if ((rc = linears(b->mlp_in, 2, x, mlp))) return rc;
    const float *g = mlp + b->gate_off, *u = mlp + b->up_off;
    float *a = mlp + 2 * m->inter;
    for (int i = 0; i < m->inter; i++) a[i] = act(g[i], m->act) * u[i];
    if ((rc = linear(&b->mlp_out, a, x))) return rc;
    if (b->norm_mlp_out) rmsnorm(x, b->norm_mlp_out, hid, m->eps, x);
    for (int i = 0; i < hid; i++) h[i] += x[i];
    return 0;
}

/* h: [hidden], the token's embedding in, the final hidden state out; logits: [head.n]. Returns the argmax of the
 * logits, -1 where a kernel ran out of memory, -2 for a bad descriptor. */
int lowbit_step(const lb_model *m, float *h, int pos, float *logits) {
    if (pos < 0 || pos >= m->max_len) return -2;
    int qkv_n = (m->heads + 2 * m->kv_heads) * m->head_dim;
    size_t need = (size_t)m->hidden + qkv_n + (size_t)m->heads * m->head_dim + 3 * (size_t)m->inter + m->max_len;
    float *buf = malloc(sizeof(float) * need);
    if (!buf) return -1;
    float *x = buf, *qkv = x + m->hidden, *att = qkv + qkv_n, *mlp = att + m->heads * m->head_dim;
    float *p = mlp + 3 * m->inter;
    int rc = 0;
    for (int i = 0; i < m->n_blocks && !rc; i++) rc = block_step(m, &m->blocks[i], h, pos, x, qkv, att, mlp, p);
    if (!rc) {
        rmsnorm(h, m->norm_out, m->hidden, m->eps, h);
        rc = linear(&m->head, h, logits);
    }
    free(buf);
    if (rc) return rc;
    int best = 0;
    for (int i = 0; i < m->head.n; i++) {
        if (m->softcap > 0.f) logits[i] = tanhf(logits[i] / m->softcap) * m->softcap;
        if (logits[i] > logits[best]) best = i;
    }
    return best;
}
