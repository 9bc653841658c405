// What the CUDA module can say about the machine it runs on.
#pragma once
#include <cstddef>
#include <string>

namespace infolens::cuda {

struct DeviceInfo {
  std::string name;
  int major;
  int minor;
  int multiprocessors;
  std::size_t total_memory;
  int runtime_version;
  int driver_version;
};

// Number of usable CUDA devices; 0 (not an error) where there is no driver or no card.
int device_count();
DeviceInfo device_info(int device);
int runtime_version();

}  // namespace infolens::cuda
