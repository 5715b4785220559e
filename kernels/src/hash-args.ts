// Argument checks shared by the native and reference hash kernels, so both reject exactly the same
// inputs with the same typed errors. The C++ side re-checks sizes as a last line of defence, but the
// errors a caller sees come from here and carry the offending value.
import { InvalidArgumentError } from '@kvmesh/errors';

/** Bytes of one XXH3-128 digest, of a block seed and of a block hash. */
export const HASH_BYTES = 16;
/** Block sizes (tokens) allowed by spec v1: a multiple of 16 in [16, 256]. */
export const BLOCK_TOKENS_MIN = 16;
export const BLOCK_TOKENS_MAX = 256;
export const BLOCK_TOKENS_MULTIPLE = 16;

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}

/** hash128(data): data must be a Uint8Array (a Buffer is one). */
export function checkHash128Args(data: unknown): asserts data is Uint8Array {
  if (!(data instanceof Uint8Array))
    throw new InvalidArgumentError(`hash128: data must be a Uint8Array, got ${typeName(data)}`, {
      type: typeName(data),
    });
}

/** The block size rule of spec v1; `what` names the argument in the message. */
export function checkBlockTokens(blockTokens: unknown, what = 'blockTokens'): asserts blockTokens is number {
  if (
    typeof blockTokens !== 'number' ||
    !Number.isInteger(blockTokens) ||
    blockTokens < BLOCK_TOKENS_MIN ||
    blockTokens > BLOCK_TOKENS_MAX ||
    blockTokens % BLOCK_TOKENS_MULTIPLE !== 0
  ) {
    throw new InvalidArgumentError(
      `${what} must be a multiple of ${BLOCK_TOKENS_MULTIPLE} in [${BLOCK_TOKENS_MIN}, ${BLOCK_TOKENS_MAX}], got ${String(blockTokens)}`,
      { value: blockTokens, min: BLOCK_TOKENS_MIN, max: BLOCK_TOKENS_MAX, multiple: BLOCK_TOKENS_MULTIPLE },
    );
  }
}

/** blockHashes(seed, tokens, blockTokens): a 16-byte seed, a Uint32Array of token ids, a spec block size. */
export function checkBlockHashesArgs(
  seed: unknown,
  tokens: unknown,
  blockTokens: unknown,
): asserts seed is Uint8Array {
  if (!(seed instanceof Uint8Array) || seed.length !== HASH_BYTES) {
    const length = seed instanceof Uint8Array ? seed.length : undefined;
    throw new InvalidArgumentError(
      `blockHashes: seed must be a ${HASH_BYTES}-byte Uint8Array, got ${length === undefined ? typeName(seed) : `${length} bytes`}`,
      { type: typeName(seed), length },
    );
  }
  // NOTE: only a Uint32Array is accepted so that every token id is already known to be in [0, 2^32);
  // callers holding plain arrays convert (and range-check) them first (lib/block/src/identity.ts).
  if (!(tokens instanceof Uint32Array))
    throw new InvalidArgumentError(`blockHashes: tokens must be a Uint32Array, got ${typeName(tokens)}`, {
      type: typeName(tokens),
    });
  checkBlockTokens(blockTokens);
}
