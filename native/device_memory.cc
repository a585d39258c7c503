// The back-end's view of the front-end's memory (vhost-user SET_MEM_TABLE):
// each region's fd is mmapped MAP_SHARED here and kept by the mapping only.
//
// Every region is mapped in the middle of a PROT_NONE reservation, so a
// guard page (at least) sits on each side: a translation bug that strays
// past a region faults at once instead of reading a neighbour's memory.
// Mapping is all or nothing: a failure unmaps every region mapped so far.
// Translation and bounds live in DeviceMemoryState (device_memory.h), which
// DeviceQueues share; close() unmaps at once and sets `closed`, which every
// queue checks before touching memory.
#include "device_memory.h"

#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "addon.h"

namespace vhost {

void DeviceMemoryState::Unmap() {
  for (DeviceRegion& r : regions) {
    if (r.reservation != nullptr) ::munmap(r.reservation, r.reservationLength);
    r.reservation = nullptr;
    r.host = nullptr;
  }
  closed = true;
}

const DeviceRegion* DeviceMemoryState::FindGpa(uint64_t gpa) const {
  auto it = std::upper_bound(regions.begin(), regions.end(), gpa,
                             [](uint64_t g, const DeviceRegion& r) { return g < r.gpa; });
  if (it == regions.begin()) return nullptr;
  --it;
  return gpa - it->gpa < it->size ? &*it : nullptr;
}

bool DeviceMemoryState::Covered(uint64_t gpa, uint64_t len) const {
  if (closed) return false;
  if (len == 0) return true;
  if (gpa > UINT64_MAX - (len - 1)) return false;
  uint64_t last = gpa + (len - 1);
  for (;;) {  // each turn moves past one region: at most regions.size() turns
    const DeviceRegion* r = FindGpa(gpa);
    if (r == nullptr) return false;
    uint64_t regionLast = r->gpa + (r->size - 1);
    if (last <= regionLast) return true;
    gpa = regionLast + 1;
  }
}

uint8_t* DeviceMemoryState::UserToHost(uint64_t addr, uint64_t len) const {
  if (closed) return nullptr;
  for (const DeviceRegion& r : regions) {
    if (addr >= r.userAddr && addr - r.userAddr < r.size && len <= r.size - (addr - r.userAddr))
      return r.host + (addr - r.userAddr);
  }
  return nullptr;
}

namespace {

constexpr napi_type_tag kDeviceMemoryTag = {0x6c696e7578766873ULL, 0x6465766d656d2121ULL};
constexpr const char kClass[] = "DeviceMemory";

// Reads a region's fields; U64Field names the field in its error.
struct RegionSpec {
  int fd;
  std::string label;
  uint64_t gpa, size, userAddr, mmapOffset;
};

std::string RegionName(uint32_t i) { return "regions[" + std::to_string(i) + "]"; }

// An errno error naming the region: "ENODEV: ..., mmap 'memfd:x' (regions[1])".
Napi::Error RegionErrno(Napi::Env env, int err, const char* syscall, const RegionSpec& spec, uint32_t i,
                        const std::string& detail = std::string()) {
  Napi::Error e = ErrnoError(env, err, syscall, spec.label);
  Napi::Object obj = e.Value();
  std::string message = obj.Get("message").As<Napi::String>().Utf8Value() + " (" + RegionName(i) +
                        (detail.empty() ? "" : ": " + detail) + ")";
  obj.Set("message", message);
  obj.Set("argument", RegionName(i));
  return e;
}

class DeviceMemory : public Napi::ObjectWrap<DeviceMemory> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, kClass,
                       {InstanceMethod<&DeviceMemory::Read>("read"),
                        InstanceMethod<&DeviceMemory::Write>("write"),
                        InstanceMethod<&DeviceMemory::Close>("close"),
                        InstanceAccessor<&DeviceMemory::GetClosed>("closed")});
  }

  // new DeviceMemory([{ fd, gpa, size, userAddr, mmapOffset }, ...]). The
  // geometry (non-zero, no overlap, no overflow) is checked in TypeScript
  // first; what memory safety depends on is checked again here.
  explicit DeviceMemory(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceMemory>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "deviceMemoryMap: regions must be an array");
    Napi::Array list = info[0].As<Napi::Array>();
    std::vector<RegionSpec> specs;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value v = list.Get(i);
      if (!v.IsObject()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", RegionName(i) + " must be an object");
      Napi::Object o = v.As<Napi::Object>();
      RegionSpec s;
      Napi::Value fdValue = o.Get("fd");
      s.fd = FdArg(fdValue, "mmap");
      if (s.fd < 0) throw CodeError(env, "ERR_VHOST_INVALID_ARG", RegionName(i) + ".fd must be an open fd");
      s.label = fdValue.IsObject() ? PathOf(fdValue) : "fd " + std::to_string(s.fd);
      s.gpa = U64Field(o, "gpa");
      s.size = U64Field(o, "size");
      s.userAddr = U64Field(o, "userAddr");
      s.mmapOffset = U64Field(o, "mmapOffset");
      specs.push_back(s);
    }
    state_ = std::make_shared<DeviceMemoryState>();
    // On a throw below, state_'s destructor (with this object's) unmaps what was mapped.
    for (uint32_t i = 0; i < specs.size(); i++) MapOne(env, specs[i], i);
    std::sort(state_->regions.begin(), state_->regions.end(),
              [](const DeviceRegion& a, const DeviceRegion& b) { return a.gpa < b.gpa; });
    for (size_t k = 1; k < state_->regions.size(); k++) {
      const DeviceRegion& a = state_->regions[k - 1];
      if (a.size > state_->regions[k].gpa - a.gpa) {
        state_->Unmap();
        throw CodeError(env, "EINVAL", "deviceMemoryMap: regions overlap");
      }
    }
    info.This().As<Napi::Object>().TypeTag(&kDeviceMemoryTag);
  }

  ~DeviceMemory() override = default;  // queues may still hold the state; the last share unmaps

  DeviceMemoryPtr state() const { return state_; }

 private:
  void MapOne(Napi::Env env, const RegionSpec& s, uint32_t i) {
    if (s.size == 0) { state_->Unmap(); throw RegionErrno(env, EINVAL, "mmap", s, i, "size is 0"); }
    if (s.size > (UINT64_MAX >> 2) || s.mmapOffset > static_cast<uint64_t>(INT64_MAX) - s.size ||
        s.gpa > UINT64_MAX - (s.size - 1) || s.userAddr > UINT64_MAX - (s.size - 1)) {
      state_->Unmap();
      throw RegionErrno(env, EINVAL, "mmap", s, i, "address or offset + size overflows");
    }
    struct stat st;
    if (::fstat(s.fd, &st) != 0) { int e = errno; state_->Unmap(); throw RegionErrno(env, e, "fstat", s, i); }
    // Pages past the end of a file raise SIGBUS when touched: refuse them now.
    if (S_ISREG(st.st_mode) && s.mmapOffset + s.size > static_cast<uint64_t>(st.st_size)) {
      state_->Unmap();
      throw RegionErrno(env, EINVAL, "mmap", s, i,
                        "offset " + std::to_string(s.mmapOffset) + " + size " + std::to_string(s.size) +
                            " reaches past the end of the file (" + std::to_string(st.st_size) + " bytes)");
    }
    // hugetlbfs maps (and offsets) in whole huge pages.
    uint64_t align = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    struct statfs fs;
    if (::fstatfs(s.fd, &fs) == 0 && static_cast<unsigned long>(fs.f_type) == HUGETLBFS_MAGIC && fs.f_bsize > 0)
      align = std::max<uint64_t>(align, static_cast<uint64_t>(fs.f_bsize));
    uint64_t mapOffset = s.mmapOffset & ~(align - 1);
    uint64_t lead = s.mmapOffset - mapOffset;
    uint64_t mapLength = (lead + s.size + align - 1) & ~(align - 1);
    // Guard of `align` bytes each side, plus slack to align the start.
    uint64_t reserveLength = mapLength + 3 * align;
    void* reservation = ::mmap(nullptr, reserveLength, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reservation == MAP_FAILED) { int e = errno; state_->Unmap(); throw RegionErrno(env, e, "mmap", s, i, "reserving address space"); }
    uintptr_t start = (reinterpret_cast<uintptr_t>(reservation) + 2 * align - 1) & ~(align - 1);
    void* addr = ::mmap(reinterpret_cast<void*>(start), mapLength, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_FIXED | MAP_NORESERVE, s.fd, static_cast<off_t>(mapOffset));
    if (addr == MAP_FAILED) {
      int e = errno;
      ::munmap(reservation, reserveLength);
      state_->Unmap();
      throw RegionErrno(env, e, "mmap", s, i);
    }
    state_->regions.push_back({s.gpa, s.size, s.userAddr, static_cast<uint8_t*>(addr) + lead, reservation,
                               static_cast<size_t>(reserveLength)});
  }

  void Live(Napi::Env env, const char* what) {
    if (state_->closed) throw ClosedError(env, std::string("DeviceMemory.") + what, "device memory");
  }

  // read(gpa, length): a copy of [gpa, gpa + length).
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t gpa = U64Arg(info[0], "gpa");
    uint32_t length = U32Arg(info[1], "length");
    Live(env, "read");
    if (!state_->Covered(gpa, length)) throw GuestAddressError(env, gpa, length);
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, length);
    Live(env, "read");  // allocation may run finalizers; never while unmapped
    uint8_t* dst = out.Data();
    state_->ForEachPiece(gpa, length, [&dst](uint8_t* host, size_t n) {
      std::memcpy(dst, host, n);
      dst += n;
    });
    return out;
  }

  // write(gpa, data)
  void Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t gpa = U64Arg(info[0], "gpa");
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "data must be a Uint8Array");
    Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
    Live(env, "write");
    size_t length = data.ByteLength();
    if (!state_->Covered(gpa, length)) throw GuestAddressError(env, gpa, length);
    const uint8_t* src = data.Data();
    state_->ForEachPiece(gpa, length, [&src](uint8_t* host, size_t n) {
      std::memmove(host, src, n);  // data may itself view a mapping of the same file
      src += n;
    });
  }

  static Napi::Error GuestAddressError(Napi::Env env, uint64_t gpa, uint64_t length) {
    char text[96];
    std::snprintf(text, sizeof text, "[0x%llx, +%llu)", static_cast<unsigned long long>(gpa),
                  static_cast<unsigned long long>(length));
    return CodeError(env, "ERR_VHOST_GUEST_ADDRESS",
                     std::string("ERR_VHOST_GUEST_ADDRESS: guest-physical range ") + text + " is not inside mapped memory");
  }

  void Close(const Napi::CallbackInfo&) { state_->Unmap(); }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), state_->closed); }

  DeviceMemoryPtr state_;
};

}  // namespace

DeviceMemoryPtr DeviceMemoryOf(const Napi::Value& value, const std::string& what) {
  Napi::Env env = value.Env();
  if (!value.IsObject() || !value.As<Napi::Object>().CheckTypeTag(&kDeviceMemoryTag))
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", what + ": memory must be a DeviceMemory");
  DeviceMemoryPtr state = DeviceMemory::Unwrap(value.As<Napi::Object>())->state();
  if (state->closed) throw ClosedError(env, what, "device memory");
  return state;
}

void InitDeviceMemory(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DeviceMemory::Define(env);
  // Reachable only through this factory, so every object made by the class is tagged.
  Napi::FunctionReference* ref = new Napi::FunctionReference(Napi::Persistent(ctor));
  env.AddCleanupHook([ref]() { delete ref; });
  exports.Set("deviceMemoryMap", Napi::Function::New(
                                     env,
                                     [ref](const Napi::CallbackInfo& info) -> Napi::Value { return ref->New({info[0]}); },
                                     "deviceMemoryMap"));
}

}  // namespace vhost
