#pragma once
// The instruction set the CPU kernels run with, chosen once at run time.
//
// The build targets baseline x86-64 (SSE2) so that one build runs everywhere; the hot
// loops are also compiled for AVX2+FMA and AVX-512 and used when the CPU has them. A
// kernel header (no includes of its own, no #pragma once) is compiled once per ISA,
// each copy in its own namespace (isa_base, isa_avx2, isa_avx512), by
// cpu/isa_kernels.inc:
//
//   #define RECIS_ISA_KERNEL "cpu/x_kernel.h"
//   #include "cpu/isa_kernels.inc"
//
// The pooled lookup and the sparse updates are built this way; the dot interaction
// writes its two namespaces out itself (base and AVX2 only: its padding assumes at most
// 8 floats per vector). The ISAs are ordered, so a kernel picks its best version with
// cpu_isa() >= Isa::kAvx2 and so on.
//
// RECIS_CPU_ISA=base|avx2|avx512 (or the recis::cpu_isa op) overrides the choice, so
// tests check every path against the references.
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RECIS_HAVE_AVX2_KERNELS 1
#else
#define RECIS_HAVE_AVX2_KERNELS 0
#endif

namespace recis {

enum class Isa { kBase, kAvx2, kAvx512 };

// The ISA in use. set_cpu_isa("auto" | "base" | "avx2" | "avx512") changes it, "" only reads;
// both return the name of the ISA in use.
Isa cpu_isa();
std::string set_cpu_isa(std::string name);

}  // namespace recis
