/*
 * row.c - the row layout rule and the loss names (see row.h). Pure; called
 * when a model is created, by the config, and by tests that build rows
 * without a model.
 */
#include "hogrec/row.h"

#include <assert.h>

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

const char *hr_loss_to_string(hr_loss loss)
{
    static const char *const names[HR_LOSS_COUNT] = {[HR_LOSS_LOGISTIC] = "logistic",
                                                     [HR_LOSS_SQUARED] = "squared"};
    return (unsigned)loss < HR_LOSS_COUNT ? names[loss] : "unknown";
}
