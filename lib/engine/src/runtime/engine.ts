// The Llama-family forward pass over a paged KV pool, with a continuous-batching API: add a
// sequence, step all, remove finished ones. Computes in f32 on the dense kernels (OpenBLAS GEMM);
// attention reads every full block in the pool's codec and the sequence's f32 tail.
//
// NOTE: prefill runs in chunks that never cross a block boundary (absolute positions jB..(j+1)B).
// Every token thus sees full blocks in their stored codec and only its own block in f32, exactly
// as in decode, and a process that imports a sequence's first k blocks and recomputes the rest
// repeats the very same computation: resuming from exported blocks is bit-identical.
import { InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import {
  loadKernels,
  type AttentionBlock,
  type CodecName,
  type Kernels,
  type LayerDims,
} from '@kvmesh/kernels';
import type { BlockDims } from '@kvmesh/block';

import type { LayerWeights, LoadedModel } from '../model/load.ts';
import { Xoshiro128 } from '../model/random.ts';
import { KvPool, TailBlock } from './kv-pool.ts';
import { checkSampling, GREEDY, sampleToken, type SamplingOptions } from './sampling.ts';

export interface EngineOptions {
  codec?: CodecName;
  blockTokens?: number;
  groupSize?: number;
  /** Full KV blocks the pool may hold (all sequences together). */
  kvBlocksMax?: number;
  /** Most sequences decoded in one step. */
  maxBatch?: number;
  /** Longest sequence (prompt + generated); default the model's max_position_embeddings. */
  maxContextTokens?: number;
  /** Most sequences admitted at once (running + waiting). */
  maxSequences?: number;
  kernels?: Kernels;
}

export interface SequenceRequest {
  promptTokens: readonly number[];
  maxTokens: number;
  sampling?: SamplingOptions;
  stopTokenIds?: readonly number[];
  /** Payloads (block format v1) of the prompt's first full blocks, imported instead of computed. */
  prefixBlocks?: readonly Uint8Array[];
}

export type FinishReason = 'stop' | 'length';

export interface TokenEvent {
  sequenceId: number;
  token: number;
  logprob: number;
  finishReason: FinishReason | null;
  /** The distribution the token was drawn from (a copy), when step({ logits: true }). */
  logits?: Float32Array;
}

export class SequenceNotFoundError extends KvmeshError {
  constructor(id: number) {
    super('SEQUENCE_NOT_FOUND', 'not-found', `no sequence ${id}`, { id });
  }
}

interface Sequence {
  id: number;
  tokens: number[];
  promptTokens: number;
  /** Tokens whose K/V are in blocks or the tail. */
  computed: number;
  blocks: number[];
  tail: TailBlock;
  sampling: SamplingOptions;
  rng: Xoshiro128;
  maxTokens: number;
  stop: Set<number>;
  generated: number;
  finished: FinishReason | null;
  /** Prompt tokens whose KV came from imported blocks. */
  reusedTokens: number;
}

/** Per-step scratch buffers sized for the largest batch (rows) the engine runs. */
class Scratch {
  readonly x: Float32Array;
  readonly xn: Float32Array;
  readonly qkv: Float32Array;
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly attn: Float32Array;
  readonly proj: Float32Array;
  readonly gateUp: Float32Array;
  readonly gate: Float32Array;
  readonly up: Float32Array;
  readonly logits: Float32Array;

  constructor(rows: number, m: LoadedModel['config']) {
    const qDim = m.queryHeads * m.headDim;
    const kvDim = m.kvHeads * m.headDim;
    this.x = new Float32Array(rows * m.hiddenSize);
    this.xn = new Float32Array(rows * m.hiddenSize);
    this.qkv = new Float32Array(rows * (qDim + 2 * kvDim));
    this.q = new Float32Array(rows * qDim);
    this.k = new Float32Array(rows * kvDim);
    this.v = new Float32Array(rows * kvDim);
    this.attn = new Float32Array(rows * qDim);
    this.proj = new Float32Array(rows * m.hiddenSize);
    this.gateUp = new Float32Array(rows * 2 * m.intermediateSize);
    this.gate = new Float32Array(rows * m.intermediateSize);
    this.up = new Float32Array(rows * m.intermediateSize);
    this.logits = new Float32Array(rows * m.vocabSize);
  }
}

export class Engine {
  readonly model: LoadedModel;
  readonly codec: CodecName;
  readonly dims: BlockDims;
  readonly maxBatch: number;
  readonly maxContextTokens: number;
  readonly maxSequences: number;
  readonly pool: KvPool;
  private readonly kernels: Kernels;
  private readonly layerDims: LayerDims;
  private readonly invFreq: Float32Array;
  private readonly scale: number;
  private readonly scratch: Scratch;
  private readonly sequences = new Map<number, Sequence>();
  private readonly seedStream = new Xoshiro128(0x6b766d);
  private nextId = 1;

  constructor(model: LoadedModel, options: EngineOptions = {}) {
    const cfg = model.config;
    this.model = model;
    this.kernels = options.kernels ?? loadKernels();
    this.codec = options.codec ?? 'f32';
    const blockTokens = options.blockTokens ?? 64;
    const groupSize = options.groupSize ?? Math.min(32, blockTokens, cfg.headDim);
    this.dims = { layers: cfg.layers, kvHeads: cfg.kvHeads, blockTokens, headDim: cfg.headDim, groupSize };
    this.layerDims = { kvHeads: cfg.kvHeads, blockTokens, headDim: cfg.headDim, groupSize };
    this.maxBatch = options.maxBatch ?? 8;
    this.maxContextTokens = Math.min(options.maxContextTokens ?? cfg.maxContextTokens, cfg.maxContextTokens);
    this.maxSequences = options.maxSequences ?? 64;
    const kvBlocksMax =
      options.kvBlocksMax ?? Math.max(16, 4 * Math.ceil(this.maxContextTokens / blockTokens));
    this.pool = new KvPool(this.kernels, { codec: this.codec, dims: this.dims, blocksMax: kvBlocksMax });
    this.invFreq = this.kernels.ropeInvFreq({
      headDim: cfg.headDim,
      theta: cfg.ropeTheta,
      scaling: cfg.ropeScaling,
    });
    this.scale = 1 / Math.sqrt(cfg.headDim);
    this.scratch = new Scratch(Math.max(blockTokens, this.maxBatch), cfg);
  }

  get activeSequences(): number {
    return this.sequences.size;
  }

  /** Admits a sequence; its prompt is computed by the next step(). */
  addSequence(request: SequenceRequest): number {
    const cfg = this.model.config;
    const prompt = request.promptTokens;
    if (this.sequences.size >= this.maxSequences) {
      throw new LimitExceededError(`engine holds ${this.maxSequences} sequences already`, {
        maxSequences: this.maxSequences,
      });
    }
    if (prompt.length === 0) throw new InvalidArgumentError('prompt is empty');
    if (prompt.length >= this.maxContextTokens) {
      throw new LimitExceededError(
        `prompt of ${prompt.length} tokens leaves no room in the ${this.maxContextTokens}-token context`,
        {
          promptTokens: prompt.length,
          maxContextTokens: this.maxContextTokens,
        },
      );
    }
    prompt.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= cfg.vocabSize) {
        throw new InvalidArgumentError(
          `prompt token ${i} is ${t}, outside the vocabulary [0, ${cfg.vocabSize})`,
          { index: i, token: t },
        );
      }
    });
    if (!Number.isInteger(request.maxTokens) || request.maxTokens < 1) {
      throw new InvalidArgumentError(`maxTokens must be a positive integer, got ${request.maxTokens}`, {
        maxTokens: request.maxTokens,
      });
    }
    const sampling = request.sampling ?? GREEDY;
    checkSampling(sampling);
    const B = this.dims.blockTokens;
    const prefix = request.prefixBlocks ?? [];
    // At least the last prompt token is always computed: its logits give the first new token.
    const importable = Math.floor((prompt.length - 1) / B);
    if (prefix.length > importable) {
      throw new InvalidArgumentError(
        `${prefix.length} prefix blocks given; a ${prompt.length}-token prompt takes at most ${importable}`,
        {
          prefixBlocks: prefix.length,
          importable,
        },
      );
    }
    const blocks: number[] = [];
    try {
      for (const payload of prefix) blocks.push(this.pool.importPayload(payload));
    } catch (err) {
      for (const id of blocks) this.pool.release(id);
      throw err;
    }
    const id = this.nextId++;
    this.sequences.set(id, {
      id,
      tokens: [...prompt],
      promptTokens: prompt.length,
      computed: blocks.length * B,
      blocks,
      tail: new TailBlock(this.dims),
      sampling,
      rng: new Xoshiro128(sampling.seed ?? this.seedStream.nextUint32()),
      maxTokens: request.maxTokens,
      stop: new Set(request.stopTokenIds ?? cfg.eosTokenIds),
      generated: 0,
      finished: null,
      reusedTokens: blocks.length * B,
    });
    return id;
  }

  /** Frees a sequence's blocks (finished or cancelled). */
  removeSequence(id: number): void {
    const seq = this.sequences.get(id);
    if (!seq) throw new SequenceNotFoundError(id);
    for (const block of seq.blocks) this.pool.release(block);
    this.sequences.delete(id);
  }

  /** Payloads of the sequence's full blocks, in order. */
  exportBlocks(id: number): Uint8Array[] {
    const seq = this.sequences.get(id);
    if (!seq) throw new SequenceNotFoundError(id);
    return seq.blocks.map((b) => this.pool.exportPayload(b));
  }

  /** Token ids of a sequence so far (prompt + generated) and how many prompt tokens were reused. */
  sequenceInfo(id: number): {
    tokens: readonly number[];
    promptTokens: number;
    reusedTokens: number;
    fullBlocks: number;
  } {
    const seq = this.sequences.get(id);
    if (!seq) throw new SequenceNotFoundError(id);
    return {
      tokens: seq.tokens,
      promptTokens: seq.promptTokens,
      reusedTokens: seq.reusedTokens,
      fullBlocks: seq.blocks.length,
    };
  }

  /**
   * One engine step: prefills every admitted sequence (emitting its first token), then decodes one
   * token for up to maxBatch running sequences. Finished sequences stay until removeSequence().
   */
  step(options: { logits?: boolean } = {}): TokenEvent[] {
    const events: TokenEvent[] = [];
    const running: Sequence[] = [];
    for (const seq of this.sequences.values()) {
      if (seq.finished) continue;
      if (seq.computed < seq.promptTokens) {
        events.push(this.emit(seq, this.prefill(seq), options.logits === true));
      } else {
        running.push(seq);
      }
    }
    for (let i = 0; i < running.length; i += this.maxBatch) {
      const batch = running.slice(i, i + this.maxBatch);
      const logits = this.decode(batch);
      const V = this.model.config.vocabSize;
      batch.forEach((seq, s) =>
        events.push(this.emit(seq, logits.subarray(s * V, (s + 1) * V), options.logits === true)),
      );
    }
    return events;
  }

  private emit(seq: Sequence, logits: Float32Array, keepLogits: boolean): TokenEvent {
    const { token, logprob } = sampleToken(logits, this.model.config.vocabSize, seq.sampling, seq.rng);
    seq.tokens.push(token);
    seq.generated++;
    if (seq.stop.has(token)) seq.finished = 'stop';
    else if (seq.generated >= seq.maxTokens || seq.tokens.length >= this.maxContextTokens)
      seq.finished = 'length';
    const event: TokenEvent = { sequenceId: seq.id, token, logprob, finishReason: seq.finished };
    if (keepLogits) event.logits = logits.slice();
    return event;
  }

  /** Seals the tail into the pool when it is full. */
  private advanceTail(seq: Sequence, tokens: number): void {
    seq.tail.tokens += tokens;
    seq.computed += tokens;
    if (seq.tail.tokens === this.dims.blockTokens) {
      seq.blocks.push(this.pool.sealTail(seq.tail));
      seq.tail.tokens = 0;
    }
  }

  private pastBlocks(seq: Sequence, layer: number, tailTokens: number): AttentionBlock[] {
    const blocks = seq.blocks.map((id) => this.pool.attentionBlock(id, layer));
    if (tailTokens > 0) blocks.push(seq.tail.attentionBlock(layer, tailTokens));
    return blocks;
  }

  /** Computes the rest of the prompt in block-aligned chunks; returns the last position's logits. */
  private prefill(seq: Sequence): Float32Array {
    const B = this.dims.blockTokens;
    let logits: Float32Array | undefined;
    while (seq.computed < seq.promptTokens) {
      if (seq.tail.tokens === 0 && this.pool.blocksFree === 0) {
        throw new LimitExceededError(`KV pool full (${this.pool.blocksMax} blocks)`, {
          blocksMax: this.pool.blocksMax,
        });
      }
      const start = seq.computed;
      const end = Math.min(seq.promptTokens, (Math.floor(start / B) + 1) * B);
      logits = this.forwardChunk(seq, start, end);
    }
    return logits as Float32Array;
  }

  /** Runs tokens [start, end) of one sequence (within one block) through every layer. */
  private forwardChunk(seq: Sequence, start: number, end: number): Float32Array {
    const cfg = this.model.config;
    const k = this.kernels;
    const s = this.scratch;
    const T = end - start;
    const H = cfg.hiddenSize;
    const tokens = Uint32Array.from(seq.tokens.slice(start, end));
    const positions = Int32Array.from({ length: T }, (_, i) => start + i);
    const x = s.x.subarray(0, T * H);
    k.embed(this.model.weights.embed, tokens, x);
    const tailBefore = seq.tail.tokens;
    for (let l = 0; l < cfg.layers; l++) {
      const { q, kk, vv } = this.attentionInputs(l, x, T, positions);
      const out = s.attn.subarray(0, T * cfg.queryHeads * cfg.headDim);
      k.prefillAttention({
        queryHeads: cfg.queryHeads,
        kvHeads: cfg.kvHeads,
        headDim: cfg.headDim,
        scale: this.scale,
        queries: q,
        keys: kk,
        values: vv,
        past: { dims: this.layerDims, blocks: this.pastBlocks(seq, l, tailBefore) },
        out,
      });
      const kvDim = cfg.kvHeads * cfg.headDim;
      for (let t = 0; t < T; t++) {
        seq.tail.write(
          l,
          tailBefore + t,
          kk.subarray(t * kvDim, (t + 1) * kvDim),
          vv.subarray(t * kvDim, (t + 1) * kvDim),
        );
      }
      this.attentionOutputAndMlp(l, x, out, T);
    }
    this.advanceTail(seq, T);
    return this.logits(x.subarray((T - 1) * H, T * H), 1);
  }

  /** One decode step for a batch: each sequence's last token, at its own position. */
  private decode(batch: Sequence[]): Float32Array {
    const cfg = this.model.config;
    const k = this.kernels;
    const S = batch.length;
    const H = cfg.hiddenSize;
    for (const seq of batch) {
      if (seq.tail.tokens === 0 && this.pool.blocksFree === 0) {
        throw new LimitExceededError(`KV pool full (${this.pool.blocksMax} blocks)`, {
          blocksMax: this.pool.blocksMax,
        });
      }
    }
    const tokens = Uint32Array.from(batch, (seq) => seq.tokens[seq.tokens.length - 1] as number);
    const positions = Int32Array.from(batch, (seq) => seq.computed);
    const x = this.scratch.x.subarray(0, S * H);
    k.embed(this.model.weights.embed, tokens, x);
    const qDim = cfg.queryHeads * cfg.headDim;
    const kvDim = cfg.kvHeads * cfg.headDim;
    for (let l = 0; l < cfg.layers; l++) {
      const { q, kk, vv } = this.attentionInputs(l, x, S, positions);
      const out = this.scratch.attn.subarray(0, S * qDim);
      batch.forEach((seq, i) => {
        const slot = seq.tail.tokens;
        seq.tail.write(
          l,
          slot,
          kk.subarray(i * kvDim, (i + 1) * kvDim),
          vv.subarray(i * kvDim, (i + 1) * kvDim),
        );
        const partial = k.attention({
          dims: this.layerDims,
          queryHeads: cfg.queryHeads,
          query: q.subarray(i * qDim, (i + 1) * qDim),
          scale: this.scale,
          blocks: this.pastBlocks(seq, l, slot + 1),
        });
        out.set(partial.o, i * qDim);
      });
      this.attentionOutputAndMlp(l, x, out, S);
    }
    for (const seq of batch) this.advanceTail(seq, 1);
    return this.logits(x, S);
  }

  private layerWeights(layer: number): LayerWeights {
    const w = this.model.weights.layers[layer];
    if (!w) throw new KvmeshError('INTERNAL', 'internal', `no weights for layer ${layer}`);
    return w;
  }

  /** RMSNorm → fused QKV projection (+bias) → split → RoPE on q and k. */
  private attentionInputs(
    layer: number,
    x: Float32Array,
    rows: number,
    positions: Int32Array,
  ): { q: Float32Array; kk: Float32Array; vv: Float32Array } {
    const cfg = this.model.config;
    const w = this.layerWeights(layer);
    const k = this.kernels;
    const s = this.scratch;
    const H = cfg.hiddenSize;
    const qDim = cfg.queryHeads * cfg.headDim;
    const kvDim = cfg.kvHeads * cfg.headDim;
    const width = qDim + 2 * kvDim;
    const xn = s.xn.subarray(0, rows * H);
    k.rmsNorm(x, w.inputNorm, cfg.rmsNormEps, xn);
    const qkv = s.qkv.subarray(0, rows * width);
    k.matmul(xn, w.qkv, qkv, rows, H, width, w.qkvBias ?? undefined);
    const q = s.q.subarray(0, rows * qDim);
    const kk = s.k.subarray(0, rows * kvDim);
    const vv = s.v.subarray(0, rows * kvDim);
    for (let r = 0; r < rows; r++) {
      const row = qkv.subarray(r * width, (r + 1) * width);
      q.set(row.subarray(0, qDim), r * qDim);
      kk.set(row.subarray(qDim, qDim + kvDim), r * kvDim);
      vv.set(row.subarray(qDim + kvDim), r * kvDim);
    }
    k.rope(q, positions, cfg.queryHeads, cfg.headDim, this.invFreq);
    k.rope(kk, positions, cfg.kvHeads, cfg.headDim, this.invFreq);
    return { q, kk, vv };
  }

  /** O projection + residual, then RMSNorm → gate/up → SwiGLU → down + residual. */
  private attentionOutputAndMlp(layer: number, x: Float32Array, attn: Float32Array, rows: number): void {
    const cfg = this.model.config;
    const w = this.layerWeights(layer);
    const k = this.kernels;
    const s = this.scratch;
    const H = cfg.hiddenSize;
    const I = cfg.intermediateSize;
    const qDim = cfg.queryHeads * cfg.headDim;
    const proj = s.proj.subarray(0, rows * H);
    k.matmul(attn, w.o, proj, rows, qDim, H);
    k.add(x, proj, x);
    const xn = s.xn.subarray(0, rows * H);
    k.rmsNorm(x, w.postNorm, cfg.rmsNormEps, xn);
    const gateUp = s.gateUp.subarray(0, rows * 2 * I);
    k.matmul(xn, w.gateUp, gateUp, rows, H, 2 * I);
    const gate = s.gate.subarray(0, rows * I);
    const up = s.up.subarray(0, rows * I);
    for (let r = 0; r < rows; r++) {
      gate.set(gateUp.subarray(r * 2 * I, r * 2 * I + I), r * I);
      up.set(gateUp.subarray(r * 2 * I + I, (r + 1) * 2 * I), r * I);
    }
    k.swiglu(gate, up, gate);
    k.matmul(gate, w.down, proj, rows, I, H);
    k.add(x, proj, x);
  }

  /** Final RMSNorm and the LM head for `rows` hidden states. */
  private logits(x: Float32Array, rows: number): Float32Array {
    const cfg = this.model.config;
    const H = cfg.hiddenSize;
    const xn = this.scratch.xn.subarray(0, rows * H);
    this.kernels.rmsNorm(x.subarray(0, rows * H), this.model.weights.norm, cfg.rmsNormEps, xn);
    const logits = this.scratch.logits.subarray(0, rows * cfg.vocabSize);
    this.kernels.matmul(xn, this.model.weights.lmHead, logits, rows, H, cfg.vocabSize);
    return logits;
  }
}
