// The one error base every kvmesh package throws. A `code` is stable and machine-readable (it maps
// to a gRPC status and an HTTP status at the service edge); `details` carry what a caller needs to
// act, such as the offending value or the configured limit.

/** How an error maps onto the wire; the service edges translate this to gRPC / HTTP statuses. */
export type ErrorKind =
  | 'invalid-argument'
  | 'not-found'
  | 'already-exists'
  | 'resource-exhausted'
  | 'failed-precondition'
  | 'data-loss'
  | 'unavailable'
  | 'internal';

export class KvmeshError extends Error {
  readonly code: string;
  readonly kind: ErrorKind;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: string, kind: ErrorKind, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.kind = kind;
    this.details = details;
  }
}

/** A caller passed a value outside the contract (wrong shape, range, type). */
export class InvalidArgumentError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('INVALID_ARGUMENT', 'invalid-argument', message, details);
  }
}

/** Bytes that claim to be kvmesh data fail their checks (checksum, magic, bounds). */
export class CorruptDataError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('CORRUPT_DATA', 'data-loss', message, details);
  }
}

/** A configured bound was hit; the caller may retry later or with less. */
export class LimitExceededError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('LIMIT_EXCEEDED', 'resource-exhausted', message, details);
  }
}
