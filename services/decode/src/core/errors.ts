// Typed errors of the decode worker. Each maps to a gRPC status through its `kind` and carries what
// the caller needs to act on it (the sequence bound, the first token the prefill worker and this
// engine disagree on), so the router can retry elsewhere. Codec and model mismatches are @kvmesh/worker's.
import { KvmeshError } from '@kvmesh/errors';

/** Every sequence slot is taken; retry later or on another worker. */
export class TooManySequencesError extends KvmeshError {
  constructor(sequencesMax: number) {
    super(
      'TOO_MANY_SEQUENCES',
      'resource-exhausted',
      `decode worker is full (${sequencesMax} sequences admitted)`,
      { sequencesMax },
    );
  }
}

/**
 * Under greedy sampling the engine's first token must be the one the prefill worker sampled; a
 * difference means the two run different weights or layouts, so nothing this worker emits is trusted.
 */
export class FirstTokenMismatchError extends KvmeshError {
  constructor(expected: number, computed: number) {
    super(
      'FIRST_TOKEN_MISMATCH',
      'failed-precondition',
      `first_token_id: the prefill worker sampled ${expected}, this worker's greedy first token is ${computed}`,
      { field: 'first_token_id', expected, computed },
    );
  }
}
