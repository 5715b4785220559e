// The Llama-family forward pass over a paged KV pool, with a continuous-batching API: add a
// sequence, step all, remove finished ones. Computes in f32 on the dense kernels (OpenBLAS GEMM);
// attention reads every full block in the pool's codec and the sequence's f32 tail.
//
// DistAttention: a sequence may leave its oldest full blocks outside the pool ("far" blocks, held
// by the store). Attention over them is asked of an injected FarAttention per layer and merged
// exactly with the local part (Kernels.mergePartials), so stepAsync() is needed while any sequence
// has far blocks; step() refuses them. The forward pass is written once as a generator that yields
// its far-attention requests; step() and stepAsync() only differ in how they answer them.
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
  type PartialAttention,
} from '@kvmesh/kernels';
import type { BlockDims } from '@kvmesh/block';

import type { LayerWeights, LoadedModel } from '../model/load.ts';
import { Xoshiro128 } from '../model/random.ts';
import { KvPool, TailBlock } from './kv-pool.ts';
import { RateMeter } from './rate-meter.ts';
import {
  checkSampling,
  GREEDY,
  adjustsLogits,
  LogitAdjustments,
  sampleToken,
  tokenLogprob,
  TOP_LOGPROBS_MAX,
  topLogprobs,
  type SamplingOptions,
} from './sampling.ts';

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
  /** See KvPoolOptions.reclaim: frees a block a local prefix cache holds when the pool is full. */
  reclaimBlock?: () => boolean;
}

/** Attention over a sequence's far blocks (its first `blocks` full blocks, not in the pool). */
export interface FarAttention {
  /** Partial attention of one query row, f32 [queryHeads][headDim], over the first `blocks` blocks. */
  attend(layer: number, query: Float32Array, blocks: number): Promise<PartialAttention>;
}

export interface SequenceRequest {
  promptTokens: readonly number[];
  maxTokens: number;
  sampling?: SamplingOptions;
  stopTokenIds?: readonly number[];
  /** Payloads (block format v1) of the prompt's first full blocks, imported instead of computed. */
  prefixBlocks?: readonly Uint8Array[];
  /**
   * Pool ids of the prompt's first full blocks already in this engine's pool (a local prefix cache;
   * see retainBlocks); they come before prefixBlocks and each gains a reference. Not with farBlocks.
   */
  prefixPoolBlocks?: readonly number[];
  /**
   * Leading full blocks of the prompt left outside the pool (before prefixBlocks): their attention
   * comes from farAttention. Needs farAttention; also needed for demoteBlocks().
   */
  farBlocks?: number;
  farAttention?: FarAttention;
  /**
   * The first generated token when it was drawn elsewhere (a prefill worker): emitted instead of a
   * sample from this engine's logits, with its logprob under them; a sampling stream skips its
   * draw, so later draws line up with a single-process run of the same seed.
   */
  firstToken?: number;
  /** How many most likely tokens each event lists with their logprobs (0..TOP_LOGPROBS_MAX); default 0. */
  topLogprobs?: number;
}

export type FinishReason = 'stop' | 'length';

export interface TokenEvent {
  sequenceId: number;
  token: number;
  logprob: number;
  finishReason: FinishReason | null;
  /** The distribution the token was drawn from (a copy), when step({ logits: true }). */
  logits?: Float32Array;
  /** The most likely tokens at this position under the model's own distribution, when asked. */
  top?: { tokenIds: number[]; logprobs: number[] };
}

/** One far-attention request of the forward pass: one query row of one sequence at one layer. */
interface FarRequest {
  seq: Sequence;
  layer: number;
  query: Float32Array;
}

/**
 * The forward pass as a generator: yields far requests and resumes with their partials (same order);
 * an empty list is a pause between prefill chunks (stepAsync lets the event loop run there).
 */
type Forward<T> = Generator<FarRequest[], T, PartialAttention[]>;

/** Wall-time speeds an engine measured on its own recent work (see Engine.measuredSpeeds). */
export interface EngineSpeeds {
  readonly prefillMsPerToken: number;
  readonly decodeMsPerSequence: number;
}

// About the last few long prompts, and the last few hundred decoded tokens of a small batch.
const PREFILL_RATE_HALF_LIFE_TOKENS = 4096;
const DECODE_RATE_HALF_LIFE_SEQUENCES = 256;

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
  /** Pool ids of the local full blocks; they follow the far blocks. */
  blocks: number[];
  farBlocks: number;
  farAttention: FarAttention | undefined;
  /** Removed while a step was running: its blocks are released when the step ends. */
  removed: boolean;
  tail: TailBlock;
  sampling: SamplingOptions;
  /** Set when the sampling asks for a logit bias or penalties. */
  adjustments: LogitAdjustments | undefined;
  rng: Xoshiro128;
  maxTokens: number;
  stop: Set<number>;
  generated: number;
  finished: FinishReason | null;
  /** Prompt tokens whose KV came from imported blocks. */
  reusedTokens: number;
  firstToken: number | undefined;
  topLogprobs: number;
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
  /** Pool changes asked for while an async step runs; applied when it ends. */
  private deferred: (() => void)[] | null = null;
  private readonly prefillRate = new RateMeter(PREFILL_RATE_HALF_LIFE_TOKENS);
  private readonly decodeRate = new RateMeter(DECODE_RATE_HALF_LIFE_SEQUENCES);

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
    this.pool = new KvPool(this.kernels, {
      codec: this.codec,
      dims: this.dims,
      blocksMax: kvBlocksMax,
      ...(options.reclaimBlock === undefined ? {} : { reclaim: options.reclaimBlock }),
    });
    this.invFreq = this.kernels.ropeInvFreq({
      headDim: cfg.headDim,
      theta: cfg.ropeTheta,
      scaling: cfg.ropeScaling,
    });
    this.scale = 1 / Math.sqrt(cfg.headDim);
    this.scratch = new Scratch(Math.max(blockTokens, this.maxBatch), cfg);
  }

  /**
   * What this engine's recent work took, wall time on this host (contention included): ms per prompt
   * token computed and ms per sequence of a decode batch; 0 until measured. Routers price requests
   * with them (worker heartbeats carry them).
   */
  get measuredSpeeds(): EngineSpeeds {
    return { prefillMsPerToken: this.prefillRate.msPerUnit, decodeMsPerSequence: this.decodeRate.msPerUnit };
  }

  get activeSequences(): number {
    return this.sequences.size;
  }

  /** Whether a sequence with far blocks is running: step() refuses it, stepAsync() serves it. */
  get needsAsyncStep(): boolean {
    for (const seq of this.sequences.values()) if (seq.farBlocks > 0 && !seq.finished) return true;
    return false;
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
    checkSampling(sampling, cfg.vocabSize);
    const top = request.topLogprobs ?? 0;
    if (!Number.isInteger(top) || top < 0 || top > TOP_LOGPROBS_MAX)
      throw new InvalidArgumentError(
        `topLogprobs must be an integer in [0, ${TOP_LOGPROBS_MAX}], got ${top}`,
        {
          topLogprobs: top,
        },
      );
    const forced = request.firstToken;
    if (forced !== undefined && (!Number.isInteger(forced) || forced < 0 || forced >= cfg.vocabSize))
      throw new InvalidArgumentError(`firstToken ${forced} is outside the vocabulary [0, ${cfg.vocabSize})`, {
        firstToken: forced,
      });
    const B = this.dims.blockTokens;
    const pooled = request.prefixPoolBlocks ?? [];
    const prefix = request.prefixBlocks ?? [];
    const farBlocks = request.farBlocks ?? 0;
    if (farBlocks > 0 && pooled.length > 0)
      throw new InvalidArgumentError('prefixPoolBlocks and farBlocks cannot be combined', {
        farBlocks,
        prefixPoolBlocks: pooled.length,
      });
    if (!Number.isInteger(farBlocks) || farBlocks < 0)
      throw new InvalidArgumentError(`farBlocks must be a non-negative integer, got ${farBlocks}`, {
        farBlocks,
      });
    if (farBlocks > 0 && request.farAttention === undefined)
      throw new InvalidArgumentError(`${farBlocks} far blocks given without farAttention`, { farBlocks });
    // At least the last prompt token is always computed: its logits give the first new token.
    const importable = Math.floor((prompt.length - 1) / B);
    const given = farBlocks + pooled.length + prefix.length;
    if (given > importable) {
      throw new InvalidArgumentError(
        `${given} prefix blocks given; a ${prompt.length}-token prompt takes at most ${importable}`,
        {
          prefixBlocks: prefix.length,
          farBlocks,
          importable,
        },
      );
    }
    const blocks: number[] = [];
    try {
      for (const id of pooled) {
        this.pool.retain(id);
        blocks.push(id);
      }
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
      computed: (farBlocks + blocks.length) * B,
      blocks,
      farBlocks,
      farAttention: request.farAttention,
      removed: false,
      tail: new TailBlock(this.dims),
      sampling,
      adjustments: adjustsLogits(sampling) ? new LogitAdjustments(sampling, prompt) : undefined,
      rng: new Xoshiro128(sampling.seed ?? this.seedStream.nextUint32()),
      maxTokens: request.maxTokens,
      stop: new Set(request.stopTokenIds ?? cfg.eosTokenIds),
      generated: 0,
      finished: null,
      reusedTokens: (farBlocks + blocks.length) * B,
      firstToken: request.firstToken,
      topLogprobs: top,
    });
    return id;
  }

  /** Frees a sequence's blocks (finished or cancelled); during stepAsync(), once the step ends. */
  removeSequence(id: number): void {
    const seq = this.sequence(id);
    this.sequences.delete(id);
    seq.removed = true;
    this.whenIdle(() => {
      for (const block of seq.blocks) this.pool.release(block);
    });
  }

  /** Payloads of the sequence's local full blocks, in order (they follow its far blocks). */
  exportBlocks(id: number): Uint8Array[] {
    return this.sequence(id).blocks.map((b) => this.pool.exportPayload(b));
  }

  /** Pool ids of the sequence's local full blocks, each with one more reference the caller owns. */
  retainBlocks(id: number): number[] {
    const blocks = [...this.sequence(id).blocks];
    for (const block of blocks) this.pool.retain(block);
    return blocks;
  }

  /** Payload of full block `index` (counted from the sequence's start); it must be local. */
  exportBlock(id: number, index: number): Uint8Array {
    const seq = this.sequence(id);
    const block = seq.blocks[index - seq.farBlocks];
    if (block === undefined)
      throw new InvalidArgumentError(
        `block ${index} is not local (far ${seq.farBlocks}, local ${seq.blocks.length})`,
        { index, farBlocks: seq.farBlocks, localBlocks: seq.blocks.length },
      );
    return this.pool.exportPayload(block);
  }

  /**
   * Leaves the sequence's `count` oldest local blocks to farAttention (the caller made sure the
   * store holds them) and frees them from the pool; during stepAsync(), once the step ends.
   */
  demoteBlocks(id: number, count: number): void {
    const seq = this.sequence(id);
    if (seq.farAttention === undefined)
      throw new InvalidArgumentError(`sequence ${id} has no farAttention to demote blocks to`, { id });
    if (!Number.isInteger(count) || count < 0)
      throw new InvalidArgumentError(`count must be a non-negative integer, got ${count}`, { count });
    this.whenIdle(() => {
      if (seq.removed) return;
      const demoted = seq.blocks.splice(0, Math.min(count, seq.blocks.length));
      seq.farBlocks += demoted.length;
      for (const block of demoted) this.pool.release(block);
    });
  }

  private sequence(id: number): Sequence {
    const seq = this.sequences.get(id);
    if (!seq) throw new SequenceNotFoundError(id);
    return seq;
  }

  /** Runs `change` now, or when the running async step ends (blocks in use stay valid until then). */
  private whenIdle(change: () => void): void {
    if (this.deferred === null) change();
    else this.deferred.push(change);
  }

  /** Token ids of a sequence so far (prompt + generated) and how many prompt tokens were reused. */
  sequenceInfo(id: number): {
    tokens: readonly number[];
    promptTokens: number;
    reusedTokens: number;
    /** Full blocks, far and local. */
    fullBlocks: number;
    farBlocks: number;
  } {
    const seq = this.sequence(id);
    return {
      tokens: seq.tokens,
      promptTokens: seq.promptTokens,
      reusedTokens: seq.reusedTokens,
      fullBlocks: seq.farBlocks + seq.blocks.length,
      farBlocks: seq.farBlocks,
    };
  }

  /**
   * One engine step: prefills every admitted sequence (emitting its first token), then decodes one
   * token for up to maxBatch running sequences. Finished sequences stay until removeSequence().
   * Sequences with far blocks need stepAsync().
   */
  step(options: { logits?: boolean } = {}): TokenEvent[] {
    if (this.deferred !== null) throw new KvmeshError('INTERNAL', 'internal', 'a step is already running');
    if (this.needsAsyncStep) throw new InvalidArgumentError('a sequence has far blocks: use stepAsync()', {});
    const pass = this.stepPass(options.logits === true);
    let result = pass.next();
    while (result.done !== true) {
      // Only pauses (empty requests) can come without far blocks.
      if (result.value.length > 0)
        throw new KvmeshError('INTERNAL', 'internal', 'far attention asked in step()');
      result = pass.next([]);
    }
    return result.value;
  }

  /**
   * step() that also serves sequences with far blocks (awaiting their FarAttention per layer) and
   * lets the event loop run between prefill chunks, so a long prompt does not stall heartbeats.
   */
  async stepAsync(options: { logits?: boolean } = {}): Promise<TokenEvent[]> {
    if (this.deferred !== null) throw new KvmeshError('INTERNAL', 'internal', 'a step is already running');
    this.deferred = [];
    try {
      const pass = this.stepPass(options.logits === true);
      let next = pass.next();
      while (next.done !== true) {
        const requests = next.value;
        if (requests.length === 0) {
          // A pause between prefill chunks: timers, I/O and cancellations run here.
          await new Promise((resolve) => setImmediate(resolve));
          next = pass.next([]);
          continue;
        }
        let partials: PartialAttention[];
        try {
          partials = await Promise.all(
            requests.map((r) =>
              (r.seq.farAttention as FarAttention).attend(r.layer, r.query, r.seq.farBlocks),
            ),
          );
        } catch (err) {
          pass.return([]);
          throw err;
        }
        next = pass.next(partials);
      }
      return next.value.filter((event) => this.sequences.has(event.sequenceId));
    } finally {
      const deferred = this.deferred;
      this.deferred = null;
      for (const change of deferred) change();
    }
  }

  private *stepPass(keepLogits: boolean): Forward<TokenEvent[]> {
    const events: TokenEvent[] = [];
    const running: Sequence[] = [];
    // NOTE: a snapshot: sequences added while an async step runs join the next one.
    for (const seq of [...this.sequences.values()]) {
      if (seq.finished) continue;
      if (seq.computed < seq.promptTokens) {
        events.push(this.emit(seq, yield* this.prefill(seq), keepLogits));
      } else {
        running.push(seq);
      }
    }
    for (let i = 0; i < running.length; i += this.maxBatch) {
      const batch = running.slice(i, i + this.maxBatch);
      const began = performance.now();
      const logits = yield* this.decode(batch);
      this.decodeRate.record(batch.length, performance.now() - began);
      const V = this.model.config.vocabSize;
      batch.forEach((seq, s) => events.push(this.emit(seq, logits.subarray(s * V, (s + 1) * V), keepLogits)));
    }
    return events;
  }

  private emit(seq: Sequence, logits: Float32Array, keepLogits: boolean): TokenEvent {
    const V = this.model.config.vocabSize;
    let sampled: { token: number; logprob: number };
    if (seq.generated === 0 && seq.firstToken !== undefined) {
      // NOTE: non-greedy sampling draws exactly one number per token; skip the one this token took.
      if (seq.sampling.temperature > 0) seq.rng.nextUnit();
      sampled = { token: seq.firstToken, logprob: tokenLogprob(logits, V, seq.firstToken) };
    } else if (seq.adjustments !== undefined) {
      // Chosen from the adjusted logits; its logprob stays that of the model's own distribution.
      const adjusted = logits.slice(0, V);
      seq.adjustments.apply(adjusted);
      const token = sampleToken(adjusted, V, seq.sampling, seq.rng).token;
      sampled = { token, logprob: tokenLogprob(logits, V, token) };
    } else {
      sampled = sampleToken(logits, V, seq.sampling, seq.rng);
    }
    const { token, logprob } = sampled;
    seq.adjustments?.add(token);
    seq.tokens.push(token);
    seq.generated++;
    if (seq.stop.has(token)) seq.finished = 'stop';
    else if (seq.generated >= seq.maxTokens || seq.tokens.length >= this.maxContextTokens)
      seq.finished = 'length';
    const event: TokenEvent = { sequenceId: seq.id, token, logprob, finishReason: seq.finished };
    if (keepLogits) event.logits = logits.slice();
    if (seq.topLogprobs > 0) event.top = topLogprobs(logits, V, seq.topLogprobs);
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
  private *prefill(seq: Sequence): Forward<Float32Array> {
    const B = this.dims.blockTokens;
    let logits: Float32Array | undefined;
    while (seq.computed < seq.promptTokens) {
      if (seq.tail.tokens === 0 && !this.pool.ensureFree(1)) {
        throw new LimitExceededError(`KV pool full (${this.pool.blocksMax} blocks)`, {
          blocksMax: this.pool.blocksMax,
        });
      }
      const start = seq.computed;
      const end = Math.min(seq.promptTokens, (Math.floor(start / B) + 1) * B);
      const began = performance.now();
      logits = yield* this.forwardChunk(seq, start, end);
      this.prefillRate.record(end - start, performance.now() - began);
      if (seq.computed < seq.promptTokens) yield [];
    }
    return logits as Float32Array;
  }

  /** Runs tokens [start, end) of one sequence (within one block) through every layer. */
  private *forwardChunk(seq: Sequence, start: number, end: number): Forward<Float32Array> {
    const cfg = this.model.config;
    const k = this.kernels;
    const s = this.scratch;
    const T = end - start;
    const H = cfg.hiddenSize;
    const qDim = cfg.queryHeads * cfg.headDim;
    const kvDim = cfg.kvHeads * cfg.headDim;
    const tokens = Uint32Array.from(seq.tokens.slice(start, end));
    const positions = Int32Array.from({ length: T }, (_, i) => start + i);
    const x = s.x.subarray(0, T * H);
    k.embed(this.model.weights.embed, tokens, x);
    const tailBefore = seq.tail.tokens;
    for (let l = 0; l < cfg.layers; l++) {
      const { q, kk, vv } = this.attentionInputs(l, x, T, positions);
      const out = s.attn.subarray(0, T * qDim);
      if (seq.farBlocks === 0) {
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
      }
      for (let t = 0; t < T; t++) {
        seq.tail.write(
          l,
          tailBefore + t,
          kk.subarray(t * kvDim, (t + 1) * kvDim),
          vv.subarray(t * kvDim, (t + 1) * kvDim),
        );
      }
      if (seq.farBlocks > 0) {
        // Row by row: each row sees the local blocks and the tail up to itself, plus the far part.
        const rows = Array.from({ length: T }, (_, t) => q.slice(t * qDim, (t + 1) * qDim));
        const far = yield rows.map((query) => ({ seq, layer: l, query }));
        rows.forEach((query, t) => {
          const local = k.attention({
            dims: this.layerDims,
            queryHeads: cfg.queryHeads,
            query,
            scale: this.scale,
            blocks: this.pastBlocks(seq, l, tailBefore + t + 1),
          });
          out.set(this.withFar(local, far[t]), t * qDim);
        });
      }
      this.attentionOutputAndMlp(l, x, out, T);
    }
    this.advanceTail(seq, T);
    return this.logits(x.subarray((T - 1) * H, T * H), 1);
  }

  /** The local partial merged with the far one (exact), as the normalized output. */
  private withFar(local: PartialAttention, far: PartialAttention | undefined): Float32Array {
    if (far === undefined) throw new KvmeshError('INTERNAL', 'internal', 'a far attention result is missing');
    const cfg = this.model.config;
    return this.kernels.mergePartials([local, far], cfg.queryHeads, cfg.headDim).o;
  }

  /** One decode step for a batch: each sequence's last token, at its own position. */
  private *decode(batch: Sequence[]): Forward<Float32Array> {
    const cfg = this.model.config;
    const k = this.kernels;
    const S = batch.length;
    const H = cfg.hiddenSize;
    for (const seq of batch) {
      if (seq.tail.tokens === 0 && !this.pool.ensureFree(1)) {
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
    const farRows = batch.flatMap((seq, i) => (seq.farBlocks > 0 ? [i] : []));
    for (let l = 0; l < cfg.layers; l++) {
      const { q, kk, vv } = this.attentionInputs(l, x, S, positions);
      const out = this.scratch.attn.subarray(0, S * qDim);
      const far =
        farRows.length === 0
          ? []
          : yield farRows.map((i) => ({
              seq: batch[i] as Sequence,
              layer: l,
              query: q.slice(i * qDim, (i + 1) * qDim),
            }));
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
        const farAt = seq.farBlocks > 0 ? farRows.indexOf(i) : -1;
        out.set(farAt < 0 ? partial.o : this.withFar(partial, far[farAt]), i * qDim);
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
