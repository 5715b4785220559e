// Block payload format v1 (spec: lib/block/spec/payload-v1.md): a fixed header, a per-layer section
// table with one checksum per section, a header checksum, then one 64-byte-aligned section per
// layer. Any single layer can be read (and verified) without touching the others, and a flipped
// byte anywhere — header, table, padding or section — is detected by verifyBlockPayload().
import { InvalidArgumentError, KvmeshError, CorruptDataError } from '@kvmesh/errors';
import { CODEC_IDS, CODEC_NAMES, type CodecName, type Kernels, type LayerDims } from '@kvmesh/kernels';

export const PAYLOAD_MAGIC = 0x424d564b; // "KVMB" read as u32 little-endian
export const PAYLOAD_VERSION = 1;
export const HEADER_FIXED_BYTES = 40;
export const TABLE_ENTRY_BYTES = 24;
export const CHECKSUM_BYTES = 8;
export const SECTION_ALIGN_BYTES = 64;
export const LAYERS_MAX = 1024;
export const KV_HEADS_MAX = 1024;

/** The dims a payload records: LayerDims plus the layer count. */
export interface BlockDims extends LayerDims {
  layers: number;
}

export interface SectionEntry {
  offset: number;
  length: number;
  checksum: Uint8Array;
}

export interface BlockHeader {
  version: number;
  codec: CodecName;
  dims: BlockDims;
  headerBytes: number;
  payloadBytes: number;
  sections: SectionEntry[];
}

export interface LayerKv {
  /** f32 [kvHeads][blockTokens][headDim] */
  k: Float32Array;
  v: Float32Array;
}

/** A payload written by a newer (or unknown) format version: not corrupt, but not ours to read. */
export class UnsupportedPayloadVersionError extends KvmeshError {
  constructor(version: number) {
    super(
      'UNSUPPORTED_PAYLOAD_VERSION',
      'failed-precondition',
      `block payload format version ${version} is not supported (this build reads version ${PAYLOAD_VERSION})`,
      { version, supported: PAYLOAD_VERSION },
    );
  }
}

function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** Header bytes before the first section's padding: fixed part, table, header checksum. */
export function headerBytesFor(layers: number): number {
  return HEADER_FIXED_BYTES + TABLE_ENTRY_BYTES * layers + CHECKSUM_BYTES;
}

function checksum(kernels: Kernels, bytes: Uint8Array): Uint8Array {
  return kernels.hash128(bytes).subarray(0, CHECKSUM_BYTES);
}

function checkDims(dims: BlockDims): void {
  if (!Number.isInteger(dims.layers) || dims.layers < 1 || dims.layers > LAYERS_MAX) {
    throw new InvalidArgumentError(`layers must be an integer in [1, ${LAYERS_MAX}], got ${dims.layers}`, {
      layers: dims.layers,
    });
  }
  if (!Number.isInteger(dims.kvHeads) || dims.kvHeads < 1 || dims.kvHeads > KV_HEADS_MAX) {
    throw new InvalidArgumentError(
      `kvHeads must be an integer in [1, ${KV_HEADS_MAX}], got ${dims.kvHeads}`,
      {
        kvHeads: dims.kvHeads,
      },
    );
  }
}

/** Total payload bytes for a block of `dims` in `codec`. */
export function payloadBytesFor(kernels: Kernels, codec: CodecName, dims: BlockDims): number {
  checkDims(dims);
  const sectionBytes = kernels.sectionBytes(codec, dims);
  return (
    alignUp(headerBytesFor(dims.layers), SECTION_ALIGN_BYTES) +
    dims.layers * alignUp(sectionBytes, SECTION_ALIGN_BYTES)
  );
}

/** Serializes a block: every layer's K and V encoded in `codec`. */
export function encodeBlockPayload(
  kernels: Kernels,
  codec: CodecName,
  dims: BlockDims,
  layers: readonly LayerKv[],
): Uint8Array {
  checkDims(dims);
  if (layers.length !== dims.layers) {
    throw new InvalidArgumentError(`expected ${dims.layers} layers of K/V, got ${layers.length}`, {
      expected: dims.layers,
      got: layers.length,
    });
  }
  return assembleBlockPayload(
    kernels,
    codec,
    dims,
    layers.map((layer) => kernels.encodeLayer(codec, dims, layer.k, layer.v)),
  );
}

/**
 * Serializes a block from layer sections already encoded in `codec` (the engine's paged pool holds
 * blocks that way, so exporting one never re-encodes).
 */
export function assembleBlockPayload(
  kernels: Kernels,
  codec: CodecName,
  dims: BlockDims,
  sections: readonly Uint8Array[],
): Uint8Array {
  checkDims(dims);
  const sectionBytes = kernels.sectionBytes(codec, dims);
  if (sections.length !== dims.layers || sections.some((s) => s.length !== sectionBytes)) {
    throw new InvalidArgumentError(
      `expected ${dims.layers} sections of ${sectionBytes} bytes, got ${sections.length} of [${[...new Set(sections.map((s) => s.length))].join(', ')}]`,
      { layers: dims.layers, sectionBytes },
    );
  }
  const headerBytes = headerBytesFor(dims.layers);
  const firstOffset = alignUp(headerBytes, SECTION_ALIGN_BYTES);
  const stride = alignUp(sectionBytes, SECTION_ALIGN_BYTES);
  const total = firstOffset + dims.layers * stride;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);

  view.setUint32(0, PAYLOAD_MAGIC, true);
  view.setUint16(4, PAYLOAD_VERSION, true);
  view.setUint8(6, CODEC_IDS[codec]);
  view.setUint8(7, 0);
  view.setUint16(8, dims.layers, true);
  view.setUint16(10, dims.kvHeads, true);
  view.setUint16(12, dims.blockTokens, true);
  view.setUint16(14, dims.headDim, true);
  view.setUint16(16, dims.groupSize, true);
  view.setUint16(18, 0, true);
  view.setUint32(20, headerBytes, true);
  view.setBigUint64(24, BigInt(total), true);
  view.setBigUint64(32, BigInt(sectionBytes), true);

  sections.forEach((section, l) => {
    const offset = firstOffset + l * stride;
    out.set(section, offset);
    const entry = HEADER_FIXED_BYTES + l * TABLE_ENTRY_BYTES;
    view.setBigUint64(entry, BigInt(offset), true);
    view.setBigUint64(entry + 8, BigInt(section.length), true);
    out.set(checksum(kernels, section), entry + 16);
  });
  out.set(checksum(kernels, out.subarray(0, headerBytes - CHECKSUM_BYTES)), headerBytes - CHECKSUM_BYTES);
  return out;
}

function corrupt(message: string, details: Record<string, unknown> = {}): CorruptDataError {
  return new CorruptDataError(`block payload: ${message}`, details);
}

function u64(view: DataView, at: number, what: string): number {
  // NOTE: two u32 halves rather than getBigUint64 (a BigInt per field on every put); a high half
  // above 2^21 - 1 is exactly a value above Number.MAX_SAFE_INTEGER.
  const high = view.getUint32(at + 4, true);
  if (high > 0x1fffff) throw corrupt(`${what} ${view.getBigUint64(at, true)} out of range`, { at });
  return high * 2 ** 32 + view.getUint32(at, true);
}

/** Whether `stored` (8 bytes) equals the checksum of `bytes`, without a view of either. */
function checksumMatches(kernels: Kernels, stored: Uint8Array, storedAt: number, bytes: Uint8Array): boolean {
  const digest = kernels.hash128(bytes);
  for (let i = 0; i < CHECKSUM_BYTES; i++) if (digest[i] !== stored[storedAt + i]) return false;
  return true;
}

/** Codec names by their wire id (CODEC_IDS inverted). */
const CODEC_BY_ID = new Map<number, CodecName>(CODEC_NAMES.map((name) => [CODEC_IDS[name], name]));

/**
 * Parses and verifies the header (magic, version, codec, dims, table bounds, header checksum).
 * Does not read the sections.
 */
export function parseBlockHeader(kernels: Kernels, payload: Uint8Array): BlockHeader {
  if (payload.length < HEADER_FIXED_BYTES + CHECKSUM_BYTES) {
    throw corrupt(`truncated: ${payload.length} bytes is shorter than the fixed header`, {
      bytes: payload.length,
    });
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== PAYLOAD_MAGIC) throw corrupt(`bad magic 0x${magic.toString(16)}`, { magic });
  const version = view.getUint16(4, true);
  const layers = view.getUint16(8, true);
  const headerBytes = view.getUint32(20, true);
  // Verify the header checksum before trusting any other field (the version included), so a flipped
  // bit is reported as corruption rather than as an unsupported version.
  if (
    layers < 1 ||
    layers > LAYERS_MAX ||
    headerBytes !== headerBytesFor(layers) ||
    headerBytes > payload.length
  ) {
    throw corrupt(`header size ${headerBytes} does not match ${layers} layers or the payload length`, {
      headerBytes,
      layers,
      bytes: payload.length,
    });
  }
  if (
    !checksumMatches(
      kernels,
      payload,
      headerBytes - CHECKSUM_BYTES,
      payload.subarray(0, headerBytes - CHECKSUM_BYTES),
    )
  ) {
    throw corrupt('header checksum mismatch');
  }
  if (version !== PAYLOAD_VERSION) throw new UnsupportedPayloadVersionError(version);
  const codecId = view.getUint8(6);
  const codec = CODEC_BY_ID.get(codecId);
  if (codec === undefined) throw corrupt(`unknown codec id ${codecId}`, { codecId });
  if (view.getUint8(7) !== 0 || view.getUint16(18, true) !== 0)
    throw corrupt('reserved header fields are not zero');
  const dims: BlockDims = {
    layers,
    kvHeads: view.getUint16(10, true),
    blockTokens: view.getUint16(12, true),
    headDim: view.getUint16(14, true),
    groupSize: view.getUint16(16, true),
  };
  let sectionBytes: number;
  try {
    checkDims(dims);
    sectionBytes = kernels.sectionBytes(codec, dims);
  } catch (err) {
    throw corrupt(`invalid dims: ${(err as Error).message}`, { dims });
  }
  const payloadBytes = u64(view, 24, 'payload length');
  if (payloadBytes !== payload.length) {
    throw corrupt(
      `length ${payload.length} does not match the recorded ${payloadBytes} (truncated or padded)`,
      {
        bytes: payload.length,
        recorded: payloadBytes,
      },
    );
  }
  if (u64(view, 32, 'section length') !== sectionBytes)
    throw corrupt('recorded section length does not match dims');
  const firstOffset = alignUp(headerBytes, SECTION_ALIGN_BYTES);
  const stride = alignUp(sectionBytes, SECTION_ALIGN_BYTES);
  if (payloadBytes !== firstOffset + layers * stride) throw corrupt('payload length does not match dims');
  const sections: SectionEntry[] = [];
  for (let l = 0; l < layers; l++) {
    const entry = HEADER_FIXED_BYTES + l * TABLE_ENTRY_BYTES;
    const offset = u64(view, entry, 'section offset');
    const length = u64(view, entry + 8, 'section length');
    if (offset !== firstOffset + l * stride || length !== sectionBytes) {
      throw corrupt(`section table entry ${l} is inconsistent`, { layer: l, offset, length });
    }
    sections.push({ offset, length, checksum: payload.subarray(entry + 16, entry + 24) });
  }
  return { version, codec, dims, headerBytes, payloadBytes, sections };
}

/** One layer's section, checksum-verified, as a view into `payload` (no copy). */
export function readLayerSection(
  kernels: Kernels,
  payload: Uint8Array,
  header: BlockHeader,
  layer: number,
): Uint8Array {
  const entry = header.sections[layer];
  if (!Number.isInteger(layer) || entry === undefined) {
    throw new InvalidArgumentError(`layer ${layer} out of range [0, ${header.dims.layers})`, { layer });
  }
  const section = payload.subarray(entry.offset, entry.offset + entry.length);
  if (!checksumMatches(kernels, entry.checksum, 0, section)) {
    throw corrupt(`section ${layer} checksum mismatch`, { layer });
  }
  return section;
}

/** Verifies everything: header, every section and the zero padding between sections. */
export function verifyBlockPayload(kernels: Kernels, payload: Uint8Array): BlockHeader {
  const header = parseBlockHeader(kernels, payload);
  let cursor = header.headerBytes;
  for (let l = 0; l < header.dims.layers; l++) {
    const entry = header.sections[l] as SectionEntry;
    for (let i = cursor; i < entry.offset; i++) {
      if (payload[i] !== 0) throw corrupt(`non-zero padding byte at offset ${i}`, { offset: i });
    }
    readLayerSection(kernels, payload, header, l);
    cursor = entry.offset + entry.length;
  }
  for (let i = cursor; i < payload.length; i++) {
    if (payload[i] !== 0) throw corrupt(`non-zero padding byte at offset ${i}`, { offset: i });
  }
  return header;
}

/** Decodes one layer to f32 K and V after verifying its section (the other layers are not read). */
export function decodeBlockLayer(kernels: Kernels, payload: Uint8Array, layer: number): LayerKv {
  const header = parseBlockHeader(kernels, payload);
  return kernels.decodeLayer(header.codec, header.dims, readLayerSection(kernels, payload, header, layer));
}

/** Verifies and decodes every layer. */
export function decodeBlockPayload(
  kernels: Kernels,
  payload: Uint8Array,
): { header: BlockHeader; layers: LayerKv[] } {
  const header = verifyBlockPayload(kernels, payload);
  const layers = header.sections.map((entry) =>
    kernels.decodeLayer(
      header.codec,
      header.dims,
      payload.subarray(entry.offset, entry.offset + entry.length),
    ),
  );
  return { header, layers };
}
