// Targets the fast CPU backend compiles for. Scalable-vector targets (SVE, RVV) are left
// out: the kernels keep small arrays of vectors, which sizeless SVE types do not allow;
// those machines run the NEON or portable code instead.
#pragma once

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif
