// Shared helpers of the kernel parity tests: the native addon wrapped in the facade pieces under
// test, a seeded random source (the seed is printed so a failure can be replayed with
// KVMESH_TEST_SEED), and error measures. Without a built addon the native tests fail under
// KVMESH_REQUIRE_NATIVE=1 (the test command) and are skipped with a printed reason otherwise.
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { nativeAttention, type NativeAttentionAddon } from '../src/native/attention.ts';
import { nativeCodec, type NativeCodecAddon } from '../src/native/codec.ts';
import { nativeDense, type NativeDenseAddon } from '../src/native/dense.ts';
import type { DenseKernels } from '../src/dense-types.ts';
import type { Kernels } from '../src/types.ts';

export type CodecKernels = Pick<Kernels, 'sectionBytes' | 'encodeLayer' | 'decodeLayer'>;
export type AttentionKernels = Pick<Kernels, 'attention' | 'attentionAsync' | 'mergePartials'>;

interface TestAddon extends NativeCodecAddon, NativeAttentionAddon, NativeDenseAddon {
  isa(): string;
  detectedIsa(): string;
  setIsa(name: string): boolean;
}

export interface NativeUnderTest {
  codec: CodecKernels;
  attention: AttentionKernels;
  dense: DenseKernels;
  /** Instruction sets this CPU runs, worst first. */
  isas: string[];
  /** Selects an instruction set for the following calls. */
  useIsa(isa: string): void;
  /** Back to the best instruction set. */
  resetIsa(): void;
}

const addonPath = fileURLToPath(new URL('../build/Release/kvmesh_kernels.node', import.meta.url));

/** The native backend, or the reason it is unavailable (throws when native is required). */
export function loadNative(): { native: NativeUnderTest | null; reason: string } {
  let reason = '';
  let addon: TestAddon | null = null;
  if (!existsSync(addonPath)) {
    reason = `${addonPath} not built (run: npm run build:native)`;
  } else {
    try {
      addon = createRequire(import.meta.url)(addonPath) as TestAddon;
      if (
        typeof addon.encodeLayer !== 'function' ||
        typeof addon.attention !== 'function' ||
        typeof addon.prefillAttention !== 'function'
      ) {
        reason = `${addonPath} has no codec/attention/dense kernels (stale build?)`;
        addon = null;
      }
    } catch (err) {
      reason = `failed to load ${addonPath}: ${(err as Error).message}`;
    }
  }
  if (addon === null) {
    if (process.env.KVMESH_REQUIRE_NATIVE === '1') throw new Error(`native kernels required: ${reason}`);
    console.log(`# skipping native kernel tests: ${reason}`);
    return { native: null, reason };
  }
  const a = addon;
  const best = a.detectedIsa();
  const isas = ['scalar', 'avx2', 'avx512'].filter((isa) => {
    const ok = a.setIsa(isa);
    a.setIsa(best);
    return ok;
  });
  return {
    native: {
      codec: nativeCodec(a),
      attention: nativeAttention(a),
      dense: nativeDense(a),
      isas,
      useIsa(isa) {
        if (!a.setIsa(isa)) throw new Error(`cannot select ISA ${isa}`);
      },
      resetIsa() {
        a.setIsa(best);
      },
    },
    reason: 'loaded',
  };
}

/** Seeded PRNG (mulberry32) with a Gaussian helper; the seed comes from KVMESH_TEST_SEED or crypto. */
export class Rng {
  readonly seed: number;
  private state: number;

  constructor(seed = Number(process.env.KVMESH_TEST_SEED ?? randomInt(2 ** 31))) {
    this.seed = seed;
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }

  int(maxExclusive: number): number {
    return Math.floor(this.next() * maxExclusive);
  }

  normals(n: number, sd = 1): Float32Array {
    return Float32Array.from({ length: n }, () => this.normal() * sd);
  }
}

/** ‖a − b‖₂ / ‖b‖₂. */
export { relativeL2Error as relL2 } from '../src/metrics.ts';

export function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    m = Math.max(m, Math.abs(x - y) / Math.max(Math.abs(y), 1e-30));
  }
  return m;
}
