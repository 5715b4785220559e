// The tier record: how one block lies in far memory and in an SSD segment. A 32-byte head (magic,
// version, metadata and payload lengths, a checksum over head and metadata), the block's metadata as
// a protobuf Block with an empty payload (hash, parent, namespace, fingerprint, token ids), zero
// padding to a 64-byte boundary, then the payload (format v1) unchanged. The payload carries its own
// per-section checksums, so a reader of either part detects a flipped byte; the payload's 64-byte
// alignment keeps its sections aligned for readers that use it in place.
//
//   0  u32 magic 'KVTR'   4  u16 version   6  u16 flags (0)   8  u32 metaBytes   12 u32 reserved (0)
//   16 u64 payloadBytes   24 u64 checksum = first 8 bytes of XXH3-128 over [0, 24) ‖ meta
import { verifyBlockPayload } from '@kvmesh/block';
import { CorruptDataError } from '@kvmesh/errors';
import type { Kernels } from '@kvmesh/kernels';
import {
  Block,
  blockHashFromBytes,
  blockHashToBytes,
  modelFingerprintFromBytes,
  modelFingerprintToBytes,
  parseNamespace,
  type BlockFields,
  type BlockHash,
} from '@kvmesh/protocol';

export const RECORD_MAGIC = 0x5254564b; // "KVTR" read as u32 little-endian
export const RECORD_VERSION = 1;
export const RECORD_HEAD_BYTES = 32;
export const RECORD_PAYLOAD_ALIGN_BYTES = 64;
/** Metadata bound: 16-byte hashes, a namespace and up to 64 Ki token ids fit well inside. */
export const RECORD_META_BYTES_MAX = 1 << 20;

/** A block as the tiers hold it: identity and tokens beside the payload bytes. */
export interface TierBlock extends BlockFields {
  /** Block payload format v1. */
  readonly payload: Uint8Array;
}

export type TierBlockMeta = Omit<TierBlock, 'payload'>;

/** The head, metadata and padding of a record: everything before the payload. */
export interface RecordHead {
  readonly bytes: Uint8Array;
  /** Where the payload starts (= bytes.length). */
  readonly payloadOffset: number;
  /** Head, metadata, padding and payload. */
  readonly recordBytes: number;
}

function corrupt(message: string, details: Record<string, unknown> = {}): CorruptDataError {
  return new CorruptDataError(`tier record: ${message}`, details);
}

function checksum8(kernels: Kernels, bytes: Uint8Array): Uint8Array {
  return kernels.hash128(bytes).subarray(0, 8);
}

export function metaToBlock(meta: TierBlockMeta): Block {
  return {
    hash: Buffer.from(blockHashToBytes(meta.hash)),
    parentHash: meta.parentHash === null ? Buffer.alloc(0) : Buffer.from(blockHashToBytes(meta.parentHash)),
    namespace: meta.namespace,
    modelFingerprint: Buffer.from(modelFingerprintToBytes(meta.modelFingerprint)),
    tokenIds: Array.from(meta.tokenIds),
    payload: Buffer.alloc(0),
  };
}

/** Encodes everything before the payload of `block`'s record. */
export function encodeRecordHead(kernels: Kernels, block: TierBlock): RecordHead {
  const meta = Block.encode(metaToBlock(block)).finish();
  if (meta.length > RECORD_META_BYTES_MAX)
    throw corrupt(`metadata of ${meta.length} bytes exceeds ${RECORD_META_BYTES_MAX}`, {
      metaBytes: meta.length,
    });
  const payloadOffset =
    Math.ceil((RECORD_HEAD_BYTES + meta.length) / RECORD_PAYLOAD_ALIGN_BYTES) * RECORD_PAYLOAD_ALIGN_BYTES;
  const bytes = new Uint8Array(payloadOffset);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, RECORD_MAGIC, true);
  view.setUint16(4, RECORD_VERSION, true);
  view.setUint32(8, meta.length, true);
  view.setBigUint64(16, BigInt(block.payload.length), true);
  bytes.set(meta, RECORD_HEAD_BYTES);
  const summed = new Uint8Array(24 + meta.length);
  summed.set(bytes.subarray(0, 24));
  summed.set(meta, 24);
  bytes.set(checksum8(kernels, summed), 24);
  return { bytes, payloadOffset, recordBytes: payloadOffset + block.payload.length };
}

/** The whole record in one buffer (what the SSD tier appends), from `allocate` when given. */
export function encodeRecord(
  kernels: Kernels,
  block: TierBlock,
  allocate: (bytes: number) => Uint8Array = (bytes) => new Uint8Array(bytes),
): Uint8Array {
  const head = encodeRecordHead(kernels, block);
  const out = allocate(head.recordBytes);
  out.set(head.bytes);
  out.set(block.payload, head.payloadOffset);
  return out;
}

export interface DecodedRecord {
  readonly block: TierBlock;
  readonly payloadOffset: number;
  readonly recordBytes: number;
}

/**
 * Parses and verifies a record: head, metadata checksum, the expected hash, and every payload
 * section checksum (verifyBlockPayload). The payload is a view into `bytes`. Throws CorruptDataError.
 */
export function decodeRecord(kernels: Kernels, bytes: Uint8Array, expected: BlockHash): DecodedRecord {
  const decoded = decodeRecordMeta(kernels, bytes, expected);
  const payload = bytes.subarray(decoded.payloadOffset, decoded.recordBytes);
  try {
    verifyBlockPayload(kernels, payload);
  } catch (err) {
    throw corrupt(`payload of block ${expected}: ${(err as Error).message}`, { hash: expected });
  }
  return {
    block: { ...decoded.meta, payload },
    payloadOffset: decoded.payloadOffset,
    recordBytes: decoded.recordBytes,
  };
}

/**
 * Where the payload lies in a record, from the head's length fields only (no checksum, no decode):
 * the hot path of same-host locates, whose reader verifies the payload sections itself. Throws
 * CorruptDataError when the magic or the lengths are impossible.
 */
export function recordLayout(
  bytes: Uint8Array,
  expected: BlockHash,
): { payloadOffset: number; recordBytes: number } {
  if (bytes.length < RECORD_HEAD_BYTES) throw corrupt(`truncated: ${bytes.length} bytes`, { hash: expected });
  const view = new DataView(bytes.buffer, bytes.byteOffset, RECORD_HEAD_BYTES);
  const metaBytes = view.getUint32(8, true);
  const payloadOffset =
    Math.ceil((RECORD_HEAD_BYTES + metaBytes) / RECORD_PAYLOAD_ALIGN_BYTES) * RECORD_PAYLOAD_ALIGN_BYTES;
  const payloadBytes = view.getBigUint64(16, true);
  if (
    view.getUint32(0, true) !== RECORD_MAGIC ||
    metaBytes > RECORD_META_BYTES_MAX ||
    payloadBytes !== BigInt(bytes.length - payloadOffset)
  )
    throw corrupt('head does not describe this record', { hash: expected });
  return { payloadOffset, recordBytes: bytes.length };
}

/** Head and metadata only (the payload is neither read nor verified). */
export function decodeRecordMeta(
  kernels: Kernels,
  bytes: Uint8Array,
  expected: BlockHash,
): { meta: TierBlockMeta; payloadOffset: number; recordBytes: number } {
  if (bytes.length < RECORD_HEAD_BYTES)
    throw corrupt(`truncated: ${bytes.length} bytes`, { bytes: bytes.length });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== RECORD_MAGIC) throw corrupt('bad magic', { hash: expected });
  const metaBytes = view.getUint32(8, true);
  if (metaBytes > RECORD_META_BYTES_MAX || RECORD_HEAD_BYTES + metaBytes > bytes.length)
    throw corrupt(`metadata length ${metaBytes} out of bounds`, { hash: expected, metaBytes });
  const summed = new Uint8Array(24 + metaBytes);
  summed.set(bytes.subarray(0, 24));
  summed.set(bytes.subarray(RECORD_HEAD_BYTES, RECORD_HEAD_BYTES + metaBytes), 24);
  const stored = bytes.subarray(24, 32);
  const computed = checksum8(kernels, summed);
  for (let i = 0; i < 8; i++)
    if (stored[i] !== computed[i]) throw corrupt('head checksum mismatch', { hash: expected });
  if (view.getUint16(4, true) !== RECORD_VERSION)
    throw corrupt(`unsupported version ${view.getUint16(4, true)}`, { hash: expected });
  const payloadBytes = view.getBigUint64(16, true);
  const payloadOffset =
    Math.ceil((RECORD_HEAD_BYTES + metaBytes) / RECORD_PAYLOAD_ALIGN_BYTES) * RECORD_PAYLOAD_ALIGN_BYTES;
  if (payloadBytes > BigInt(bytes.length - payloadOffset))
    throw corrupt(`payload length ${payloadBytes} exceeds the record`, { hash: expected });
  let block: Block;
  try {
    block = Block.decode(bytes.subarray(RECORD_HEAD_BYTES, RECORD_HEAD_BYTES + metaBytes));
  } catch (err) {
    throw corrupt(`metadata does not decode: ${(err as Error).message}`, { hash: expected });
  }
  const hash = blockHashFromBytes(block.hash);
  if (hash !== expected)
    throw corrupt(`holds block ${hash}, not ${expected}`, { hash: expected, held: hash });
  return {
    meta: {
      hash,
      parentHash: block.parentHash.length === 0 ? null : blockHashFromBytes(block.parentHash),
      namespace: parseNamespace(block.namespace),
      modelFingerprint: modelFingerprintFromBytes(block.modelFingerprint),
      tokenIds: Uint32Array.from(block.tokenIds),
    },
    payloadOffset,
    recordBytes: payloadOffset + Number(payloadBytes),
  };
}
