// Data channel server: accepts framed TCP connections, checks the HELLO (version, token), then runs
// registered handlers for REQUEST frames and writes their RESPONSE frames in completion order.
// Invariants: a connection never has more than inFlightPerConnectionMax handlers running (the
// server stops reading it at the bound and while its write side is congested); any byte-stream
// fault closes that one connection with an ERROR frame and is reported to `onError`, never thrown;
// close() stops accepting, lets in-flight requests finish, then closes every connection.
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';

import { InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';

import {
  DataChannelAuthError,
  DataChannelMethodNotFoundError,
  DataChannelProtocolError,
  DataChannelUnavailableError,
  encodeErrorHeader,
  STATUS_OK,
} from './errors.ts';
import {
  FRAME_PREFIX_BYTES,
  FrameDecoder,
  FrameType,
  frameTypeName,
  METHOD_ID_MAX,
  type Frame,
  type FrameTypeCode,
} from './frame.ts';
import { resolveLimits, resolveMs, type DataChannelLimits } from './limits.ts';
import {
  adoptAcceptedSocket,
  decodeJsonBlob,
  DIRECT_READ_BYTES_MIN,
  drained,
  encodeJson,
  formatDataAddress,
  SCRATCH_BYTES,
  SOCKET_HIGH_WATER_BYTES,
  writeFrame,
  type DataChannelAddress,
  type HelloAckBlob,
  type HelloBlob,
} from './wire.ts';

export interface DataRequest {
  methodId: number;
  header: Uint8Array;
  body: Uint8Array;
}

/**
 * Decodes a request's header with `decode`; a header that does not decode is INVALID_ARGUMENT for
 * that request only (`what` names the message).
 */
export function decodeDataHeader<T>(what: string, decode: (bytes: Uint8Array) => T, request: DataRequest): T {
  try {
    return decode(request.header);
  } catch (err) {
    throw new InvalidArgumentError(
      `${what} header is not a valid ${what} message: ${(err as Error).message}`,
      {
        methodId: request.methodId,
        headerBytes: request.header.length,
      },
    );
  }
}

export interface DataResponse {
  header?: Uint8Array;
  body?: Uint8Array;
  /**
   * Called once the channel holds no reference to `body` any more: the kernel has its bytes, or it
   * will never be sent (connection gone, response refused). Lets a handler lend memory it reuses.
   */
  releaseBody?: () => void;
}

export type DataHandler = (request: DataRequest) => Promise<DataResponse>;

export interface DataChannelListenOptions {
  host: string;
  /** 0 picks an ephemeral port. */
  port: number;
  /** When set, a HELLO must carry exactly this token. */
  token?: string;
  limits?: Partial<DataChannelLimits>;
  /** A connection that sends no HELLO within this time is closed. */
  helloTimeoutMs?: number;
  /** close() waits this long for in-flight requests, then destroys what is left. */
  closeTimeoutMs?: number;
  /** Connection faults (garbage, bad token, limits, resets); the server itself never throws them. */
  onError?: (error: KvmeshError, peer: string) => void;
  /**
   * Where request bodies are received (default: a fresh Buffer each). A store passes memory it
   * manages, so bulk bytes land in place without per-request allocation; the handler then gets
   * that memory as `body`. Called with the request's method id and complete header.
   */
  requestBodies?: RequestBodyAllocator;
  /**
   * Read large request bodies straight from the socket into their final memory (default true);
   * false takes the socket's 64 KiB 'data' chunks and copies them once. See adoptAcceptedSocket.
   */
  directReads?: boolean;
}

export interface RequestBodyAllocator {
  /** Exactly `bytes` bytes for this request's body, or undefined for a fresh Buffer. */
  allocate(request: { methodId: number; header: Uint8Array; bytes: number }): Uint8Array | undefined;
  /** The body was not completed (connection lost); the memory is not used again by the channel. */
  abandon?(memory: Uint8Array): void;
}

export interface DataChannelServerStats {
  connections: number;
  inFlight: number;
  requests: number;
  bytesIn: number;
  bytesOut: number;
}

/** After sending an ERROR frame, how long the server keeps draining the peer before destroying the socket. */
const ERROR_LINGER_MS = 1000;
const EMPTY = Buffer.alloc(0);

type ConnectionState = 'hello' | 'ready' | 'draining' | 'closing';

class ServerConnection {
  state: ConnectionState = 'hello';
  inFlight = 0;
  readonly socket: Socket;
  private readonly decoder: FrameDecoder;
  /** The body region handed to the last read, when it was a direct read. */
  private directBuffer: Buffer | undefined;
  private peerEnded = false;
  private helloTimer: NodeJS.Timeout | undefined;
  /** Frame bounds of the client, learned from its HELLO; responses never exceed them. */
  private peerHeaderBytesMax = 0;
  private peerBodyBytesMax = 0;
  readonly peer: string;

  constructor(
    accepted: Socket,
    private readonly server: ServerCore,
  ) {
    this.peer = `${accepted.remoteAddress}:${accepted.remotePort}`;
    const limits = server.limits;
    const bodies = server.requestBodies;
    this.decoder = new FrameDecoder(
      limits,
      (frame) => this.onFrame(frame),
      bodies === undefined
        ? undefined
        : {
            // Only requests of a ready connection get store memory; HELLO and garbage never do.
            allocate: (f) =>
              f.type === FrameType.request && this.state !== 'hello' ? bodies.allocate(f) : undefined,
            ...(bodies.abandon === undefined ? {} : { abandon: (m: Uint8Array) => bodies.abandon?.(m) }),
          },
    );
    const scratch = server.directReads ? Buffer.allocUnsafe(SCRATCH_BYTES) : undefined;
    const adopted =
      scratch &&
      adoptAcceptedSocket(
        accepted,
        {
          // NOTE: called after every read for the buffer of the next one (see client.ts).
          buffer: () => {
            this.directBuffer = this.decoder.directTarget(DIRECT_READ_BYTES_MIN);
            return this.directBuffer ?? scratch;
          },
          callback: (bytes, buffer) => {
            this.onBytes(bytes, buffer === this.directBuffer ? undefined : scratch.subarray(0, bytes), true);
            // false stops reading (the in-flight bound or a congested write side, see updateFlow).
            return this.state === 'closing' || !this.decoder.isPaused;
          },
        },
        SOCKET_HIGH_WATER_BYTES,
      );
    const socket = adopted ?? accepted;
    this.socket = socket;
    if (adopted === undefined) socket.on('data', (chunk: Buffer) => this.onBytes(chunk.length, chunk, false));
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    this.helloTimer = setTimeout(
      () =>
        this.fail(
          new DataChannelProtocolError(`no HELLO within ${server.helloTimeoutMs} ms`, {
            reason: 'hello-timeout',
          }),
        ),
      server.helloTimeoutMs,
    );
    socket.on('end', () => {
      this.peerEnded = true;
      if (!this.decoder.atFrameBoundary) {
        this.fail(
          new DataChannelProtocolError('stream ended in the middle of a frame', {
            reason: 'truncated',
            ...this.decoder.describePosition(),
          }),
        );
      } else {
        this.maybeFinish();
      }
    });
    socket.on('drain', () => this.updateFlow());
    socket.on('error', (err) => {
      if (this.state !== 'closing')
        server.report(
          new DataChannelUnavailableError(
            `data channel connection from ${this.peer} failed: ${err.message}`,
            {
              address: this.peer,
              reason: 'reset',
              cause: (err as NodeJS.ErrnoException).code ?? err.message,
            },
          ),
          this.peer,
        );
    });
    socket.on('close', () => {
      clearTimeout(this.helloTimer);
      this.state = 'closing';
      this.decoder.stop();
      server.forget(this);
    });
  }

  /** `chunk` undefined: `bytes` were read straight into the body (decoder.directTarget). */
  private onBytes(bytes: number, chunk: Buffer | undefined, reused: boolean): void {
    this.server.bytesIn += bytes;
    try {
      if (chunk === undefined) this.decoder.commitDirect(bytes);
      else this.decoder.push(chunk, reused);
    } catch (err) {
      this.fail(err as KvmeshError);
    }
  }

  private onFrame(frame: Frame): void {
    if (this.state === 'hello') {
      if (frame.type !== FrameType.hello)
        throw new DataChannelProtocolError(`expected HELLO, got ${frameTypeName(frame.type)}`, {
          reason: 'no-hello',
        });
      this.onHello(frame);
      return;
    }
    if (frame.type !== FrameType.request)
      throw new DataChannelProtocolError(`unexpected ${frameTypeName(frame.type)} frame from a client`, {
        reason: 'bad-frame-type',
      });
    if (this.state === 'closing') return;
    this.inFlight++;
    this.server.inFlight++;
    this.server.requests++;
    this.updateFlow();
    void this.dispatch(frame);
  }

  private onHello(frame: Frame): void {
    clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
    const hello = decodeJsonBlob<HelloBlob>(frame.header, 'HELLO', ['headerBytesMax', 'bodyBytesMax']);
    if (this.state !== 'hello') return;
    if (this.server.draining)
      return this.fail(
        new DataChannelUnavailableError('data channel server is closing', {
          address: this.server.addressText,
          reason: 'going-away',
        }),
      );
    const expected = this.server.tokenDigest;
    if (expected !== undefined) {
      const given = typeof hello.token === 'string' ? digest(hello.token) : undefined;
      if (given === undefined || !timingSafeEqual(given, expected))
        return this.fail(
          new DataChannelAuthError(
            hello.token === undefined ? 'HELLO carries no token' : 'HELLO token does not match',
            { tokenGiven: hello.token !== undefined },
          ),
        );
    }
    this.peerHeaderBytesMax = hello.headerBytesMax;
    this.peerBodyBytesMax = hello.bodyBytesMax;
    this.state = 'ready';
    const limits = this.server.limits;
    const ack: HelloAckBlob = {
      headerBytesMax: limits.headerBytesMax,
      bodyBytesMax: limits.bodyBytesMax,
      inFlightPerConnectionMax: limits.inFlightPerConnectionMax,
    };
    this.send(FrameType.helloAck, 0, 0, STATUS_OK, encodeJson(ack), EMPTY);
  }

  private async dispatch(frame: Frame): Promise<void> {
    let status = STATUS_OK;
    let header: Uint8Array = EMPTY;
    let body: Uint8Array = EMPTY;
    let releaseBody: (() => void) | undefined;
    try {
      const handler = this.server.handlers.get(frame.methodId);
      if (handler === undefined) throw new DataChannelMethodNotFoundError(frame.methodId);
      const response = await handler({ methodId: frame.methodId, header: frame.header, body: frame.body });
      header = response.header ?? EMPTY;
      body = response.body ?? EMPTY;
      releaseBody = response.releaseBody;
      if (header.length > this.peerHeaderBytesMax || body.length > this.peerBodyBytesMax) {
        const part = header.length > this.peerHeaderBytesMax ? 'header' : 'body';
        const bytes = part === 'header' ? header.length : body.length;
        const bytesMax = part === 'header' ? this.peerHeaderBytesMax : this.peerBodyBytesMax;
        throw new LimitExceededError(
          `response ${part} of ${bytes} bytes exceeds the client's ${part}BytesMax ${bytesMax}`,
          { methodId: frame.methodId, part, bytes, bytesMax },
        );
      }
    } catch (err) {
      ({ status, header } = encodeErrorHeader(err, this.peerHeaderBytesMax));
      body = EMPTY;
      releaseBody?.();
      releaseBody = undefined;
    }
    // Wait out a congested socket before adding more: the in-flight bound then bounds buffered bytes.
    if (this.socket.writableNeedDrain) await drained(this.socket);
    this.send(FrameType.response, frame.requestId, frame.methodId, status, header, body, releaseBody);
    this.inFlight--;
    this.server.inFlight--;
    this.updateFlow();
    this.maybeFinish();
  }

  private send(
    type: FrameTypeCode,
    requestId: number,
    methodId: number,
    status: number,
    header: Uint8Array,
    body: Uint8Array,
    releaseBody?: () => void,
  ): void {
    if (this.state === 'closing' || this.socket.destroyed || !this.socket.writable) {
      releaseBody?.();
      return;
    }
    this.server.bytesOut += FRAME_PREFIX_BYTES + header.length + body.length;
    writeFrame(this.socket, type, requestId, methodId, status, header, body, releaseBody);
  }

  /**
   * Stops reading at the in-flight bound or while the write side is congested; resumes below both.
   * NOTE: on an adopted (onread) socket pause() does not stop reads; the next read callback does,
   * by returning false once the decoder is paused. resume() restarts reading in both modes.
   */
  private updateFlow(): void {
    if (this.state === 'closing') return;
    const stop =
      this.inFlight >= this.server.limits.inFlightPerConnectionMax || this.socket.writableNeedDrain;
    if (stop && !this.decoder.isPaused) {
      this.decoder.pause();
      this.socket.pause();
    } else if (!stop && this.decoder.isPaused) {
      this.decoder.resume();
      if (!this.decoder.isPaused) this.socket.resume();
    }
  }

  /** Graceful close: GOAWAY, then the connection ends once the client has ended and nothing is in flight. */
  goAway(): void {
    if (this.state === 'hello') {
      this.state = 'closing';
      this.socket.destroy();
      return;
    }
    if (this.state !== 'ready') return;
    this.state = 'draining';
    this.send(FrameType.goAway, 0, 0, STATUS_OK, EMPTY, EMPTY);
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.inFlight > 0 || this.state === 'closing') return;
    if (this.peerEnded) {
      this.state = 'closing';
      this.socket.end();
    }
  }

  /** Closes this connection because of `error`: tell the peer in an ERROR frame, then hang up. */
  fail(error: KvmeshError): void {
    if (this.state === 'closing') return;
    this.server.report(error, this.peer);
    const requestId = typeof error.details.requestId === 'number' ? error.details.requestId : 0;
    const { status, header } = encodeErrorHeader(error, this.server.limits.headerBytesMax);
    this.send(FrameType.error, requestId, 0, status, header, EMPTY);
    this.state = 'closing';
    this.decoder.stop();
    clearTimeout(this.helloTimer);
    // NOTE: keep reading (and dropping) until the peer hangs up: closing a socket with unread input
    // sends a RST, which can destroy the ERROR frame before the peer reads it.
    this.socket.end();
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), ERROR_LINGER_MS).unref();
  }

  /** Hangs up at once with a TCP reset (calls on it fail on the client as unavailable). */
  destroy(): void {
    this.state = 'closing';
    this.socket.resetAndDestroy();
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** What connections share: configuration, counters and the handler table (not public API). */
class ServerCore {
  readonly handlers = new Map<number, DataHandler>();
  readonly connections = new Set<ServerConnection>();
  limits: DataChannelLimits = resolveLimits();
  helloTimeoutMs = 5000;
  closeTimeoutMs = 10_000;
  tokenDigest: Buffer | undefined;
  requestBodies: RequestBodyAllocator | undefined;
  directReads = true;
  onError: ((error: KvmeshError, peer: string) => void) | undefined;
  addressText = '';
  draining = false;
  inFlight = 0;
  requests = 0;
  bytesIn = 0;
  bytesOut = 0;
  private readonly idle: (() => void)[] = [];

  accept(socket: Socket): void {
    if (this.draining || this.connections.size >= this.limits.connectionsMax) {
      const conn = new ServerConnection(socket, this);
      conn.fail(
        this.draining
          ? new DataChannelUnavailableError('data channel server is closing', {
              address: this.addressText,
              reason: 'going-away',
            })
          : new LimitExceededError(
              `data channel server holds ${this.connections.size} connections, connectionsMax ${this.limits.connectionsMax}`,
              { connections: this.connections.size, connectionsMax: this.limits.connectionsMax },
            ),
      );
      return;
    }
    this.connections.add(new ServerConnection(socket, this));
  }

  forget(conn: ServerConnection): void {
    this.connections.delete(conn);
    if (this.connections.size === 0) for (const resolve of this.idle.splice(0)) resolve();
  }

  /** Resolves when no connection is left. */
  allClosed(): Promise<void> {
    if (this.connections.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  report(error: KvmeshError, peer: string): void {
    try {
      this.onError?.(error, peer);
    } catch {
      // A faulty observer must not take the server down.
    }
  }
}

/**
 * A data channel listener. Register handlers with `handle` (before or after `listen`), then
 * `listen` once; `close` shuts it down gracefully.
 */
export class DataChannelServer {
  private readonly core = new ServerCore();
  private server: Server | undefined;
  private closed: Promise<void> | undefined;

  /** Registers the handler for `methodId` (1..65535), replacing any earlier one. */
  handle(methodId: number, handler: DataHandler): this {
    if (!Number.isInteger(methodId) || methodId < 1 || methodId > METHOD_ID_MAX)
      throw new InvalidArgumentError(`method id must be an integer 1..${METHOD_ID_MAX}`, { methodId });
    this.core.handlers.set(methodId, handler);
    return this;
  }

  /** Starts listening; resolves with the bound address (the real port when `port` is 0). */
  async listen(options: DataChannelListenOptions): Promise<DataChannelAddress> {
    if (this.server !== undefined)
      throw new KvmeshError(
        'ALREADY_LISTENING',
        'failed-precondition',
        'data channel server is already listening',
      );
    const core = this.core;
    core.limits = resolveLimits(options.limits);
    core.helloTimeoutMs = resolveMs('helloTimeoutMs', options.helloTimeoutMs, 5000);
    core.closeTimeoutMs = resolveMs('closeTimeoutMs', options.closeTimeoutMs, 10_000);
    core.tokenDigest = options.token === undefined ? undefined : digest(options.token);
    core.onError = options.onError;
    core.requestBodies = options.requestBodies;
    core.directReads = options.directReads ?? true;
    // allowHalfOpen: a client that half-closes still gets the responses to what it sent.
    const server = createServer(
      {
        noDelay: true,
        keepAlive: true,
        allowHalfOpen: true,
        highWaterMark: SOCKET_HIGH_WATER_BYTES,
        // Accepted sockets must not start reading before adoptAcceptedSocket takes their handle.
        pauseOnConnect: core.directReads,
      },
      (socket) => core.accept(socket),
    );
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: options.host, port: options.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) =>
      core.report(new KvmeshError('DATA_CHANNEL_LISTEN', 'internal', err.message), ''),
    );
    const bound = server.address();
    if (bound === null || typeof bound === 'string')
      throw new KvmeshError('DATA_CHANNEL_LISTEN', 'internal', 'no TCP address');
    const address = { host: options.host, port: bound.port };
    core.addressText = formatDataAddress(address);
    return address;
  }

  stats(): DataChannelServerStats {
    const core = this.core;
    return {
      connections: core.connections.size,
      inFlight: core.inFlight,
      requests: core.requests,
      bytesIn: core.bytesIn,
      bytesOut: core.bytesOut,
    };
  }

  /**
   * Graceful shutdown: stop accepting, send GOAWAY so clients send nothing new, answer what is in
   * flight, close. After closeTimeoutMs whatever is left is destroyed (its calls fail as unavailable).
   */
  close(): Promise<void> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  /**
   * Abrupt stop, as if the process died: stops listening and resets every connection at once, so
   * clients see their in-flight calls fail. For tests and fatal paths; prefer close().
   */
  destroy(): Promise<void> {
    this.core.draining = true;
    for (const conn of this.core.connections) conn.destroy();
    this.closed ??= this.closeListener();
    return this.closed;
  }

  private closeListener(): Promise<void> {
    const server = this.server;
    return server === undefined
      ? Promise.resolve()
      : new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async shutdown(): Promise<void> {
    const core = this.core;
    core.draining = true;
    const listenerClosed = this.closeListener();
    for (const conn of core.connections) conn.goAway();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      core.allClosed(),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, core.closeTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    for (const conn of core.connections) conn.destroy();
    await listenerClosed;
  }
}
