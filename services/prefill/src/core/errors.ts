// Typed errors of the prefill worker. Each maps to a gRPC status through its `kind` and carries what
// the caller needs to act on it (the queue bound), so the router can retry elsewhere without parsing
// messages. Codec and model mismatches are @kvmesh/worker's.
import { KvmeshError } from '@kvmesh/errors';

/** The bounded request queue is full; retry later or on another worker. */
export class QueueFullError extends KvmeshError {
  constructor(queueDepthMax: number) {
    super('QUEUE_FULL', 'resource-exhausted', `prefill queue is full (${queueDepthMax} requests waiting)`, {
      queueDepthMax,
    });
  }
}
