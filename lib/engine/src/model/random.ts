// Seeded pseudo-random numbers for generated weights: xoshiro128** seeded through splitmix32, and
// normal deviates by Box-Muller. Pure 32-bit integer arithmetic, so a seed gives the same stream on
// every machine and Node version (Math.random is never used: weights must be reproducible bytes).
import { InvalidArgumentError } from '@kvmesh/errors';

const TWO_POW_32 = 4294967296;

export class Xoshiro128 {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spareNormal: number | null = null;

  /** `seed` is an integer in [0, 2^32). */
  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed >= TWO_POW_32) {
      throw new InvalidArgumentError(`seed must be an integer in [0, 2^32), got ${seed}`, {
        field: 'seed',
        value: seed,
      });
    }
    // splitmix32 spreads one 32-bit seed over the 128-bit state (never all zero).
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
  }

  /** Next 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in the open interval (0, 1). */
  nextUnit(): number {
    return (this.nextUint32() + 0.5) / TWO_POW_32;
  }

  /** Standard normal deviate (Box-Muller; the second value of each pair is kept for the next call). */
  nextNormal(): number {
    if (this.spareNormal !== null) {
      const v = this.spareNormal;
      this.spareNormal = null;
      return v;
    }
    const radius = Math.sqrt(-2 * Math.log(this.nextUnit()));
    const angle = 2 * Math.PI * this.nextUnit();
    this.spareNormal = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  }

  /** Fills `out` with mean + std * N(0, 1). */
  fillNormal(out: Float32Array, mean: number, std: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = mean + std * this.nextNormal();
    return out;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
