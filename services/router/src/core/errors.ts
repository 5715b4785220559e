// Typed errors of the router core. Each carries what the caller needs to act (which pool was empty),
// so the service edge maps them to gRPC / HTTP statuses through `kind` without parsing messages.
import { KvmeshError } from '@kvmesh/errors';

/** No candidate worker to route to (none registered, or all filtered out); retry later. */
export class NoWorkerAvailableError extends KvmeshError {
  constructor(pool: string) {
    super('NO_WORKER_AVAILABLE', 'unavailable', `no ${pool} worker is available`, { pool });
  }
}
