// Public surface of @kvmesh/kernels: the facade types, the reference implementation, and the
// loader that picks the best available build (native CPU module → TypeScript reference) and says
// which one it picked. A missing native build is a warning, never a failure, unless the caller
// requires native (the test command sets KVMESH_REQUIRE_NATIVE=1 so CI cannot silently fall back).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { KvmeshError } from '@kvmesh/errors';

import { createNativeKernels, type NativeAddon } from './native/index.ts';
import { nativeMemoryOf, type NativeMemory } from './native/memory.ts';
import { referenceKernels } from './reference/index.ts';
import type { Kernels } from './types.ts';

export * from './types.ts';
export * from './dense-types.ts';
export { relativeL2Error } from './metrics.ts';
export { ropeInvFreq } from './rope.ts';
export { DENSE_DIM_MAX, PREFILL_TOKENS_MAX, ROPE_POSITION_MAX, THREADS_MAX } from './dense-validate.ts';
export {
  BLOCK_TOKENS_MAX,
  BLOCK_TOKENS_MIN,
  BLOCK_TOKENS_MULTIPLE,
  HASH_BYTES,
  checkBlockTokens,
} from './hash-args.ts';
export { referenceKernels };
export { MAPPING_BYTES_MAX, MemoryMapError, NUMA_NODES_MAX } from './native/memory.ts';
export type { MapSharedFileOptions, NativeMemory } from './native/memory.ts';

// KVMESH_KERNELS_ADDON points at another build (tests use it to exercise the fallback).
const addonPath =
  process.env.KVMESH_KERNELS_ADDON ??
  fileURLToPath(new URL('../build/Release/kvmesh_kernels.node', import.meta.url));

export class NativeUnavailableError extends KvmeshError {
  constructor(reason: string) {
    super('NATIVE_UNAVAILABLE', 'failed-precondition', `native kernels unavailable: ${reason}`, {
      addonPath,
    });
  }
}

let nativeCache: { kernels: Kernels | null; addon?: NativeAddon; reason: string } | undefined;

function loadAddon(): { kernels: Kernels | null; addon?: NativeAddon; reason: string } {
  if (nativeCache) return nativeCache;
  if (!existsSync(addonPath)) {
    nativeCache = { kernels: null, reason: `${addonPath} not built (run: npm run build:native)` };
    return nativeCache;
  }
  try {
    const addon = createRequire(import.meta.url)(addonPath) as NativeAddon;
    nativeCache = { kernels: createNativeKernels(addon), addon, reason: 'loaded' };
  } catch (err) {
    nativeCache = { kernels: null, reason: `failed to load ${addonPath}: ${(err as Error).message}` };
  }
  return nativeCache;
}

/** The native kernels, or null with the reason when they cannot be loaded. */
export function nativeKernels(): Kernels | null {
  return loadAddon().kernels;
}

let warned = false;

/**
 * The best available kernels. Falls back to the TypeScript reference with a warning on stderr,
 * or throws NativeUnavailableError when `requireNative` (default: KVMESH_REQUIRE_NATIVE=1).
 */
export function loadKernels(options: { requireNative?: boolean } = {}): Kernels {
  const requireNative = options.requireNative ?? process.env.KVMESH_REQUIRE_NATIVE === '1';
  const { kernels, reason } = loadAddon();
  if (kernels) return kernels;
  if (requireNative) throw new NativeUnavailableError(reason);
  if (!warned) {
    warned = true;
    process.emitWarning(`kvmesh kernels: using the TypeScript reference (slow): ${reason}`, 'KvmeshKernels');
  }
  return referenceKernels;
}

/** Which build loadKernels() would pick, for `kvmesh doctor`. */
export function describeKernels(): { backend: string; isa: string; detail: string } {
  const { kernels, reason } = loadAddon();
  if (kernels) return { backend: 'native', isa: kernels.isa(), detail: addonPath };
  return { backend: 'reference', isa: 'ts', detail: reason };
}

/**
 * Instruction-set control of the native build, for tests and benchmarks that check every path:
 * `set` returns false when the CPU lacks the set. Null without a native build.
 */
export function nativeIsaControl(): {
  detected: string;
  active: () => string;
  set: (isa: string) => boolean;
} | null {
  const { addon } = loadAddon();
  if (!addon) return null;
  return { detected: addon.detectedIsa(), active: () => addon.isa(), set: (isa) => addon.setIsa(isa) };
}

/**
 * Shared mappings (mapSharedFile, unmap) and aligned allocations from the native module, or null
 * with no native build (or one older than these functions): Node itself cannot map a file, so the
 * caller picks its own fallback. Never throws for a missing build, whatever KVMESH_REQUIRE_NATIVE says.
 */
export function nativeMemory(): NativeMemory | null {
  const { addon } = loadAddon();
  return addon === undefined ? null : nativeMemoryOf(addon);
}

/** Why nativeMemory() is null ('loaded' when it is not). */
export function nativeMemoryStatus(): string {
  const { addon, reason } = loadAddon();
  if (addon === undefined) return reason;
  return nativeMemoryOf(addon) === null
    ? 'the native build predates mapSharedFile (run: npm run build:native)'
    : 'loaded';
}
