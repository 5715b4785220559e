// RoPE inverse frequencies from a model's config (rope_theta, rope_scaling): the table every rope()
// call takes. Computed once per model in double precision and rounded to f32 at the end, so the
// table is within one f32 ulp of Hugging Face's (which computes it in f32).
import { InvalidArgumentError } from '@kvmesh/errors';

import type { RopeConfig } from './dense-types.ts';
import { checkInt } from './validate.ts';

function checkPositive(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new InvalidArgumentError(`ropeInvFreq: ${name} must be a finite number > 0, got ${String(value)}`, {
      [name]: value,
    });
  }
  return value;
}

/**
 * invFreq[i] = theta^(-2i / headDim) for i in [0, headDim/2), then scaled: `linear` divides every
 * frequency by factor; `llama3` (Meta's Llama 3.1 formula) keeps frequencies whose wavelength
 * 2π/f is below originalContextTokens/highFreqFactor, divides those with a wavelength above
 * originalContextTokens/lowFreqFactor by factor, and interpolates smoothly in between.
 */
export function ropeInvFreq(config: RopeConfig): Float32Array {
  const headDim = checkInt('headDim', config.headDim, 2, 4096, 2);
  const theta = checkPositive('theta', config.theta);
  const scaling = config.scaling ?? { kind: 'none' };
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const freq = 1 / theta ** ((2 * i) / headDim);
    switch (scaling.kind) {
      case 'none':
        out[i] = freq;
        break;
      case 'linear':
        out[i] = freq / checkPositive('factor', scaling.factor);
        break;
      case 'llama3': {
        const factor = checkPositive('factor', scaling.factor);
        const low = checkPositive('lowFreqFactor', scaling.lowFreqFactor);
        const high = checkPositive('highFreqFactor', scaling.highFreqFactor);
        const original = checkPositive('originalContextTokens', scaling.originalContextTokens);
        if (!(high > low)) {
          throw new InvalidArgumentError(
            `ropeInvFreq: highFreqFactor ${high} must exceed lowFreqFactor ${low}`,
            { lowFreqFactor: low, highFreqFactor: high },
          );
        }
        const wavelen = (2 * Math.PI) / freq;
        if (wavelen < original / high) {
          out[i] = freq;
        } else if (wavelen > original / low) {
          out[i] = freq / factor;
        } else {
          const smooth = (original / wavelen - low) / (high - low);
          out[i] = (1 - smooth) * (freq / factor) + smooth * freq;
        }
        break;
      }
      default:
        throw new InvalidArgumentError(
          `ropeInvFreq: unknown scaling kind ${JSON.stringify((scaling as { kind: unknown }).kind)} (known: none, linear, llama3)`,
          { scaling: (scaling as { kind: unknown }).kind },
        );
    }
  }
  return out;
}
