// The package's public surface: what require('linux-vhost') exports. A name
// added to or dropped from lib/index.ts must show up here, so the surface
// changes on purpose (internals such as plan*/check* helpers stay out).
import * as api from '../../../lib/index';

describe('public API (lib/index.ts)', () => {
  test('top-level exports', () => {
    const names = Object.keys(api).filter((k) => k !== 'vsock' && k !== 'netlink').sort();
    expect(names).toEqual([
      'AUTO_CID_ATTEMPTS', 'Bridge', 'BufferPool', 'DEFAULT_MAX_MEM_REGIONS', 'DIRTY_LOG_PAGE_SIZE',
      'DirtyLog', 'ETHERTYPE_ARP', 'ETHERTYPE_IPV4', 'EVENTFD_MAX', 'EventFd', 'FdOwner', 'GuestMemory',
      'INDIRECT_MAX', 'IPPROTO_ICMP', 'IPPROTO_UDP', 'KVM_MEM_LOG_DIRTY_PAGES', 'KVM_MEM_READONLY', 'Kvm',
      'KvmVm', 'LEGACY_VRING_ALIGN', 'Link', 'MAX_QUEUE_PAIRS', 'MAX_QUEUE_SIZE', 'Macvtap', 'NET_VHOST_BITS',
      'NetHandoff', 'NetNs', 'NetResponder', 'Rtnl', 'RunningVhostDevice', 'RunningVhostNet',
      'RunningVhostVsock', 'Tap', 'TapQueue', 'VHOST_NET_RX', 'VHOST_NET_TX', 'VHOST_RING_BITS',
      'VHOST_VSOCK_RX', 'VHOST_VSOCK_TX', 'VIRTIO_NET_HDR_SIZE', 'VRING_ADDR_F_LOG',
      'VSOCK_AUTO_CID_ATTEMPTS', 'VSOCK_CID_MAX', 'VSOCK_CID_MIN', 'VSOCK_HDR_SIZE', 'VSOCK_OP', 'VSOCK_SEQ',
      'VSOCK_SHUTDOWN', 'VSOCK_TYPE', 'VSOCK_VHOST_BITS', 'VhostDevice', 'VhostDeviceBuilder', 'VhostError',
      'VhostNet', 'VhostNetBuilder', 'VhostVsock', 'VhostVsockBuilder', 'VirtioNetGuest',
      'VirtioVsockConnection', 'VirtioVsockGuest', 'Virtqueue', 'VsockHandoff', 'bridge', 'bridgeMacFor',
      'buildArpRequest', 'buildIcmpEcho', 'buildUdp', 'checkAdvisedMtu', 'checkVsockHeader', 'cleanupOrphans',
      'decodeVsockHeader', 'describeFeatures', 'describeOrphan', 'dirtyLogSize', 'encodeVsockHeader',
      'featureList', 'features', 'findProblems', 'formatMac', 'formatMark', 'formatProbe', 'internetChecksum',
      'layoutSplitRing', 'linkFlags', 'listMarked', 'listOrphans', 'memfdSeals', 'mergeMemoryRegions',
      'negotiateNetFeatures', 'negotiateVsockFeatures', 'parseIpv4', 'parseMac', 'parseMark',
      'placeVirtqueue', 'prepareNetForVmm', 'prepareVsockForVmm', 'probe', 'probeToJson', 'qemuArgs',
      'readMaxMemRegions', 'setActiveQueuePairs', 'setCreatorLabel', 'spawnVmm', 'splitRingLayout',
      'stdioFor', 'tapMacFor', 'tapOffloadFor', 'tunFlags', 'tunOffload', 'validateGuestMemoryOptions',
      'validateLinkMtu', 'validateLinkName', 'validateQueueSize', 'virtioNetConfig', 'virtioNetConfigLayout',
      'virtioNetStatus', 'virtqueueFootprint', 'vnetHdrSizeFor', 'vsockGuestFeatures', 'writeVsockHeader',
    ]);
  });

  test('the vsock namespace holds the socket API only (option checks stay internal)', () => {
    expect(Object.keys(api.vsock).sort()).toEqual([
      'VMADDR_CID_ANY', 'VMADDR_CID_HOST', 'VMADDR_CID_HYPERVISOR', 'VMADDR_CID_LOCAL', 'VMADDR_PORT_ANY',
      'VsockServer', 'VsockSocket', 'connect', 'createServer', 'localCid',
    ]);
  });

  test('the netlink namespace exposes the rtnetlink codec', () => {
    expect(Object.keys(api.netlink)).toEqual(expect.arrayContaining(['encodeMessage', 'decodeMessages', 'decodeLinkMessage', 'ifla']));
  });
});
