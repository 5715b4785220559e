// Block identity, spec v1 (lib/block/spec/identity-v1.md): a seed binds the model, the block size
// and the namespace; each full block's hash chains the previous hash (or the seed) with the block's
// token ids as u32le, so equal hashes mean an equal prefix under the same seed. Every input is
// validated here, so a hash is only ever computed from a well-formed seed preimage and token list.
import { InvalidArgumentError } from '@kvmesh/errors';
import {
  BLOCK_TOKENS_MAX,
  BLOCK_TOKENS_MIN,
  BLOCK_TOKENS_MULTIPLE,
  checkBlockTokens,
  loadKernels,
  type Kernels,
} from '@kvmesh/kernels';
import {
  blockHashFromBytes,
  modelFingerprintToBytes,
  parseModelFingerprint,
  parseNamespace,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';

/** Domain-separation prefix of every v1 seed preimage (15 ASCII bytes, no terminator). */
export const BLOCK_IDENTITY_DOMAIN = 'kvmesh/block/v1';
export const BLOCK_HASH_BYTES = 16;
export const BLOCK_SEED_BYTES = 16;
/** Block sizes allowed by spec v1 (a multiple of 16 in [16, 256]) are checked by the kernels' rule; 64 is the default. */
export { BLOCK_TOKENS_MAX, BLOCK_TOKENS_MIN, BLOCK_TOKENS_MULTIPLE, checkBlockTokens };
export const BLOCK_TOKENS_DEFAULT = 64;
/** Namespaces are at most 256 bytes of UTF-8 (enforced by parseNamespace in @kvmesh/protocol). */
export const NAMESPACE_BYTES_MAX = 256;
export const TOKEN_ID_MAX = 0xffffffff;

/** The kernel functions identity needs; the default is loadKernels() (native when built). */
export type HashKernels = Pick<Kernels, 'hash128' | 'blockHashes'>;

export interface BlockSeedInput {
  modelFingerprint: ModelFingerprint;
  blockTokens: number;
  namespace: Namespace;
}

const DOMAIN_BYTES = new TextEncoder().encode(BLOCK_IDENTITY_DOMAIN);
// In a `u` regex \p{Cs} only matches unpaired surrogates (a valid pair is one code point).
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * The namespace's seed bytes: its UTF-8 encoding, at most 256 bytes. A string with an unpaired
 * surrogate is rejected: it has no UTF-8 form, and replacing it with U+FFFD would let two different
 * namespaces share blocks.
 */
export function namespaceBytes(namespace: Namespace): Uint8Array {
  if (typeof namespace !== 'string')
    throw new InvalidArgumentError(`namespace must be a string, got ${typeof namespace}`, {
      type: typeof namespace,
    });
  if (LONE_SURROGATE.test(namespace))
    throw new InvalidArgumentError(
      'namespace contains an unpaired UTF-16 surrogate (not encodable as UTF-8)',
      {
        value: namespace,
      },
    );
  parseNamespace(namespace); // byte limit
  return new TextEncoder().encode(namespace);
}

/** The seed preimage: "kvmesh/block/v1" ‖ fingerprint (16 bytes) ‖ u32le(blockTokens) ‖ namespace UTF-8. */
export function blockSeedPreimage(input: BlockSeedInput): Uint8Array {
  const fingerprint = modelFingerprintToBytes(parseModelFingerprint(input.modelFingerprint));
  checkBlockTokens(input.blockTokens);
  const ns = namespaceBytes(input.namespace);
  const out = new Uint8Array(DOMAIN_BYTES.length + 16 + 4 + ns.length);
  out.set(DOMAIN_BYTES, 0);
  out.set(fingerprint, DOMAIN_BYTES.length);
  new DataView(out.buffer).setUint32(DOMAIN_BYTES.length + 16, input.blockTokens, true);
  // NOTE: the namespace goes last and is the only variable-length field, so the preimage needs no
  // length prefix to be unambiguous.
  out.set(ns, DOMAIN_BYTES.length + 20);
  return out;
}

/** The 16-byte chain seed of spec v1 for one model, block size and namespace. */
export function blockSeed(input: BlockSeedInput, kernels: HashKernels = loadKernels()): Uint8Array {
  return kernels.hash128(blockSeedPreimage(input));
}

/**
 * Seeds computed once per (model, block size, namespace) and kept, up to `seedsMax` (the oldest is
 * recomputed when next needed): every first block of a sequence starts from one, and the shared
 * namespace '' is by far the most asked for.
 */
export class BlockSeeds {
  private readonly seeds = new Map<string, Uint8Array>();
  /** The last seed handed out and its inputs: a node or a client asks for one seed nearly always. */
  private last: { input: BlockSeedInput; seed: Uint8Array } | undefined;

  constructor(
    private readonly kernels: HashKernels = loadKernels(),
    readonly seedsMax = 1024,
  ) {
    if (!Number.isInteger(seedsMax) || seedsMax < 1)
      throw new InvalidArgumentError(`seedsMax must be a positive integer, got ${seedsMax}`, { seedsMax });
  }

  /** The seed (shared: never mutate it). */
  get(input: BlockSeedInput): Uint8Array {
    const last = this.last;
    if (
      last !== undefined &&
      last.input.modelFingerprint === input.modelFingerprint &&
      last.input.blockTokens === input.blockTokens &&
      last.input.namespace === input.namespace
    )
      return last.seed;
    const key = `${input.modelFingerprint}/${input.blockTokens}/${input.namespace}`;
    let seed = this.seeds.get(key);
    if (seed === undefined) {
      seed = blockSeed(input, this.kernels);
      if (this.seeds.size >= this.seedsMax) this.seeds.delete(this.seeds.keys().next().value as string);
      this.seeds.set(key, seed);
    }
    this.last = {
      input: {
        modelFingerprint: input.modelFingerprint,
        blockTokens: input.blockTokens,
        namespace: input.namespace,
      },
      seed,
    };
    return seed;
  }
}

/** Token ids as a Uint32Array, checking each plain-array entry is an integer in [0, 2^32). */
export function toTokenIds(tokens: Uint32Array | readonly number[]): Uint32Array {
  if (tokens instanceof Uint32Array) return tokens;
  if (!Array.isArray(tokens))
    throw new InvalidArgumentError('tokens must be a Uint32Array or an array of token ids', {
      type: typeof tokens,
    });
  const out = new Uint32Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const id: unknown = tokens[i];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > TOKEN_ID_MAX) {
      throw new InvalidArgumentError(
        `token id at index ${i} must be an integer in [0, 2^32), got ${String(id)}`,
        {
          index: i,
          value: id,
        },
      );
    }
    out[i] = id;
  }
  return out;
}

function checkSeed(seed: Uint8Array): void {
  if (!(seed instanceof Uint8Array) || seed.length !== BLOCK_SEED_BYTES)
    throw new InvalidArgumentError(`block seed must be ${BLOCK_SEED_BYTES} bytes (from blockSeed())`, {
      length: seed instanceof Uint8Array ? seed.length : undefined,
    });
}

/**
 * The chained hashes of every full block of `tokens`, concatenated (16 bytes each); a partial
 * tail is ignored. `seed` comes from blockSeed() with the same blockTokens.
 */
export function computeBlockHashBytes(
  seed: Uint8Array,
  tokens: Uint32Array | readonly number[],
  blockTokens: number,
  kernels: HashKernels = loadKernels(),
): Uint8Array {
  checkSeed(seed);
  checkBlockTokens(blockTokens);
  return kernels.blockHashes(seed, toTokenIds(tokens), blockTokens);
}

/** The chained hashes of every full block of `tokens`, as BlockHash hex strings. */
export function computeBlockHashes(
  seed: Uint8Array,
  tokens: Uint32Array | readonly number[],
  blockTokens: number,
  kernels: HashKernels = loadKernels(),
): BlockHash[] {
  const bytes = computeBlockHashBytes(seed, tokens, blockTokens, kernels);
  const hashes: BlockHash[] = [];
  for (let offset = 0; offset < bytes.length; offset += BLOCK_HASH_BYTES) {
    hashes.push(blockHashFromBytes(bytes.subarray(offset, offset + BLOCK_HASH_BYTES)));
  }
  return hashes;
}
