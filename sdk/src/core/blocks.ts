// Block shapes at the SDK edge: what `put` accepts (the typed form with hex hashes, or the wire
// `Block`), the validated form the client sends, the data channel headers it builds, and the checks
// every fetched block passes before a caller sees it. Invariant: a FetchedBlock is the block that was
// asked for (hash and namespace match), its payload header parses with a valid checksum, and (unless
// disabled) its token ids hash to its hash under its parent, so a wrong or corrupt copy never leaks.
import type { parseBlockHeader } from '@kvmesh/block';
import {
  blockSeed,
  computeBlockHashBytes,
  toTokenIds,
  verifyBlockPayload,
  type BlockDims,
  type HashKernels,
} from '@kvmesh/block';
import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';
import { checkBlockTokens, type CodecName, type Kernels } from '@kvmesh/kernels';
import { PUT_BLOCK_TAGS, WIRE_ID_BYTES, type Codec } from '@kvmesh/protocol';
import {
  Tier,
  blockHashFromBytes,
  blockHashToBytes,
  codecFromWire,
  modelFingerprintFromBytes,
  modelFingerprintToBytes,
  parseBlockHash,
  parseModelFingerprint,
  parseNamespace,
  type Block,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';

/** A block to store, with identity in its typed (hex) form. */
export interface BlockInput {
  hash: BlockHash | string;
  /** null, undefined or '' for the first block of a sequence (its parent is the namespace seed). */
  parentHash?: BlockHash | string | null;
  /** Defaults to the client's namespace. */
  namespace?: Namespace | string;
  modelFingerprint: ModelFingerprint | string;
  tokenIds: Uint32Array | readonly number[];
  /** Block payload format v1 (see @kvmesh/block encodeBlockPayload). */
  payload: Uint8Array;
}

/** What `put` accepts: the typed form or the wire message (whose namespace is taken as given). */
export type PutBlockInput = BlockInput | Block;

/** A validated block, ready for the wire. */
export interface NormalizedBlock {
  readonly hash: BlockHash;
  readonly hashBytes: Buffer;
  readonly parentHash: BlockHash | null;
  readonly namespace: Namespace;
  readonly modelFingerprint: ModelFingerprint;
  readonly tokenIds: Uint32Array;
  readonly payload: Uint8Array;
}

export type TierName = 'dram' | 'far' | 'ssd' | 'unspecified';

/** A block read back from the store, verified. */
export interface FetchedBlock {
  readonly hash: BlockHash;
  readonly parentHash: BlockHash | null;
  readonly namespace: Namespace;
  readonly modelFingerprint: ModelFingerprint;
  readonly tokenIds: Uint32Array;
  readonly payload: Uint8Array;
  readonly codec: CodecName;
  readonly dims: BlockDims;
  readonly tier: TierName;
  /** The node that served this copy. */
  readonly nodeId: string;
}

const EMPTY = Buffer.alloc(0);

function asBytes(value: Uint8Array): Buffer {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

/** A hash given as hex or as 16 bytes, as a BlockHash; InvalidArgumentError names `what`. */
export function toBlockHash(value: unknown, what = 'block hash'): BlockHash {
  try {
    if (typeof value === 'string') return parseBlockHash(value);
    if (value instanceof Uint8Array) return blockHashFromBytes(value);
  } catch (err) {
    throw new InvalidArgumentError(`${what}: ${(err as Error).message}`, { what });
  }
  throw new InvalidArgumentError(`${what} must be 32 hex characters or 16 bytes`, {
    what,
    type: typeof value,
  });
}

/** How errors name a field of the block at `index` of a put. */
function blockField(index: number, what: string): string {
  return `block ${index} ${what}`;
}

function isWireBlock(input: PutBlockInput): input is Block {
  return input.hash instanceof Uint8Array;
}

/**
 * Validates one block given to `put` (index is its position, for error details). The payload is
 * not parsed here: the node verifies it, and a put must not pay a checksum twice.
 */
export function normalizeBlock(
  input: PutBlockInput,
  defaultNamespace: Namespace,
  index: number,
  blockBytesMax: number,
): NormalizedBlock {
  if (typeof input !== 'object' || input === null)
    throw new InvalidArgumentError(`block ${index} must be an object`, { index });
  const hash = toBlockHash(input.hash, blockField(index, 'hash'));
  const parentRaw = input.parentHash;
  const parentHash =
    parentRaw === undefined || parentRaw === null || parentRaw.length === 0
      ? null
      : toBlockHash(parentRaw, blockField(index, 'parentHash'));
  let namespace: Namespace;
  let modelFingerprint: ModelFingerprint;
  try {
    namespace = parseNamespace(
      isWireBlock(input) ? input.namespace : ((input.namespace as string | undefined) ?? defaultNamespace),
    );
    modelFingerprint = isWireBlock(input)
      ? modelFingerprintFromBytes(input.modelFingerprint)
      : parseModelFingerprint(input.modelFingerprint);
  } catch (err) {
    throw new InvalidArgumentError(`${blockField(index, 'identity')}: ${(err as Error).message}`, {
      index,
      hash,
    });
  }
  let tokenIds: Uint32Array;
  try {
    tokenIds = toTokenIds(input.tokenIds);
    checkBlockTokens(tokenIds.length, 'tokenIds.length');
  } catch (err) {
    throw new InvalidArgumentError(`${blockField(index, 'tokenIds')}: ${(err as Error).message}`, {
      index,
      hash,
    });
  }
  const payload = input.payload;
  if (!(payload instanceof Uint8Array) || payload.byteLength === 0)
    throw new InvalidArgumentError(`${blockField(index, 'payload')} must be a non-empty Uint8Array`, {
      index,
      hash,
    });
  if (payload.byteLength > blockBytesMax)
    throw new InvalidArgumentError(
      `${blockField(index, 'payload')} of ${payload.byteLength} bytes exceeds ${blockBytesMax}`,
      {
        index,
        hash,
        bytes: payload.byteLength,
        blockBytesMax,
      },
    );
  return {
    hash,
    // NOTE: straight from the hex, which toBlockHash checked (blockHashToBytes would copy twice).
    hashBytes: Buffer.from(hash, 'hex'),
    parentHash,
    namespace,
    modelFingerprint,
    tokenIds,
    payload,
  };
}

/** The wire Block; the payload is left empty when it travels as a data channel body. */
export function toWireBlock(block: NormalizedBlock, withPayload: boolean): Block {
  return {
    hash: block.hashBytes,
    parentHash: block.parentHash === null ? EMPTY : Buffer.from(blockHashToBytes(block.parentHash)),
    namespace: block.namespace,
    modelFingerprint: Buffer.from(modelFingerprintToBytes(block.modelFingerprint)),
    tokenIds: Array.from(block.tokenIds),
    payload: withPayload ? asBytes(block.payload) : EMPTY,
  };
}

/** Bytes of `value` (a u32) as a protobuf varint. */
function varintBytes(value: number): number {
  return value < 0x80 ? 1 : value < 0x4000 ? 2 : value < 0x20_0000 ? 3 : value < 0x1000_0000 ? 4 : 5;
}

/** Bytes of a length-delimited field (1-byte tag, length varint, content) of `bytes` content bytes. */
function fieldBytes(bytes: number): number {
  return 1 + varintBytes(bytes) + bytes;
}

/** Writes `value` (a u32) as a protobuf varint at `at`; returns the position after it. */
function writeVarint(out: Buffer, at: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    out[at++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[at++] = v;
  return at;
}

const ID_BYTES = WIRE_ID_BYTES;

/**
 * Data channel putBlock request header: PutBlocksRequest {block without payload, replica false},
 * written in one pass into one buffer. Byte for byte what PutBlocksRequest.encode writes (fields in
 * number order, defaults left out, token ids packed; a test compares the two on random blocks), for
 * a fraction of its cost: the generated writer forks twice and grows arrays of numbers, which took
 * longer than all the rest of the client's work on a put.
 */
export function encodePutHeader(block: NormalizedBlock): Uint8Array {
  const { tokenIds, namespace } = block;
  let tokenBytes = 0;
  for (let i = 0; i < tokenIds.length; i++) tokenBytes += varintBytes(tokenIds[i] as number);
  const namespaceBytes = Buffer.byteLength(namespace, 'utf8');
  // NOTE: a normalized block always has a hash, a fingerprint and token ids (16 or more); only
  // parentHash (null) and namespace ('') can be defaults, which protobuf leaves out.
  const blockBytes =
    fieldBytes(ID_BYTES) +
    (block.parentHash === null ? 0 : fieldBytes(ID_BYTES)) +
    (namespaceBytes === 0 ? 0 : fieldBytes(namespaceBytes)) +
    fieldBytes(ID_BYTES) +
    fieldBytes(tokenBytes);
  const out = Buffer.allocUnsafe(fieldBytes(blockBytes));
  let at = 0;
  out[at++] = PUT_BLOCK_TAGS.requestBlock;
  at = writeVarint(out, at, blockBytes);
  out[at++] = PUT_BLOCK_TAGS.hash;
  out[at++] = ID_BYTES;
  at += block.hashBytes.copy(out, at);
  if (block.parentHash !== null) {
    out[at++] = PUT_BLOCK_TAGS.parentHash;
    out[at++] = ID_BYTES;
    at += out.write(block.parentHash, at, 'hex');
  }
  if (namespaceBytes !== 0) {
    out[at++] = PUT_BLOCK_TAGS.namespace;
    at = writeVarint(out, at, namespaceBytes);
    at += out.write(namespace, at, 'utf8');
  }
  out[at++] = PUT_BLOCK_TAGS.modelFingerprint;
  out[at++] = ID_BYTES;
  at += out.write(block.modelFingerprint, at, 'hex');
  out[at++] = PUT_BLOCK_TAGS.tokenIds;
  at = writeVarint(out, at, tokenBytes);
  for (let i = 0; i < tokenIds.length; i++) at = writeVarint(out, at, tokenIds[i] as number);
  return out;
}

export function tierName(tier: Tier): TierName {
  switch (tier) {
    case Tier.TIER_DRAM:
      return 'dram';
    case Tier.TIER_FAR:
      return 'far';
    case Tier.TIER_SSD:
      return 'ssd';
    default:
      return 'unspecified';
  }
}

/** The codec name of a wire Codec, undefined for UNSPECIFIED / unknown values. */
export function codecName(codec: Codec): CodecName | undefined {
  return codecFromWire(codec);
}

export interface FetchCheck {
  readonly hash: BlockHash;
  readonly namespace: Namespace;
  /** Recompute the hash from the token ids (cheap: one XXH3 over the block's tokens). */
  readonly checkIdentity: boolean;
}

/**
 * Verifies a block a node returned for `asked` and builds the caller's view of it. Throws
 * CorruptDataError (kind data-loss) naming the node when the copy is not the block asked for.
 */
export function verifyFetchedBlock(
  kernels: Kernels & HashKernels,
  asked: FetchCheck,
  block: Block,
  payload: Uint8Array,
  tier: Tier,
  nodeId: string,
): FetchedBlock {
  const fail = (why: string, details: Record<string, unknown> = {}): CorruptDataError =>
    new CorruptDataError(`block ${asked.hash} from node ${nodeId}: ${why}`, {
      hash: asked.hash,
      nodeId,
      ...details,
    });
  let hash: BlockHash;
  let parentHash: BlockHash | null;
  let modelFingerprint: ModelFingerprint;
  try {
    hash = blockHashFromBytes(block.hash);
    parentHash = block.parentHash.length === 0 ? null : blockHashFromBytes(block.parentHash);
    modelFingerprint = modelFingerprintFromBytes(block.modelFingerprint);
  } catch (err) {
    throw fail(`malformed identity: ${(err as Error).message}`);
  }
  if (hash !== asked.hash) throw fail(`returned block ${hash} instead`, { returned: hash });
  if (block.namespace !== asked.namespace)
    throw fail(`returned namespace '${block.namespace}' instead of '${asked.namespace}'`);
  let header: ReturnType<typeof parseBlockHeader>;
  try {
    // Every checksum (header and each layer section; ~10 µs per 256 KiB natively): DESIGN §7 wants
    // reused KV verified on every read, and a bad copy here is retried on another holder.
    header = verifyBlockPayload(kernels, payload);
  } catch (err) {
    throw fail(`payload header: ${(err as Error).message}`);
  }
  const tokenIds = Uint32Array.from(block.tokenIds);
  if (header.dims.blockTokens !== tokenIds.length)
    throw fail(`payload holds ${header.dims.blockTokens} tokens but ${tokenIds.length} token ids came`);
  if (asked.checkIdentity) {
    const seed =
      parentHash === null
        ? blockSeed({ modelFingerprint, blockTokens: tokenIds.length, namespace: asked.namespace }, kernels)
        : blockHashToBytes(parentHash);
    const computed = blockHashFromBytes(computeBlockHashBytes(seed, tokenIds, tokenIds.length, kernels));
    if (computed !== hash) throw fail(`token ids hash to ${computed}`, { computed });
  }
  return {
    hash,
    parentHash,
    namespace: asked.namespace,
    modelFingerprint,
    tokenIds,
    payload,
    codec: header.codec,
    dims: header.dims,
    tier: tierName(tier),
    nodeId,
  };
}

export interface ChainBlocksArgs {
  readonly modelFingerprint: ModelFingerprint | string;
  /** Default '' (the shared namespace). */
  readonly namespace?: Namespace | string;
  readonly blockTokens: number;
  /** Token ids of whole blocks (a partial tail is an error: only full blocks are shared). */
  readonly tokens: Uint32Array | readonly number[];
  /** One payload per block, in order. */
  readonly payloads: readonly Uint8Array[];
  /** Continue the chain after this block; null or absent starts at the namespace seed. */
  readonly parentHash?: BlockHash | string | null;
}

/** A block input with its identity computed (what chainBlocks returns). */
export interface ChainedBlock extends BlockInput {
  readonly hash: BlockHash;
  readonly parentHash: BlockHash | null;
  readonly namespace: Namespace;
  readonly tokenIds: Uint32Array;
}

/**
 * Blocks ready for `put` from a token sequence and one payload per block: each hash is the spec v1
 * chain hash (seeded by the model, block size and namespace, or continuing from `parentHash`).
 */
export function chainBlocks(args: ChainBlocksArgs, kernels: HashKernels): ChainedBlock[] {
  const namespace = parseNamespace(args.namespace ?? '');
  const modelFingerprint = parseModelFingerprint(args.modelFingerprint);
  checkBlockTokens(args.blockTokens);
  const tokens = toTokenIds(args.tokens);
  if (tokens.length % args.blockTokens !== 0)
    throw new InvalidArgumentError(`${tokens.length} tokens are not whole blocks of ${args.blockTokens}`, {
      tokens: tokens.length,
      blockTokens: args.blockTokens,
    });
  const count = tokens.length / args.blockTokens;
  if (args.payloads.length !== count)
    throw new InvalidArgumentError(`${count} blocks need ${count} payloads, got ${args.payloads.length}`, {
      blocks: count,
      payloads: args.payloads.length,
    });
  const first =
    args.parentHash === undefined || args.parentHash === null ? null : toBlockHash(args.parentHash);
  const seed =
    first === null
      ? blockSeed({ modelFingerprint, blockTokens: args.blockTokens, namespace }, kernels)
      : blockHashToBytes(first);
  const bytes = computeBlockHashBytes(seed, tokens, args.blockTokens, kernels);
  const out: ChainedBlock[] = [];
  let parentHash = first;
  for (let i = 0; i < count; i++) {
    const hash = blockHashFromBytes(bytes.subarray(i * 16, i * 16 + 16));
    out.push({
      hash,
      parentHash,
      namespace,
      modelFingerprint,
      tokenIds: tokens.slice(i * args.blockTokens, (i + 1) * args.blockTokens),
      payload: args.payloads[i] as Uint8Array,
    });
    parentHash = hash;
  }
  return out;
}
