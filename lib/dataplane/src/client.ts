// Data channel client: a pool of framed TCP connections to one server. Calls are multiplexed by
// request id on a connection and placed on the least-loaded ready connection; when every
// connection is at its in-flight bound they wait in a bounded FIFO. Invariants: every call settles
// exactly once (response, server error, or DataChannelUnavailableError when its connection dies or
// it times out); a dead connection rejects all of its calls at once and its slot is redialed by
// the next call that needs it; frames never exceed the bounds the server announced in HELLO_ACK.
import { connect as netConnect, type Socket } from 'node:net';

import { InvalidArgumentError, type KvmeshError, LimitExceededError } from '@kvmesh/errors';

import {
  DataChannelProtocolError,
  DataChannelUnavailableError,
  decodeErrorHeader,
  STATUS_OK,
  type UnavailableReason,
} from './errors.ts';
import {
  FrameDecoder,
  FrameType,
  frameTypeName,
  LENGTH_FIELD_MAX,
  METHOD_ID_MAX,
  type Frame,
} from './frame.ts';
import { resolveLimits, resolveMs, type DataChannelLimits } from './limits.ts';
import {
  decodeJsonBlob,
  DIRECT_READ_BYTES_MIN,
  drained,
  encodeJson,
  formatDataAddress,
  SCRATCH_BYTES,
  SOCKET_HIGH_WATER_BYTES,
  writeFrame,
  type HelloAckBlob,
  type HelloBlob,
} from './wire.ts';

export interface DataChannelConnectOptions {
  host: string;
  port: number;
  /** Sent in the HELLO; the server rejects the connection if it expects another. */
  token?: string;
  /** Connections in the pool (default 1). */
  connections?: number;
  limits?: Partial<DataChannelLimits>;
  /**
   * Bound on connecting and on each call (default 30 s). A call that outlives it is treated as a
   * dead peer: its connection is closed and every call on it fails as unavailable.
   */
  timeoutMs?: number;
  /**
   * Read large response bodies straight from the socket into their final buffer (default true);
   * false takes the stream's 64 KiB chunks and copies them once.
   */
  directReads?: boolean;
}

export interface DataCallOptions {
  /**
   * Receive the response body into this memory when it fits (the result's body is then a view of
   * its first bytes); a larger body gets a fresh Buffer. Saves an allocation per call, and lets a
   * caller read straight into, e.g., a slot of its block pool. Do not touch it until the call settles.
   */
  responseInto?: Uint8Array;
}

export interface DataCallResult {
  header: Uint8Array;
  body: Uint8Array;
}

export interface DataChannelClientStats {
  connectionsReady: number;
  inFlight: number;
  pending: number;
  calls: number;
  reconnects: number;
  bytesIn: number;
  bytesOut: number;
}

interface PendingCall {
  methodId: number;
  header: Uint8Array;
  body: Uint8Array;
  resolve: (result: DataCallResult) => void;
  reject: (error: KvmeshError) => void;
  timer: NodeJS.Timeout | undefined;
  connection: ClientConnection | undefined;
  requestId: number;
  responseInto: Uint8Array | undefined;
}

const EMPTY = new Uint8Array(0);
/** Connections one client may pool. */
const CONNECTIONS_MAX = 1024;

type ConnectionState = 'connecting' | 'ready' | 'draining' | 'closed';

class ClientConnection {
  state: ConnectionState = 'connecting';
  readonly inFlight = new Map<number, PendingCall>();
  /** Requests waiting for the socket to drain, in send order (each is also in inFlight). */
  private readonly congested: PendingCall[] = [];
  /** Server bounds from HELLO_ACK. */
  ack: HelloAckBlob | undefined;
  private readonly socket: Socket;
  private readonly decoder: FrameDecoder;
  private nextRequestId = 1;
  private socketError: NodeJS.ErrnoException | undefined;
  private serverError: KvmeshError | undefined;
  private handshake:
    { resolve: () => void; reject: (e: KvmeshError) => void; timer: NodeJS.Timeout } | undefined;
  private directBuffer: Buffer | undefined;

  constructor(
    private readonly pool: ClientPool,
    readonly slot: number,
    directReads: boolean,
  ) {
    const limits = pool.limits;
    this.decoder = new FrameDecoder(limits, (frame) => this.onFrame(frame), {
      allocate: (f) => {
        if (f.type !== FrameType.response || f.status !== STATUS_OK) return undefined;
        const into = this.inFlight.get(f.requestId)?.responseInto;
        return into !== undefined && into.length >= f.bytes ? into.subarray(0, f.bytes) : undefined;
      },
    });
    const scratch = directReads ? Buffer.allocUnsafe(SCRATCH_BYTES) : undefined;
    const options = {
      host: pool.host,
      port: pool.port,
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: 10_000,
      writableHighWaterMark: SOCKET_HIGH_WATER_BYTES,
      onread:
        scratch === undefined
          ? undefined
          : {
              // NOTE: called after every read for the buffer of the next one: the rest of the body
              // being received when it is large, else the scratch buffer that push() copies out of.
              buffer: (): Buffer => {
                this.directBuffer = this.decoder.directTarget(DIRECT_READ_BYTES_MIN);
                return this.directBuffer ?? scratch;
              },
              callback: (bytes: number, buffer: Uint8Array): boolean => {
                this.onBytes(
                  bytes,
                  buffer === this.directBuffer ? undefined : scratch.subarray(0, bytes),
                  true,
                );
                return true;
              },
            },
    };
    this.socket = netConnect(options);
    if (scratch === undefined)
      this.socket.on('data', (chunk: Buffer) => this.onBytes(chunk.length, chunk, false));
    this.socket.on('connect', () => {
      const hello: HelloBlob = {
        headerBytesMax: limits.headerBytesMax,
        bodyBytesMax: limits.bodyBytesMax,
        ...(pool.token === undefined ? {} : { token: pool.token }),
      };
      writeFrame(this.socket, FrameType.hello, 0, 0, STATUS_OK, encodeJson(hello), EMPTY);
    });
    this.socket.on('error', (err) => {
      this.socketError = err;
    });
    this.socket.on('end', () => {
      if (!this.decoder.atFrameBoundary)
        this.fail(
          'protocol',
          new DataChannelProtocolError('server closed the stream in the middle of a frame', {
            reason: 'truncated',
            ...this.decoder.describePosition(),
          }),
        );
      // NOTE: allowHalfOpen is off, so the socket ends our side too and 'close' follows.
    });
    this.socket.on('close', () => this.fail(this.socketError === undefined ? 'closed' : 'reset'));
  }

  /** Resolves once HELLO_ACK arrived; rejects (and closes) on an ERROR frame, a failure or timeout. */
  ready(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          this.fail(
            'timeout',
            new DataChannelUnavailableError(
              `data channel ${this.pool.address}: no HELLO_ACK within ${timeoutMs} ms`,
              { address: this.pool.address, reason: 'timeout', timeoutMs },
            ),
          ),
        timeoutMs,
      );
      this.handshake = { resolve, reject, timer };
    });
  }

  /** `chunk` undefined: `bytes` were read straight into the body (decoder.directTarget). */
  private onBytes(bytes: number, chunk: Buffer | undefined, reused: boolean): void {
    this.pool.bytesIn += bytes;
    try {
      if (chunk === undefined) this.decoder.commitDirect(bytes);
      else this.decoder.push(chunk, reused);
    } catch (err) {
      this.fail('protocol', err as KvmeshError);
    }
  }

  private onFrame(frame: Frame): void {
    switch (frame.type) {
      case FrameType.helloAck: {
        if (this.state !== 'connecting')
          throw new DataChannelProtocolError('HELLO_ACK after the handshake', { reason: 'bad-frame-type' });
        this.ack = decodeJsonBlob<HelloAckBlob>(frame.header, 'HELLO_ACK', [
          'headerBytesMax',
          'bodyBytesMax',
          'inFlightPerConnectionMax',
        ]);
        this.state = 'ready';
        const hs = this.handshake;
        this.handshake = undefined;
        if (hs !== undefined) {
          clearTimeout(hs.timer);
          hs.resolve();
        }
        return;
      }
      case FrameType.response: {
        const call = this.inFlight.get(frame.requestId);
        if (call === undefined)
          throw new DataChannelProtocolError(`response to unknown request ${frame.requestId}`, {
            reason: 'unknown-request',
            requestId: frame.requestId,
          });
        this.inFlight.delete(frame.requestId);
        if (frame.status === STATUS_OK)
          this.pool.settle(call, undefined, { header: frame.header, body: frame.body });
        else this.pool.settle(call, decodeErrorHeader(frame.status, frame.header));
        this.afterCall();
        return;
      }
      case FrameType.goAway: {
        if (this.state === 'ready') {
          this.state = 'draining';
          this.pool.detach(this);
          this.afterCall();
        }
        return;
      }
      case FrameType.error: {
        const error = decodeErrorHeader(frame.status, frame.header);
        const call = this.inFlight.get(frame.requestId);
        if (call !== undefined) {
          this.inFlight.delete(frame.requestId);
          this.pool.settle(call, error);
        }
        this.serverError = error;
        this.fail('server-error', error);
        return;
      }
      default:
        throw new DataChannelProtocolError(`unexpected ${frameTypeName(frame.type)} frame from a server`, {
          reason: 'bad-frame-type',
        });
    }
  }

  private afterCall(): void {
    if (this.state === 'draining' && this.inFlight.size === 0) this.end();
    else if (this.state === 'ready') this.pool.pump();
  }

  /** Requests this connection can still take. */
  get capacity(): number {
    if (this.state !== 'ready' || this.ack === undefined) return 0;
    return (
      Math.min(this.ack.inFlightPerConnectionMax, this.pool.limits.inFlightPerConnectionMax) -
      this.inFlight.size
    );
  }

  send(call: PendingCall): void {
    let id = this.nextRequestId;
    // NOTE: terminates: at most inFlightPerConnectionMax ids are taken.
    while (this.inFlight.has(id)) id = id === LENGTH_FIELD_MAX ? 1 : id + 1;
    this.nextRequestId = id === LENGTH_FIELD_MAX ? 1 : id + 1;
    call.requestId = id;
    call.connection = this;
    this.inFlight.set(id, call);
    this.pool.bytesOut += call.header.length + call.body.length;
    if (!this.socket.writableNeedDrain && this.congested.length === 0) {
      writeFrame(this.socket, FrameType.request, id, call.methodId, STATUS_OK, call.header, call.body);
      return;
    }
    // Congested: queue behind one drain listener so buffered request bytes stay bounded by the
    // in-flight bound (NOTE: the queue holds only in-flight calls, so it is bounded by it too).
    this.congested.push(call);
    if (this.congested.length === 1) void drained(this.socket).then(() => this.flushCongested());
  }

  /** Writes queued requests in order until the socket is congested again. */
  private flushCongested(): void {
    while (this.congested.length > 0) {
      if (this.state === 'closed') {
        this.congested.length = 0;
        return;
      }
      if (this.socket.writableNeedDrain) {
        void drained(this.socket).then(() => this.flushCongested());
        return;
      }
      const call = this.congested.shift() as PendingCall;
      if (this.inFlight.get(call.requestId) === call)
        writeFrame(
          this.socket,
          FrameType.request,
          call.requestId,
          call.methodId,
          STATUS_OK,
          call.header,
          call.body,
        );
    }
  }

  /** A call on this connection outlived timeoutMs: the peer is presumed dead. */
  timedOut(call: PendingCall, timeoutMs: number): void {
    this.fail(
      'timeout',
      new DataChannelUnavailableError(
        `data channel ${this.pool.address}: call ${call.requestId} (method ${call.methodId}) got no response within ${timeoutMs} ms; connection closed`,
        { address: this.pool.address, reason: 'timeout', timeoutMs, methodId: call.methodId },
      ),
    );
  }

  /** Half-closes once idle (after GOAWAY or client close); the server then closes its side. */
  end(): void {
    if (this.state === 'closed') return;
    this.state = 'draining';
    if (this.inFlight.size === 0) this.socket.end();
  }

  /** Ends the connection once its calls are done; resolves when the socket has closed. */
  closed(): Promise<void> {
    this.end();
    if (this.socket.closed) return Promise.resolve();
    return new Promise((resolve) => this.socket.once('close', () => resolve()));
  }

  /** Closes the connection now and fails every call on it; the first cause wins. */
  fail(reason: UnavailableReason, cause?: KvmeshError): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.decoder.stop();
    this.socket.destroy();
    this.pool.detach(this);
    const address = this.pool.address;
    const why =
      cause !== undefined
        ? cause.message
        : this.socketError !== undefined
          ? `${this.socketError.code ?? 'error'}: ${this.socketError.message}`
          : 'connection closed by peer';
    const hs = this.handshake;
    this.handshake = undefined;
    if (hs !== undefined) {
      clearTimeout(hs.timer);
      // A server's own refusal (bad token, connection limit) is more useful than "unavailable".
      hs.reject(
        this.serverError ??
          new DataChannelUnavailableError(`data channel ${address}: cannot connect (${why})`, {
            address,
            reason: reason === 'closed' || reason === 'reset' ? 'connect' : reason,
            ...(this.socketError?.code === undefined ? {} : { errno: this.socketError.code }),
          }),
      );
    }
    if (this.inFlight.size === 0) return;
    const calls = [...this.inFlight.values()];
    this.inFlight.clear();
    for (const call of calls) {
      const error =
        cause instanceof DataChannelUnavailableError
          ? cause
          : new DataChannelUnavailableError(
              `data channel ${address}: connection lost with ${calls.length} call(s) in flight (${why})`,
              {
                address,
                reason,
                ...(cause === undefined ? {} : { causeCode: cause.code }),
                ...(this.socketError?.code === undefined ? {} : { errno: this.socketError.code }),
              },
            );
      this.pool.settle(call, error);
    }
  }
}

/** The pool behind DataChannelClient: slots, dialing, the wait queue and call settlement (not public API). */
class ClientPool {
  readonly address: string;
  bytesIn = 0;
  bytesOut = 0;
  private readonly slots: (ClientConnection | undefined)[];
  private readonly dialing: (Promise<void> | undefined)[];
  /** Connections detached from their slot after GOAWAY that still finish their calls. */
  private readonly retiring = new Set<ClientConnection>();
  private readonly pending: PendingCall[] = [];
  private closed = false;
  private calls = 0;
  private reconnects = 0;
  private turn = 0;
  /** Largest header / body a request may carry: the smaller of ours and the server's. */
  private sendHeaderBytesMax: number;
  private sendBodyBytesMax: number;

  constructor(
    readonly host: string,
    readonly port: number,
    readonly token: string | undefined,
    readonly limits: DataChannelLimits,
    private readonly timeoutMs: number,
    private readonly directReads: boolean,
    connections: number,
  ) {
    this.address = formatDataAddress({ host, port });
    this.slots = new Array<ClientConnection | undefined>(connections).fill(undefined);
    this.dialing = new Array<Promise<void> | undefined>(connections).fill(undefined);
    this.sendHeaderBytesMax = limits.headerBytesMax;
    this.sendBodyBytesMax = limits.bodyBytesMax;
  }

  /** Dials every slot and completes the HELLO on each; rejects (and closes) if any fails. */
  async open(): Promise<void> {
    try {
      await Promise.all(this.slots.map((_, i) => this.dial(i)));
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  private dial(slot: number): Promise<void> {
    const existing = this.dialing[slot];
    if (existing !== undefined) return existing;
    const conn = new ClientConnection(this, slot, this.directReads);
    const done = conn.ready(this.timeoutMs).then(
      () => {
        this.dialing[slot] = undefined;
        if (this.closed) {
          this.retiring.add(conn);
          conn.end();
          return;
        }
        const ack = conn.ack as HelloAckBlob;
        this.sendHeaderBytesMax = Math.min(this.limits.headerBytesMax, ack.headerBytesMax);
        this.sendBodyBytesMax = Math.min(this.limits.bodyBytesMax, ack.bodyBytesMax);
        this.slots[slot] = conn;
        this.pump();
      },
      (err: unknown) => {
        this.dialing[slot] = undefined;
        // Calls waiting for this dial have nowhere else to go when no connection is up or coming.
        if (!this.slots.some((c) => c !== undefined) && !this.dialing.some((d) => d !== undefined))
          for (const call of this.pending.splice(0)) this.settle(call, err as KvmeshError);
        throw err;
      },
    );
    this.dialing[slot] = done;
    return done;
  }

  call(
    methodId: number,
    header: Uint8Array,
    body: Uint8Array = EMPTY,
    options: DataCallOptions = {},
  ): Promise<DataCallResult> {
    if (this.closed)
      return Promise.reject(
        new DataChannelUnavailableError(`data channel client for ${this.address} is closed`, {
          address: this.address,
          reason: 'client-closed',
        }),
      );
    if (!Number.isInteger(methodId) || methodId < 1 || methodId > METHOD_ID_MAX)
      return Promise.reject(
        new InvalidArgumentError(`method id must be an integer 1..${METHOD_ID_MAX}`, { methodId }),
      );
    if (header.length > this.sendHeaderBytesMax || body.length > this.sendBodyBytesMax) {
      const part = header.length > this.sendHeaderBytesMax ? 'header' : 'body';
      const bytes = part === 'header' ? header.length : body.length;
      const bytesMax = part === 'header' ? this.sendHeaderBytesMax : this.sendBodyBytesMax;
      return Promise.reject(
        new LimitExceededError(`request ${part} of ${bytes} bytes exceeds ${part}BytesMax ${bytesMax}`, {
          methodId,
          part,
          bytes,
          bytesMax,
        }),
      );
    }
    return new Promise<DataCallResult>((resolve, reject) => {
      const call: PendingCall = {
        methodId,
        header,
        body,
        resolve,
        reject,
        timer: undefined,
        connection: undefined,
        requestId: 0,
        responseInto: options.responseInto,
      };
      call.timer = setTimeout(() => this.onTimeout(call), this.timeoutMs);
      this.calls++;
      const conn = this.pick();
      if (conn !== undefined) {
        conn.send(call);
        return;
      }
      if (this.pending.length >= this.limits.pendingCallsMax) {
        this.settle(
          call,
          new LimitExceededError(
            `data channel ${this.address}: ${this.pending.length} calls already wait for a connection (pendingCallsMax)`,
            { pending: this.pending.length, pendingCallsMax: this.limits.pendingCallsMax },
          ),
        );
        return;
      }
      this.pending.push(call);
      this.redial();
    });
  }

  /** The ready connection with the most spare in-flight capacity; ties rotate. */
  private pick(): ClientConnection | undefined {
    let best: ClientConnection | undefined;
    let bestCapacity = 0;
    const n = this.slots.length;
    for (let k = 0; k < n; k++) {
      const conn = this.slots[(this.turn + k) % n];
      if (conn === undefined) continue;
      const capacity = conn.capacity;
      if (capacity > bestCapacity) {
        best = conn;
        bestCapacity = capacity;
      }
    }
    this.turn = (this.turn + 1) % n;
    return best;
  }

  /** Dials every empty slot (at most one dial per slot at a time). */
  private redial(): void {
    if (this.closed) return;
    this.slots.forEach((conn, slot) => {
      if (conn === undefined && this.dialing[slot] === undefined) {
        this.reconnects++;
        this.dial(slot).catch(() => undefined);
      }
    });
  }

  /** Moves waiting calls onto connections with capacity. */
  pump(): void {
    while (this.pending.length > 0) {
      const conn = this.pick();
      if (conn === undefined) return;
      conn.send(this.pending.shift() as PendingCall);
    }
  }

  /** A connection leaves its slot (closed, or draining after GOAWAY). */
  detach(conn: ClientConnection): void {
    const wasInSlot = this.slots[conn.slot] === conn;
    if (wasInSlot) this.slots[conn.slot] = undefined;
    if (conn.state === 'draining') this.retiring.add(conn);
    else this.retiring.delete(conn);
    // NOTE: only a connection that was up triggers a redial; a failed dial must not (that would
    // redial in a loop while the server is down). Waiting calls fail when the last dial fails.
    if (wasInSlot && this.pending.length > 0) this.redial();
  }

  /** Settles a call exactly once. */
  settle(call: PendingCall, error: KvmeshError | undefined, result?: DataCallResult): void {
    clearTimeout(call.timer);
    call.timer = undefined;
    if (error !== undefined) call.reject(error);
    else call.resolve(result as DataCallResult);
  }

  private onTimeout(call: PendingCall): void {
    call.timer = undefined;
    const queued = this.pending.indexOf(call);
    if (queued >= 0) {
      this.pending.splice(queued, 1);
      call.reject(
        new DataChannelUnavailableError(
          `data channel ${this.address}: no connection available within ${this.timeoutMs} ms`,
          { address: this.address, reason: 'timeout', timeoutMs: this.timeoutMs },
        ),
      );
      return;
    }
    call.connection?.timedOut(call, this.timeoutMs);
  }

  stats(): DataChannelClientStats {
    let inFlight = 0;
    for (const conn of [...this.slots, ...this.retiring]) inFlight += conn?.inFlight.size ?? 0;
    return {
      connectionsReady: this.slots.filter((c) => c?.state === 'ready').length,
      inFlight,
      pending: this.pending.length,
      calls: this.calls,
      reconnects: this.reconnects,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const call of this.pending.splice(0))
      this.settle(
        call,
        new DataChannelUnavailableError(`data channel client for ${this.address} closed`, {
          address: this.address,
          reason: 'client-closed',
        }),
      );
    await Promise.allSettled(this.dialing.filter((d) => d !== undefined));
    const conns = [...this.slots, ...this.retiring].filter((c) => c !== undefined);
    await Promise.all(conns.map((c) => c.closed()));
  }
}

/**
 * A pooled data channel client. Create with `DataChannelClient.connect`; `call` may be used
 * concurrently from anywhere; `close` lets in-flight calls finish and hangs up.
 */
export class DataChannelClient {
  private constructor(private readonly pool: ClientPool) {}

  /** Opens `connections` connections and completes the HELLO on each; rejects if any fails. */
  static async connect(options: DataChannelConnectOptions): Promise<DataChannelClient> {
    const connections = options.connections ?? 1;
    if (!Number.isSafeInteger(connections) || connections < 1 || connections > CONNECTIONS_MAX)
      throw new InvalidArgumentError(
        `connections must be an integer 1..${CONNECTIONS_MAX}, got ${connections}`,
        {
          connections,
        },
      );
    const pool = new ClientPool(
      options.host,
      options.port,
      options.token,
      resolveLimits(options.limits),
      resolveMs('timeoutMs', options.timeoutMs, 30_000),
      options.directReads ?? true,
      connections,
    );
    await pool.open();
    return new DataChannelClient(pool);
  }

  /** `host:port` of the server. */
  get address(): string {
    return this.pool.address;
  }

  /**
   * Sends one request and resolves with the response's header and body. `body` is written without
   * a copy: do not modify it until the call settles. Rejects with the handler's error (same code,
   * kind, message, details), LimitExceededError for an oversized request, or
   * DataChannelUnavailableError when the connection dies or the call times out.
   */
  call(
    methodId: number,
    header: Uint8Array,
    body?: Uint8Array,
    options?: DataCallOptions,
  ): Promise<DataCallResult> {
    return this.pool.call(methodId, header, body, options);
  }

  stats(): DataChannelClientStats {
    return this.pool.stats();
  }

  /**
   * Refuses new calls, fails the ones still waiting for a connection, lets in-flight calls finish
   * (each is bounded by timeoutMs), then closes every connection.
   */
  close(): Promise<void> {
    return this.pool.close();
  }
}
