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

Isa resolve(const std::string& name) {
  if (name == "auto" || name.empty()) return cpu_has_avx2() ? Isa::kAvx2 : Isa::kBase;
  if (name == "base") return Isa::kBase;
  if (name == "avx2") {
    TORCH_CHECK(cpu_has_avx2(),
                "recis: RECIS_CPU_ISA=avx2 but this CPU (or this build) has no AVX2+FMA kernels");
    return Isa::kAvx2;
  }
  TORCH_CHECK(false, "recis: unknown CPU ISA '", name, "' (expected auto, base or avx2)");
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{[] {
    const char* env = std::getenv("RECIS_CPU_ISA");
    return resolve(env ? env : "auto");
  }()};
  return isa;
}

const char* isa_name(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "base"; }

}  // namespace

Isa cpu_isa() { return current().load(std::memory_order_relaxed); }

std::string set_cpu_isa(std::string name) {
  if (!name.empty()) current().store(resolve(name));
  return isa_name(cpu_isa());
}

}  // namespace recis
