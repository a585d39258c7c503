// The package's public surface: what require('linux-vhost') exports. A name
// added to or dropped from lib/index.ts must show up here, so the surface
// changes on purpose (internals such as plan*/check* helpers stay out).
import * as api from '../../../lib/index';

describe('public API (lib/index.ts)', () => {
  test('top-level exports', () => {
    const names = Object.keys(api).filter((k) => k !== 'vsock' && k !== 'netlink').sort();
    expect(names).toEqual([
      'AUTO_CID_ATTEMPTS', 'Bridge', 'BufferPool', 'DEFAULT_MAX_MEM_REGIONS', 'DIRTY_LOG_PAGE_SIZE', 'DirtyLog',
      'ETHERTYPE_ARP', 'ETHERTYPE_IPV4', 'EVENTFD_MAX', 'EventFd', 'FdOwner', 'GuestMemory', 'INDIRECT_MAX',
      'IPPROTO_ICMP', 'IPPROTO_UDP', 'KVM_MEM_LOG_DIRTY_PAGES', 'KVM_MEM_READONLY', 'Kvm', 'KvmVm',
      'LEGACY_VRING_ALIGN', 'Link', 'MAX_FDS_PER_MESSAGE', 'MAX_QUEUE_PAIRS', 'MAX_QUEUE_SIZE', 'Macvtap',
      'NET_VHOST_BITS', 'NetHandoff', 'NetNs', 'NetResponder', 'ReceivedFd', 'Rtnl', 'RunningVhostDevice',
      'RunningVhostNet', 'RunningVhostUser', 'RunningVhostVsock', 'Tap', 'TapQueue', 'UnixServer', 'UnixSocket',
      'VHOST_NET_RX', 'VHOST_NET_TX', 'VHOST_RING_BITS', 'VHOST_USER_DEFAULT_TIMEOUT_MS',
      'VHOST_USER_F_PROTOCOL_FEATURES', 'VHOST_USER_MAX_MEM_REGIONS', 'VHOST_USER_SUPPORTED_PROTOCOL_FEATURES',
      'VHOST_VSOCK_RX', 'VHOST_VSOCK_TX', 'VIRTIO_BLK_CONFIG_READ_SIZE', 'VIRTIO_BLK_OUTHDR_SIZE',
      'VIRTIO_BLK_SECTOR_SIZE', 'VIRTIO_NET_HDR_SIZE', 'VRING_ADDR_F_LOG', 'VSOCK_AUTO_CID_ATTEMPTS',
      'VSOCK_CID_MAX', 'VSOCK_CID_MIN', 'VSOCK_HDR_SIZE', 'VSOCK_OP', 'VSOCK_SEQ', 'VSOCK_SHUTDOWN', 'VSOCK_TYPE',
      'VSOCK_VHOST_BITS', 'VhostDevice', 'VhostDeviceBuilder', 'VhostError', 'VhostNet', 'VhostNetBuilder',
      'VhostUser', 'VhostUserBuilder', 'VhostUserProtocolFeature', 'VhostUserRequest', 'VhostVsock',
      'VhostVsockBuilder', 'VirtioBlkFeature', 'VirtioBlkGuest', 'VirtioBlkStatus', 'VirtioBlkType',
      'VirtioNetGuest', 'VirtioVsockConnection', 'VirtioVsockGuest', 'Virtqueue', 'VsockHandoff', 'bridge',
      'buildArpRequest', 'buildIcmpEcho', 'buildUdp', 'checkAdvisedMtu', 'checkVsockHeader', 'decodeVsockHeader',
      'describeFeatures', 'dirtyLogSize', 'encodeBlkHeader', 'encodeVsockHeader', 'featureList', 'features',
      'findProblems', 'formatMac', 'formatProbe', 'internetChecksum', 'kUnchecked', 'layoutSplitRing', 'linkFlags',
      'memfdSeals', 'mergeMemoryRegions', 'negotiateNetFeatures', 'negotiateVsockFeatures', 'parseIpv4', 'parseMac',
      'parseVirtioBlkConfig', 'placeVirtqueue', 'prepareNetForVmm', 'prepareVsockForVmm', 'probe', 'probeToJson',
      'qemuArgs', 'readMaxMemRegions', 'setActiveQueuePairs', 'spawnVmm', 'splitRingLayout', 'stdioFor',
      'tapMacFor', 'tapOffloadFor', 'tunFlags', 'tunOffload', 'validateGuestMemoryOptions', 'validateLinkMtu',
      'validateLinkName', 'validateQueueSize', 'virtioBlkConfigLayout', 'virtioNetConfig', 'virtioNetConfigLayout',
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
