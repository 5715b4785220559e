// The plain TypeScript implementation of every kernel: the ground truth parity tests compare the
// native builds against, and the fallback when no native build is available. Written for
// clarity, not speed.
import type { Kernels } from '../types.ts';
import { referenceAttention } from './attention.ts';
import { referenceCodec } from './codec.ts';
import { referenceDense } from './dense.ts';
import { referenceHash } from './hash.ts';

export const referenceKernels: Kernels = {
  backend: 'reference',
  isa: () => 'ts',
  ...referenceHash,
  ...referenceCodec,
  ...referenceAttention,
  ...referenceDense,
};
