// The package's public surface: what require('linux-vhost') exports. A name
// added to or dropped from lib/index.ts must show up here, so the surface
// changes on purpose. Internals (plan*/check*/validate* helpers, feature
// negotiation, header codecs) stay out: their tests import their modules.
import * as api from '../../../lib/index';

describe('public API (lib/index.ts)', () => {
  test('top-level exports, exactly', () => {
    expect(Object.keys(api).sort()).toEqual([
      'Bridge', 'BufferPool', 'DEVICE_QUEUE_MAX_READABLE', 'DIRTY_LOG_PAGE_SIZE', 'DeviceMemory', 'DeviceQueue',
      'DirtyLog', 'ETHERTYPE_ARP', 'ETHERTYPE_IPV4', 'EVENTFD_MAX', 'EventFd', 'FdOwner', 'GuestMemory',
      'HybridVsockServer', 'INDIRECT_MAX', 'IPPROTO_ICMP', 'IPPROTO_UDP', 'KVM_MEM_LOG_DIRTY_PAGES',
      'KVM_MEM_READONLY', 'Kvm', 'KvmVm', 'LEGACY_VRING_ALIGN', 'Link', 'MAX_FDS_PER_MESSAGE', 'MAX_QUEUE_PAIRS',
      'MAX_QUEUE_SIZE', 'Macvtap', 'NET_SWITCH_MAX_MACS', 'NetHandoff', 'NetNs', 'NetResponder', 'NetSwitch',
      'QMP_DEFAULT_MAX_LINE_BYTES', 'QMP_DEFAULT_TIMEOUT_MS', 'Qmp', 'QmpError', 'RING_BUDGET_MULTIPLIER',
      'ReceivedFd', 'Rtnl', 'RunningVhostDevice', 'RunningVhostNet', 'RunningVhostUser', 'RunningVhostVsock', 'Tap',
      'TapQueue', 'UNPLUG_DEFAULT_TIMEOUT_MS', 'UnixServer', 'UnixSocket', 'VHOST_NET_RX', 'VHOST_NET_TX',
      'VHOST_USER_BACKEND_PROTOCOL_FEATURES', 'VHOST_USER_DEFAULT_TIMEOUT_MS', 'VHOST_USER_F_PROTOCOL_FEATURES',
      'VHOST_USER_MAX_MEM_REGIONS', 'VHOST_USER_NET_FEATURES', 'VHOST_USER_NET_RX', 'VHOST_USER_NET_TX',
      'VHOST_USER_SUPPORTED_PROTOCOL_FEATURES', 'VHOST_USER_VSOCK_RX', 'VHOST_USER_VSOCK_TX', 'VHOST_VSOCK_RX',
      'VHOST_VSOCK_TX', 'VIRTIO_BLK_SECTOR_SIZE', 'VIRTIO_NET_HDR_SIZE', 'VRING_ADDR_F_LOG',
      'VSOCK_AUTO_CID_ATTEMPTS', 'VSOCK_CID_MAX', 'VSOCK_CID_MIN', 'VSOCK_HDR_SIZE', 'VSOCK_MAX_PAYLOAD', 'VSOCK_OP',
      'VSOCK_SEQ', 'VSOCK_SHUTDOWN', 'VSOCK_TYPE', 'VhostDevice', 'VhostDeviceBuilder', 'VhostError', 'VhostNet',
      'VhostNetBuilder', 'VhostUser', 'VhostUserBackend', 'VhostUserBuilder', 'VhostUserNet',
      'VhostUserProtocolFeature', 'VhostUserRequest', 'VhostUserRing', 'VhostUserVsock',
      'VhostVsock', 'VhostVsockBuilder', 'VirtioBlkFeature', 'VirtioBlkGuest', 'VirtioBlkStatus', 'VirtioBlkType',
      'VirtioNetGuest', 'VirtioVsockConnection', 'VirtioVsockGuest', 'Virtqueue', 'VsockDeviceBackend',
      'VsockDeviceListener', 'VsockGuestChannel', 'VsockHandoff', 'bridge', 'buildArpRequest', 'buildIcmpEcho',
      'buildUdp', 'cleanupOrphans', 'describeFeatures', 'describeOrphan', 'dirtyLogSize', 'featureList', 'features',
      'formatMac', 'formatMark', 'formatProbe', 'hotplugNet', 'hotplugVsock', 'internetChecksum', 'kUnchecked',
      'layoutSplitRing', 'linkFlags', 'listMarked', 'listOrphans', 'memfdSeals', 'netlink', 'parseIpv4', 'parseMac',
      'parseMark', 'placeVirtqueue', 'prepareNetForVmm', 'prepareVsockForVmm', 'probe', 'probeToJson', 'qemuArgs',
      'setActiveQueuePairs', 'setCreatorLabel', 'spawnVmm', 'splitRingLayout', 'tunFlags', 'tunOffload', 'unplugNet',
      'unplugVsock', 'virtioNetConfig', 'virtioNetConfigLayout', 'virtioNetStatus', 'virtqueueFootprint',
      'vsock',
    ]);
  });

  test('helpers used only inside the library are not exported from the root', () => {
    const internal = [
      'planTap', 'checkAdvisedMtu', 'validateLinkName', 'validateLinkMtu', 'validateQueueSize', 'validateGuestMemoryOptions',
      'encodeVsockHeader', 'decodeVsockHeader', 'checkVsockHeader', 'writeVsockHeader', 'putVsockHeader', 'getVsockCid',
      'allocateCid', 'mergeMemoryRegions', 'readMaxMemRegions', 'negotiateNetFeatures', 'negotiateVsockFeatures',
      'vnetHdrSizeFor', 'tapOffloadFor', 'tapMacFor', 'stdioFor', 'checkNetFds', 'tapNetdevProps', 'virtioNetProps', 'vhostVsockProps', 'formatProps', 'findProblems', 'vsockGuestFeatures', 'planVirtioVsockGuest',
    ];
    expect(internal.filter((name) => name in api)).toEqual([]);
  });

  test('the vsock namespace holds the socket API only (option checks stay internal)', () => {
    expect(Object.keys(api.vsock).sort()).toEqual([
      'HYBRID_LINE_MAX', 'HybridVsockSocket', 'VMADDR_CID_ANY', 'VMADDR_CID_HOST', 'VMADDR_CID_HYPERVISOR', 'VMADDR_CID_LOCAL', 'VMADDR_PORT_ANY',
      'VsockServer', 'VsockSocket', 'connect', 'createServer', 'localCid',
    ]);
  });

  test('the netlink namespace is the rtnetlink codec, exactly', () => {
    expect(Object.keys(api.netlink).sort()).toEqual([
      'AF_UNSPEC', 'IFINFOMSG_LEN', 'NLMSG_HDRLEN', 'VETH_INFO_PEER', 'attrBytes', 'attrNested', 'attrString',
      'attrU16', 'attrU32', 'attrU8', 'decodeAttrs', 'decodeIfInfoMsg', 'decodeLinkMessage', 'decodeMessages',
      'encodeAttrs', 'encodeIfInfoMsg', 'encodeMessage', 'findAttr', 'ifla', 'iflaInfo', 'iflaMacvlan',
      'macvlanMode', 'nlmsgFlags', 'nlmsgType', 'readString', 'readU16', 'readU32', 'readU8',
    ]);
  });
});
