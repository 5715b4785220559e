// The putBlock request header (PutBlocksRequest) read in one pass, and the putBlock response header
// written in one. The generated decoder copies every bytes field, grows a number[] of token ids and
// hands back objects that blockFieldsFromWire converts again; on the node that cost more than every
// other check of a put but hashing its payload.
// Invariant: readPutHeader accepts only an unambiguous subset of the encoding (each known field at
// most once, with its proto wire type; token ids packed; 16-byte ids; an ASCII namespace within
// bounds; no payload; nothing unknown) and returns undefined for anything else, so the caller
// decodes that header with the generated code and every odd or malformed header gets that path's
// exact answer. What it does accept, it reads to the same values as that path.
import { NAMESPACE_BYTES_MAX } from '@kvmesh/block';
import {
  PUT_BLOCK_TAGS,
  WIRE_ID_BYTES,
  parseNamespace,
  type BlockFields,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';

/** The identity fields of a put, read from a header in the common encoding. */
export interface PutHeader extends BlockFields {
  readonly replica: boolean;
  /** Where the block hash's 16 bytes sit in the header (the ack echoes them). */
  readonly hashAt: number;
}

const ID_BYTES = WIRE_ID_BYTES;
// NOTE: Block.payload (field 6) is not read: the data channel carries the payload as the body.
/** Token ids one block holds at most here (the kernels' block size bound is far lower). */
const TOKEN_IDS_MAX = 4096;

/** Where the last lengthAt() ended (a module slot rather than an object per call). */
let lengthEnd = 0;

/**
 * A length varint at `at` (below `end`) of at most 4 bytes, so below 2^28, and the position after
 * it; -1 when it is longer or runs past `end`.
 */
function lengthAt(bytes: Uint8Array, at: number, end: number): number {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 4 && at + i < end; i++) {
    const b = bytes[at + i] as number;
    value += (b & 0x7f) * scale;
    if (b < 0x80) {
      lengthEnd = at + i + 1;
      return value;
    }
    scale *= 0x80;
  }
  return -1;
}

/**
 * The put's fields when `header` is in the common encoding (see the invariant above), else
 * undefined.
 */
export function readPutHeader(header: Uint8Array): PutHeader | undefined {
  const end = header.length;
  let blockStart = -1;
  let blockEnd = -1;
  let replica = false;
  let replicaSeen = false;
  let at = 0;
  while (at < end) {
    const tag = header[at++];
    if (tag === PUT_BLOCK_TAGS.requestBlock && blockStart < 0) {
      const n = lengthAt(header, at, end);
      if (n < 0 || n > end - lengthEnd) return undefined;
      blockStart = lengthEnd;
      blockEnd = at = lengthEnd + n;
    } else if (tag === PUT_BLOCK_TAGS.requestReplica && !replicaSeen) {
      const flag = header[at++];
      if (flag !== 0 && flag !== 1) return undefined;
      replica = flag === 1;
      replicaSeen = true;
    } else {
      return undefined;
    }
  }
  if (blockStart < 0) return undefined;

  let hashAt = -1;
  let parentAt = -1;
  let fingerprintAt = -1;
  let namespace: string | undefined;
  let tokenIds: Uint32Array | undefined;
  at = blockStart;
  while (at < blockEnd) {
    const tag = header[at++];
    const n = lengthAt(header, at, blockEnd);
    if (n < 0 || n > blockEnd - lengthEnd) return undefined;
    const start = lengthEnd;
    at = start + n;
    if (tag === PUT_BLOCK_TAGS.hash && hashAt < 0 && n === ID_BYTES) hashAt = start;
    else if (tag === PUT_BLOCK_TAGS.parentHash && parentAt < 0 && n === ID_BYTES) parentAt = start;
    else if (tag === PUT_BLOCK_TAGS.modelFingerprint && fingerprintAt < 0 && n === ID_BYTES)
      fingerprintAt = start;
    else if (tag === PUT_BLOCK_TAGS.namespace && namespace === undefined && n <= NAMESPACE_BYTES_MAX) {
      namespace = asciiText(header, start, at);
      if (namespace === undefined) return undefined;
    } else if (tag === PUT_BLOCK_TAGS.tokenIds && tokenIds === undefined) {
      tokenIds = packedU32(header, start, at);
      if (tokenIds === undefined) return undefined;
    } else {
      return undefined;
    }
  }
  if (hashAt < 0 || fingerprintAt < 0) return undefined;
  let parsedNamespace: Namespace;
  try {
    parsedNamespace = parseNamespace(namespace ?? '');
  } catch {
    // A namespace the rules refuse: the general path words that error (with its field name).
    return undefined;
  }
  const bytes = Buffer.isBuffer(header)
    ? header
    : Buffer.from(header.buffer, header.byteOffset, header.byteLength);
  // NOTE: 16 bytes as lowercase hex is exactly what blockHashFromBytes / modelFingerprintFromBytes
  // return; toString with a range reads in place (no view object per id).
  return {
    hash: bytes.toString('hex', hashAt, hashAt + ID_BYTES) as BlockHash,
    parentHash: parentAt < 0 ? null : (bytes.toString('hex', parentAt, parentAt + ID_BYTES) as BlockHash),
    namespace: parsedNamespace,
    modelFingerprint: bytes.toString('hex', fingerprintAt, fingerprintAt + ID_BYTES) as ModelFingerprint,
    tokenIds: tokenIds ?? new Uint32Array(0),
    replica,
    hashAt,
  };
}

/** Bytes [start, end) as text when every byte is ASCII (where UTF-8 and Latin-1 agree), else undefined. */
function asciiText(bytes: Uint8Array, start: number, end: number): string | undefined {
  let text = '';
  for (let i = start; i < end; i++) {
    const b = bytes[i] as number;
    if (b >= 0x80) return undefined;
    text += String.fromCharCode(b);
  }
  return text;
}

/** The packed u32 varints in [start, end), or undefined (a varint over 2^32 - 1, a cut-off one, too many). */
function packedU32(bytes: Uint8Array, start: number, end: number): Uint32Array | undefined {
  let count = 0;
  for (let i = start; i < end; i++) if ((bytes[i] as number) < 0x80) count++;
  if (count > TOKEN_IDS_MAX || (end > start && (bytes[end - 1] as number) >= 0x80)) return undefined;
  const ids = new Uint32Array(count);
  let at = start;
  // NOTE: every varint ends at a byte below 0x80 and the last byte is one, so `count` varints end
  // exactly at `end`; a 5th byte may only add the top 4 bits.
  for (let i = 0; i < count; i++) {
    let b = bytes[at++] as number;
    let value = b & 0x7f;
    for (let shift = 7; b >= 0x80; shift += 7) {
      b = bytes[at++] as number;
      if (shift === 28) {
        if (b > 0x0f) return undefined;
        value = (value | (b << 28)) >>> 0;
      } else {
        value |= (b & 0x7f) << shift;
      }
    }
    ids[i] = value;
  }
  return ids;
}

/** Tags of PutBlocksResponse. */
const TAG_ACKNOWLEDGED = (1 << 3) | 2;
const TAG_STORED = (2 << 3) | 0;
const TAG_DEDUPLICATED = (3 << 3) | 0;

/**
 * PutBlocksResponse {acknowledged: [hash], stored or deduplicated: 1} for the hash at `hashAt` in
 * `header`: byte for byte what PutBlocksResponse.encode writes for it (a test compares the two).
 */
export function encodePutAck(
  header: Uint8Array,
  hashAt: number,
  status: 'stored' | 'deduplicated',
): Uint8Array {
  // NOTE: a plain Uint8Array this small lives on the V8 heap (no backing store to allocate and sweep).
  const out = new Uint8Array(2 + ID_BYTES + 2);
  out[0] = TAG_ACKNOWLEDGED;
  out[1] = ID_BYTES;
  for (let i = 0; i < ID_BYTES; i++) out[2 + i] = header[hashAt + i] as number;
  out[2 + ID_BYTES] = status === 'stored' ? TAG_STORED : TAG_DEDUPLICATED;
  out[3 + ID_BYTES] = 1;
  return out;
}
