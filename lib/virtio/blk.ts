// virtio-blk structures (virtio spec 1.2 §5.2): the request header the driver
// puts before the data (struct virtio_blk_outhdr), the status byte the device
// writes after it, and the config space fields this library reads. Little-endian.
import { invalidArg } from '../core/errors';

/** Sectors are 512 bytes whatever the device's blk_size (VIRTIO_BLK_F_BLK_SIZE only advises). */
export const VIRTIO_BLK_SECTOR_SIZE = 512;

/** Request types. */
export const VirtioBlkType = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;

/** Status byte values. */
export const VirtioBlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** Feature bits (bit numbers). */
export const VirtioBlkFeature = { SIZE_MAX: 1, SEG_MAX: 2, GEOMETRY: 4, RO: 5, BLK_SIZE: 6, FLUSH: 9, TOPOLOGY: 10, CONFIG_WCE: 11, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 } as const;

export const VIRTIO_BLK_OUTHDR_SIZE = 16;

/** Field offsets in struct virtio_blk_config. */
export const virtioBlkConfigLayout = { capacity: 0, sizeMax: 8, segMax: 12, blkSize: 20 } as const;
/** Bytes of the config space read by parseVirtioBlkConfig (through blk_size). */
export const VIRTIO_BLK_CONFIG_READ_SIZE = 24;

/** Writes struct virtio_blk_outhdr { le32 type; le32 ioprio; le64 sector } into `out`. */
export function encodeBlkHeader(out: Uint8Array, type: number, sector: bigint): void {
  if (out.length < VIRTIO_BLK_OUTHDR_SIZE) throw invalidArg('out', `must hold ${VIRTIO_BLK_OUTHDR_SIZE} bytes`);
  const v = new DataView(out.buffer, out.byteOffset, VIRTIO_BLK_OUTHDR_SIZE);
  v.setUint32(0, type, true);
  v.setUint32(4, 0, true);
  v.setBigUint64(8, sector, true);
}

/** The fields of a virtio-blk config space this library reads (virtio spec 5.2.4). */
export interface VirtioBlkConfig {
  /** Size in 512-byte sectors. */
  capacity: bigint;
  sizeMax: number;
  segMax: number;
  blkSize: number;
}

/** Reads the first VIRTIO_BLK_CONFIG_READ_SIZE bytes of the config space. */
export function parseVirtioBlkConfig(bytes: Uint8Array): VirtioBlkConfig {
  if (bytes.length < VIRTIO_BLK_CONFIG_READ_SIZE) throw invalidArg('bytes', `must hold ${VIRTIO_BLK_CONFIG_READ_SIZE} bytes, got ${bytes.length}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const L = virtioBlkConfigLayout;
  return { capacity: v.getBigUint64(L.capacity, true), sizeMax: v.getUint32(L.sizeMax, true), segMax: v.getUint32(L.segMax, true), blkSize: v.getUint32(L.blkSize, true) };
}
