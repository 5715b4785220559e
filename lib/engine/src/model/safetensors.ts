// Reader and writer for the safetensors format (8-byte LE header length, JSON header with dtype /
// shape / data_offsets per tensor, then the raw little-endian data). Tensors are converted to f32 at
// load (f32, f16 and bf16 supported). Every field is checked against the file size so a truncated
// or hostile file gives a typed error naming the file and tensor, never an out-of-bounds read.
import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16';

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range within the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsFile {
  source: string;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** The data section (everything after the header). */
  data: Uint8Array;
}

const HEADER_BYTES_MAX = 100 * 1024 * 1024;
const DTYPE_BYTES: Record<string, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  F64: 8,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

function fail(source: string, message: string, details: Record<string, unknown> = {}): CorruptDataError {
  return new CorruptDataError(`${source}: ${message}`, { file: source, ...details });
}

/** Parses a safetensors buffer; `source` names the file in errors. */
export function parseSafetensors(bytes: Uint8Array, source: string): SafetensorsFile {
  if (bytes.length < 8) throw fail(source, `truncated: ${bytes.length} bytes, no header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getBigUint64(0, true);
  if (headerLen > BigInt(Math.min(HEADER_BYTES_MAX, bytes.length - 8))) {
    throw fail(
      source,
      `header length ${headerLen} exceeds the file (${bytes.length} bytes) or ${HEADER_BYTES_MAX}`,
    );
  }
  const headerEnd = 8 + Number(headerLen);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, headerEnd)));
  } catch (err) {
    throw fail(source, `header is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw fail(source, 'header is not a JSON object');
  const data = bytes.subarray(headerEnd);
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = raw as Record<string, string>;
      continue;
    }
    const entry = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES))
      throw fail(source, `tensor ${name}: unknown dtype ${String(dtype)}`, { tensor: name });
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0))
      throw fail(source, `tensor ${name}: bad shape`, { tensor: name });
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isInteger(o) && o >= 0)
    ) {
      throw fail(source, `tensor ${name}: bad data_offsets`, { tensor: name });
    }
    const [begin, end] = offsets as [number, number];
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end < begin || end > data.length) {
      throw fail(
        source,
        `tensor ${name}: data_offsets [${begin}, ${end}) outside the data section of ${data.length} bytes`,
        { tensor: name },
      );
    }
    if (end - begin !== elements * (DTYPE_BYTES[dtype] as number)) {
      throw fail(source, `tensor ${name}: ${end - begin} bytes for shape [${shape.join(', ')}] of ${dtype}`, {
        tensor: name,
      });
    }
    tensors.set(name, { name, dtype, shape: shape as number[], begin, end });
  }
  return { source, tensors, metadata, data };
}

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** A tensor's values as f32 (copied and converted). */
export function readTensorF32(file: SafetensorsFile, name: string): Float32Array {
  const info = file.tensors.get(name);
  if (!info)
    throw new InvalidArgumentError(`${file.source}: no tensor named ${name}`, {
      file: file.source,
      tensor: name,
    });
  const raw = file.data.subarray(info.begin, info.end);
  const count = info.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(count);
  if (info.dtype === 'F32') {
    new Uint8Array(out.buffer).set(raw);
  } else if (info.dtype === 'F16' || info.dtype === 'BF16') {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const u32 = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) {
      const h = view.getUint16(2 * i, true);
      if (info.dtype === 'BF16') u32[i] = h << 16;
      else out[i] = f16ToF32(h);
    }
  } else {
    throw new InvalidArgumentError(
      `${file.source}: tensor ${name} has dtype ${info.dtype}; only F32, F16 and BF16 load`,
      {
        file: file.source,
        tensor: name,
        dtype: info.dtype,
      },
    );
  }
  return out;
}

export interface TensorToWrite {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** Serializes f32 tensors as safetensors (data in the given order, 8-byte aligned header). */
export function writeSafetensors(
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = {},
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1);
    if (expected !== t.data.length) {
      throw new InvalidArgumentError(
        `tensor ${t.name}: shape [${t.shape.join(', ')}] needs ${expected} values, got ${t.data.length}`,
      );
    }
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + json.length) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}
