// GGML_OP_AMB graph constructor (compiled into libggml-base). The CPU kernel lives in
// ggml-cpu-amb.cpp, the arithmetic both share in pace-amb-math.h.
#include "ggml.h"
#include "ggml-impl.h"

struct ggml_tensor * ggml_amb(
        struct ggml_context   * ctx,
        struct ggml_tensor    * a,
        struct ggml_tensor    * tokens,
        struct ggml_tensor    * bank,
        struct ggml_tensor    * meta,
        struct ggml_tensor    * state,
        struct ggml_tensor    * snap,
        struct ggml_tensor    * snap_meta,
        struct ggml_tensor    * pend,
        struct ggml_amb_params  params) {
    const int64_t n_ff  = a->ne[0];
    const int64_t M     = bank->ne[1] / 2;
    const int64_t n_seq = bank->ne[2];

    GGML_ASSERT(a->type == GGML_TYPE_F32 && ggml_is_contiguous_rows(a) && a->ne[2] == 1 && a->ne[3] == 1);
    GGML_ASSERT(tokens->type == GGML_TYPE_I32 && tokens->ne[0] == 2 && tokens->ne[1] == a->ne[1]);
    GGML_ASSERT(bank->type == GGML_TYPE_F32 && ggml_is_contiguous(bank) && bank->ne[0] == n_ff && bank->ne[1] % 2 == 0);
    GGML_ASSERT(meta->type == GGML_TYPE_F32 && ggml_is_contiguous(meta) && meta->ne[0] == 3 * M && meta->ne[1] == n_seq);
    GGML_ASSERT(state->type == GGML_TYPE_I32 && ggml_is_contiguous(state) && state->ne[0] >= GGML_AMB_STATE_HEADER && state->ne[1] == n_seq);
    GGML_ASSERT((snap == NULL) == (snap_meta == NULL));
    GGML_ASSERT(snap == NULL || ggml_are_same_shape(snap, bank));
    GGML_ASSERT(snap_meta == NULL || ggml_are_same_shape(snap_meta, meta));
    GGML_ASSERT(pend == NULL || (pend->type == GGML_TYPE_F32 && pend->ne[0] == n_ff && pend->ne[1] == 2 * params.chunk && pend->ne[2] == n_seq));
    GGML_ASSERT(params.topk > 0 && params.negk >= 0 && params.store_topk > 0 && params.chunk > 0);

    struct ggml_tensor * result = ggml_dup_tensor(ctx, a);

    static_assert(sizeof(params) <= GGML_MAX_OP_PARAMS, "ggml_amb_params does not fit in op_params");
    ggml_set_op_params(result, &params, sizeof(params));

    result->op     = GGML_OP_AMB;
    result->src[0] = a;
    result->src[1] = tokens;
    result->src[2] = bank;
    result->src[3] = meta;
    result->src[4] = state;
    result->src[5] = snap;
    result->src[6] = snap_meta;
    result->src[7] = pend;

    return result;
}
