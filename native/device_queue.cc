// The device side of a split virtqueue (virtio 1.x, section 2.7) over the
// front-end's memory as DeviceMemory maps it: what a vhost-user back-end runs.
//
// The driver is untrusted and may change the rings while we read them, so:
//   - every ring field is read once, into a local, with a single atomic load;
//     indirect tables are copied out before they are parsed;
//   - avail->idx is read with an acquire load (descriptors after it), used
//     entries are published with a release store of used->idx, and a full
//     barrier separates that store from reading the driver's interrupt hint
//     (used_event or avail->flags), as the spec's notification rules require;
//   - every descriptor's (addr, len) must lie inside the mapped regions (the
//     check cannot overflow), a chain visits at most `size` descriptors (that
//     bounds loops), an indirect table is a non-zero multiple of 16 bytes of at
//     most `size` entries, holds no indirect descriptor, and its `next` stay
//     inside it; an avail index running more than `size` ahead, a head id
//     >= size or already in flight, a readable descriptor after a writable one
//     also break the queue.
// A broken queue records the field and value at fault and never touches
// memory again. In-flight chains are kept as (gpa, len) and translated again
// at complete(), so memory replaced in between (setMemory) cannot turn into a
// stray write. Learned from QEMU's libvhost-user (vu_queue_pop and friends)
// and rust-vmm's virtio-queue; written from the spec.
#include <endian.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "addon.h"
#include "device_memory.h"

namespace vhost {

namespace {

struct VringDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VringDesc) == 16, "virtq_desc is 16 bytes");

constexpr uint16_t kDescNext = 1;
constexpr uint16_t kDescWrite = 2;
constexpr uint16_t kDescIndirect = 4;
constexpr uint16_t kAvailNoInterrupt = 1;
constexpr uint16_t kUsedNoNotify = 1;

constexpr const char kClass[] = "DeviceQueue";

// virtio spec 2.7.10: does moving the index from old to next cross event?
inline bool NeedEvent(uint16_t event, uint16_t next, uint16_t old) {
  return static_cast<uint16_t>(next - event - 1) < static_cast<uint16_t>(next - old);
}

inline uint16_t LoadAcquire16(const uint8_t* p) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE));
}
inline uint16_t Load16(const uint8_t* p) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED));
}
inline void StoreRelease16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(v), __ATOMIC_RELEASE);
}
inline void Store16(uint8_t* p, uint16_t v) { __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(v), __ATOMIC_RELAXED); }
inline void Store32(uint8_t* p, uint32_t v) { __atomic_store_n(reinterpret_cast<uint32_t*>(p), htole32(v), __ATOMIC_RELAXED); }

// One descriptor read once from shared memory (aligned: the table is 16-aligned).
inline VringDesc LoadDesc(const uint8_t* table, uint32_t i) {
  const VringDesc* p = reinterpret_cast<const VringDesc*>(table) + i;
  VringDesc d;
  d.addr = le64toh(__atomic_load_n(&p->addr, __ATOMIC_RELAXED));
  d.len = le32toh(__atomic_load_n(&p->len, __ATOMIC_RELAXED));
  d.flags = le16toh(__atomic_load_n(&p->flags, __ATOMIC_RELAXED));
  d.next = le16toh(__atomic_load_n(&p->next, __ATOMIC_RELAXED));
  return d;
}

std::string Hex(uint64_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%" PRIx64, v);
  return text;
}

// Where a descriptor sits, named only when a message needs it (the walk is hot).
struct Where {
  uint32_t index;          // in the descriptor table, or in the indirect table
  int64_t head = -1;       // >= 0: an entry of the indirect table of this head
  std::string Name() const {
    return head < 0 ? "desc[" + std::to_string(index) + "]"
                    : "desc[" + std::to_string(head) + "] indirect[" + std::to_string(index) + "]";
  }
};

struct Segment {
  uint64_t gpa;
  uint32_t len;
};

struct InFlight {
  bool active = false;
  std::vector<Segment> writable;  // capacity kept across uses
  uint64_t writableBytes = 0;
};

// Where the rings of a queue are in one memory table.
struct RingPlace {
  uint8_t* desc = nullptr;
  uint8_t* avail = nullptr;
  uint8_t* used = nullptr;
};

class DeviceQueue : public Napi::ObjectWrap<DeviceQueue> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, kClass,
                       {InstanceMethod<&DeviceQueue::PopBatch>("popBatch"),
                        InstanceMethod<&DeviceQueue::Complete>("complete"),
                        InstanceMethod<&DeviceQueue::Flush>("flush"),
                        InstanceMethod<&DeviceQueue::EnableNotify>("enableNotify"),
                        InstanceMethod<&DeviceQueue::SetMemory>("setMemory"),
                        InstanceMethod<&DeviceQueue::Close>("close"),
                        InstanceAccessor<&DeviceQueue::GetNextAvail>("nextAvail"),
                        InstanceAccessor<&DeviceQueue::GetUsedIdx>("usedIdx"),
                        InstanceAccessor<&DeviceQueue::GetInflight>("inflight"),
                        InstanceAccessor<&DeviceQueue::GetBroken>("broken"),
                        InstanceAccessor<&DeviceQueue::GetClosed>("closed")});
  }

  // new DeviceQueue(memory, { size, desc, avail, used, base, eventIdx, indirect, maxReadable, name })
  // Ring addresses are the front-end's virtual addresses. TS validated the
  // options; what memory safety rests on is checked again here.
  explicit DeviceQueue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceQueue>(info) {
    Napi::Env env = info.Env();
    mem_ = DeviceMemoryOf(info[0], "deviceQueueCreate");
    if (!info[1].IsObject()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "deviceQueueCreate: options must be an object");
    Napi::Object o = info[1].As<Napi::Object>();
    uint64_t size = U64Field(o, "size");
    if (size == 0 || size > 32768 || (size & (size - 1)) != 0)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "deviceQueueCreate: size must be a power of two in 1..32768");
    size_ = static_cast<uint32_t>(size);
    descAddr_ = U64Field(o, "desc");
    availAddr_ = U64Field(o, "avail");
    usedAddr_ = U64Field(o, "used");
    uint64_t base = U64Field(o, "base");
    if (base > 0xffff) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "deviceQueueCreate: base must be in 0..65535");
    eventIdx_ = o.Get("eventIdx").ToBoolean().Value();
    indirect_ = o.Get("indirect").ToBoolean().Value();
    maxReadable_ = U64Field(o, "maxReadable");
    name_ = StringArg(o.Get("name"), "name");
    rings_ = Place(env, mem_);
    nextAvail_ = static_cast<uint16_t>(base);
    // Like the kernel and libvhost-user: the used index continues from what the ring holds.
    usedIdx_ = publishedUsed_ = Load16(rings_.used + 2);
    inflightChains_.resize(size_);
    // Ask for kicks from here on (a previous back-end may have left them off).
    if (eventIdx_) Store16(AvailEvent(), nextAvail_);
    else Store16(rings_.used, 0);
  }

 private:
  uint8_t* AvailRing() const { return rings_.avail + 4; }
  uint8_t* UsedEvent() const { return rings_.avail + 4 + 2 * size_; }
  uint8_t* UsedRing() const { return rings_.used + 4; }
  uint8_t* AvailEvent() const { return rings_.used + 4 + 8 * size_; }

  // Translates the three rings (front-end addresses) in mem; each must be
  // aligned and inside one region. Throws ERR_VHOST_GUEST_ADDRESS naming it.
  RingPlace Place(Napi::Env env, const DeviceMemoryPtr& mem) const {
    uint64_t event = eventIdx_ ? 2 : 0;
    RingPlace p;
    p.desc = Ring(env, mem, "descriptor table", "options.desc", descAddr_, 16ULL * size_, 16);
    p.avail = Ring(env, mem, "avail ring", "options.avail", availAddr_, 4 + 2ULL * size_ + event, 2);
    p.used = Ring(env, mem, "used ring", "options.used", usedAddr_, 4 + 8ULL * size_ + event, 4);
    return p;
  }

  uint8_t* Ring(Napi::Env env, const DeviceMemoryPtr& mem, const char* what, const char* arg, uint64_t addr,
                uint64_t len, uint64_t align) const {
    uint8_t* host = mem->UserToHost(addr, len);
    if (host == nullptr) {
      Napi::Error e = CodeError(env, "ERR_VHOST_GUEST_ADDRESS",
                                "ERR_VHOST_GUEST_ADDRESS: " + name_ + ": the " + what + " [" + Hex(addr) + ", +" +
                                    std::to_string(len) + ") (front-end address) is not inside one mapped region");
      e.Value().Set("argument", arg);
      throw e;
    }
    if (addr % align != 0 || reinterpret_cast<uintptr_t>(host) % align != 0) {
      Napi::Error e = CodeError(env, "ERR_VHOST_INVALID_ARG",
                                "ERR_VHOST_INVALID_ARG: " + name_ + ": the " + what + " at " + Hex(addr) +
                                    " is not " + std::to_string(align) + "-aligned");
      e.Value().Set("argument", arg);
      throw e;
    }
    return host;
  }

  bool Usable() const { return !closed_ && !broken_ && !mem_->closed; }

  void Live(Napi::Env env, const char* what) const {
    if (closed_) throw ClosedError(env, std::string("DeviceQueue.") + what, name_);
  }

  // Marks the queue broken (once) and returns false, for `return Break(...)`.
  bool Break(const std::string& field, uint64_t value, bool hex, const std::string& why) {
    if (broken_) return false;
    broken_ = true;
    brokenField_ = field;
    brokenValue_ = value;
    brokenMessage_ = "ERR_VHOST_RING_BROKEN: " + name_ + ": " + field + " " +
                     (hex ? Hex(value) : std::to_string(value)) + " " + why + "; the queue is stopped";
    return false;
  }

  // Appends one buffer of the chain being walked, checking it.
  bool AddBuffer(const Where& at, uint64_t addr, uint32_t len, uint16_t flags, InFlight& chain) {
    if (flags & kDescWrite) {
      sawWritable_ = true;
      if (len > 0) chain.writable.push_back({addr, len});
      chain.writableBytes += len;
    } else {
      if (sawWritable_) return Break(at.Name() + ".flags", flags, true, "makes a device-readable buffer follow a device-writable one");
      readableBytes_ += len;
      if (readableBytes_ > maxReadable_)
        return Break(at.Name() + ".len", len, false, "makes the chain's readable bytes exceed maxReadable (" + std::to_string(maxReadable_) + ")");
      if (len > 0) readable_.push_back({addr, len});
    }
    if (!mem_->Covered(addr, len))
      return Break(at.Name() + ".addr", addr, true, "(len " + std::to_string(len) + ") is not inside mapped memory");
    return true;
  }

  // Walks the chain at head, appending its readable segments to readable_
  // (the batch's) and its writable ones to chain; false when it broke the queue.
  bool Walk(uint16_t head, InFlight& chain) {
    readableBytes_ = 0;
    sawWritable_ = false;
    chain.writable.clear();
    chain.writableBytes = 0;
    VringDesc d = LoadDesc(rings_.desc, head);
    if (d.flags & kDescIndirect) return WalkIndirect(head, d, chain);
    uint32_t i = head;
    for (uint32_t visited = 1;; visited++) {
      Where at{i};
      if (visited > 1) {
        d = LoadDesc(rings_.desc, i);
        if (d.flags & kDescIndirect) return Break(at.Name() + ".flags", d.flags, true, "is INDIRECT but not at the head of its chain");
      }
      if (!AddBuffer(at, d.addr, d.len, d.flags, chain)) return false;
      if (!(d.flags & kDescNext)) return true;
      if (d.next >= size_) return Break(at.Name() + ".next", d.next, false, "is not a descriptor id (queue size " + std::to_string(size_) + ")");
      if (visited >= size_) return Break(at.Name() + ".next", d.next, false, "makes the chain longer than the queue size (a loop)");
      i = d.next;
    }
  }

  bool WalkIndirect(uint16_t head, const VringDesc& d, InFlight& chain) {
    std::string where = "desc[" + std::to_string(head) + "]";
    if (!indirect_) return Break(where + ".flags", d.flags, true, "is INDIRECT but VIRTIO_RING_F_INDIRECT_DESC was not negotiated");
    if (d.flags & kDescNext) return Break(where + ".flags", d.flags, true, "sets both INDIRECT and NEXT");
    if (d.len == 0 || d.len % 16 != 0) return Break(where + ".len", d.len, false, "is not a non-zero multiple of 16 (an indirect table)");
    uint32_t n = d.len / 16;
    if (n > size_) return Break(where + ".len", d.len, false, "holds more descriptors than the queue size (" + std::to_string(size_) + ")");
    // Copy the table out once: it may span regions, and the driver may change it meanwhile.
    table_.resize(n);
    uint8_t* dst = reinterpret_cast<uint8_t*>(table_.data());
    if (!mem_->ForEachPiece(d.addr, d.len, [&dst](uint8_t* host, size_t len) {
          std::memcpy(dst, host, len);
          dst += len;
        }))
      return Break(where + ".addr", d.addr, true, "(an indirect table of " + std::to_string(d.len) + " bytes) is not inside mapped memory");
    uint32_t i = 0;
    for (uint32_t visited = 1;; visited++) {
      const VringDesc& raw = table_[i];
      uint16_t flags = le16toh(raw.flags), next = le16toh(raw.next);
      Where at{i, head};
      if (flags & kDescIndirect) return Break(at.Name() + ".flags", flags, true, "is INDIRECT inside an indirect table");
      if (!AddBuffer(at, le64toh(raw.addr), le32toh(raw.len), flags, chain)) return false;
      if (!(flags & kDescNext)) return true;
      if (next >= n) return Break(at.Name() + ".next", next, false, "is outside the indirect table (" + std::to_string(n) + " entries)");
      if (visited >= n) return Break(at.Name() + ".next", next, false, "makes the chain longer than the indirect table (a loop)");
      i = next;
    }
  }

  // Takes the next chain: walks it, marks it in flight and moves nextAvail.
  // False when there is none or it broke the queue (its segments dropped).
  bool Next(uint16_t* headOut) {
    if (!Usable()) return false;
    uint16_t availIdx = LoadAcquire16(rings_.avail + 2);  // descriptors are read after this
    uint16_t pending = static_cast<uint16_t>(availIdx - nextAvail_);
    if (pending == 0) return false;
    if (pending > size_)
      return Break("avail.idx", availIdx, false, "is more than the queue size (" + std::to_string(size_) + ") ahead of the next avail index " + std::to_string(nextAvail_));
    uint32_t slot = nextAvail_ & (size_ - 1);
    uint16_t head = Load16(AvailRing() + 2 * slot);
    auto entry = [slot]() { return "avail.ring[" + std::to_string(slot) + "]"; };
    if (head >= size_) return Break(entry(), head, false, "is not a descriptor id (queue size " + std::to_string(size_) + ")");
    InFlight& chain = inflightChains_[head];
    if (chain.active) return Break(entry(), head, false, "is a chain already in flight");
    size_t mark = readable_.size();
    if (!Walk(head, chain)) {
      readable_.resize(mark);
      return false;
    }
    chain.active = true;
    inflight_++;
    nextAvail_++;
    *headOut = head;
    return true;
  }

  // popBatch(max, meta: Float64Array): takes up to max chains; meta[0] gets
  // their count, then (head, readable bytes, writable bytes) for each. Returns
  // one Buffer with every chain's readable bytes in order (TS slices it), or
  // null when no chain was taken. One allocation per batch, not per chain.
  Napi::Value PopBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t max = U32Arg(info[0], "max");
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "meta must be a Float64Array");
    Napi::Float64Array meta = info[1].As<Napi::Float64Array>();
    Live(env, "popBatch");
    uint64_t room = (meta.ElementLength() - 1) / 3;
    if (meta.ElementLength() == 0) room = 0;
    uint64_t limit = std::min<uint64_t>({max, size_, room});
    readable_.clear();
    batch_.clear();
    uint64_t total = 0;
    for (uint64_t k = 0; k < limit; k++) {
      uint16_t head = 0;
      if (!Next(&head)) break;
      batch_.push_back({head, readableBytes_, inflightChains_[head].writableBytes});
      total += readableBytes_;
    }
    if (batch_.empty()) {
      if (meta.ElementLength() > 0) meta[0] = 0;
      return env.Null();
    }
    // Ask for the next kick past what we took (once per batch).
    if (eventIdx_ && notifyOn_ && Usable()) Store16(AvailEvent(), nextAvail_);
    Napi::Buffer<uint8_t> readable = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(total));
    if (mem_->closed) {  // cannot happen (only close() unmaps), but never copy from unmapped pages
      meta[0] = 0;
      return env.Null();
    }
    uint8_t* dst = readable.Data();
    for (const Segment& s : readable_) {
      mem_->ForEachPiece(s.gpa, s.len, [&dst](uint8_t* host, size_t n) {
        std::memcpy(dst, host, n);
        dst += n;
      });
    }
    double* m = meta.Data();  // taken after the allocation, which may run the GC
    m[0] = static_cast<double>(batch_.size());
    for (size_t k = 0; k < batch_.size(); k++) {
      m[1 + 3 * k] = batch_[k].head;
      m[2 + 3 * k] = static_cast<double>(batch_[k].readable);
      m[3 + 3 * k] = static_cast<double>(batch_[k].writable);
    }
    return readable;
  }

  // complete(head, data?): data is undefined, a Uint8Array or an array of
  // them. Returns the bytes written, or -1 when the chain's buffers are no
  // longer inside memory (the queue is broken: TS throws its error).
  Napi::Value Complete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t head = U32Arg(info[0], "head");
    // Take every part first: reading the array may run JS, the checks below must come after it.
    std::vector<Napi::Uint8Array> parts;
    Napi::Value data = info[1];
    auto isBytes = [](const Napi::Value& v) {
      return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array;
    };
    if (isBytes(data)) {
      parts.push_back(data.As<Napi::Uint8Array>());
    } else if (data.IsArray()) {
      Napi::Array list = data.As<Napi::Array>();
      uint32_t n = list.Length();
      for (uint32_t k = 0; k < n; k++) {
        Napi::Value v = list.Get(k);
        if (!isBytes(v)) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "data[" + std::to_string(k) + "] must be a Uint8Array");
        parts.push_back(v.As<Napi::Uint8Array>());
      }
    } else if (!data.IsUndefined()) {
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "data must be a Uint8Array or an array of them");
    }
    Live(env, "complete");
    if (broken_) throw CodeError(env, "ERR_VHOST_RING_BROKEN", brokenMessage_);
    if (mem_->closed) throw ClosedError(env, "DeviceQueue.complete", "device memory");
    if (head >= size_ || !inflightChains_[head].active)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "ERR_VHOST_INVALID_ARG: head " + std::to_string(head) + " is not a chain in flight on " + name_);
    InFlight& chain = inflightChains_[head];
    uint64_t total = 0;
    for (const Napi::Uint8Array& p : parts) total += p.ByteLength();
    if (total > chain.writableBytes)
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE",
                      "ERR_VHOST_OUT_OF_RANGE: data (" + std::to_string(total) + " bytes) exceeds the writable space of chain " +
                          std::to_string(head) + " (" + std::to_string(chain.writableBytes) + " bytes)");
    // Translate again: the memory table may have been replaced since pop().
    uint64_t need = total;
    for (const Segment& s : chain.writable) {
      if (need == 0) break;
      uint64_t n = s.len < need ? s.len : need;
      if (!mem_->Covered(s.gpa, n)) {
        Break("in-flight chain " + std::to_string(head) + " buffer", s.gpa, true,
              "(len " + std::to_string(s.len) + ") is no longer inside mapped memory");
        return Napi::Number::New(env, -1);
      }
      need -= n;
    }
    size_t part = 0, partOff = 0;
    for (const Segment& s : chain.writable) {
      if (part == parts.size()) break;
      mem_->ForEachPiece(s.gpa, s.len, [&](uint8_t* host, size_t n) {
        while (n > 0 && part < parts.size()) {
          size_t avail = parts[part].ByteLength() - partOff;
          size_t m = avail < n ? avail : n;
          std::memmove(host, parts[part].Data() + partOff, m);
          host += m;
          n -= m;
          partOff += m;
          if (partOff == parts[part].ByteLength()) {
            part++;
            partOff = 0;
          }
        }
      });
    }
    uint8_t* elem = UsedRing() + 8 * static_cast<size_t>(usedIdx_ & (size_ - 1));
    Store32(elem, head);
    Store32(elem + 4, static_cast<uint32_t>(total));
    usedIdx_++;
    chain.active = false;
    inflight_--;
    return Napi::Number::New(env, static_cast<double>(total));
  }

  // flush(): publish used->idx; true when the driver wants an interrupt.
  Napi::Value Flush(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env, "flush");
    if (!Usable() || usedIdx_ == publishedUsed_) return Napi::Boolean::New(env, false);
    StoreRelease16(rings_.used + 2, usedIdx_);  // the used entries become visible with it
    publishedUsed_ = usedIdx_;
    // Our used->idx store must be visible before we read the driver's hint,
    // or the driver could sleep on an interrupt we decided not to send.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    bool wanted;
    if (eventIdx_) {
      uint16_t event = Load16(UsedEvent());
      wanted = !signalledValid_ || NeedEvent(event, usedIdx_, signalledUsed_);
      signalledValid_ = true;
      signalledUsed_ = usedIdx_;
    } else {
      wanted = !(Load16(rings_.avail) & kAvailNoInterrupt);
    }
    return Napi::Boolean::New(env, wanted);
  }

  // enableNotify(on): true when on and chains arrived meanwhile (poll again).
  Napi::Value EnableNotify(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool on = info[0].ToBoolean().Value();
    Live(env, "enableNotify");
    if (!Usable()) return Napi::Boolean::New(env, false);
    notifyOn_ = on;
    if (eventIdx_) {
      if (!on) return Napi::Boolean::New(env, false);  // avail_event left behind: no kick until it wraps
      Store16(AvailEvent(), nextAvail_);
    } else {
      Store16(rings_.used, on ? 0 : kUsedNoNotify);
      if (!on) return Napi::Boolean::New(env, false);
    }
    // Publish the request before looking for chains that came before it.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return Napi::Boolean::New(env, LoadAcquire16(rings_.avail + 2) != nextAvail_);
  }

  // setMemory(memory): a new memory table (SET_MEM_TABLE). The rings are
  // translated in it first; on failure the queue keeps the old one.
  void SetMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    DeviceMemoryPtr mem = DeviceMemoryOf(info[0], "DeviceQueue.setMemory");
    Live(env, "setMemory");
    RingPlace place = Place(env, mem);
    mem_ = mem;
    rings_ = place;
  }

  void Close(const Napi::CallbackInfo&) {
    closed_ = true;
    for (InFlight& c : inflightChains_) c.active = false;
    inflight_ = 0;
  }

  Napi::Value GetNextAvail(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), nextAvail_); }
  Napi::Value GetUsedIdx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), usedIdx_); }
  Napi::Value GetInflight(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), inflight_); }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }
  Napi::Value GetBroken(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!broken_) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("field", brokenField_);
    o.Set("value", Napi::BigInt::New(env, brokenValue_));
    o.Set("message", brokenMessage_);
    return o;
  }

  DeviceMemoryPtr mem_;
  RingPlace rings_;
  uint64_t descAddr_ = 0, availAddr_ = 0, usedAddr_ = 0;
  uint32_t size_ = 0;
  bool eventIdx_ = false;
  bool indirect_ = false;
  uint64_t maxReadable_ = 0;
  std::string name_;
  uint16_t nextAvail_ = 0;
  uint16_t usedIdx_ = 0;        // next used slot to fill
  uint16_t publishedUsed_ = 0;  // what used->idx holds
  uint16_t signalledUsed_ = 0;  // used index at the last interrupt decision
  bool signalledValid_ = false;
  bool notifyOn_ = true;
  bool closed_ = false;
  uint32_t inflight_ = 0;
  std::vector<InFlight> inflightChains_;
  // Walk scratch, kept for its capacity.
  std::vector<Segment> readable_;  // the batch's readable segments, in order
  struct Taken {
    uint16_t head;
    uint64_t readable;
    uint64_t writable;
  };
  std::vector<Taken> batch_;
  std::vector<VringDesc> table_;
  uint64_t readableBytes_ = 0;
  bool sawWritable_ = false;
  bool broken_ = false;
  std::string brokenField_;
  uint64_t brokenValue_ = 0;
  std::string brokenMessage_;
};

}  // namespace

void InitDeviceQueue(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DeviceQueue::Define(env);
  Napi::FunctionReference* ref = new Napi::FunctionReference(Napi::Persistent(ctor));
  env.AddCleanupHook([ref]() { delete ref; });
  exports.Set("deviceQueueCreate", Napi::Function::New(
                                       env,
                                       [ref](const Napi::CallbackInfo& info) -> Napi::Value {
                                         return ref->New({info[0], info[1]});
                                       },
                                       "deviceQueueCreate"));
}

}  // namespace vhost
