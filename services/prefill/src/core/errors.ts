// Typed errors of the prefill worker. Each maps to a gRPC status through its `kind` and carries what
// the caller needs to act on it (the codec this worker computes, the queue bound, the blocks the
// store did not acknowledge), so the router can retry elsewhere without parsing messages.
import { KvmeshError } from '@kvmesh/errors';

/** The request asks for a KV codec this worker does not compute; route it to a worker that does. */
export class CodecMismatchError extends KvmeshError {
  constructor(requested: string, served: string) {
    super(
      'CODEC_MISMATCH',
      'failed-precondition',
      `codec: this worker computes KV in ${served}, the request asks for ${requested}`,
      { field: 'codec', requested, served },
    );
  }
}

/** The request names a model this worker does not serve. */
export class ModelMismatchError extends KvmeshError {
  constructor(requested: string, served: string) {
    super(
      'MODEL_MISMATCH',
      'failed-precondition',
      `model: this worker serves '${served}', not '${requested}'`,
      {
        field: 'model',
        requested,
        served,
      },
    );
  }
}

/** The bounded request queue is full; retry later or on another worker. */
export class QueueFullError extends KvmeshError {
  constructor(queueDepthMax: number) {
    super('QUEUE_FULL', 'resource-exhausted', `prefill queue is full (${queueDepthMax} requests waiting)`, {
      queueDepthMax,
    });
  }
}

/** Computed blocks the store did not acknowledge: the response would claim blocks nobody holds. */
export class BlocksNotStoredError extends KvmeshError {
  constructor(failed: number, total: number, firstError: string) {
    super(
      'BLOCKS_NOT_STORED',
      'unavailable',
      `${failed} of ${total} new blocks were not acknowledged by the store: ${firstError}`,
      { failed, total },
    );
  }
}
