// gRPC plumbing shared by every service: a server with bounded message sizes and the standard health
// service, bind/shutdown helpers, handler wrappers that turn every exception into a proper status
// (a handler can never crash the server), and the KvmeshError <-> gRPC status mapping in both
// directions. The error code and JSON details travel in trailing metadata, so a client gets back the
// same error class with the same details the server threw.
import {
  Metadata,
  Server,
  ServerCredentials,
  credentials as channelCredentials,
  makeGenericClientConstructor,
  status as GrpcCode,
} from '@grpc/grpc-js';
import type {
  ChannelCredentials,
  ChannelOptions,
  ServerOptions,
  ServiceDefinition,
  ServiceError,
  StatusObject,
  handleBidiStreamingCall,
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  ServerDuplexStream,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
} from '@grpc/grpc-js';
import { HealthImplementation, service as healthServiceDefinition } from 'grpc-health-check';
import type { ServingStatus } from 'grpc-health-check';
import {
  CorruptDataError,
  InvalidArgumentError,
  KvmeshError,
  LimitExceededError,
  type ErrorKind,
} from '@kvmesh/errors';

import { UnavailableError } from './errors.ts';
import type { Logger } from './logger.ts';

export const ERROR_CODE_METADATA_KEY = 'kvmesh-error-code';
/** Binary (`-bin`) so any JSON survives HTTP/2 header encoding. */
export const ERROR_DETAILS_METADATA_KEY = 'kvmesh-error-details-bin';
/** Details larger than this are replaced by `{truncated: true}`: trailers share HTTP/2 header limits. */
export const ERROR_DETAILS_BYTES_MAX = 8 * 1024;

const MESSAGE_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;
const KEEPALIVE_TIME_MS_DEFAULT = 30_000;
const KEEPALIVE_TIMEOUT_MS_DEFAULT = 10_000;
const SHUTDOWN_GRACE_MS_DEFAULT = 5_000;

// ---------------------------------------------------------------------------------------------
// Error mapping

const KIND_TO_GRPC: Readonly<Record<ErrorKind, GrpcCode>> = {
  'invalid-argument': GrpcCode.INVALID_ARGUMENT,
  'not-found': GrpcCode.NOT_FOUND,
  'already-exists': GrpcCode.ALREADY_EXISTS,
  'resource-exhausted': GrpcCode.RESOURCE_EXHAUSTED,
  'failed-precondition': GrpcCode.FAILED_PRECONDITION,
  'data-loss': GrpcCode.DATA_LOSS,
  unavailable: GrpcCode.UNAVAILABLE,
  internal: GrpcCode.INTERNAL,
};

export function grpcCodeOfKind(kind: ErrorKind): GrpcCode {
  return KIND_TO_GRPC[kind] ?? GrpcCode.INTERNAL;
}

export function kindOfGrpcCode(code: number): ErrorKind {
  switch (code) {
    case GrpcCode.INVALID_ARGUMENT:
    case GrpcCode.OUT_OF_RANGE:
      return 'invalid-argument';
    case GrpcCode.NOT_FOUND:
      return 'not-found';
    case GrpcCode.ALREADY_EXISTS:
      return 'already-exists';
    case GrpcCode.RESOURCE_EXHAUSTED:
      return 'resource-exhausted';
    case GrpcCode.FAILED_PRECONDITION:
    case GrpcCode.PERMISSION_DENIED:
    case GrpcCode.UNAUTHENTICATED:
      return 'failed-precondition';
    case GrpcCode.DATA_LOSS:
      return 'data-loss';
    case GrpcCode.UNAVAILABLE:
    case GrpcCode.DEADLINE_EXCEEDED:
    case GrpcCode.CANCELLED:
    case GrpcCode.ABORTED:
      return 'unavailable';
    default:
      return 'internal';
  }
}

type ErrorFactory = (message: string, details: Record<string, unknown>) => KvmeshError;

// NOTE: bounded registry; error classes are registered once per class at module load.
const ERROR_CLASSES_MAX = 256;
const errorFactories = new Map<string, ErrorFactory>([
  ['INVALID_ARGUMENT', (m, d) => new InvalidArgumentError(m, d)],
  ['CORRUPT_DATA', (m, d) => new CorruptDataError(m, d)],
  ['LIMIT_EXCEEDED', (m, d) => new LimitExceededError(m, d)],
  ['UNAVAILABLE', (m, d) => new UnavailableError(m, d)],
]);

/**
 * Lets `fromGrpcError` rebuild a package's own error class from its `code` (e.g. BLOCK_NOT_FOUND →
 * BlockNotFoundError). Unregistered codes come back as a plain KvmeshError with the same code/kind.
 */
export function registerErrorClass(code: string, factory: ErrorFactory): void {
  if (!errorFactories.has(code) && errorFactories.size >= ERROR_CLASSES_MAX)
    throw new LimitExceededError(`at most ${ERROR_CLASSES_MAX} error classes can be registered`, {
      limit: ERROR_CLASSES_MAX,
    });
  errorFactories.set(code, factory);
}

function isServiceErrorLike(err: unknown): err is { code: number; details?: unknown; metadata?: unknown } {
  return (
    typeof err === 'object' &&
    err !== null &&
    typeof (err as { code?: unknown }).code === 'number' &&
    Number.isInteger((err as { code: number }).code) &&
    (err as { code: number }).code >= 0 &&
    (err as { code: number }).code <= 16
  );
}

function encodeDetails(details: Readonly<Record<string, unknown>>): Buffer {
  let json: string;
  try {
    json = JSON.stringify(details, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  } catch {
    json = JSON.stringify({ unserializable: true });
  }
  if (Buffer.byteLength(json) > ERROR_DETAILS_BYTES_MAX) json = JSON.stringify({ truncated: true });
  return Buffer.from(json, 'utf8');
}

/**
 * The gRPC status a handler should return for `err`: a KvmeshError maps by kind and carries its code
 * and details in metadata; a status-shaped error (from a downstream call) passes through; anything
 * else is INTERNAL.
 */
export function toGrpcStatus(err: unknown): StatusObject {
  const metadata = new Metadata();
  if (err instanceof KvmeshError) {
    metadata.set(ERROR_CODE_METADATA_KEY, err.code);
    metadata.set(ERROR_DETAILS_METADATA_KEY, encodeDetails(err.details));
    return { code: grpcCodeOfKind(err.kind), details: err.message, metadata };
  }
  if (isServiceErrorLike(err) && err.code !== GrpcCode.OK) {
    const upstream = err.metadata instanceof Metadata ? err.metadata : undefined;
    for (const key of [ERROR_CODE_METADATA_KEY, ERROR_DETAILS_METADATA_KEY]) {
      const value = upstream?.get(key)[0];
      if (value !== undefined) metadata.set(key, value);
    }
    const details =
      typeof err.details === 'string' ? err.details : String((err as { message?: unknown }).message);
    return { code: err.code, details, metadata };
  }
  const message = err instanceof Error ? err.message : String(err);
  metadata.set(ERROR_CODE_METADATA_KEY, 'INTERNAL');
  return { code: GrpcCode.INTERNAL, details: `internal error: ${message}`, metadata };
}

/**
 * The KvmeshError a client should see for a failed call: the server's own class when it sent a
 * kvmesh code (see `registerErrorClass`), UnavailableError for transport failures, and otherwise a
 * KvmeshError whose code is `GRPC_<STATUS>`. The gRPC status code is kept in `details.grpcCode`.
 */
export function fromGrpcError(err: unknown): KvmeshError {
  if (err instanceof KvmeshError) return err;
  if (!isServiceErrorLike(err)) {
    const message = err instanceof Error ? err.message : String(err);
    return new KvmeshError('INTERNAL', 'internal', message);
  }
  const metadata = err.metadata instanceof Metadata ? err.metadata : undefined;
  const codeValue = metadata?.get(ERROR_CODE_METADATA_KEY)[0];
  const detailsValue = metadata?.get(ERROR_DETAILS_METADATA_KEY)[0];
  let details: Record<string, unknown> = {};
  if (Buffer.isBuffer(detailsValue)) {
    try {
      const parsed: unknown = JSON.parse(detailsValue.toString('utf8'));
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed))
        details = parsed as Record<string, unknown>;
    } catch {
      details = { unparsableDetails: true };
    }
  }
  details = { ...details, grpcCode: err.code };
  const message =
    typeof err.details === 'string' ? err.details : String((err as { message?: unknown }).message);
  const kind = kindOfGrpcCode(err.code);
  if (typeof codeValue === 'string') {
    const factory = errorFactories.get(codeValue);
    if (factory !== undefined) return factory(message, details);
    return new KvmeshError(codeValue, kind, message, details);
  }
  if (err.code === GrpcCode.UNAVAILABLE) return new UnavailableError(message, details);
  return new KvmeshError(`GRPC_${GrpcCode[err.code] ?? err.code}`, kind, message, details);
}

// ---------------------------------------------------------------------------------------------
// Handler wrappers

export interface WrapOptions {
  /** Called for every failed call (after the status is chosen), e.g. to log INTERNAL errors. */
  readonly onError?: (err: unknown, info: { path: string; status: StatusObject }) => void;
}

/** Logs INTERNAL failures as errors (with the cause) and refusals (bad input, limits) at debug. */
export function loggingWrapOptions(logger: Logger): WrapOptions {
  return {
    onError: (err, info) => {
      if (info.status.code === GrpcCode.INTERNAL) logger.error('request failed', { path: info.path, err });
      else
        logger.debug('request refused', {
          path: info.path,
          code: info.status.code,
          msg: info.status.details,
        });
    },
  };
}

function report(options: WrapOptions | undefined, err: unknown, path: string, status: StatusObject): void {
  try {
    options?.onError?.(err, { path, status });
  } catch {
    // A failing logger must not turn into an unhandled rejection inside the server.
  }
}

/** A unary handler that may be async and may throw; the result or the mapped status is always sent. */
export function wrapUnary<Req, Res>(
  handler: (request: Req, call: ServerUnaryCall<Req, Res>) => Res | Promise<Res>,
  options?: WrapOptions,
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    void (async () => {
      try {
        callback(null, await handler(call.request, call));
      } catch (err) {
        const status = toGrpcStatus(err);
        report(options, err, call.getPath(), status);
        callback(status);
      }
    })();
  };
}

/** A client-streaming handler gets the requests as an async iterable and returns the one response. */
export function wrapClientStream<Req, Res>(
  handler: (requests: AsyncIterable<Req>, call: ServerReadableStream<Req, Res>) => Res | Promise<Res>,
  options?: WrapOptions,
): handleClientStreamingCall<Req, Res> {
  return (call, callback) => {
    void (async () => {
      try {
        callback(null, await handler(call as AsyncIterable<Req>, call));
      } catch (err) {
        const status = toGrpcStatus(err);
        report(options, err, call.getPath(), status);
        callback(status);
      }
    })();
  };
}

type WritableCall<Res> = {
  cancelled: boolean;
  write(message: Res): boolean;
  once(event: string, listener: () => void): unknown;
  removeListener(event: string, listener: () => void): unknown;
};

/** Writes with backpressure: waits for 'drain' when the stream buffer is full, or stops on cancel. */
async function writeAll<Res>(
  call: WritableCall<Res>,
  messages: AsyncIterable<Res> | Iterable<Res>,
): Promise<void> {
  for await (const message of messages) {
    if (call.cancelled) return;
    if (!call.write(message)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          call.removeListener('drain', done);
          call.removeListener('cancelled', done);
          call.removeListener('close', done);
          resolve();
        };
        call.once('drain', done);
        call.once('cancelled', done);
        call.once('close', done);
      });
    }
  }
}

function failStream(
  call: { emit(event: string, value: unknown): unknown; cancelled: boolean; getPath(): string },
  err: unknown,
  options: WrapOptions | undefined,
): void {
  const status = toGrpcStatus(err);
  report(options, err, call.getPath(), status);
  // NOTE: grpc-js turns an 'error' event on a server stream into the trailing status.
  if (!call.cancelled) call.emit('error', status);
}

/** A server-streaming handler is an (async) generator of responses; backpressure is honoured. */
export function wrapServerStream<Req, Res>(
  handler: (request: Req, call: ServerWritableStream<Req, Res>) => AsyncIterable<Res> | Iterable<Res>,
  options?: WrapOptions,
): handleServerStreamingCall<Req, Res> {
  return (call) => {
    void (async () => {
      try {
        await writeAll(call, handler(call.request, call));
        if (!call.cancelled) call.end();
      } catch (err) {
        failStream(call, err, options);
      }
    })();
  };
}

/** A bidi handler maps the request stream to a response stream. */
export function wrapBidiStream<Req, Res>(
  handler: (
    requests: AsyncIterable<Req>,
    call: ServerDuplexStream<Req, Res>,
  ) => AsyncIterable<Res> | Iterable<Res>,
  options?: WrapOptions,
): handleBidiStreamingCall<Req, Res> {
  return (call) => {
    void (async () => {
      try {
        await writeAll(call, handler(call as AsyncIterable<Req>, call));
        if (!call.cancelled) call.end();
      } catch (err) {
        failStream(call, err, options);
      }
    })();
  };
}

// ---------------------------------------------------------------------------------------------
// Server

export interface GrpcServerOptions {
  /** Largest message accepted and sent, in bytes. Default 64 MiB. */
  readonly messageBytesMax?: number;
  readonly receiveMessageBytesMax?: number;
  readonly sendMessageBytesMax?: number;
  readonly keepaliveTimeMs?: number;
  readonly keepaliveTimeoutMs?: number;
  /** HTTP/2 concurrent streams per connection; unset leaves Node's default. */
  readonly concurrentStreamsMax?: number;
  /** Service names (e.g. 'kvmesh.v1.KvStore') reported by the health service besides the server (''). */
  readonly healthServices?: readonly string[];
  /** Extra raw grpc-js options; they win over the ones above. */
  readonly extraOptions?: ServerOptions;
}

export interface GrpcServer {
  readonly server: Server;
  readonly health: HealthImplementation;
  /** Sets SERVING / NOT_SERVING for one service, or for '' and every `healthServices` entry. */
  setServing(serving: boolean, service?: string): void;
  /** Binds `address` (e.g. '127.0.0.1:0') without TLS and returns the bound port. */
  bind(address: string): Promise<number>;
  /** NOT_SERVING, then graceful shutdown for `graceMs`, then forced. */
  shutdown(graceMs?: number): Promise<'graceful' | 'forced'>;
}

/** Channel options for a server: message bounds and keepalive that tolerate idle peers. */
export function grpcServerOptions(options: GrpcServerOptions = {}): ServerOptions {
  const bytesMax = options.messageBytesMax ?? MESSAGE_BYTES_MAX_DEFAULT;
  const out: ServerOptions = {
    'grpc.max_receive_message_length': options.receiveMessageBytesMax ?? bytesMax,
    'grpc.max_send_message_length': options.sendMessageBytesMax ?? bytesMax,
    'grpc.keepalive_time_ms': options.keepaliveTimeMs ?? KEEPALIVE_TIME_MS_DEFAULT,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS_DEFAULT,
    // Clients ping every keepaliveTimeMs even when idle; accept that instead of GOAWAY-ing them.
    'grpc.keepalive_permit_without_calls': 1,
  };
  if (options.concurrentStreamsMax !== undefined)
    out['grpc.max_concurrent_streams'] = options.concurrentStreamsMax;
  return { ...out, ...options.extraOptions };
}

export function createGrpcServer(options: GrpcServerOptions = {}): GrpcServer {
  const server = new Server(grpcServerOptions(options));
  const services = ['', ...(options.healthServices ?? [])];
  // Start NOT_SERVING: main.ts flips to SERVING once the core is ready and the port is bound.
  const initial: Record<string, ServingStatus> = {};
  for (const s of services) initial[s] = 'NOT_SERVING';
  const health = new HealthImplementation(initial);
  health.addToServer(server);
  return {
    server,
    health,
    setServing(serving, service) {
      const status: ServingStatus = serving ? 'SERVING' : 'NOT_SERVING';
      for (const s of service === undefined ? services : [service]) health.setStatus(s, status);
    },
    bind: (address) => bindServer(server, address),
    async shutdown(graceMs) {
      for (const s of services) health.setStatus(s, 'NOT_SERVING');
      return shutdownServer(server, graceMs);
    },
  };
}

/** Promisified bindAsync; resolves with the bound port (useful with port 0). */
export function bindServer(
  server: Server,
  address: string,
  serverCredentials: ServerCredentials = ServerCredentials.createInsecure(),
): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, serverCredentials, (err, port) => {
      if (err !== null)
        reject(new UnavailableError(`cannot bind gRPC server to ${address}: ${err.message}`, { address }));
      else resolve(port);
    });
  });
}

/** tryShutdown (in-flight calls finish) with a deadline, then forceShutdown. */
export function shutdownServer(
  server: Server,
  graceMs = SHUTDOWN_GRACE_MS_DEFAULT,
): Promise<'graceful' | 'forced'> {
  return new Promise((resolve) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      server.forceShutdown();
      resolve('forced');
    }, graceMs);
    server.tryShutdown(() => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve('graceful');
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Client

export interface GrpcClientOptions {
  readonly messageBytesMax?: number;
  readonly keepaliveTimeMs?: number;
  readonly keepaliveTimeoutMs?: number;
  /** HTTP/2 flow-control window; larger windows keep bulk streams from stalling on loopback. */
  readonly flowControlWindowBytes?: number;
  readonly extraOptions?: ChannelOptions;
}

export function grpcClientOptions(options: GrpcClientOptions = {}): ChannelOptions {
  const bytesMax = options.messageBytesMax ?? MESSAGE_BYTES_MAX_DEFAULT;
  const out: ChannelOptions = {
    'grpc.max_receive_message_length': bytesMax,
    'grpc.max_send_message_length': bytesMax,
    'grpc.keepalive_time_ms': options.keepaliveTimeMs ?? KEEPALIVE_TIME_MS_DEFAULT,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS_DEFAULT,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc-node.flow_control_window': options.flowControlWindowBytes ?? 16 * 1024 * 1024,
  };
  return { ...out, ...options.extraOptions };
}

/** A deadline `ms` from now, for call options. */
export function deadlineIn(ms: number): Date {
  return new Date(Date.now() + ms);
}

/**
 * Promisifies one callback-style call and maps failures through `fromGrpcError`:
 * `await callUnary<StatsResponse>((cb) => client.stats({}, new Metadata(), { deadline }, cb))`.
 */
export function callUnary<Res>(
  invoke: (callback: (err: ServiceError | null, response?: Res) => void) => unknown,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    try {
      invoke((err, response) => {
        if (err !== null && err !== undefined) reject(fromGrpcError(err));
        else if (response === undefined)
          reject(new KvmeshError('INTERNAL', 'internal', 'call returned no response'));
        else resolve(response);
      });
    } catch (err) {
      reject(fromGrpcError(err));
    }
  });
}

export interface HealthCheckOptions {
  /** '' (the default) is the whole server. */
  readonly service?: string;
  readonly deadlineMs?: number;
  readonly credentials?: ChannelCredentials;
}

// NOTE: proto-loader's ServiceDefinition is structurally the grpc-js one (path, serializers, streams).
const HealthClient = makeGenericClientConstructor(
  healthServiceDefinition as unknown as ServiceDefinition,
  'grpc.health.v1.Health',
);

/** Standard gRPC health check against `address`: 'SERVING', 'NOT_SERVING', ...; throws KvmeshError. */
export async function checkHealth(address: string, options: HealthCheckOptions = {}): Promise<string> {
  const client = new HealthClient(address, options.credentials ?? channelCredentials.createInsecure());
  try {
    const response = await callUnary<{ status: string }>((cb) =>
      (
        client as unknown as {
          Check(req: unknown, md: Metadata, opts: { deadline: Date }, cb: unknown): void;
        }
      ).Check(
        { service: options.service ?? '' },
        new Metadata(),
        { deadline: deadlineIn(options.deadlineMs ?? 2000) },
        cb,
      ),
    );
    return response.status;
  } finally {
    client.close();
  }
}
