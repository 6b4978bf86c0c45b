/*
 * row.h - what the model (storage) and the sgd kernel (arithmetic) share
 * about one parameter row: its layout in floats, the loss, the optimizer
 * state it carries, and the link from a raw score to a prediction.
 *
 * A leaf header: it includes nothing of hogrec, so model.h and sgd.h can
 * both depend on it without depending on each other.
 *
 * A row is k factors, the bias and two counters (events, last seen) padded
 * to a multiple of 4 floats (`stride`); its optimizer state (AdaGrad
 * accumulators of v and bias, FTRL z and n, or Adam's first moments and
 * step count) is `state` floats further on; Adam's second moments need a
 * second state block, `adam_v` floats from the row.
 * The model stores rows in chunks of chunk_rows rows, weights block then
 * state block(s), so `state` = chunk_rows * stride (and `adam_v` = 2 *
 * chunk_rows * stride); with chunk_rows 1 a row's state directly follows
 * its weights and a row is one packed block of `floats` floats (what
 * hr_sgd_row_read/write copy).
 */
#ifndef HOGREC_ROW_H
#define HOGREC_ROW_H

#include <math.h>
#include <stdint.h>

/* The loss; its values are persisted in checkpoint shapes: do not renumber. */
typedef enum { HR_LOSS_LOGISTIC, HR_LOSS_SQUARED, HR_LOSS_COUNT } hr_loss;

/* What per-row optimizer state the rows carry; persisted like hr_loss.
 * SGD < ADAGRAD < FTRL is a chain (each keeps what the one before keeps);
 * ADAM keeps its own (moments and a step count), not AdaGrad's. */
typedef enum { HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_FTRL, HR_STATE_ADAM } hr_state_kind;

/* How a row stores its factors; persisted in checkpoint shapes and delta
 * headers like hr_loss: do not renumber.
 *   F32:  every value a float; chunks of a weights block then state blocks.
 *   BF16: the k factors as bfloat16 (the high half of a float's bits) packed
 *         two to a float slot at the start of the row, then the bias (f32),
 *         count and last_seen: a weights block of chunk_rows x `stride`
 *         floats, dense for top-K as with F32. The optimizer state stays
 *         f32 (an F32 row's state, in the same order) and is cut into
 *         `parts` pieces of `stride` floats, piece j in its own block at
 *         (j + 1) * `state` floats from the row, so every piece is at a
 *         fixed offset from the row. The kernels reach it through
 *         hr_sgd_row_to_f32; acc, ftrl, adam and adam_v only say which
 *         state a BF16 row has (their F32 values), not where it is. */
typedef enum { HR_STORAGE_F32, HR_STORAGE_BF16, HR_STORAGE_COUNT } hr_storage;

/* Row layout, in floats from the row pointer. */
typedef struct {
    uint32_t k;         /* factors at [0, k) */
    uint32_t bias;      /* = k */
    uint32_t count;     /* uint32 event count */
    uint32_t last_seen; /* uint32 seconds since the model epoch */
    uint32_t stride;    /* floats from one row's weights to the next's (multiple of 4) */
    uint32_t state;     /* offset of the row's optimizer state; 0 if none */
    uint32_t acc;       /* AdaGrad accumulators of v at [acc, acc+k), bias at acc+k; 0 if none */
    uint32_t ftrl;      /* FTRL z at ftrl, n at ftrl+1; 0 if none */
    uint32_t adam;      /* Adam first moments of v at [adam, adam+k), bias at adam+k,
                           the row's step count (uint32) at adam+k+1; 0 if none */
    uint32_t adam_v;    /* Adam second moments of v at [adam_v, adam_v+k), bias at
                           adam_v+k; 0 if none */
    uint32_t floats;    /* a row packed (weights, then state): what row read/write copy */
    uint32_t storage;   /* hr_storage; with BF16 the factors take [0, bias) as bf16 */
    uint32_t parts;     /* BF16: blocks of `stride` floats the state is cut into; else 0 */
} hr_row_layout;

/* "logistic", "squared" (the config's names); "unknown" out of range. */
const char *hr_loss_to_string(hr_loss loss);

/* The layout of rows of k factors (k >= 1) with state st, stored in chunks
 * of chunk_rows rows (>= 1; 1 for a packed row that stands alone). The
 * caller checks that chunk_rows * 3 * stride fits in uint32. */
hr_row_layout hr_row_layout_make(uint32_t k, hr_state_kind st, uint32_t chunk_rows);

/* The layout of rows stored as `storage`: hr_row_layout_make for F32; for
 * BF16 the factors take ceil(k/2) floats, bias, count and last_seen follow,
 * padded to 4 floats (`stride`), and the F32 state (round4(k+3) floats, two
 * such blocks for Adam) is cut into `parts` blocks of `stride` floats:
 * floats = (1 + parts) * stride. */
hr_row_layout hr_row_layout_make_storage(uint32_t k, hr_state_kind st, uint32_t chunk_rows,
                                         hr_storage storage);

/* The F32 packed layout (chunk_rows 1) of rows with L's k and state: what
 * a BF16 row is converted to for arithmetic (hr_sgd_row_to_f32). */
hr_row_layout hr_row_layout_f32(const hr_row_layout *L);

/* The state kind a layout carries. */
hr_state_kind hr_row_layout_state(const hr_row_layout *L);

/* "f32", "bf16" (the config's names); "unknown" out of range. */
const char *hr_storage_to_string(hr_storage s);

/* The storage a checkpoint's shape string names: BF16 when it has the
 * member "storage":"bf16", else F32 (shapes of f32 models carry no member,
 * as before the option existed). */
hr_storage hr_storage_of_shape(const char *shape);

/* The logistic function 1 / (1 + e^-y): the one copy in the code. */
static inline double hr_sigmoid(double y)
{
    return 1.0 / (1.0 + exp(-y));
}

/* The link from a raw score y to the prediction: sigmoid for the logistic
 * loss (a probability), identity for the squared loss (a rating). */
static inline double hr_row_link(hr_loss loss, double y)
{
    return loss == HR_LOSS_SQUARED ? y : hr_sigmoid(y);
}

#endif
