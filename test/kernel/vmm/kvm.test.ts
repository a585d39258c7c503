// KVM wiring on the real kernel (kvm_amd nested in the test VM): ioeventfd and
// irqfd assign/deassign round trips and memory slots from GuestMemory, each
// read back through what KVM accepts or refuses next.
import { EventFd } from '../../../lib/core/eventfd';
import { Kvm, KvmVm } from '../../../lib/vmm/kvm';
import { GuestMemory } from '../../../lib/core/memory';
import { describeKernel, thrown, closeAfterEach, errnoExpecter, fdFlags, O_CLOEXEC } from '../../support/helpers';

const expectErrno = errnoExpecter('kvm-vm');

describeKernel('KVM wiring', ['/dev/kvm'], () => {
  const track = closeAfterEach();
  const newVm = (): KvmVm => {
    const kvm = track(Kvm.open());
    expect(kvm.apiVersion).toBe(12);
    const vm = track(kvm.createVm());
    expect(fdFlags(vm.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
    return vm;
  };

  test('ioeventfd: MMIO assign, EEXIST for the same one, other datamatch / PIO coexist, deassign, ENOENT after', () => {
    const vm = newVm();
    const kick = track(EventFd.create());
    const spec = { addr: 0xd000_0000n, len: 2, eventfd: kick, datamatch: 1 };
    vm.assignIoeventfd(spec);
    expectErrno(() => vm.assignIoeventfd(spec), 'EEXIST', 'ioctl(KVM_IOEVENTFD)');
    vm.assignIoeventfd({ ...spec, datamatch: 0 }); // queue 0 on the same notify register
    vm.assignIoeventfd({ addr: 0xc000, len: 2, eventfd: kick, space: 'pio' });
    vm.deassignIoeventfd(spec);
    expectErrno(() => vm.deassignIoeventfd(spec), 'ENOENT', 'ioctl(KVM_IOEVENTFD)');
    vm.assignIoeventfd(spec); // free again
    vm.deassignIoeventfd({ ...spec, datamatch: 0 });
    vm.deassignIoeventfd({ addr: 0xc000, len: 2, eventfd: kick, space: 'pio' });
  });

  test('ioeventfd: KVM refuses a bad width, and datamatch without a width', () => {
    const vm = newVm();
    const kick = track(EventFd.create());
    expectErrno(() => vm.assignIoeventfd({ addr: 0x1000n, len: 3, eventfd: kick }), 'EINVAL', 'ioctl(KVM_IOEVENTFD)');
    expectErrno(() => vm.assignIoeventfd({ addr: 0x1000n, len: 0, eventfd: kick, datamatch: 0 }), 'EINVAL', 'ioctl(KVM_IOEVENTFD)');
    expect(thrown(() => vm.assignIoeventfd({ addr: 0x10000, len: 2, eventfd: kick, space: 'pio' })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => vm.assignIoeventfd({ addr: 0x1000n, len: 2, eventfd: null })).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('irqfd: EINVAL without an irqchip; assign, EBUSY for the same eventfd, deassign frees it; resample', () => {
    const vm = newVm();
    const call = track(EventFd.create());
    expectErrno(() => vm.assignIrqfd({ eventfd: call, gsi: 5 }), 'EINVAL', 'ioctl(KVM_IRQFD)');
    vm.createIrqchip();
    expectErrno(() => vm.createIrqchip(), 'EEXIST', 'ioctl(KVM_CREATE_IRQCHIP)');
    vm.assignIrqfd({ eventfd: call, gsi: 5 });
    expectErrno(() => vm.assignIrqfd({ eventfd: call, gsi: 6 }), 'EBUSY', 'ioctl(KVM_IRQFD)');
    call.write(1n); // injected into GSI 5 by the kernel: the counter is consumed
    expect(call.read()).toBeNull();
    vm.deassignIrqfd({ eventfd: call, gsi: 5 });
    vm.assignIrqfd({ eventfd: call, gsi: 6 }); // free again after deassign (the kernel deassigns asynchronously, then flushes)
    vm.deassignIrqfd({ eventfd: call, gsi: 6 });
    const level = track(EventFd.create());
    const resample = track(EventFd.create());
    vm.assignIrqfd({ eventfd: level, gsi: 10, resample });
    vm.deassignIrqfd({ eventfd: level, gsi: 10 });
  });

  test('memory slots: GuestMemory regions mapped, overlap EEXIST, delete frees the range', () => {
    const vm = newVm();
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }, { gpa: 0x100000000n, size: 2 << 20 }] }));
    expect(vm.mapMemory(mem)).toEqual([0, 1]);
    const other = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
    const overlap = { slot: 5, gpa: 0x100000000n + 0x100000n, size: 1 << 20, hva: other.regions[0].hva };
    expectErrno(() => vm.setUserMemoryRegion(overlap), 'EEXIST', 'ioctl(KVM_SET_USER_MEMORY_REGION)');
    vm.deleteMemorySlot(1);
    vm.setUserMemoryRegion(overlap); // the range is free once slot 1 is gone
    expectErrno(() => vm.setUserMemoryRegion({ slot: 6, gpa: 0x1234n, size: 1 << 20, hva: other.regions[0].hva }), 'EINVAL', 'ioctl(KVM_SET_USER_MEMORY_REGION)');
  });

  test('fromFd adopts a VM fd; use after close is ERR_VHOST_CLOSED', () => {
    const vm = newVm();
    vm.close();
    expect(thrown(() => vm.createIrqchip()).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => KvmVm.fromFd(-1)).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});
