// The native hash kernels behind the facade: arguments go through the same checks as the reference
// (../hash-args.ts), so both reject the same inputs with the same InvalidArgumentError, and only
// well-formed buffers reach C++ (kernels/cpu/hash.cc, which re-checks sizes).
import { checkBlockHashesArgs, checkHash128Args } from '../hash-args.ts';
import type { Kernels } from '../types.ts';

/** The functions kernels/cpu/hash.cc registers on the addon. */
export interface NativeHashAddon {
  hash128(data: Uint8Array): Uint8Array;
  blockHashes(seed: Uint8Array, tokens: Uint32Array, blockTokens: number): Uint8Array;
}

// The addon returns Node Buffers; the facade hands out plain Uint8Arrays (a view, no copy) so both
// backends behave the same under slice(), toString() and deep equality.
function plain(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function nativeHash(addon: NativeHashAddon): Pick<Kernels, 'hash128' | 'blockHashes'> {
  return {
    hash128(data) {
      checkHash128Args(data);
      return plain(addon.hash128(data));
    },
    blockHashes(seed, tokens, blockTokens) {
      checkBlockHashesArgs(seed, tokens, blockTokens);
      return plain(addon.blockHashes(seed, tokens, blockTokens));
    },
  };
}
