// Split-ring virtqueue driver (the guest's side of virtio 1.x, section 2.7)
// over memory this process owns. vhost reads the rings from another thread
// (its kernel worker), so the hot path lives here with real atomics:
//   - descriptors and avail ring entries are written first, then avail->idx
//     with a release store;
//   - used->idx is read with an acquire load before the used entries;
//   - before reading the device's notification hints (used->flags or
//     avail_event) there is a full barrier, as the spec's "driver
//     notifications" section asks (the device does the mirror image).
// One call posts or collects a whole batch, so a JS call moves many buffers.
//
// Memory: the rings and every buffer lie in one mapping, given as its
// external ArrayBuffer. Holding a reference to the buffer keeps the pages
// mapped; an explicit unmap (GuestMemory.close) detaches the buffer first,
// and every call checks IsDetached() before touching memory, so a closed
// GuestMemory gives ERR_VHOST_CLOSED rather than a fault. Buffers are named by
// their offset in that mapping; descriptors carry regionGpa + offset.
#include <endian.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "addon.h"

namespace vhost {

namespace {

// Ring layout (little-endian, as VERSION_1 requires).
struct VringDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VringDesc) == 16, "virtq_desc is 16 bytes");

constexpr uint16_t kDescNext = 1;      // VRING_DESC_F_NEXT
constexpr uint16_t kDescWrite = 2;     // VRING_DESC_F_WRITE
constexpr uint16_t kDescIndirect = 4;  // VRING_DESC_F_INDIRECT
constexpr uint16_t kAvailNoInterrupt = 1;  // VRING_AVAIL_F_NO_INTERRUPT
constexpr uint16_t kUsedNoNotify = 1;      // VRING_USED_F_NO_NOTIFY

// Segment flags in the post() argument (not ring flags).
constexpr uint32_t kSegWritable = 1;
constexpr uint32_t kSegEnd = 2;

constexpr const char kClass[] = "Virtqueue";

// virtio spec 2.7.10: does moving the index from old to next cross event?
inline bool NeedEvent(uint16_t event, uint16_t next, uint16_t old) {
  return static_cast<uint16_t>(next - event - 1) < static_cast<uint16_t>(next - old);
}

inline uint16_t LoadAcquire16(const uint16_t* p) { return le16toh(__atomic_load_n(p, __ATOMIC_ACQUIRE)); }
inline uint16_t Load16(const uint16_t* p) { return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED)); }
inline void StoreRelease16(uint16_t* p, uint16_t v) { __atomic_store_n(p, htole16(v), __ATOMIC_RELEASE); }
inline void Store16(uint16_t* p, uint16_t v) { __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED); }

class Virtqueue : public Napi::ObjectWrap<Virtqueue> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, kClass,
                       {InstanceMethod<&Virtqueue::Post>("post"),
                        InstanceMethod<&Virtqueue::Collect>("collect"),
                        InstanceMethod<&Virtqueue::Notify>("notify"),
                        InstanceMethod<&Virtqueue::EnableCallbacks>("enableCallbacks"),
                        InstanceMethod<&Virtqueue::DisableCallbacks>("disableCallbacks"),
                        InstanceMethod<&Virtqueue::Close>("close"),
                        InstanceMethod<&Virtqueue::Lend>("lend"),
                        InstanceMethod<&Virtqueue::Revoke>("revoke"),
                        InstanceMethod<&Virtqueue::LendBatch>("lendBatch"),
                        InstanceMethod<&Virtqueue::RevokeAll>("revokeAll"),
                        InstanceMethod<&Virtqueue::CopyOut>("copyOut"),
                        InstanceAccessor<&Virtqueue::GetSize>("size"),
                        InstanceAccessor<&Virtqueue::GetNumFree>("numFree"),
                        InstanceAccessor<&Virtqueue::GetAvailIdx>("availIdx"),
                        InstanceAccessor<&Virtqueue::GetLastUsedIdx>("lastUsedIdx"),
                        InstanceAccessor<&Virtqueue::GetKicks>("kicks"),
                        InstanceAccessor<&Virtqueue::GetKicksSuppressed>("kicksSuppressed"),
                        InstanceAccessor<&Virtqueue::GetClosed>("closed")});
  }

  // new Virtqueue(buffer, regionGpa, { size, desc, avail, used, eventIdx, indirect }, kick)
  // desc/avail/used are byte offsets in buffer; validated here (TS checks first).
  explicit Virtqueue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Virtqueue>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArrayBuffer()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "virtqueueCreate: buffer must be an ArrayBuffer");
    Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
    if (buffer.IsDetached()) throw ClosedError(env, "virtqueueCreate", "guest memory");
    regionGpa_ = U64Arg(info[1], "regionGpa");
    if (!info[2].IsObject()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "virtqueueCreate: layout must be an object");
    Napi::Object layout = info[2].As<Napi::Object>();
    uint64_t size = U64Field(layout, "size");
    uint64_t desc = U64Field(layout, "desc");
    uint64_t avail = U64Field(layout, "avail");
    uint64_t used = U64Field(layout, "used");
    eventIdx_ = layout.Get("eventIdx").ToBoolean().Value();
    indirect_ = layout.Get("indirect").ToBoolean().Value();
    if (size == 0 || size > 32768 || (size & (size - 1)) != 0)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "virtqueueCreate: size must be a power of two in 1..32768");
    size_ = static_cast<uint32_t>(size);
    length_ = buffer.ByteLength();
    // desc table (+ one indirect table per descriptor when enabled), avail and used rings.
    uint64_t descBytes = 16 * size * (indirect_ ? 1 + kIndirectMax : 1);
    if (desc % 16 || avail % 2 || used % 4) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "virtqueueCreate: misaligned ring");
    if (!Inside(desc, descBytes) || !Inside(avail, 6 + 2 * size) || !Inside(used, 6 + 8 * size))
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "virtqueueCreate: ring does not fit in the memory region");
    descOff_ = desc;
    availOff_ = avail;
    usedOff_ = used;
    buffer_ = Napi::Persistent(buffer);
    if (!info[3].IsNull() && !info[3].IsUndefined()) {
      FdOf(info[3], "virtqueueCreate");  // validates: an open OwnedFd
      kick_ = Napi::Persistent(info[3].As<Napi::Object>());
    }
    // Free list: every descriptor, chained through next_ (a driver-side copy,
    // so a misbehaving device cannot corrupt it through the shared table).
    next_.resize(size_);
    chainLen_.assign(size_, 0);
    segScratch_.reserve(3 * static_cast<size_t>(size_));  // a full ring of one-segment chains
    for (uint32_t i = 0; i < size_; i++) next_[i] = static_cast<uint16_t>(i + 1 == size_ ? 0 : i + 1);
    freeHead_ = 0;
    numFree_ = size_;
    uint8_t* base = Base(env, "virtqueueCreate");
    // Start from a clean ring: the device reads these before the first kick.
    std::memset(base + descOff_, 0, descBytes);
    std::memset(base + availOff_, 0, 6 + 2 * size);
    std::memset(base + usedOff_, 0, 6 + 8 * size);
  }

 private:
  // Indirect tables hold up to this many descriptors (one table per ring slot).
  static constexpr uint32_t kIndirectMax = 16;

  bool Inside(uint64_t off, uint64_t len) const { return off <= length_ && len <= length_ - off; }

  // The mapping's base, or ERR_VHOST_CLOSED when closed or unmapped.
  uint8_t* Base(Napi::Env env, const char* what) {
    if (closed_ || buffer_.IsEmpty()) throw ClosedError(env, std::string("Virtqueue.") + what, "virtqueue");
    Napi::ArrayBuffer buffer = buffer_.Value();
    if (buffer.IsDetached() || buffer.ByteLength() != length_)
      throw ClosedError(env, std::string("Virtqueue.") + what, "guest memory");
    return static_cast<uint8_t*>(buffer.Data());
  }

  VringDesc* Desc(uint8_t* base) { return reinterpret_cast<VringDesc*>(base + descOff_); }
  VringDesc* IndirectTable(uint8_t* base, uint16_t head) {
    return reinterpret_cast<VringDesc*>(base + descOff_ + 16 * size_ + 16 * kIndirectMax * static_cast<uint64_t>(head));
  }
  uint16_t* AvailFlags(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + availOff_); }
  uint16_t* AvailIdx(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + availOff_ + 2); }
  uint16_t* AvailRing(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + availOff_ + 4); }
  uint16_t* UsedEvent(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + availOff_ + 4 + 2 * size_); }
  uint16_t* UsedFlags(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + usedOff_); }
  uint16_t* UsedIdx(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + usedOff_ + 2); }
  uint8_t* UsedRing(uint8_t* base) { return base + usedOff_ + 4; }
  uint16_t* AvailEvent(uint8_t* base) { return reinterpret_cast<uint16_t*>(base + usedOff_ + 4 + 8 * size_); }

  static Napi::Uint32Array U32ArrayArg(const Napi::Value& v, const char* name) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
      throw CodeError(v.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a Uint32Array");
    return v.As<Napi::Uint32Array>();
  }

  // post(segs, nsegs, heads, notify): segs holds nsegs triples
  // (offset, len, flags: 1 writable, 2 last of its chain). Posts whole chains
  // in order until one does not fit; heads[i] gets the head descriptor of
  // chain i. Publishes them with one release store of avail->idx, then
  // notifies the device if notify is true and the device asks for it.
  // Returns the number of chains posted.
  Napi::Value Post(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Uint32Array segs = U32ArrayArg(info[0], "segs");
    uint32_t nsegs = U32Arg(info[1], "nsegs");
    Napi::Uint32Array heads = U32ArrayArg(info[2], "heads");
    bool notify = info[3].ToBoolean().Value();
    if (static_cast<uint64_t>(nsegs) * 3 > segs.ElementLength())
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "nsegs is larger than segs holds");
    // Work on a private copy: segs may alias heads or guest memory, which the
    // loops below write, and must not change between validation and use.
    // The scratch keeps its capacity, so a steady batch size never allocates.
    // s is not read after anything that can run JS (only throws follow those).
    segScratch_.assign(segs.Data(), segs.Data() + static_cast<size_t>(nsegs) * 3);
    const uint32_t* s = segScratch_.data();
    // Validate every segment before writing anything.
    uint32_t chains = 0, inChain = 0;
    for (uint32_t i = 0; i < nsegs; i++) {
      uint32_t off = s[3 * i], len = s[3 * i + 1], flags = s[3 * i + 2];
      if (len == 0 || !Inside(off, len))
        throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "segment " + std::to_string(i) + " is empty or outside the memory region");
      if (flags & ~(kSegWritable | kSegEnd)) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "segment flags must be 1 (writable) | 2 (end)");
      inChain++;
      if (flags & kSegEnd) {
        if (inChain > size_ && !(indirect_ && inChain <= kIndirectMax))
          throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "a chain is longer than the queue size");
        chains++;
        inChain = 0;
      }
    }
    if (inChain != 0) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "the last segment must end its chain (flag 2)");
    if (heads.ElementLength() < chains) throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "heads is shorter than the number of chains");
    uint8_t* base = Base(env, "post");
    // A closed kick fd must fail before anything is published, not after.
    if (notify && !kick_.IsEmpty()) FdOf(kick_.Value(), "write");
    uint32_t* headsOut = heads.Data();

    VringDesc* desc = Desc(base);
    uint16_t* ring = AvailRing(base);
    uint16_t avail = availIdx_;
    uint32_t posted = 0;
    uint32_t i = 0;
    while (i < nsegs) {
      uint32_t n = 0;
      while (!(s[3 * (i + n) + 2] & kSegEnd)) n++;
      n++;
      bool useIndirect = indirect_ && n > 1 && n <= kIndirectMax;
      uint32_t need = useIndirect ? 1 : n;
      if (need > numFree_) break;
      uint16_t head = freeHead_;
      if (useIndirect) {
        VringDesc* table = IndirectTable(base, head);
        for (uint32_t k = 0; k < n; k++) {
          const uint32_t* seg = s + 3 * (i + k);
          table[k].addr = htole64(regionGpa_ + seg[0]);
          table[k].len = htole32(seg[1]);
          table[k].flags = htole16(static_cast<uint16_t>(((seg[2] & kSegWritable) ? kDescWrite : 0) | (k + 1 < n ? kDescNext : 0)));
          table[k].next = htole16(static_cast<uint16_t>(k + 1 < n ? k + 1 : 0));
        }
        uint64_t tableOff = reinterpret_cast<uint8_t*>(table) - base;
        desc[head].addr = htole64(regionGpa_ + tableOff);
        desc[head].len = htole32(16 * n);
        desc[head].flags = htole16(kDescIndirect);
        desc[head].next = 0;
        freeHead_ = next_[head];
      } else {
        uint16_t d = head;
        for (uint32_t k = 0; k < n; k++) {
          const uint32_t* seg = s + 3 * (i + k);
          desc[d].addr = htole64(regionGpa_ + seg[0]);
          desc[d].len = htole32(seg[1]);
          uint16_t nxt = next_[d];
          desc[d].flags = htole16(static_cast<uint16_t>(((seg[2] & kSegWritable) ? kDescWrite : 0) | (k + 1 < n ? kDescNext : 0)));
          desc[d].next = htole16(nxt);
          if (k + 1 == n) freeHead_ = nxt;
          d = nxt;
        }
      }
      numFree_ -= need;
      chainLen_[head] = static_cast<uint16_t>(need);
      ring[avail & (size_ - 1)] = htole16(head);
      avail++;
      headsOut[posted++] = head;
      i += n;
    }
    if (posted > 0) {
      // Everything above becomes visible before the device sees the new index.
      StoreRelease16(AvailIdx(base), avail);
      availIdx_ = avail;
      pendingSinceKick_ += posted;
      if (notify) {
        // The chains are published: a failed kick must not hide that from JS,
        // or a retry would post the same buffers twice. NotifyNow keeps the
        // pending count on failure, so a later notify() retries the kick.
        try {
          NotifyNow(env, base);
        } catch (const Napi::Error&) {
        }
      }
    }
    return Napi::Number::New(env, posted);
  }

  // Kick the device if it asked for it (spec 2.7.13.4). A full barrier first:
  // our avail->idx store must be visible before we read its suppression hint,
  // or both sides could wait for each other.
  bool NotifyNow(Napi::Env env, uint8_t* base) {
    if (pendingSinceKick_ == 0) return false;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t newIdx = availIdx_;
    uint16_t oldIdx = static_cast<uint16_t>(newIdx - pendingSinceKick_);
    bool wanted = eventIdx_ ? NeedEvent(Load16(AvailEvent(base)), newIdx, oldIdx) || pendingSinceKick_ >= 65536
                            : !(Load16(UsedFlags(base)) & kUsedNoNotify);
    if (!wanted) {
      pendingSinceKick_ = 0;
      kicksSuppressed_++;
      return false;
    }
    if (kick_.IsEmpty()) {
      pendingSinceKick_ = 0;
      return false;
    }
    int fd = FdOf(kick_.Value(), "write");
    uint64_t one = 1;
    ssize_t n;
    do {
      n = ::write(fd, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
    // EAGAIN: the counter is saturated, so the device has a kick pending anyway.
    if (n < 0 && errno != EAGAIN) throw ErrnoError(env, errno, "write", PathOf(kick_.Value()));
    pendingSinceKick_ = 0;  // only once the kick is out: a failed one is retried by notify()
    kicks_++;
    return true;
  }

  Napi::Value Notify(const Napi::CallbackInfo& info) {
    uint8_t* base = Base(info.Env(), "notify");
    return Napi::Boolean::New(info.Env(), NotifyNow(info.Env(), base));
  }

  // collect(out, max): up to max used entries as pairs (head, len) in out;
  // their descriptors go back to the free list. Returns the number collected.
  Napi::Value Collect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Uint32Array out = U32ArrayArg(info[0], "out");
    uint32_t max = U32Arg(info[1], "max");
    if (static_cast<uint64_t>(max) * 2 > out.ElementLength())
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "max is larger than out holds (2 entries each)");
    uint8_t* base = Base(env, "collect");
    uint16_t usedIdx = LoadAcquire16(UsedIdx(base));  // entries below it are complete
    uint16_t ready = static_cast<uint16_t>(usedIdx - lastUsed_);
    if (ready > size_) throw DeviceError(env, "used->idx moved " + std::to_string(ready) + " entries past the last seen");
    uint32_t n = ready < max ? ready : max;
    uint32_t* o = out.Data();
    const uint8_t* usedRing = UsedRing(base);
    for (uint32_t k = 0; k < n; k++) {
      const uint8_t* elem = usedRing + 8 * (lastUsed_ & (size_ - 1));
      uint32_t id, len;
      std::memcpy(&id, elem, 4);
      std::memcpy(&len, elem + 4, 4);
      id = le32toh(id);
      len = le32toh(len);
      if (id >= size_ || chainLen_[id] == 0) throw DeviceError(env, "used id " + std::to_string(id) + " is not a buffer in flight");
      // Return the chain to the free list, following our own copy of next.
      uint16_t count = chainLen_[id];
      uint16_t last = static_cast<uint16_t>(id);
      for (uint16_t c = 1; c < count; c++) last = next_[last];
      next_[last] = freeHead_;
      freeHead_ = static_cast<uint16_t>(id);
      numFree_ += count;
      chainLen_[id] = 0;
      o[2 * k] = id;
      o[2 * k + 1] = len;
      lastUsed_++;
    }
    if (n > 0 && callbacksOn_ && eventIdx_) Store16(UsedEvent(base), lastUsed_);
    return Napi::Number::New(env, n);
  }

  // enableCallbacks(delayed): ask the device to signal the call eventfd at the
  // next used entry (or, delayed, when about 3/4 of the buffers in flight are
  // used). Returns true when entries are already waiting (collect now: the
  // device may have added them before it saw the request).
  Napi::Value EnableCallbacks(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool delayed = info[0].ToBoolean().Value();
    uint8_t* base = Base(env, "enableCallbacks");
    callbacksOn_ = true;
    uint16_t inFlight = static_cast<uint16_t>(availIdx_ - lastUsed_);
    uint16_t event = delayed ? static_cast<uint16_t>(lastUsed_ + inFlight * 3 / 4) : lastUsed_;
    if (eventIdx_) Store16(UsedEvent(base), event);
    else Store16(AvailFlags(base), 0);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  // publish the request before re-reading used->idx
    uint16_t usedIdx = LoadAcquire16(UsedIdx(base));
    bool pending = delayed ? static_cast<uint16_t>(usedIdx - lastUsed_) > static_cast<uint16_t>(event - lastUsed_)
                           : usedIdx != lastUsed_;
    return Napi::Boolean::New(env, pending);
  }

  // disableCallbacks(): a hint only; the device may still signal. With
  // EVENT_IDX the used_event is put half the index space away.
  void DisableCallbacks(const Napi::CallbackInfo& info) {
    uint8_t* base = Base(info.Env(), "disableCallbacks");
    callbacksOn_ = false;
    if (eventIdx_) Store16(UsedEvent(base), static_cast<uint16_t>(lastUsed_ + 0x8000));
    else Store16(AvailFlags(base), kAvailNoInterrupt);
  }

  Napi::Error DeviceError(Napi::Env env, const std::string& what) {
    return CodeError(env, "ERR_VHOST_DEVICE", "the device broke the ring protocol: " + what);
  }

  // lend(offset, len): an ArrayBuffer of its own over [offset, offset + len)
  // of the mapping (no copy), so that one buffer slot can be handed out and
  // taken back on its own: revoke() detaches it without touching the others.
  // A plain N-API external ArrayBuffer with no finalizer (the memory belongs
  // to the mapping), so prebuilds stay ABI-stable. The cost is Node's: each
  // external buffer carries a weak handle, a cleanup hook and a record that
  // is freed from an immediate once the buffer is detached or collected;
  // that is why lent frames are slower than the copy path (bench/README.md,
  // packets). lendBatch()/revokeAll() at least pay one addon call per batch.
  // Nothing here keeps the pages mapped: lib/virtio's Virtqueue registers
  // with GuestMemory, whose close() (and GC safety net) revokes every buffer
  // still lent before it unmaps.
  Napi::Value Lend(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t off = U32Arg(info[0], "offset");
    uint32_t len = U32Arg(info[1], "len");
    uint8_t* base = Base(env, "lend");
    if (len == 0 || !Inside(off, len)) throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "lend: [offset, offset + len) is outside the memory region");
    return Napi::ArrayBuffer::New(env, base + off, len);
  }

  // lendBatch(ranges, n, out): lend() for n (offset, len) pairs of ranges in
  // one call; out[i] gets the buffer of pair i. Every pair is checked before
  // any buffer is made, so a bad one lends nothing; if making one fails,
  // those made so far are detached again before the error goes up. Returns n.
  // out must be the caller's own array whose first n elements are already
  // plain data properties (lib/virtio keeps one private, pre-filled): storing
  // into a hole could call an index setter inherited from Array.prototype,
  // i.e. run JS (which could unmap the memory) between two buffers.
  Napi::Value LendBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Uint32Array ranges = U32ArrayArg(info[0], "ranges");
    uint32_t n = U32Arg(info[1], "n");
    if (!info[2].IsArray()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "lendBatch: out must be an array");
    Napi::Array out = info[2].As<Napi::Array>();
    if (static_cast<uint64_t>(n) * 2 > ranges.ElementLength())
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "lendBatch: n is larger than ranges holds (2 entries each)");
    if (n > out.Length()) throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "lendBatch: n is larger than out");
    uint8_t* base = Base(env, "lendBatch");
    // A private copy, as post() does: nothing below may see the pairs change after the checks.
    rangeScratch_.assign(ranges.Data(), ranges.Data() + static_cast<size_t>(n) * 2);
    const uint32_t* r = rangeScratch_.data();
    for (uint32_t i = 0; i < n; i++) {
      if (r[2 * i + 1] == 0 || !Inside(r[2 * i], r[2 * i + 1]))
        throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "lendBatch: range " + std::to_string(i) + " is empty or outside the memory region");
    }
    uint32_t made = 0;
    try {
      for (; made < n; made++) out.Set(made, Napi::ArrayBuffer::New(env, base + r[2 * made], r[2 * made + 1]));
    } catch (const Napi::Error&) {
      // Never leave a buffer over the mapping that the caller does not know of.
      for (uint32_t i = 0; i < made; i++) {
        Napi::Value v = out.Get(i);
        if (v.IsArrayBuffer() && !v.As<Napi::ArrayBuffer>().IsDetached()) v.As<Napi::ArrayBuffer>().Detach();
      }
      throw;
    }
    return Napi::Number::New(env, n);
  }

  // revoke(buffer): detaches a buffer lend() made (every view of it reads as
  // empty from now on). Idempotent.
  void Revoke(const Napi::CallbackInfo& info) {
    if (!info[0].IsArrayBuffer()) throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "revoke: buffer must be an ArrayBuffer");
    Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
    if (!buffer.IsDetached()) buffer.Detach();
  }

  // revokeAll(buffers, n): revoke() for buffers[0..n) in one call. Every
  // entry must be an ArrayBuffer (checked before any is detached).
  void RevokeAll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "revokeAll: buffers must be an array");
    Napi::Array buffers = info[0].As<Napi::Array>();
    uint32_t n = U32Arg(info[1], "n");
    if (n > buffers.Length()) throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "revokeAll: n is larger than the array");
    for (uint32_t i = 0; i < n; i++) {
      if (!buffers.Get(i).IsArrayBuffer())
        throw CodeError(env, "ERR_VHOST_INVALID_ARG", "revokeAll: buffers[" + std::to_string(i) + "] must be an ArrayBuffer");
    }
    for (uint32_t i = 0; i < n; i++) {
      // Read again, not assumed: an accessor on the array could answer differently the second time.
      Napi::Value v = buffers.Get(i);
      if (!v.IsArrayBuffer()) continue;
      Napi::ArrayBuffer buffer = v.As<Napi::ArrayBuffer>();
      if (!buffer.IsDetached()) buffer.Detach();
    }
  }

  // copyOut(ranges, n, dst): copies the n (offset, len) pairs of ranges one
  // after the other into dst (a Uint8Array) from its byte 0, and returns the
  // bytes copied. Every pair is checked (inside the region; the total fits
  // dst) before anything is copied. One call copies a whole RX batch out of
  // its slots: per frame, JS then makes only a view of dst, where a copy of
  // its own cost an allocation, a view of the slot and a set() (issue 18).
  Napi::Value CopyOut(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Uint32Array ranges = U32ArrayArg(info[0], "ranges");
    uint32_t n = U32Arg(info[1], "n");
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "copyOut: dst must be a Uint8Array");
    Napi::Uint8Array dst = info[2].As<Napi::Uint8Array>();
    if (static_cast<uint64_t>(n) * 2 > ranges.ElementLength())
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "copyOut: n is larger than ranges holds (2 entries each)");
    uint8_t* base = Base(env, "copyOut");
    // A private copy, as lendBatch() takes: the pairs cannot change (or be overwritten by the copies) after the checks.
    rangeScratch_.assign(ranges.Data(), ranges.Data() + static_cast<size_t>(n) * 2);
    const uint32_t* r = rangeScratch_.data();
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
      if (!Inside(r[2 * i], r[2 * i + 1]))
        throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "copyOut: range " + std::to_string(i) + " is outside the memory region");
      total += r[2 * i + 1];
    }
    if (total > dst.ByteLength())
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "copyOut: the ranges hold " + std::to_string(total) + " bytes, dst only " + std::to_string(dst.ByteLength()));
    uint8_t* out = dst.Data();
    for (uint32_t i = 0; i < n; i++) {
      std::memmove(out, base + r[2 * i], r[2 * i + 1]);  // memmove: dst may be a view of the mapping itself
      out += r[2 * i + 1];
    }
    return Napi::Number::New(env, static_cast<double>(total));
  }

  // Drops the references (the mapping may be unmapped now); idempotent.
  void Close(const Napi::CallbackInfo&) {
    closed_ = true;
    buffer_.Reset();
    kick_.Reset();
  }

  Napi::Value GetSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), size_); }
  Napi::Value GetNumFree(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), numFree_); }
  Napi::Value GetAvailIdx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), availIdx_); }
  Napi::Value GetLastUsedIdx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), lastUsed_); }
  Napi::Value GetKicks(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(kicks_)); }
  Napi::Value GetKicksSuppressed(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(kicksSuppressed_));
  }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }

  Napi::Reference<Napi::ArrayBuffer> buffer_;
  Napi::ObjectReference kick_;
  size_t length_ = 0;
  uint64_t regionGpa_ = 0;
  uint64_t descOff_ = 0, availOff_ = 0, usedOff_ = 0;
  uint32_t size_ = 0;
  bool eventIdx_ = false;
  bool indirect_ = false;
  bool callbacksOn_ = true;
  bool closed_ = false;
  std::vector<uint16_t> next_;      // driver's copy of each descriptor's next
  std::vector<uint16_t> chainLen_;  // descriptors held by each head in flight (0: free)
  std::vector<uint32_t> segScratch_;  // post()'s copy of segs, kept for its capacity
  std::vector<uint32_t> rangeScratch_;  // lendBatch()'s and copyOut()'s copy of ranges, likewise
  uint16_t freeHead_ = 0;
  uint32_t numFree_ = 0;
  uint16_t availIdx_ = 0;  // shadow of avail->idx
  uint16_t lastUsed_ = 0;  // next used entry to read
  uint32_t pendingSinceKick_ = 0;
  uint64_t kicks_ = 0;
  uint64_t kicksSuppressed_ = 0;
};

}  // namespace

void InitVirtqueue(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Virtqueue::Define(env);
  // The class is reachable only through this factory (not exported itself).
  Napi::FunctionReference* ref = new Napi::FunctionReference(Napi::Persistent(ctor));
  env.AddCleanupHook([ref]() { delete ref; });
  exports.Set("virtqueueCreate", Napi::Function::New(
                                     env,
                                     [ref](const Napi::CallbackInfo& info) -> Napi::Value {
                                       return ref->New({info[0], info[1], info[2], info[3]});
                                     },
                                     "virtqueueCreate"));
}

}  // namespace vhost
