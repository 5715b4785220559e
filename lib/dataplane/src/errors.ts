// Errors of the data channel and how a KvmeshError crosses it. A handler's error travels as a status
// code (one per ErrorKind, so a reader that skips the header still knows the kind) plus a JSON
// header {code, kind, message, details}; the client rebuilds a KvmeshError with the same code, kind,
// message and details (as the shared class when both sides know the code, else DataChannelRemoteError).
// Nothing but these four fields crosses the wire: no stacks, no class names.
import {
  CorruptDataError,
  InvalidArgumentError,
  KvmeshError,
  LimitExceededError,
  type ErrorKind,
} from '@kvmesh/errors';

/** Why a call could not complete on a connection (the connection is gone or never came up). */
export type UnavailableReason =
  'connect' | 'closed' | 'reset' | 'timeout' | 'protocol' | 'server-error' | 'going-away' | 'client-closed';

/**
 * The peer is unreachable or the connection died with the call in flight: a reset, a close, a
 * timeout, a protocol violation by either side. The call may or may not have run on the server;
 * retrying is safe only for idempotent methods. `details.reason` says which case it was.
 */
export class DataChannelUnavailableError extends KvmeshError {
  constructor(
    message: string,
    details: { address: string; reason: UnavailableReason } & Record<string, unknown>,
  ) {
    super('DATA_CHANNEL_UNAVAILABLE', 'unavailable', message, details);
  }
}

/** The byte stream breaks the frame format (bad magic or version, unknown frame type, truncated frame). */
export class DataChannelProtocolError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('DATA_CHANNEL_PROTOCOL', 'data-loss', message, details);
  }
}

/** The HELLO carried no token or the wrong one. */
export class DataChannelAuthError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('DATA_CHANNEL_AUTH', 'failed-precondition', message, details);
  }
}

/** No handler is registered for the method id of a request. */
export class DataChannelMethodNotFoundError extends KvmeshError {
  constructor(methodId: number) {
    super('DATA_CHANNEL_METHOD_NOT_FOUND', 'not-found', `no data channel handler for method ${methodId}`, {
      methodId,
    });
  }
}

/**
 * An error a server-side handler threw, rebuilt on the client. `code`, `kind`, `message` and
 * `details` are the handler's; match on `code` (the class of the original is not transmitted).
 */
export class DataChannelRemoteError extends KvmeshError {
  constructor(code: string, kind: ErrorKind, message: string, details: Record<string, unknown>) {
    super(code, kind, message, details);
  }
}

/** Response status 0 is success; every other status names the error's kind. */
export const STATUS_OK = 0;
const KIND_STATUS: Readonly<Record<ErrorKind, number>> = {
  'invalid-argument': 1,
  'not-found': 2,
  'already-exists': 3,
  'resource-exhausted': 4,
  'failed-precondition': 5,
  'data-loss': 6,
  unavailable: 7,
  internal: 8,
};
const STATUS_KIND = new Map<number, ErrorKind>(
  Object.entries(KIND_STATUS).map(([kind, status]) => [status, kind as ErrorKind]),
);

export function statusForKind(kind: ErrorKind): number {
  return KIND_STATUS[kind];
}

/** Longest error message sent; the rest is cut so an error always fits a small header bound. */
const MESSAGE_CHARS_MAX = 2048;

/** JSON header of an error response or ERROR frame; fits `headerBytesMax` (details dropped if not). */
export function encodeErrorHeader(
  error: unknown,
  headerBytesMax: number,
): { status: number; header: Buffer } {
  const wire =
    error instanceof KvmeshError
      ? { code: error.code, kind: error.kind, message: error.message, details: error.details }
      : {
          code: 'INTERNAL',
          kind: 'internal' as ErrorKind,
          message: `data channel handler failed: ${error instanceof Error ? error.message : String(error)}`,
          details: {},
        };
  wire.message = wire.message.slice(0, MESSAGE_CHARS_MAX);
  let header: Buffer;
  try {
    header = Buffer.from(JSON.stringify(wire, jsonSafe));
  } catch {
    header = Buffer.from(JSON.stringify({ ...wire, details: { detailsDropped: 'not serializable' } }));
  }
  if (header.length > headerBytesMax) {
    header = Buffer.from(JSON.stringify({ ...wire, details: { detailsDropped: 'too large' } }));
    if (header.length > headerBytesMax) header = Buffer.alloc(0);
  }
  return { status: statusForKind(wire.kind), header };
}

// bigint and byte arrays are common in kvmesh details (hashes, sizes); JSON has neither.
function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array)
    return Buffer.from(value.buffer, value.byteOffset, value.length).toString('hex');
  return value;
}

/** Rebuilds the KvmeshError an error response or ERROR frame carries. */
export function decodeErrorHeader(status: number, header: Uint8Array): KvmeshError {
  const statusKind = STATUS_KIND.get(status) ?? 'internal';
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(header.buffer, header.byteOffset, header.length).toString('utf8'));
  } catch {
    parsed = undefined;
  }
  const o = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const kind = typeof o.kind === 'string' && o.kind in KIND_STATUS ? (o.kind as ErrorKind) : statusKind;
  const code = typeof o.code === 'string' ? o.code : 'INTERNAL';
  const message = typeof o.message === 'string' ? o.message : `data channel error status ${status}`;
  const details =
    typeof o.details === 'object' && o.details !== null ? (o.details as Record<string, unknown>) : {};
  const Local = LOCAL_CLASSES.get(code);
  if (Local !== undefined && Local.kind === kind) return new Local.make(message, details);
  return new DataChannelRemoteError(code, kind, message, details);
}

// Codes whose class both sides share are rebuilt as that class, so `instanceof` works for them too.
const LOCAL_CLASSES = new Map<
  string,
  { kind: ErrorKind; make: new (message: string, details: Record<string, unknown>) => KvmeshError }
>([
  ['INVALID_ARGUMENT', { kind: 'invalid-argument', make: InvalidArgumentError }],
  ['LIMIT_EXCEEDED', { kind: 'resource-exhausted', make: LimitExceededError }],
  ['CORRUPT_DATA', { kind: 'data-loss', make: CorruptDataError }],
  ['DATA_CHANNEL_AUTH', { kind: 'failed-precondition', make: DataChannelAuthError }],
  ['DATA_CHANNEL_PROTOCOL', { kind: 'data-loss', make: DataChannelProtocolError }],
]);
