/*
 * row.c - the row layout rule and the loss names (see row.h). Pure; called
 * when a model is created, by the config, and by tests that build rows
 * without a model.
 */
#include "hogrec/row.h"

#include <assert.h>
#include <string.h>

/* Weights [v, bias, count, last_seen] padded to 16 bytes; the state block
 * has the same stride (k+1 accumulators and FTRL's z, n fit in k+3; so do
 * Adam's k+1 first moments and its step count). Adam's k+1 second moments
 * take a second state block of the same stride. */
hr_row_layout hr_row_layout_make(uint32_t k, hr_state_kind st, uint32_t chunk_rows)
{
    assert(k >= 1 && chunk_rows >= 1);
    hr_row_layout L = {0};
    L.k = k;
    L.bias = k;
    L.count = k + 1;
    L.last_seen = k + 2;
    L.stride = (k + 3 + 3) & ~3u;
    L.floats = L.stride;
    if (st == HR_STATE_ADAM) {
        L.state = chunk_rows * L.stride;
        L.adam = L.state;
        L.adam_v = 2 * chunk_rows * L.stride;
        L.floats = 3 * L.stride;
    } else if (st != HR_STATE_SGD) {
        L.state = chunk_rows * L.stride;
        L.acc = L.state;
        L.floats = 2 * L.stride;
    }
    if (st == HR_STATE_FTRL)
        L.ftrl = L.state + k + 1;
    return L;
}

hr_row_layout hr_row_layout_make_storage(uint32_t k, hr_state_kind st, uint32_t chunk_rows,
                                         hr_storage storage)
{
    if (storage != HR_STORAGE_BF16)
        return hr_row_layout_make(k, st, chunk_rows);
    assert(k >= 1 && chunk_rows >= 1);
    hr_row_layout F = hr_row_layout_make(k, st, 1); /* the state to store */
    hr_row_layout L = {0};
    L.storage = HR_STORAGE_BF16;
    L.k = k;
    L.bias = (k + 1) / 2;
    L.count = L.bias + 1;
    L.last_seen = L.bias + 2;
    L.stride = (L.bias + 3 + 3) & ~3u;
    const uint32_t state_floats = F.floats - F.stride;
    L.parts = (state_floats + L.stride - 1) / L.stride;
    L.floats = (1 + L.parts) * L.stride;
    if (L.parts) { /* which state: F32's offsets from a block start of chunk_rows rows */
        L.state = chunk_rows * L.stride;
        L.acc = F.acc ? L.state : 0;
        L.ftrl = F.ftrl ? L.state + k + 1 : 0;
        L.adam = F.adam ? L.state : 0;
        L.adam_v = F.adam_v ? 2 * L.state : 0;
    }
    return L;
}

hr_state_kind hr_row_layout_state(const hr_row_layout *L)
{
    return L->adam ? HR_STATE_ADAM : L->ftrl ? HR_STATE_FTRL : L->acc ? HR_STATE_ADAGRAD
                                                                      : HR_STATE_SGD;
}

hr_row_layout hr_row_layout_f32(const hr_row_layout *L)
{
    return hr_row_layout_make(L->k, hr_row_layout_state(L), 1);
}

const char *hr_storage_to_string(hr_storage s)
{
    static const char *const names[HR_STORAGE_COUNT] = {[HR_STORAGE_F32] = "f32",
                                                        [HR_STORAGE_BF16] = "bf16"};
    return (unsigned)s < HR_STORAGE_COUNT ? names[s] : "unknown";
}

hr_storage hr_storage_of_shape(const char *shape)
{
    return shape && strstr(shape, "\"storage\":\"bf16\"") ? HR_STORAGE_BF16 : HR_STORAGE_F32;
}

const char *hr_loss_to_string(hr_loss loss)
{
    static const char *const names[HR_LOSS_COUNT] = {[HR_LOSS_LOGISTIC] = "logistic",
                                                     [HR_LOSS_SQUARED] = "squared"};
    return (unsigned)loss < HR_LOSS_COUNT ? names[loss] : "unknown";
}
