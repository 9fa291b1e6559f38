#include "cpu/cache_size.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <fstream>
#include <string>

namespace recis {
namespace {

// "32768K" (as Linux writes cache sizes), "2M", "512": bytes, or 0 if unreadable.
int64_t parse_size(const std::string& text) {
  size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception&) {
    return 0;
  }
  const char unit = used < text.size() ? text[used] : '\0';
  switch (unit) {
    case 'K': return n << 10;
    case 'M': return n << 20;
    case 'G': return n << 30;
    default: return unit == '\0' || unit == '\n' ? n : 0;
  }
}

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

int64_t read_last_level_cache_bytes() {
  int64_t best_level = 0, bytes = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    const std::string level = read_line(dir + "/level");
    if (level.empty()) break;
    if (read_line(dir + "/type") == "Instruction") continue;
    const int64_t l = parse_size(level), size = parse_size(read_line(dir + "/size"));
    if (l > best_level && size > 0) best_level = l, bytes = size;
  }
  return bytes;
}

constexpr int64_t kThresholdWhenCacheUnknown = int64_t{64} << 20;

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t bytes = read_last_level_cache_bytes();
  return bytes;
}

int64_t l2_prefetch_threshold(int64_t set) {
  static std::atomic<int64_t> threshold{[] {
    const int64_t llc = last_level_cache_bytes();
    return llc > 0 ? llc / 2 : kThresholdWhenCacheUnknown;
  }()};
  TORCH_CHECK(set >= -1, "recis.l2_prefetch_threshold: set must be >= 0 (or -1 to read), got ",
              set);
  if (set >= 0) threshold.store(set);
  return threshold.load();
}

}  // namespace recis
