// How one call to one node fails, and whether the node itself is to blame. A *transport* failure
// (connection refused or reset, deadline passed, node gone from membership) says the node may be
// dead, so the client tries the next node and distrusts this one for a while; an error the node sent
// (bad input, full store, a replica it could not reach) says nothing about the node's health.
// Every failure reaches callers as a KvmeshError (gRPC ones through fromGrpcError).
import { Metadata, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { KvmeshError } from '@kvmesh/errors';
import { ERROR_CODE_METADATA_KEY, deadlineIn, fromGrpcError } from '@kvmesh/runtime';

// NOTE: a WeakSet, so tagging an error costs nothing once the error is dropped.
const transportFailures = new WeakSet<KvmeshError>();

const TRANSPORT_CODES = new Set(['DATA_CHANNEL_UNAVAILABLE', 'NO_LIVE_NODES']);

/** Whether `error` means the node could not be reached (rather than that it refused the request). */
export function isTransportFailure(error: KvmeshError): boolean {
  return transportFailures.has(error) || TRANSPORT_CODES.has(error.code);
}

/** Any thrown value as a KvmeshError; gRPC statuses without a kvmesh code that mean "unreachable" are tagged. */
export function toKvmeshError(err: unknown): KvmeshError {
  if (err instanceof KvmeshError) return err;
  const error = fromGrpcError(err);
  const raw = err as Partial<ServiceError>;
  const fromServer = raw.metadata instanceof Metadata && raw.metadata.get(ERROR_CODE_METADATA_KEY).length > 0;
  if (!fromServer && (raw.code === GrpcCode.UNAVAILABLE || raw.code === GrpcCode.DEADLINE_EXCEEDED))
    transportFailures.add(error);
  return error;
}

/** Call options with a deadline `timeoutMs` from now. */
export function callOptions(timeoutMs: number): { deadline: Date } {
  return { deadline: deadlineIn(timeoutMs) };
}

/**
 * Promisifies one callback-style unary gRPC call with a deadline; failures come back as classified
 * KvmeshErrors. `client.stats({}, md, opts, cb)` becomes `unary((md, opts, cb) => client.stats({}, md, opts, cb), ms)`.
 */
export function unary<Res>(
  invoke: (
    metadata: Metadata,
    options: { deadline: Date },
    callback: (err: ServiceError | null, response?: Res) => void,
  ) => unknown,
  timeoutMs: number,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    try {
      invoke(new Metadata(), callOptions(timeoutMs), (err, response) => {
        if (err !== null && err !== undefined) reject(toKvmeshError(err));
        else if (response === undefined)
          reject(new KvmeshError('INTERNAL', 'internal', 'gRPC call returned no response'));
        else resolve(response);
      });
    } catch (err) {
      reject(toKvmeshError(err));
    }
  });
}
