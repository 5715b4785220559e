// Typed errors every model worker (prefill, decode) raises when a request asks for what it does not
// serve. Each maps to a gRPC status through its `kind` and carries what the router needs to retry on
// another worker without parsing messages; role-specific errors stay in each service.
import { KvmeshError } from '@kvmesh/errors';

/** What a worker does with KV in its codec, as its CODEC_MISMATCH message says it. */
export type CodecUse = 'computes' | 'decodes';

/** The request asks for a KV codec this worker does not use; route it to a worker that does. */
export class CodecMismatchError extends KvmeshError {
  constructor(requested: string, served: string, use: CodecUse) {
    super(
      'CODEC_MISMATCH',
      'failed-precondition',
      `codec: this worker ${use} KV in ${served}, the request asks for ${requested}`,
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
