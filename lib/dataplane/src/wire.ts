// Socket-side helpers shared by client and server: writing one frame without copying its body,
// waiting for a congested socket to drain, taking over an accepted socket for direct reads, the
// JSON blobs of the HELLO exchange, and the `host:port` form in which a data channel address is
// advertised over gRPC.
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';

import { InvalidArgumentError } from '@kvmesh/errors';

import { DataChannelProtocolError } from './errors.ts';
import { encodeFrameHead, type FrameTypeCode } from './frame.ts';

/** Bytes a socket buffers in user space before write() asks the writer to wait for 'drain'. */
export const SOCKET_HIGH_WATER_BYTES = 1024 * 1024;
/** Bytes of one socket read outside a large body; also the most a frame copies out of it. */
export const SCRATCH_BYTES = 16 * 1024;
/** Bodies with at least this much left are read in place rather than through the scratch buffer. */
export const DIRECT_READ_BYTES_MIN = 4 * 1024;

/** The one Socket internal adoptAcceptedSocket touches. */
interface SocketInternals {
  _handle?: { readStart?: unknown } | null;
}

/**
 * Moves an accepted socket's handle into a new Socket that reads through `onread`, or returns
 * undefined (the caller then reads the accepted socket's 'data' chunks). Why: `onread` lets every
 * read land in memory the reader picks (a body's final buffer) instead of a fresh 64 KiB chunk per
 * read; measured here, that doubles what one server connection receives and removes the per-read
 * allocations that drive GC in a process holding many blocks. Node offers `onread` only to sockets
 * it did not create, so a listener's sockets must be re-wrapped.
 * NOTE: relies on `socket._handle` and the `handle` constructor option, which Node's own net.Server
 * and cluster use (stable since Node 0.x, not documented). The listener must use pauseOnConnect so
 * the accepted socket never reads; the accepted socket is closed with the adopted one, which keeps
 * net.Server's connection count (and so server.close()) right.
 */
export function adoptAcceptedSocket(
  accepted: Socket,
  onread: OnReadOpts,
  writableHighWaterMark: number,
): Socket | undefined {
  const internals = accepted as unknown as SocketInternals;
  const handle = internals._handle;
  if (handle === null || handle === undefined || typeof handle.readStart !== 'function') return undefined;
  const options: SocketConstructorOpts & {
    handle: unknown;
    writableHighWaterMark: number;
    onread: OnReadOpts;
  } = {
    handle,
    allowHalfOpen: true,
    writableHighWaterMark,
    onread,
  };
  const adopted = new Socket(options);
  internals._handle = null;
  adopted.once('close', () => accepted.destroy());
  return adopted;
}

/**
 * Writes one frame as at most two buffers in one writev: prefix+header (small, copied once) and
 * the body as given (never copied; the caller must not modify it until `bodyWritten` is called:
 * the kernel has it, or the socket failed and never will).
 * Returns false when the socket's buffer is above its high-water mark (wait for 'drain').
 */
export function writeFrame(
  socket: Socket,
  type: FrameTypeCode,
  requestId: number,
  methodId: number,
  status: number,
  header: Uint8Array,
  body: Uint8Array,
  bodyWritten?: () => void,
): boolean {
  const head = encodeFrameHead(type, requestId, methodId, status, header, body.length);
  if (body.length === 0) {
    bodyWritten?.();
    return socket.write(head);
  }
  socket.cork();
  socket.write(head);
  // NOTE: Node calls a write's callback once, also when the socket is destroyed with it pending.
  const ok = bodyWritten === undefined ? socket.write(body) : socket.write(body, () => bodyWritten());
  // NOTE: uncork in the same tick so the two writes leave as one writev and frames never interleave.
  socket.uncork();
  return ok;
}

/** The wait in progress per socket: every waiter shares it (one listener pair, however many wait). */
const drainWaits = new WeakMap<Socket, Promise<void>>();

/**
 * Resolves once `socket` has drained or closed (a closed socket never drains; the close handler
 * reports it). Concurrent callers share one wait, so many responses held back on one congested
 * connection add no listeners beyond the first pair.
 */
export function drained(socket: Socket): Promise<void> {
  if (!socket.writableNeedDrain || socket.destroyed) return Promise.resolve();
  const waiting = drainWaits.get(socket);
  if (waiting !== undefined) return waiting;
  const wait = new Promise<void>((resolve) => {
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      drainWaits.delete(socket);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
  drainWaits.set(socket, wait);
  return wait;
}

export interface HelloBlob {
  token?: string;
  headerBytesMax: number;
  bodyBytesMax: number;
}

export interface HelloAckBlob {
  headerBytesMax: number;
  bodyBytesMax: number;
  inFlightPerConnectionMax: number;
}

export function encodeJson(value: object): Buffer {
  return Buffer.from(JSON.stringify(value));
}

/** Parses a HELLO / HELLO_ACK blob; every listed field must be a positive integer. */
export function decodeJsonBlob<T extends object>(
  header: Buffer,
  what: string,
  intFields: readonly (keyof T)[],
): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(header.toString('utf8'));
  } catch {
    parsed = undefined;
  }
  if (typeof parsed !== 'object' || parsed === null)
    throw new DataChannelProtocolError(`${what} header is not a JSON object`, { reason: 'bad-hello' });
  const o = parsed as Record<string, unknown>;
  for (const field of intFields) {
    const v = o[field as string];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
      throw new DataChannelProtocolError(`${what} field ${String(field)} must be a positive integer`, {
        reason: 'bad-hello',
        field,
      });
  }
  return o as T;
}

export interface DataChannelAddress {
  host: string;
  port: number;
}

/** `host:port`, with IPv6 hosts in brackets: the form OpenDataChannelResponse.address carries. */
export function formatDataAddress(address: DataChannelAddress): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** Parses `host:port` or `[v6]:port`. */
export function parseDataAddress(text: string): DataChannelAddress {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  const host = m ? (m[1] ?? m[2]) : undefined;
  if (host === undefined || !(port > 0 && port <= 0xffff))
    throw new InvalidArgumentError(`data channel address must be host:port, got '${text}'`, {
      address: text,
    });
  return { host, port };
}
