#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>

namespace recis {
namespace {

bool cpu_has_avx2() {
#if RECIS_HAVE_AVX2_KERNELS
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// The AVX-512 subsets the isa_avx512 kernels are compiled for (as Intel's since Skylake-SP
// and AMD's since Zen 4 have them).
bool cpu_has_avx512() {
#if RECIS_HAVE_AVX2_KERNELS
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

Isa resolve(const std::string& name) {
  if (name == "auto" || name.empty()) {
    return cpu_has_avx512() ? Isa::kAvx512 : cpu_has_avx2() ? Isa::kAvx2 : Isa::kBase;
  }
  if (name == "base") return Isa::kBase;
  if (name == "avx2") {
    TORCH_CHECK(cpu_has_avx2(),
                "recis: RECIS_CPU_ISA=avx2 but this CPU (or this build) has no AVX2+FMA kernels");
    return Isa::kAvx2;
  }
  if (name == "avx512") {
    TORCH_CHECK(cpu_has_avx512(),
                "recis: RECIS_CPU_ISA=avx512 but this CPU (or this build) has no "
                "AVX-512 F/VL/BW/DQ kernels");
    return Isa::kAvx512;
  }
  TORCH_CHECK(false, "recis: unknown CPU ISA '", name, "' (expected auto, base, avx2 or avx512)");
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{[] {
    const char* env = std::getenv("RECIS_CPU_ISA");
    return resolve(env ? env : "auto");
  }()};
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace

Isa cpu_isa() { return current().load(std::memory_order_relaxed); }

std::string set_cpu_isa(std::string name) {
  if (!name.empty()) current().store(resolve(name));
  return isa_name(cpu_isa());
}

}  // namespace recis
