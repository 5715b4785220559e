// The engine's paged KV pool: full blocks held as per-layer sections in their codec (attended to
// directly, never inflated), reference-counted so sequences sharing a prefix share blocks, with a
// hard block limit. Each sequence also owns one f32 tail block for its unfinished tokens; when the
// tail fills it is encoded into the pool's codec and becomes a shared, exportable block.
import { KvmeshError, InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { assembleBlockPayload, parseBlockHeader, readLayerSection, type BlockDims } from '@kvmesh/block';
import type { AttentionBlock, CodecName, Kernels } from '@kvmesh/kernels';

export interface KvPoolOptions {
  codec: CodecName;
  dims: BlockDims;
  /** Most full blocks held at once; allocating one more is a LimitExceededError. */
  blocksMax: number;
  /**
   * Asked to drop one reference it holds (a cached block) when the pool is full; returns false
   * when it holds none. A dropped reference frees space only if nothing else holds the block.
   */
  reclaim?: () => boolean;
}

interface PoolBlock {
  codec: CodecName;
  sections: Uint8Array[];
  refs: number;
}

/**
 * One sequence's unfinished block, per layer one f32 section ([kvHeads][B][D] K, then the same for V)
 * with K and V views into it, so attention reads the tail in place.
 */
export class TailBlock {
  readonly sections: Uint8Array[];
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  tokens = 0;

  constructor(private readonly dims: BlockDims) {
    const n = dims.kvHeads * dims.blockTokens * dims.headDim;
    this.sections = Array.from({ length: dims.layers }, () => new Uint8Array(2 * n * 4));
    this.k = this.sections.map((s) => new Float32Array(s.buffer, 0, n));
    this.v = this.sections.map((s) => new Float32Array(s.buffer, n * 4, n));
  }

  /** Writes one token's K and V ([kvHeads][headDim] each) of `layer` at tail slot `slot`. */
  write(layer: number, slot: number, k: Float32Array, v: Float32Array): void {
    const { kvHeads, blockTokens, headDim } = this.dims;
    const kl = this.k[layer] as Float32Array;
    const vl = this.v[layer] as Float32Array;
    for (let h = 0; h < kvHeads; h++) {
      const at = (h * blockTokens + slot) * headDim;
      kl.set(k.subarray(h * headDim, (h + 1) * headDim), at);
      vl.set(v.subarray(h * headDim, (h + 1) * headDim), at);
    }
  }

  /** The tail of `layer` as an f32 attention block over its first `tokens` slots. */
  attentionBlock(layer: number, tokens: number): AttentionBlock {
    return { codec: 'f32', section: this.sections[layer] as Uint8Array, tokens };
  }
}

export class KvPool {
  readonly codec: CodecName;
  readonly dims: BlockDims;
  readonly blocksMax: number;
  private readonly blocks = new Map<number, PoolBlock>();
  private readonly reclaim: (() => boolean) | undefined;
  private nextId = 1;

  constructor(
    private readonly kernels: Kernels,
    options: KvPoolOptions,
  ) {
    if (!Number.isInteger(options.blocksMax) || options.blocksMax < 1) {
      throw new InvalidArgumentError(`blocksMax must be a positive integer, got ${options.blocksMax}`, {
        blocksMax: options.blocksMax,
      });
    }
    kernels.sectionBytes(options.codec, options.dims); // validates codec and dims
    this.codec = options.codec;
    this.dims = options.dims;
    this.blocksMax = options.blocksMax;
    this.reclaim = options.reclaim;
  }

  /** Whether `count` blocks are free, after reclaiming cached ones if needed. */
  ensureFree(count: number): boolean {
    while (this.blocksFree < count) if (this.reclaim?.() !== true) return false;
    return true;
  }

  get blocksUsed(): number {
    return this.blocks.size;
  }

  get blocksFree(): number {
    return this.blocksMax - this.blocks.size;
  }

  private add(block: PoolBlock): number {
    if (!this.ensureFree(1)) {
      throw new LimitExceededError(`KV pool full: ${this.blocksMax} blocks in use`, {
        blocksMax: this.blocksMax,
      });
    }
    const id = this.nextId++;
    this.blocks.set(id, block);
    return id;
  }

  private get(id: number): PoolBlock {
    const block = this.blocks.get(id);
    if (!block) throw new KvmeshError('BLOCK_NOT_FOUND', 'not-found', `KV pool has no block ${id}`, { id });
    return block;
  }

  /** Encodes a full tail into the pool's codec; the caller holds one reference. */
  sealTail(tail: TailBlock): number {
    if (tail.tokens !== this.dims.blockTokens) {
      throw new InvalidArgumentError(
        `tail holds ${tail.tokens} of ${this.dims.blockTokens} tokens; only full blocks seal`,
        {
          tokens: tail.tokens,
        },
      );
    }
    const sections = tail.k.map((k, l) =>
      this.kernels.encodeLayer(this.codec, this.dims, k, tail.v[l] as Float32Array),
    );
    return this.add({ codec: this.codec, sections, refs: 1 });
  }

  /** Imports a verified block payload (any codec, same dims); the caller holds one reference. */
  importPayload(payload: Uint8Array): number {
    const header = parseBlockHeader(this.kernels, payload);
    const d = header.dims;
    const want = this.dims;
    if (
      d.layers !== want.layers ||
      d.kvHeads !== want.kvHeads ||
      d.blockTokens !== want.blockTokens ||
      d.headDim !== want.headDim ||
      d.groupSize !== want.groupSize
    ) {
      throw new InvalidArgumentError(
        `block dims ${JSON.stringify(d)} do not match the model's ${JSON.stringify(want)}`,
        { dims: d, expected: want },
      );
    }
    const sections = header.sections.map((_, l) =>
      readLayerSection(this.kernels, payload, header, l).slice(),
    );
    return this.add({ codec: header.codec, sections, refs: 1 });
  }

  exportPayload(id: number): Uint8Array {
    const block = this.get(id);
    return assembleBlockPayload(this.kernels, block.codec, this.dims, block.sections);
  }

  attentionBlock(id: number, layer: number): AttentionBlock {
    const block = this.get(id);
    return { codec: block.codec, section: block.sections[layer] as Uint8Array };
  }

  retain(id: number): void {
    this.get(id).refs++;
  }

  /** Drops one reference; the block is freed when none is left. */
  release(id: number): void {
    const block = this.get(id);
    if (--block.refs === 0) this.blocks.delete(id);
  }
}
