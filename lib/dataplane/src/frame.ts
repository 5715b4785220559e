// Frame format of the data channel and an incremental decoder. Every frame is a 24-byte
// little-endian prefix, then `headerLength` bytes of caller metadata, then `bodyLength` bytes of
// bulk payload. The decoder checks magic, version, type and both lengths against its bounds as
// soon as the prefix is complete, before any byte of the frame's blobs is buffered, and allocates
// each blob exactly once at its final size, so a frame costs one copy out of the socket's chunks.
//
//   offset  size  field
//        0     4  magic 'KVDP' (0x5044564b as u32le)
//        4     1  protocol version (1)
//        5     1  frame type (FrameType)
//        6     2  flags, reserved, must be 0
//        8     4  request id (u32; 0 on connection-level frames)
//       12     2  method id (u16; requests and their responses)
//       14     2  status (u16; 0 = ok, else the error kind, see errors.ts)
//       16     4  header length (u32)
//       20     4  body length (u32)
//
// There is no checksum: TCP guards the bytes in transit and block payloads carry their own.
import { LimitExceededError } from '@kvmesh/errors';

import { DataChannelProtocolError } from './errors.ts';

export const FRAME_MAGIC = 0x5044564b;
export const PROTOCOL_VERSION = 1;
export const FRAME_PREFIX_BYTES = 24;

export const FrameType = {
  /** client → server, first frame: JSON {token?, headerBytesMax, bodyBytesMax}. */
  hello: 1,
  /** server → client, answers HELLO: JSON {headerBytesMax, bodyBytesMax, inFlightPerConnectionMax}. */
  helloAck: 2,
  request: 3,
  response: 4,
  /** server → client: closing; send nothing new, in-flight requests still get their responses. */
  goAway: 5,
  /** either side, then it closes: JSON error {code, kind, message, details}; request id if one caused it. */
  error: 6,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];
const FRAME_TYPE_NAMES = new Map<number, string>(Object.entries(FrameType).map(([k, v]) => [v, k]));

export function frameTypeName(type: number): string {
  return FRAME_TYPE_NAMES.get(type) ?? `unknown(${type})`;
}

/** Largest value a u32 length field holds. */
export const LENGTH_FIELD_MAX = 0xffff_ffff;
export const METHOD_ID_MAX = 0xffff;

export interface Frame {
  type: FrameTypeCode;
  requestId: number;
  methodId: number;
  status: number;
  header: Buffer;
  body: Buffer;
}

export interface FrameBounds {
  headerBytesMax: number;
  bodyBytesMax: number;
}

/** What a body allocator sees: the frame's prefix fields and complete header, and the body's size. */
export interface BodyAllocation {
  type: FrameTypeCode;
  requestId: number;
  methodId: number;
  status: number;
  header: Buffer;
  bytes: number;
}

/**
 * Supplies the memory a frame's body is read into. Lets a store receive bytes straight into memory
 * it manages (no per-frame allocation, no GC churn) and a client read a response into a buffer the
 * caller passed.
 */
export interface BodyAllocator {
  /** Exactly `bytes` bytes, or undefined for a fresh Buffer. Throwing closes the connection. */
  allocate(frame: BodyAllocation): Uint8Array | undefined;
  /** The connection died before the body given out by `allocate` was complete; it is not used again. */
  abandon?(memory: Uint8Array): void;
}

const EMPTY = Buffer.alloc(0);

/**
 * Encodes the prefix and the (small) header blob into one buffer; the body is written next to it
 * without a copy (see writeFrame in socket.ts).
 */
export function encodeFrameHead(
  type: FrameTypeCode,
  requestId: number,
  methodId: number,
  status: number,
  header: Uint8Array,
  bodyBytes: number,
): Buffer {
  const out = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + header.length);
  out.writeUInt32LE(FRAME_MAGIC, 0);
  out.writeUInt8(PROTOCOL_VERSION, 4);
  out.writeUInt8(type, 5);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(requestId, 8);
  out.writeUInt16LE(methodId, 12);
  out.writeUInt16LE(status, 14);
  out.writeUInt32LE(header.length, 16);
  out.writeUInt32LE(bodyBytes, 20);
  out.set(header, FRAME_PREFIX_BYTES);
  return out;
}

type DecoderState = 'prefix' | 'header' | 'body';

/**
 * Turns a byte stream into frames. `push` takes chunks of any size and calls `onFrame` for each
 * complete frame; it throws a DataChannelProtocolError or LimitExceededError at the first bad
 * prefix, after which the decoder is dead (the connection must close: the stream position is
 * lost). `pause` stops frame delivery mid-chunk so a receiver can bound its in-flight work; the
 * unread rest of the chunk is kept (at most one chunk, since the socket is paused too) until
 * `resume`.
 */
export class FrameDecoder {
  private state: DecoderState = 'prefix';
  private readonly prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
  private filled = 0;
  private type: FrameTypeCode = FrameType.request;
  private requestId = 0;
  private methodId = 0;
  private status = 0;
  private header: Buffer = EMPTY;
  private body: Buffer = EMPTY;
  private bodyBytes = 0;
  /** The allocator's memory behind `body`, until the frame is delivered. */
  private bodyAllocated: Uint8Array | undefined;
  private paused = false;
  private dead = false;
  private leftover: Buffer | undefined;
  /** Frames decoded so far (for error details). */
  private framesDecoded = 0;

  constructor(
    private readonly bounds: FrameBounds,
    private readonly onFrame: (frame: Frame) => void,
    private readonly allocator?: BodyAllocator,
  ) {}

  /** True between frames: a stream that ends here ended cleanly. */
  get atFrameBoundary(): boolean {
    return this.state === 'prefix' && this.filled === 0 && this.leftover === undefined;
  }

  /** What the decoder was waiting for, for the error when the stream ends mid-frame. */
  describePosition(): Record<string, unknown> {
    const part =
      this.state === 'prefix'
        ? FRAME_PREFIX_BYTES
        : this.state === 'header'
          ? this.header.length
          : this.bodyBytes;
    return { part: this.state, bytesHave: this.filled, bytesWant: part, framesDecoded: this.framesDecoded };
  }

  pause(): void {
    this.paused = true;
  }

  /** Resumes delivery, first of the kept rest of the last chunk. */
  resume(): void {
    this.paused = false;
    const rest = this.leftover;
    this.leftover = undefined;
    if (rest !== undefined) this.push(rest);
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Stops decoding for good (the connection is closing); later chunks are ignored. */
  stop(): void {
    this.dead = true;
    this.leftover = undefined;
    const abandoned = this.bodyAllocated;
    this.bodyAllocated = undefined;
    if (abandoned !== undefined) this.allocator?.abandon?.(abandoned);
  }

  /**
   * Decodes `chunk`. `reused` says the caller will overwrite the chunk's memory after this call
   * (an onread scratch buffer), so whatever must be kept across a pause is copied.
   */
  push(chunk: Buffer, reused = false): void {
    if (this.dead) return;
    if (this.paused) {
      // NOTE: only reached if the socket delivered one more chunk while pausing; keep them in order.
      this.leftover =
        this.leftover === undefined
          ? reused
            ? Buffer.from(chunk)
            : chunk
          : Buffer.concat([this.leftover, chunk]);
      return;
    }
    let at = 0;
    while (at < chunk.length) {
      if (this.dead) return;
      if (this.paused) {
        this.leftover = reused ? Buffer.from(chunk.subarray(at)) : chunk.subarray(at);
        return;
      }
      switch (this.state) {
        case 'prefix': {
          const n = Math.min(FRAME_PREFIX_BYTES - this.filled, chunk.length - at);
          chunk.copy(this.prefix, this.filled, at, at + n);
          this.filled += n;
          at += n;
          if (this.filled === FRAME_PREFIX_BYTES) this.startFrame();
          break;
        }
        case 'header': {
          const n = Math.min(this.header.length - this.filled, chunk.length - at);
          chunk.copy(this.header, this.filled, at, at + n);
          this.filled += n;
          at += n;
          if (this.filled === this.header.length) this.startBody();
          break;
        }
        case 'body': {
          const n = Math.min(this.body.length - this.filled, chunk.length - at);
          chunk.copy(this.body, this.filled, at, at + n);
          this.filled += n;
          at += n;
          if (this.filled === this.body.length) this.finishFrame();
          break;
        }
      }
    }
  }

  /**
   * Where the socket may read the next bytes directly (zero-copy), or undefined when the decoder
   * is not inside a body with at least `bytesMin` left. After the read, call `commitDirect(n)`.
   */
  directTarget(bytesMin: number): Buffer | undefined {
    if (this.state !== 'body' || this.paused || this.dead) return undefined;
    const left = this.body.length - this.filled;
    return left >= bytesMin ? this.body.subarray(this.filled) : undefined;
  }

  commitDirect(bytes: number): void {
    this.filled += bytes;
    if (this.filled === this.body.length) this.finishFrame();
  }

  private startFrame(): void {
    const p = this.prefix;
    const magic = p.readUInt32LE(0);
    const version = p.readUInt8(4);
    const type = p.readUInt8(5);
    const flags = p.readUInt16LE(6);
    this.requestId = p.readUInt32LE(8);
    this.methodId = p.readUInt16LE(12);
    this.status = p.readUInt16LE(14);
    const headerBytes = p.readUInt32LE(16);
    const bodyBytes = p.readUInt32LE(20);
    const at = { framesDecoded: this.framesDecoded, requestId: this.requestId };
    if (magic !== FRAME_MAGIC) {
      this.dead = true;
      throw new DataChannelProtocolError(
        `bad frame magic 0x${magic.toString(16).padStart(8, '0')} (want 0x${FRAME_MAGIC.toString(16)} 'KVDP'): not a kvmesh data channel peer or a desynchronized stream`,
        { reason: 'bad-magic', magic, framesDecoded: this.framesDecoded },
      );
    }
    if (version !== PROTOCOL_VERSION) {
      this.dead = true;
      throw new DataChannelProtocolError(
        `unsupported data channel protocol version ${version} (this side speaks ${PROTOCOL_VERSION})`,
        { reason: 'bad-version', version, supported: PROTOCOL_VERSION, ...at },
      );
    }
    if (!FRAME_TYPE_NAMES.has(type) || flags !== 0) {
      this.dead = true;
      throw new DataChannelProtocolError(
        flags !== 0 ? `reserved frame flags 0x${flags.toString(16)} set` : `unknown frame type ${type}`,
        { reason: flags !== 0 ? 'bad-flags' : 'bad-frame-type', type, flags, ...at },
      );
    }
    if (headerBytes > this.bounds.headerBytesMax || bodyBytes > this.bounds.bodyBytesMax) {
      this.dead = true;
      const part = headerBytes > this.bounds.headerBytesMax ? 'header' : 'body';
      const bytes = part === 'header' ? headerBytes : bodyBytes;
      const bytesMax = part === 'header' ? this.bounds.headerBytesMax : this.bounds.bodyBytesMax;
      throw new LimitExceededError(
        `${frameTypeName(type)} frame ${part} of ${bytes} bytes exceeds ${part}BytesMax ${bytesMax}`,
        { reason: 'frame-too-large', frameType: frameTypeName(type), part, bytes, bytesMax, ...at },
      );
    }
    this.type = type as FrameTypeCode;
    // NOTE: allocUnsafe is safe here because every byte is overwritten before the frame is delivered.
    this.header = headerBytes === 0 ? EMPTY : Buffer.allocUnsafe(headerBytes);
    this.bodyBytes = bodyBytes;
    this.filled = 0;
    this.state = 'header';
    if (headerBytes === 0) this.startBody();
  }

  /** The body is allocated once the header is complete, so an allocator can place it by its metadata. */
  private startBody(): void {
    this.filled = 0;
    this.state = 'body';
    const bytes = this.bodyBytes;
    if (bytes === 0) {
      this.body = EMPTY;
      this.finishFrame();
      return;
    }
    const given = this.allocator?.allocate({
      type: this.type,
      requestId: this.requestId,
      methodId: this.methodId,
      status: this.status,
      header: this.header,
      bytes,
    });
    if (given === undefined) {
      this.body = Buffer.allocUnsafe(bytes);
    } else if (given.length === bytes) {
      // NOTE: the allocator's own object is delivered when it is a Buffer: an allocator may track its
      // memory by object identity (the kvstore payload pool reuses a slot once its view is garbage),
      // so a re-wrapped view would let the memory be reused while the receiver still holds it.
      this.body = Buffer.isBuffer(given) ? given : Buffer.from(given.buffer, given.byteOffset, bytes);
      this.bodyAllocated = given;
    } else {
      this.dead = true;
      throw new DataChannelProtocolError(
        `body allocator returned ${given.length} bytes for a ${bytes}-byte body`,
        {
          reason: 'bad-allocation',
          bytes,
          given: given.length,
        },
      );
    }
  }

  private finishFrame(): void {
    const frame: Frame = {
      type: this.type,
      requestId: this.requestId,
      methodId: this.methodId,
      status: this.status,
      header: this.header,
      body: this.body,
    };
    this.header = EMPTY;
    this.body = EMPTY;
    this.bodyAllocated = undefined;
    this.filled = 0;
    this.state = 'prefix';
    this.framesDecoded++;
    this.onFrame(frame);
  }
}
