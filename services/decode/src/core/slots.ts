// A bounded count of admitted requests: a request takes a slot before any work (prefix fetch,
// engine admission) and gives it back when its stream ends, so the worker never holds more than
// sequencesMax sequences and a burst beyond it is refused at once with RESOURCE_EXHAUSTED.
import { InvalidArgumentError } from '@kvmesh/errors';

import { TooManySequencesError } from './errors.ts';

export class SequenceSlots {
  readonly sequencesMax: number;
  private taken = 0;

  constructor(sequencesMax: number) {
    if (!Number.isInteger(sequencesMax) || sequencesMax < 1)
      throw new InvalidArgumentError(`sequencesMax must be a positive integer, got ${sequencesMax}`, {
        sequencesMax,
      });
    this.sequencesMax = sequencesMax;
  }

  get used(): number {
    return this.taken;
  }

  /** Takes a slot; the returned function gives it back (once, however often it is called). */
  acquire(): () => void {
    if (this.taken >= this.sequencesMax) throw new TooManySequencesError(this.sequencesMax);
    this.taken++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.taken--;
    };
  }
}
