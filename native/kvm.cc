// KVM: the ioctls that wire vhost into a KVM VM the user's VMM created —
// ioeventfd (guest notify write → kick eventfd), irqfd (call eventfd →
// guest interrupt) and memory slots. Plus KVM_CREATE_VM / KVM_CREATE_IRQCHIP,
// so a VM can be made without a VMM (tests, tiny VMs).
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <cstring>

#include "addon.h"

namespace vhost {

// kvmGetApiVersion(kvm): KVM_GET_API_VERSION on /dev/kvm (12 on every kernel since 2.6.22).
static Napi::Value KvmGetApiVersion(const Napi::CallbackInfo& info) {
  int v = IoctlOn(info[0], KVM_GET_API_VERSION, nullptr, "KVM_GET_API_VERSION");
  return Napi::Number::New(info.Env(), v);
}

// kvmCreateVm(kvm): a VM fd (machine type 0); the kernel opens it O_CLOEXEC.
static Napi::Value KvmCreateVm(const Napi::CallbackInfo& info) {
  int fd = IoctlOn(info[0], KVM_CREATE_VM, nullptr, "KVM_CREATE_VM");
  return WrapFd(info.Env(), fd, "kvm-vm");
}

// kvmCreateIrqchip(vm): the in-kernel PIC/IOAPIC (x86) that irqfds inject into.
static Napi::Value KvmCreateIrqchip(const Napi::CallbackInfo& info) {
  IoctlOn(info[0], KVM_CREATE_IRQCHIP, nullptr, "KVM_CREATE_IRQCHIP");
  return info.Env().Undefined();
}

// kvmIoeventfd(vm, addr, len, fd, flags, datamatch): flags are KVM_IOEVENTFD_FLAG_*.
static Napi::Value KvmIoeventfd(const Napi::CallbackInfo& info) {
  struct kvm_ioeventfd io;
  std::memset(&io, 0, sizeof io);
  io.addr = U64Arg(info[1], "addr");
  io.len = U32Arg(info[2], "len");
  io.fd = FdArg(info[3], "ioctl(KVM_IOEVENTFD)");
  io.flags = U32Arg(info[4], "flags");
  io.datamatch = U64Arg(info[5], "datamatch");
  IoctlOn(info[0], KVM_IOEVENTFD, &io, "KVM_IOEVENTFD");
  return info.Env().Undefined();
}

// kvmIrqfd(vm, fd, gsi, flags, resampleFd): flags are KVM_IRQFD_FLAG_*; resampleFd -1 for none.
static Napi::Value KvmIrqfd(const Napi::CallbackInfo& info) {
  struct kvm_irqfd irq;
  std::memset(&irq, 0, sizeof irq);
  irq.fd = static_cast<uint32_t>(FdArg(info[1], "ioctl(KVM_IRQFD)"));
  irq.gsi = U32Arg(info[2], "gsi");
  irq.flags = U32Arg(info[3], "flags");
  int resample = FdArg(info[4], "ioctl(KVM_IRQFD)");
  irq.resamplefd = resample < 0 ? 0 : static_cast<uint32_t>(resample);
  IoctlOn(info[0], KVM_IRQFD, &irq, "KVM_IRQFD");
  return info.Env().Undefined();
}

// kvmSetUserMemoryRegion(vm, slot, flags, gpa, size, hva): size 0 deletes the slot.
static Napi::Value KvmSetUserMemoryRegion(const Napi::CallbackInfo& info) {
  struct kvm_userspace_memory_region r;
  std::memset(&r, 0, sizeof r);
  r.slot = U32Arg(info[1], "slot");
  r.flags = U32Arg(info[2], "flags");
  r.guest_phys_addr = U64Arg(info[3], "gpa");
  r.memory_size = U64Arg(info[4], "size");
  r.userspace_addr = U64Arg(info[5], "hva");
  IoctlOn(info[0], KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION");
  return info.Env().Undefined();
}

void InitKvm(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmGetApiVersion", Napi::Function::New(env, KvmGetApiVersion, "kvmGetApiVersion"));
  exports.Set("kvmCreateVm", Napi::Function::New(env, KvmCreateVm, "kvmCreateVm"));
  exports.Set("kvmCreateIrqchip", Napi::Function::New(env, KvmCreateIrqchip, "kvmCreateIrqchip"));
  exports.Set("kvmIoeventfd", Napi::Function::New(env, KvmIoeventfd, "kvmIoeventfd"));
  exports.Set("kvmIrqfd", Napi::Function::New(env, KvmIrqfd, "kvmIrqfd"));
  exports.Set("kvmSetUserMemoryRegion", Napi::Function::New(env, KvmSetUserMemoryRegion, "kvmSetUserMemoryRegion"));
}

}  // namespace vhost
