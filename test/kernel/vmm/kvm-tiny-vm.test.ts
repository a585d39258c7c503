// KVM wiring end to end with a real (tiny) guest: real-mode code in
// GuestMemory, run on a vCPU by test/kernel/vmm/fixtures/tiny-vcpu.c, writes the
// TX queue index to the notify address. The ioeventfd turns that write into
// vhost-net's kick, vhost sends the frame the "driver" (this test) left on the
// TX ring to the tap, and vhost's call reaches the guest as IRQ 5 through the
// irqfd and the in-kernel PIC; the guest's handler counts it in memory.
// The vCPU runs on Node's own thread (a VM answers only the process that
// created it), inside a blocking call: no JavaScript runs between the guest's
// write and the frame on the tap. Controls: without the ioeventfd the write
// exits to userspace and nothing is sent; attaching the backend alone sends
// what is posted (why the rig posts after it); another process gets EIO.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { Kvm, type IoeventfdSpec } from '../../../lib/vmm/kvm';
import { GuestMemory } from '../../../lib/core/memory';
import { Tap } from '../../../lib/netdev/tap';
import { VhostNet, VHOST_NET_TX } from '../../../lib/vhost/net';
import { Virtqueue, placeVirtqueue } from '../../../lib/virtio/virtqueue';
import { describeKernel, closeAfterEach } from '../../support/helpers';
import { capture, TEST_ETHERTYPE, type Capture } from '../../support/net-helpers';

// Guest-physical layout: 512 KiB of RAM at 0, everything below 64 KiB so DS = 0 reaches it.
const MEM_SIZE = 0x80000;
const MARKER = 0x600; // interrupts the guest's handler counted
const CODE = 0x1000; // entry point (CS:IP = 0000:1000)
const HANDLER = 0x1100; // the IRQ 5 handler
const TX_RING = 0x10000n;
const FRAME = 0x20000n;
const QUEUE_SIZE = 16;
// Notify addresses: MMIO above RAM (no slot there, so the write leaves the
// vCPU) yet below 1 MiB (reachable from real mode), and an I/O port.
const NOTIFY_MMIO = 0xb0000;
const NOTIFY_PIO = 0x500;
const EXIT_PORT = 0x10; // the guest's "done"
const GSI = 5; // default routing after KVM_CREATE_IRQCHIP: GSI 5 = master PIC IRQ 5
const VECTOR_BASE = 0x20; // ICW2: IRQ 5 arrives as vector 0x25
const VNET_HDR = 12; // VERSION_1: struct virtio_net_hdr_mrg_rxbuf

type Asm = [bytes: number[], mnemonic: string][];
const lo = (v: number): number => v & 0xff;
const hi = (v: number): number => (v >> 8) & 0xff;
const assemble = (code: Asm): Buffer => Buffer.from(code.flatMap(([bytes]) => bytes));

/** 16-bit real-mode code at CODE: set up the IVT and the PIC, kick queue `VHOST_NET_TX`, wait for the interrupt, exit. */
function mainCode(kick: 'mmio' | 'pio'): Asm {
  const vectorSlot = (VECTOR_BASE + GSI) * 4;
  const kickCode: Asm =
    kick === 'mmio'
      ? [
          [[0xb8, lo(NOTIFY_MMIO >> 4), hi(NOTIFY_MMIO >> 4)], 'mov ax, NOTIFY_MMIO >> 4'],
          [[0x8e, 0xc0], 'mov es, ax'],
          [[0x26, 0xc7, 0x06, 0x00, 0x00, VHOST_NET_TX, 0x00], 'mov word es:[0], VHOST_NET_TX  ; the kick'],
        ]
      : [
          [[0xba, lo(NOTIFY_PIO), hi(NOTIFY_PIO)], 'mov dx, NOTIFY_PIO'],
          [[0xb8, VHOST_NET_TX, 0x00], 'mov ax, VHOST_NET_TX'],
          [[0xef], 'out dx, ax  ; the kick'],
        ];
  return [
    [[0xfa], 'cli'],
    [[0x31, 0xc0], 'xor ax, ax'],
    [[0x8e, 0xd8], 'mov ds, ax'],
    [[0x8e, 0xd0], 'mov ss, ax'],
    [[0xbc, 0x00, 0x80], 'mov sp, 0x8000'],
    [[0xc7, 0x06, lo(vectorSlot), hi(vectorSlot), lo(HANDLER), hi(HANDLER)], 'mov word [IVT 0x25 offset], HANDLER'],
    [[0xc7, 0x06, lo(vectorSlot + 2), hi(vectorSlot + 2), 0x00, 0x00], 'mov word [IVT 0x25 segment], 0'],
    [[0xb0, 0x11, 0xe6, 0x20], 'mov al, 0x11 ; out 0x20, al  ; ICW1: edge triggered, cascade, ICW4 follows'],
    [[0xb0, VECTOR_BASE, 0xe6, 0x21], 'mov al, VECTOR_BASE ; out 0x21, al  ; ICW2: IRQ n is vector VECTOR_BASE + n'],
    [[0xb0, 0x04, 0xe6, 0x21], 'mov al, 0x04 ; out 0x21, al  ; ICW3: slave on IRQ 2'],
    [[0xb0, 0x01, 0xe6, 0x21], 'mov al, 0x01 ; out 0x21, al  ; ICW4: 8086 mode, normal EOI'],
    [[0xb0, 0xff & ~(1 << GSI), 0xe6, 0x21], 'mov al, ~(1 << 5) ; out 0x21, al  ; OCW1: only IRQ 5 unmasked'],
    ...kickCode,
    // wait: (sti; hlt cannot lose the interrupt: sti holds interrupts off for one more instruction)
    [[0xfa], 'wait: cli'],
    [[0x80, 0x3e, lo(MARKER), hi(MARKER), 0x00], 'cmp byte [MARKER], 0'],
    [[0x75, 0x04], 'jne done'],
    [[0xfb], 'sti'],
    [[0xf4], 'hlt  ; in the kernel: KVM wakes the vCPU for the interrupt'],
    [[0xeb, 0x100 - 12], 'jmp wait'],
    [[0xe6, EXIT_PORT], 'done: out EXIT_PORT, al'],
  ];
}

/** The IRQ 5 handler at HANDLER: count, EOI, return. */
const handlerCode: Asm = [
  [[0xfe, 0x06, lo(MARKER), hi(MARKER)], 'inc byte [MARKER]'],
  [[0x50], 'push ax'],
  [[0xb0, 0x20, 0xe6, 0x20], 'mov al, 0x20 ; out 0x20, al  ; non-specific EOI to the master PIC'],
  [[0x58], 'pop ax'],
  [[0xcf], 'iret'],
];

/** An Ethernet frame of TEST_ETHERTYPE, broadcast from a local MAC, carrying `payload`. */
function testFrame(payload: string): Buffer {
  const frame = Buffer.alloc(60);
  frame.fill(0xff, 0, 6);
  Buffer.from([0x02, 0, 0, 0, 0, 0x25]).copy(frame, 6);
  frame.writeUInt16BE(TEST_ETHERTYPE, 12);
  frame.write(payload, 14);
  return frame;
}

/** What the tiny-vcpu addon reports (see test/kernel/vmm/fixtures/tiny-vcpu.c). */
interface RunResult {
  status: number;
  line: string;
}

describeKernel('KVM tiny VM: notify write → ioeventfd → vhost-net → tap; call → irqfd → guest IRQ', ['/dev/kvm', '/dev/vhost-net', '/dev/net/tun'], () => {
  const track = closeAfterEach();
  const addonPath = path.join(os.tmpdir(), `tiny-vcpu-${process.pid}.node`);
  let runVcpu: (vmFd: number, entry: number, exitPort: number, timeoutS: number) => RunResult;

  beforeAll(() => {
    const headers = path.join(__dirname, '..', '..', '..', 'node_modules', 'node-api-headers', 'include');
    const source = path.join(__dirname, 'fixtures', 'tiny-vcpu.c');
    execFileSync('cc', ['-O2', '-Wall', '-Werror', '-shared', '-fPIC', '-I', headers, '-o', addonPath, source]);
    ({ runVcpu } = require(addonPath));
  });
  afterAll(() => fs.rmSync(addonPath, { force: true }));

  /** Runs vCPU 0 of `vm` from CODE until the guest exits (or `timeoutS`); Node blocks meanwhile. */
  const runGuest = (vmFd: number, timeoutS = 20): RunResult => runVcpu(vmFd, CODE, EXIT_PORT, timeoutS);

  /** Captures on the tap; the capture process is killed after the test. */
  async function startCapture(ifname: string, timeoutS: number): Promise<Capture> {
    const cap = await capture(ifname, 1, timeoutS);
    cap.frames.catch(() => {}); // awaited by the test; a failed test must not leave an unhandled rejection
    track({ close: () => cap.proc.kill() });
    return cap;
  }

  /**
   * A VM with RAM and an irqchip, vhost-net's TX queue on the same pages with
   * its kick as an ioeventfd at `notify` and its call as an irqfd on GSI 5, a
   * tap, one frame posted on the ring (not kicked), and the guest code loaded.
   */
  function rig(kick: 'mmio' | 'pio', payload: string, { postBeforeAttach = false } = {}) {
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: MEM_SIZE }] }));
    const vm = track(track(Kvm.open()).createVm());
    vm.createIrqchip();
    vm.mapMemory(mem);
    const kickFd = track(EventFd.create());
    const callFd = track(EventFd.create());
    const notify: IoeventfdSpec =
      kick === 'mmio'
        ? { addr: NOTIFY_MMIO, len: 2, eventfd: kickFd, datamatch: VHOST_NET_TX }
        : { addr: NOTIFY_PIO, len: 2, eventfd: kickFd, datamatch: VHOST_NET_TX, space: 'pio' };
    vm.assignIoeventfd(notify);
    vm.assignIrqfd({ eventfd: callFd, gsi: GSI });

    const tap = track(Tap.create({ name: 'kvmt%d', vnetHdrSize: VNET_HDR, up: true }));
    const net = track(VhostNet.open());
    const ring = placeVirtqueue(QUEUE_SIZE, TX_RING);
    net.setOwner();
    net.setFeatures(features.ring.VERSION_1);
    net.setMemTable(mem);
    net.setVringNum(VHOST_NET_TX, QUEUE_SIZE);
    net.setVringBase(VHOST_NET_TX, 0);
    net.setVringAddr(VHOST_NET_TX, { desc: mem.translate(ring.desc), avail: mem.translate(ring.avail), used: mem.translate(ring.used) });
    net.setVringKick(VHOST_NET_TX, kickFd);
    net.setVringCall(VHOST_NET_TX, callFd);
    const vq = track(Virtqueue.create({ memory: mem, size: QUEUE_SIZE, ...ring, kick: null, eventIdx: false }));
    const frame = testFrame(payload);
    const post = (): void => {
      const buf = mem.view(FRAME, VNET_HDR + frame.length);
      buf.fill(0, 0, VNET_HDR); // no offloads
      buf.set(frame, VNET_HDR);
      expect(vq.post([[{ gpa: FRAME, len: buf.length }]], false)).toEqual([0]); // published, not kicked
    };
    if (postBeforeAttach) post();
    net.setBackend(VHOST_NET_TX, tap);
    // Attaching polls the tap as writable and so runs the TX handler once (it
    // sends whatever is posted: see the last test). A device ioctl (SET_MEM_TABLE
    // again) flushes vhost's worker, so that run is over before the frame is
    // posted and only a kick can send it.
    net.setMemTable(mem);
    if (!postBeforeAttach) post();

    mem.view(CODE, 0x100).set(assemble(mainCode(kick)));
    mem.view(HANDLER, 0x20).set(assemble(handlerCode));
    const marker = mem.view(MARKER, 1);
    marker[0] = 0;
    return { mem, vm, net, tap, vq, notify, frame, marker, kickFd };
  }

  test.each(['mmio', 'pio'] as const)('%s notify: the frame leaves on the tap, the guest takes the call as IRQ 5, no exit to userspace', async (kick) => {
    const payload = `tiny-vm ${kick} ${process.pid} ${Date.now()}`;
    const r = rig(kick, payload);
    const cap = await startCapture(r.tap.name, 30);
    const run = runGuest(r.vm.fd);
    // KVM reports the `out` itself (the last 2 bytes): it completes the instruction at the next KVM_RUN.
    const exitAt = CODE + assemble(mainCode(kick)).length - 2;
    expect(run).toMatchObject({ status: 0, line: expect.stringMatching(new RegExp(`^done rip=0x${exitAt.toString(16)} `)) });
    const frames = await cap.frames;
    expect(frames).toHaveLength(1);
    expect(frames[0].subarray(0, r.frame.length).equals(r.frame)).toBe(true);
    expect(r.marker[0]).toBe(1); // exactly one interrupt reached the handler
    expect(r.vq.collect()).toEqual([{ head: 0, len: 0 }]); // TX: vhost consumed it, wrote nothing
    expect(r.net.getVringBase(VHOST_NET_TX)).toBe(1);
    expect(r.kickFd.read()).toBe(1n); // the ioeventfd's one signal (vhost is woken by it, never reads it)
  });

  test('without the ioeventfd the notify write exits to userspace as KVM_EXIT_MMIO and nothing is sent', async () => {
    const r = rig('mmio', `tiny-vm no-ioeventfd ${process.pid}`);
    r.vm.deassignIoeventfd(r.notify);
    const cap = await startCapture(r.tap.name, 2);
    const run = runGuest(r.vm.fd);
    expect(run.status).toBe(3);
    expect(run.line).toMatch(new RegExp(`^mmio addr=0x${NOTIFY_MMIO.toString(16)} len=2 write=1 data=0x${VHOST_NET_TX} rip=`));
    expect(await cap.frames).toEqual([]);
    expect(r.marker[0]).toBe(0);
    expect(r.vq.collect()).toEqual([]);
    expect(r.net.getVringBase(VHOST_NET_TX)).toBe(0);
    expect(r.kickFd.read()).toBeNull();
    // The frame was ready all along: a kick (here from JS) sends it.
    const again = await startCapture(r.tap.name, 30);
    r.kickFd.write(1n);
    const frames = await again.frames;
    expect(frames).toHaveLength(1);
    expect(frames[0].subarray(0, r.frame.length).equals(r.frame)).toBe(true);
  });

  test('NET_SET_BACKEND sends what is already on the TX ring, without any kick', () => {
    const r = rig('mmio', `tiny-vm attach ${process.pid}`, { postBeforeAttach: true });
    // rig()'s flush (SET_MEM_TABLE after attaching) has waited for that handler run.
    expect(r.vq.collect()).toEqual([{ head: 0, len: 0 }]);
    expect(fs.readFileSync(`/sys/class/net/${r.tap.name}/statistics/rx_packets`, 'utf8').trim()).toBe('1');
    expect(r.kickFd.read()).toBeNull(); // nobody kicked: neither the guest (never run) nor JS
  });

  test('the VM answers only the process that created it: a child holding its fd gets EIO', () => {
    const r = rig('mmio', `tiny-vm child ${process.pid}`);
    const dist = path.join(__dirname, '..', '..', '..', 'dist', 'index.js');
    if (!fs.existsSync(dist)) throw new Error(`${dist} is missing: run npm run build:ts first`);
    const script = `
      const { KvmVm, EventFd } = require(${JSON.stringify(dist)});
      const tryIt = (fn) => { try { fn(); console.log('ok') } catch (e) { console.log(e.code || e.message, e.syscall || '') } };
      tryIt(() => require(${JSON.stringify(addonPath)}).runVcpu(3, 0, 0, 1));
      tryIt(() => KvmVm.fromFd(3).assignIoeventfd({ addr: 0xd0000, len: 2, eventfd: EventFd.create() }));`;
    const child = spawnSync(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit', r.vm.fd], encoding: 'utf8', timeout: 60_000 });
    expect(child.stdout.trim().split('\n')).toEqual(['tiny-vcpu: KVM_CREATE_VCPU: Input/output error ', 'EIO ioctl(KVM_IOEVENTFD)']);
  });
});
