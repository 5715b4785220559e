// Time per unit of work (ms per prompt token, per decoded sequence, per fetched token), measured on
// the work itself and forgetting old samples by the amount of work done since: the estimate is
// Σ ms ÷ Σ units over all samples, each sample's weight halved for every `halfLifeUnits` units
// recorded after it. Weighting by work, not by sample count, keeps one 2-token chunk from moving the
// estimate as much as a 64-token one. Constant memory (two sums); 0 until the first sample.
import { InvalidArgumentError } from '@kvmesh/errors';

export class RateMeter {
  private msSum = 0;
  private unitSum = 0;

  constructor(readonly halfLifeUnits: number) {
    if (!Number.isFinite(halfLifeUnits) || halfLifeUnits <= 0)
      throw new InvalidArgumentError(`halfLifeUnits must be a positive number, got ${halfLifeUnits}`, {
        halfLifeUnits,
      });
  }

  /** Adds `units` of work that took `ms`; samples with no units or a negative or non-finite time are ignored. */
  record(units: number, ms: number): void {
    if (!(units > 0) || !Number.isFinite(units) || !(ms >= 0) || !Number.isFinite(ms)) return;
    const keep = 0.5 ** (units / this.halfLifeUnits);
    this.msSum = this.msSum * keep + ms;
    this.unitSum = this.unitSum * keep + units;
  }

  /** The estimate in ms per unit; 0 while nothing has been recorded. */
  get msPerUnit(): number {
    return this.unitSum > 0 ? this.msSum / this.unitSum : 0;
  }
}
