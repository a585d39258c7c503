// The front-end's memory as a vhost-user back-end sees it: regions received
// as fds, mapped here, addressed by guest-physical address (descriptors) or by
// the front-end's own virtual address (ring addresses). Shared between
// device_memory.cc (which maps and unmaps) and device_queue.cc (which only
// translates): a queue holds the state, so it can see `closed` without ever
// touching pages that are gone.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace vhost {

struct DeviceRegion {
  uint64_t gpa;
  uint64_t size;
  uint64_t userAddr;
  uint8_t* host;            // byte 0 of the region in this process
  void* reservation;        // PROT_NONE reservation holding the mapping between guard pages
  size_t reservationLength;
};

struct DeviceMemoryState {
  std::vector<DeviceRegion> regions;  // sorted by gpa, disjoint
  bool closed = false;

  DeviceMemoryState() = default;
  DeviceMemoryState(const DeviceMemoryState&) = delete;
  DeviceMemoryState& operator=(const DeviceMemoryState&) = delete;
  ~DeviceMemoryState() { Unmap(); }

  // munmap every reservation (mapping and guard pages); idempotent.
  void Unmap();

  // The region holding guest-physical address gpa, or nullptr.
  const DeviceRegion* FindGpa(uint64_t gpa) const;

  // Host pointer of [addr, addr + len) in the front-end's address space when
  // it lies inside one region, else nullptr (rings must be contiguous).
  uint8_t* UserToHost(uint64_t addr, uint64_t len) const;

  // Calls f(host, n) for each piece of [gpa, gpa + len), in order (a buffer
  // may run across adjacent regions). Returns false, having called f for
  // nothing, when any byte is not mapped or the range wraps past 2^64.
  // Bounded: each piece ends a region, so at most regions.size() pieces.
  template <class F>
  bool ForEachPiece(uint64_t gpa, uint64_t len, F&& f) const {
    if (closed) return false;
    if (len == 0) return true;
    if (gpa > UINT64_MAX - (len - 1)) return false;
    if (!Covered(gpa, len)) return false;
    while (len > 0) {
      const DeviceRegion* r = FindGpa(gpa);
      uint64_t off = gpa - r->gpa;
      uint64_t n = r->size - off < len ? r->size - off : len;
      f(r->host + off, static_cast<size_t>(n));
      gpa += n;
      len -= n;
    }
    return true;
  }

  // Whether every byte of [gpa, gpa + len) is mapped (no wrap past 2^64).
  bool Covered(uint64_t gpa, uint64_t len) const;
};

using DeviceMemoryPtr = std::shared_ptr<DeviceMemoryState>;

// The state behind a DeviceMemory object made by deviceMemoryMap; throws
// ERR_VHOST_INVALID_ARG for anything else and ERR_VHOST_CLOSED once closed.
DeviceMemoryPtr DeviceMemoryOf(const Napi::Value& value, const std::string& what);

}  // namespace vhost
