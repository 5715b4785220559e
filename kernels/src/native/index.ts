// Wraps the native addon in the Kernels facade. Each kernel family validates its arguments in
// TypeScript (typed errors naming the offending value) before handing plain buffers to C++.
import type { Kernels } from '../types.ts';
import { nativeAttention, type NativeAttentionAddon } from './attention.ts';
import { nativeCodec, type NativeCodecAddon } from './codec.ts';
import { nativeDense, type NativeDenseAddon } from './dense.ts';
import { nativeHash, type NativeHashAddon } from './hash.ts';
import type { NativeMemoryAddon } from './memory.ts';

export interface NativeAddon
  extends NativeHashAddon, NativeCodecAddon, NativeAttentionAddon, NativeDenseAddon, NativeMemoryAddon {
  isa(): string;
  detectedIsa(): string;
  setIsa(name: string): boolean;
}

export function createNativeKernels(addon: NativeAddon): Kernels {
  return {
    backend: 'native',
    isa: () => addon.isa(),
    ...nativeHash(addon),
    ...nativeCodec(addon),
    ...nativeAttention(addon),
    ...nativeDense(addon),
  };
}
