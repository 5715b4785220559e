// Typed errors of the decode worker. Each maps to a gRPC status through its `kind` and carries what
// the caller needs to act on it (the sequence bound), so the router can retry elsewhere. Codec and model mismatches are @kvmesh/worker's.
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
