/* drpc: a C11 implementation of PyTorch's distributed RPC semantics, with a
 * deterministic simulator and recorder. Include this umbrella header. */
#ifndef DRPC_H
#define DRPC_H

#include "drpc/agent.h"
#include "drpc/env.h"
#include "drpc/error.h"
#include "drpc/future.h"
#include "drpc/ops.h"
#include "drpc/profiler.h"
#include "drpc/rref.h"
#include "drpc/store.h"
#include "drpc/tensor.h"
#include "drpc/value.h"
#include "drpc/wire.h"

#define DRPC_VERSION_STRING "0.1.0"

#endif
