/* QuantKernels.h — the umbrella header of the C kernels (SwiftPM's module map uses it). */
#include "quant_kernels.h"
#include "ggml_types.h"
#include "model_ops.h"
#include "model_ops_backward.h"
#include "lora_ops.h"
#include "mpi_shim.h"
