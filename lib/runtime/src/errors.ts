// Errors the runtime adds to the shared @kvmesh/errors set: a dependency (NATS, JetStream, a peer's
// gRPC server) that cannot be reached right now. Callers may retry these; nothing about the request
// itself was wrong.
import { KvmeshError } from '@kvmesh/errors';

/** A dependency is down or unreachable; the same call may succeed later. */
export class UnavailableError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('UNAVAILABLE', 'unavailable', message, details);
  }
}
