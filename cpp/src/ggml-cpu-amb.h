// GGML_OP_AMB on the CPU backend: the two entry points ggml-cpu.c dispatches to.
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// Bytes of work buffer the kernel needs for dst with n_threads threads.
size_t ggml_amb_work_size(const struct ggml_tensor * dst, int n_threads);

void ggml_compute_forward_amb(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
