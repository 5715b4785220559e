// The on-disk format of the SSD tier: segment records, the tail scan that recovery runs over a
// segment's bytes, and the manifest. Pure: no file I/O, the checksum function is injected.
//
// A record is a 64-byte header, the payload, then zero padding to the next 4096-byte boundary, so
// every record starts on a 4096-byte boundary (one aligned pread per read, O_DIRECT-friendly, and a
// scan can resynchronise after a damaged header by trying each 4096-byte boundary). Header, all
// integers little-endian:
//
//   0  u8[4] magic 'KVSG'   4  u16 format version   6  u8 kind (1 put, 2 tombstone)   7  u8 flags (0)
//   8  u8[16] block hash    24 u32 payloadBytes      28 u32 reserved (0)               32 u64 sequence
//   40 u8[8] payload checksum   48 u8[8] reserved (0)   56 u8[8] header checksum over [0, 56)
//
// Checksums are the first 8 bytes of XXH3-128 (as lib/block's payload format). A tombstone's payload
// is 8 bytes: u32 target segment id (the segment holding the put it shadows) and u32 reserved (0).
// NOTE: the sequence number orders records of one hash across segments (compaction copies records
// forward unchanged, so file order is not record order); recovery keeps the highest sequence.
import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';
import { blockHashFromBytes, blockHashToBytes, type BlockHash } from '@kvmesh/protocol';

import { SegmentFormatVersionError } from './errors.ts';

export const SEGMENT_FORMAT_VERSION = 1;
export const SEGMENT_RECORD_ALIGN_BYTES = 4096;
export const SEGMENT_RECORD_HEADER_BYTES = 64;
export const SEGMENT_CHECKSUM_BYTES = 8;
export const SEGMENT_TOMBSTONE_PAYLOAD_BYTES = 8;
/** The header's payload length is a u32; the log's own recordBytesMax is far below this. */
export const SEGMENT_PAYLOAD_BYTES_LIMIT = 0xffff_ffff - SEGMENT_RECORD_ALIGN_BYTES;
export const SEGMENT_MANIFEST_FORMAT = 'kvmesh-segment-manifest';
export const SEGMENT_MANIFEST_VERSION = 1;

const MAGIC = Uint8Array.of(0x4b, 0x56, 0x53, 0x47); // 'KVSG'
const KIND_PUT = 1;
const KIND_TOMBSTONE = 2;
const SEGMENT_FILE = /^seg-(\d{1,10})\.log$/;
const SEGMENT_ID_MAX = 0xffff_ffff;

/** XXH3-128 of the bytes (canonical order), as `Kernels.hash128`; records keep its first 8 bytes. */
export type Hash128 = (data: Uint8Array) => Uint8Array;

export type SegmentRecordKind = 'put' | 'tombstone';

export interface SegmentRecordHeader {
  kind: SegmentRecordKind;
  hash: BlockHash;
  payloadBytes: number;
  sequence: bigint;
  payloadChecksum: Uint8Array;
}

export type HeaderDecodeFailure =
  'short' | 'bad-magic' | 'header-checksum' | 'newer-version' | 'bad-version' | 'bad-kind' | 'bad-length';

export type HeaderDecodeResult =
  | { ok: true; header: SegmentRecordHeader; version: number }
  | { ok: false; reason: HeaderDecodeFailure; version?: number };

/** Bytes a record with this payload occupies on disk: header + payload, padded to the alignment. */
export function segmentRecordBytes(payloadBytes: number): number {
  return alignUp(SEGMENT_RECORD_HEADER_BYTES + payloadBytes);
}

export function alignUp(bytes: number): number {
  return Math.ceil(bytes / SEGMENT_RECORD_ALIGN_BYTES) * SEGMENT_RECORD_ALIGN_BYTES;
}

export function segmentChecksum(hash128: Hash128, bytes: Uint8Array): Uint8Array {
  return hash128(bytes).subarray(0, SEGMENT_CHECKSUM_BYTES);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The 64-byte header of a record; the payload checksum must already be computed. */
export function encodeSegmentRecordHeader(hash128: Hash128, header: SegmentRecordHeader): Uint8Array {
  const { kind, hash, payloadBytes, sequence, payloadChecksum } = header;
  if (!Number.isSafeInteger(payloadBytes) || payloadBytes < 0 || payloadBytes > SEGMENT_PAYLOAD_BYTES_LIMIT) {
    throw new InvalidArgumentError(`record payload of ${payloadBytes} bytes is out of range`, {
      payloadBytes,
    });
  }
  if (sequence < 0n || sequence > 0xffff_ffff_ffff_ffffn) {
    throw new InvalidArgumentError(`record sequence ${sequence} is not a u64`, {
      sequence: String(sequence),
    });
  }
  if (payloadChecksum.length !== SEGMENT_CHECKSUM_BYTES) {
    throw new InvalidArgumentError(`payload checksum must be ${SEGMENT_CHECKSUM_BYTES} bytes`);
  }
  const hashBytes = blockHashToBytes(hash);
  if (hashBytes.length !== 16) throw new InvalidArgumentError(`'${hash}' is not a block hash`, { hash });
  const out = new Uint8Array(SEGMENT_RECORD_HEADER_BYTES);
  const dv = view(out);
  out.set(MAGIC, 0);
  dv.setUint16(4, SEGMENT_FORMAT_VERSION, true);
  out[6] = kind === 'put' ? KIND_PUT : KIND_TOMBSTONE;
  out.set(hashBytes, 8);
  dv.setUint32(24, payloadBytes, true);
  dv.setBigUint64(32, sequence, true);
  out.set(payloadChecksum, 40);
  out.set(segmentChecksum(hash128, out.subarray(0, 56)), 56);
  return out;
}

/**
 * Decodes and verifies a header. The header checksum is verified before any other field is trusted
 * (the version included), so a flipped bit reads as damage, not as a newer format.
 */
export function decodeSegmentRecordHeader(hash128: Hash128, bytes: Uint8Array): HeaderDecodeResult {
  if (bytes.length < SEGMENT_RECORD_HEADER_BYTES) return { ok: false, reason: 'short' };
  for (let i = 0; i < MAGIC.length; i++) if (bytes[i] !== MAGIC[i]) return { ok: false, reason: 'bad-magic' };
  if (!sameBytes(segmentChecksum(hash128, bytes.subarray(0, 56)), bytes.subarray(56, 64))) {
    return { ok: false, reason: 'header-checksum' };
  }
  const dv = view(bytes);
  const version = dv.getUint16(4, true);
  if (version > SEGMENT_FORMAT_VERSION) return { ok: false, reason: 'newer-version', version };
  if (version < 1) return { ok: false, reason: 'bad-version', version };
  const kindByte = bytes[6];
  if (kindByte !== KIND_PUT && kindByte !== KIND_TOMBSTONE) return { ok: false, reason: 'bad-kind' };
  const payloadBytes = dv.getUint32(24, true);
  if (payloadBytes > SEGMENT_PAYLOAD_BYTES_LIMIT) return { ok: false, reason: 'bad-length' };
  const kind: SegmentRecordKind = kindByte === KIND_PUT ? 'put' : 'tombstone';
  if (kind === 'tombstone' && payloadBytes !== SEGMENT_TOMBSTONE_PAYLOAD_BYTES) {
    return { ok: false, reason: 'bad-length' };
  }
  return {
    ok: true,
    version,
    header: {
      kind,
      hash: blockHashFromBytes(bytes.subarray(8, 24)),
      payloadBytes,
      sequence: dv.getBigUint64(32, true),
      payloadChecksum: new Uint8Array(bytes.subarray(40, 48)), // a copy even when bytes is a Buffer
    },
  };
}

export function verifySegmentPayload(
  hash128: Hash128,
  header: SegmentRecordHeader,
  payload: Uint8Array,
): boolean {
  return (
    payload.length === header.payloadBytes &&
    sameBytes(segmentChecksum(hash128, payload), header.payloadChecksum)
  );
}

const zeroPadding = new Uint8Array(SEGMENT_RECORD_ALIGN_BYTES);

/**
 * A record as the buffers one vectored write takes: header, payload (not copied), zero padding. The
 * caller must not change `payload` until the write is done.
 */
export function encodeSegmentRecord(
  hash128: Hash128,
  kind: SegmentRecordKind,
  hash: BlockHash,
  sequence: bigint,
  payload: Uint8Array,
): { buffers: Uint8Array[]; recordBytes: number } {
  const header = encodeSegmentRecordHeader(hash128, {
    kind,
    hash,
    payloadBytes: payload.length,
    sequence,
    payloadChecksum: segmentChecksum(hash128, payload),
  });
  const recordBytes = segmentRecordBytes(payload.length);
  const padBytes = recordBytes - SEGMENT_RECORD_HEADER_BYTES - payload.length;
  const buffers = [header, payload];
  if (padBytes > 0) buffers.push(zeroPadding.subarray(0, padBytes));
  return { buffers, recordBytes };
}

/** The same record as one contiguous buffer (tests, small records). */
export function encodeSegmentRecordBytes(
  hash128: Hash128,
  kind: SegmentRecordKind,
  hash: BlockHash,
  sequence: bigint,
  payload: Uint8Array,
): Uint8Array {
  const { buffers, recordBytes } = encodeSegmentRecord(hash128, kind, hash, sequence, payload);
  const out = new Uint8Array(recordBytes);
  let at = 0;
  for (const b of buffers) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}

export function encodeTombstonePayload(targetSegmentId: number): Uint8Array {
  checkSegmentId(targetSegmentId);
  const out = new Uint8Array(SEGMENT_TOMBSTONE_PAYLOAD_BYTES);
  view(out).setUint32(0, targetSegmentId, true);
  return out;
}

export function decodeTombstonePayload(payload: Uint8Array): number {
  if (payload.length !== SEGMENT_TOMBSTONE_PAYLOAD_BYTES) {
    throw new CorruptDataError(`tombstone payload is ${payload.length} bytes`, { bytes: payload.length });
  }
  return view(payload).getUint32(0, true);
}

function checkSegmentId(id: number): void {
  if (!Number.isSafeInteger(id) || id < 0 || id > SEGMENT_ID_MAX) {
    throw new InvalidArgumentError(`segment id ${id} is not a u32`, { id });
  }
}

export function segmentFileName(id: number): string {
  checkSegmentId(id);
  return `seg-${String(id).padStart(8, '0')}.log`;
}

/** The id of a segment file name, or null when the name is not one. */
export function parseSegmentFileName(name: string): number | null {
  const match = SEGMENT_FILE.exec(name);
  if (!match) return null;
  const id = Number(match[1]);
  return id <= SEGMENT_ID_MAX ? id : null;
}

// ---------------------------------------------------------------------------------------------
// Scan

export interface ScannedRecord {
  /** Byte offset of the record in its segment. */
  offset: number;
  recordBytes: number;
  header: SegmentRecordHeader;
  /** For a tombstone: the segment holding the put it shadows. */
  tombstoneTarget?: number;
}

export interface DamagedRegion {
  offset: number;
  bytes: number;
  reason: HeaderDecodeFailure | 'payload-checksum';
}

export interface SegmentScan {
  /** Verified records in file order. */
  records: ScannedRecord[];
  /**
   * Where the valid prefix ends: the segment should be truncated here. Equals the input length
   * unless a torn record was found.
   */
  validBytes: number;
  /** A damaged last record (or garbage after the last valid one) was found at validBytes. */
  torn: boolean;
  tornReason?: DamagedRegion['reason'];
  /** Damaged records followed by valid ones: skipped (dead bytes), not truncated. */
  damaged: DamagedRegion[];
  /** A record of a newer format version was found here: the caller must stop, not truncate. */
  newerVersion?: { offset: number; version: number };
}

export interface ScanOptions {
  /** Verify every put's payload checksum (tails); tombstone payloads are always verified. */
  verifyPayloads: boolean;
  /** Offset of bytes[0] in the segment; reported offsets include it. Default 0. */
  baseOffset?: number;
}

/** First offset at or after `from` (aligned) that holds a verifiable header, or -1. */
export function findNextSegmentRecord(hash128: Hash128, bytes: Uint8Array, from: number): number {
  for (
    let at = alignUp(from);
    at + SEGMENT_RECORD_HEADER_BYTES <= bytes.length;
    at += SEGMENT_RECORD_ALIGN_BYTES
  ) {
    if (bytes[at] !== MAGIC[0]) continue;
    const decoded = decodeSegmentRecordHeader(hash128, bytes.subarray(at, at + SEGMENT_RECORD_HEADER_BYTES));
    if (decoded.ok || decoded.reason === 'newer-version') return at;
  }
  return -1;
}

/**
 * Walks the records of a segment's bytes. A damaged record (bad header, bad payload checksum, or
 * one running past the end) that no valid record follows is a torn tail: the scan stops there and
 * `validBytes` says where to truncate. One that valid records follow is damage in the middle: it is
 * reported and skipped, and the records after it are kept (they may have been acknowledged).
 */
export function scanSegmentRecords(hash128: Hash128, bytes: Uint8Array, options: ScanOptions): SegmentScan {
  const base = options.baseOffset ?? 0;
  const records: ScannedRecord[] = [];
  const damaged: DamagedRegion[] = [];
  let at = 0;
  const torn = (reason: DamagedRegion['reason']): SegmentScan => ({
    records,
    validBytes: base + at,
    torn: true,
    tornReason: reason,
    damaged,
  });
  while (at < bytes.length) {
    const decoded = decodeSegmentRecordHeader(hash128, bytes.subarray(at, at + SEGMENT_RECORD_HEADER_BYTES));
    if (!decoded.ok) {
      if (decoded.reason === 'newer-version') {
        return {
          records,
          validBytes: base + at,
          torn: false,
          damaged,
          newerVersion: { offset: base + at, version: decoded.version ?? 0 },
        };
      }
      const next = findNextSegmentRecord(hash128, bytes, at + 1);
      if (next < 0) return torn(decoded.reason);
      damaged.push({ offset: base + at, bytes: next - at, reason: decoded.reason });
      at = next;
      continue;
    }
    const { header } = decoded;
    const recordBytes = segmentRecordBytes(header.payloadBytes);
    if (at + recordBytes > bytes.length) return torn('short');
    const payloadAt = at + SEGMENT_RECORD_HEADER_BYTES;
    const payload = bytes.subarray(payloadAt, payloadAt + header.payloadBytes);
    const mustVerify = options.verifyPayloads || header.kind === 'tombstone';
    if (mustVerify && !verifySegmentPayload(hash128, header, payload)) {
      if (findNextSegmentRecord(hash128, bytes, at + recordBytes) < 0) return torn('payload-checksum');
      damaged.push({ offset: base + at, bytes: recordBytes, reason: 'payload-checksum' });
      at += recordBytes;
      continue;
    }
    const record: ScannedRecord = { offset: base + at, recordBytes, header };
    if (header.kind === 'tombstone') record.tombstoneTarget = decodeTombstonePayload(payload);
    records.push(record);
    at += recordBytes;
  }
  return { records, validBytes: base + bytes.length, torn: false, damaged };
}

// ---------------------------------------------------------------------------------------------
// Manifest

export interface ManifestSegment {
  id: number;
  /** Valid bytes of the sealed segment (its file length when sealed). */
  bytes: number;
  records: number;
  /** Live and dead bytes when the manifest was written (recovery recounts them from the records). */
  bytesLive: number;
  bytesDead: number;
}

export interface SegmentManifest {
  /** Segments with an id below this are covered by `sealed`; the rest are tails, scanned in full. */
  tailFrom: number;
  /** Lower bound for the next record's sequence number. */
  sequenceNext: bigint;
  sealed: ManifestSegment[];
}

function manifestBody(manifest: SegmentManifest): string {
  return JSON.stringify({
    format: SEGMENT_MANIFEST_FORMAT,
    version: SEGMENT_MANIFEST_VERSION,
    tailFrom: manifest.tailFrom,
    sequenceNext: String(manifest.sequenceNext),
    sealed: manifest.sealed.map((s) => ({
      id: s.id,
      bytes: s.bytes,
      records: s.records,
      bytesLive: s.bytesLive,
      bytesDead: s.bytesDead,
    })),
  });
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The manifest as JSON text: format, version, fields, and a checksum over the rest. */
export function encodeSegmentManifest(hash128: Hash128, manifest: SegmentManifest): string {
  const body = manifestBody(manifest);
  const checksum = hex(segmentChecksum(hash128, new TextEncoder().encode(body)));
  return `${body.slice(0, -1)},"checksum":"${checksum}"}\n`;
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Parses and verifies a manifest. Throws SegmentFormatVersionError for a newer version (checked
 * before the checksum: a newer version may checksum differently) and CorruptDataError otherwise.
 */
export function parseSegmentManifest(hash128: Hash128, text: string): SegmentManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CorruptDataError(`segment manifest is not JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new CorruptDataError('segment manifest is not a JSON object');
  }
  const obj = raw as Record<string, unknown>;
  if (obj.format !== SEGMENT_MANIFEST_FORMAT) {
    throw new CorruptDataError(`segment manifest format is '${String(obj.format)}'`, { format: obj.format });
  }
  if (typeof obj.version !== 'number' || !Number.isSafeInteger(obj.version) || obj.version < 1) {
    throw new CorruptDataError(`segment manifest version '${String(obj.version)}' is not valid`);
  }
  if (obj.version > SEGMENT_MANIFEST_VERSION) {
    throw new SegmentFormatVersionError('manifest', obj.version, SEGMENT_MANIFEST_VERSION);
  }
  const { checksum, ...rest } = obj;
  const body = JSON.stringify(rest);
  if (
    typeof checksum !== 'string' ||
    checksum !== hex(segmentChecksum(hash128, new TextEncoder().encode(body)))
  ) {
    throw new CorruptDataError('segment manifest checksum mismatch');
  }
  const { tailFrom, sequenceNext, sealed } = obj;
  if (!isCount(tailFrom) || tailFrom > SEGMENT_ID_MAX + 1) {
    throw new CorruptDataError('segment manifest tailFrom is not a segment id');
  }
  if (typeof sequenceNext !== 'string' || !/^\d{1,20}$/.test(sequenceNext)) {
    throw new CorruptDataError('segment manifest sequenceNext is not a u64');
  }
  if (!Array.isArray(sealed)) throw new CorruptDataError('segment manifest sealed is not a list');
  const segments: ManifestSegment[] = [];
  let previous = -1;
  for (const entry of sealed as unknown[]) {
    const s = entry as Partial<Record<keyof ManifestSegment, unknown>> | null;
    if (
      s === null ||
      typeof s !== 'object' ||
      !isCount(s.id) ||
      !isCount(s.bytes) ||
      !isCount(s.records) ||
      !isCount(s.bytesLive) ||
      !isCount(s.bytesDead) ||
      s.id <= previous ||
      s.id >= tailFrom
    ) {
      throw new CorruptDataError('segment manifest has a malformed sealed segment entry', { entry });
    }
    previous = s.id;
    segments.push({
      id: s.id,
      bytes: s.bytes,
      records: s.records,
      bytesLive: s.bytesLive,
      bytesDead: s.bytesDead,
    });
  }
  return { tailFrom, sequenceNext: BigInt(sequenceNext), sealed: segments };
}

/** A record read waiting to be issued: where the record lies, and its arrival order. */
export interface PendingRecordRead {
  readonly segmentId: number;
  readonly offset: number;
  /** The record's extent on disk (header + payload + padding), as segmentRecordBytes. */
  readonly recordBytes: number;
  /** Arrival order: runs holding older reads are issued first, so none waits behind newcomers. */
  readonly arrival: number;
}

/** One read that serves `members`: the span [offset, offset + bytes) of one segment file. */
export interface MergedRecordRead<T extends PendingRecordRead> {
  readonly segmentId: number;
  readonly offset: number;
  readonly bytes: number;
  /** By offset; two reads of the same record both appear. */
  readonly members: T[];
  readonly arrivalMin: number;
}

/**
 * Groups pending record reads like a block-layer elevator: reads of records that lie back to back
 * in the same segment (or of the same record) become one read of their span, up to
 * `mergeBytesMax` bytes (a record longer than that is read alone). Merging trades parallelism for
 * fewer, larger reads, so it only goes as far as it must: while there are fewer runs than
 * `runsMin` (the free read slots), the run with the most records is split in two, so that reads
 * which could all be in flight at once stay separate. Runs come back oldest first.
 */
export function planMergedReads<T extends PendingRecordRead>(
  pending: readonly T[],
  mergeBytesMax: number,
  runsMin = 1,
): MergedRecordRead<T>[] {
  const sorted = [...pending].sort(
    (a, b) => a.segmentId - b.segmentId || a.offset - b.offset || a.arrival - b.arrival,
  );
  const runs: T[][] = [];
  let run: T[] | undefined;
  let runOffset = 0;
  let runEnd = 0;
  for (const read of sorted) {
    const end = read.offset + read.recordBytes;
    const first = run?.[0];
    // NOTE: records never overlap, so offset < runEnd only for a second read of a record in it.
    if (
      run !== undefined &&
      first !== undefined &&
      first.segmentId === read.segmentId &&
      read.offset <= runEnd &&
      Math.max(runEnd, end) - runOffset <= mergeBytesMax
    ) {
      runEnd = Math.max(runEnd, end);
      run.push(read);
      continue;
    }
    run = [read];
    runOffset = read.offset;
    runEnd = end;
    runs.push(run);
  }
  const target = Math.min(runsMin, sorted.length);
  while (runs.length < target) {
    let widest = 0;
    for (let i = 1; i < runs.length; i++) {
      if ((runs[i] as T[]).length > (runs[widest] as T[]).length) widest = i;
    }
    const members = runs[widest] as T[];
    if (members.length < 2) break;
    // Split between distinct records only: two reads of one record share a read.
    let cut = members.length >> 1;
    while (cut > 0 && (members[cut] as T).offset === (members[cut - 1] as T).offset) cut--;
    if (cut === 0) {
      cut = members.length >> 1;
      while (cut < members.length && (members[cut] as T).offset === (members[cut - 1] as T).offset) cut++;
      if (cut === members.length) break;
    }
    runs.splice(widest, 1, members.slice(0, cut), members.slice(cut));
  }
  return runs
    .map((members) => {
      const head = members[0] as T;
      let end = 0;
      let arrivalMin = Number.POSITIVE_INFINITY;
      for (const read of members) {
        end = Math.max(end, read.offset + read.recordBytes);
        arrivalMin = Math.min(arrivalMin, read.arrival);
      }
      return {
        segmentId: head.segmentId,
        offset: head.offset,
        bytes: end - head.offset,
        members,
        arrivalMin,
      };
    })
    .sort((a, b) => a.arrivalMin - b.arrivalMin);
}
