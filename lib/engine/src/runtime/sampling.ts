// Token sampling from one position's logits: a logit bias and repetition penalties, greedy, temperature, top-k, top-p
// (nucleus), a seeded stream per sequence, plus the log-probability of the chosen token under the
// unmodified distribution (what OpenAI's `logprobs` reports). Pure: the RNG is passed in, nothing is
// global.
import { InvalidArgumentError } from '@kvmesh/errors';

import type { Xoshiro128 } from '../model/random.ts';

export interface SamplingOptions {
  /** 0 = greedy (argmax, ties to the lowest id). */
  temperature: number;
  /** Keep the k most likely tokens; 0 = all. */
  topK: number;
  /** Keep the smallest set whose probability reaches p; 1 = all. */
  topP: number;
  /** Seed of the sequence's private stream; undefined draws one from the engine's stream. */
  seed?: number;
  /** Subtracted once from the logit of every token already generated (OpenAI); 0 = off. */
  presencePenalty?: number;
  /** Subtracted from a token's logit once per time it was generated (OpenAI); 0 = off. */
  frequencyPenalty?: number;
  /**
   * Divides a positive logit (multiplies a negative one) of every token in the prompt or generated
   * so far (the CTRL / Hugging Face rule, vLLM's `repetition_penalty`); 1 = off.
   */
  repetitionPenalty?: number;
  /** Added to the logits of the listed token ids before sampling (OpenAI's logit_bias), each in [-100, 100]. */
  logitBias?: ReadonlyMap<number, number>;
}

/** Token ids one logit bias may list (OpenAI allows 300). */
export const LOGIT_BIAS_ENTRIES_MAX = 1024;

/** The ranges the front doors and workers accept for the sampling adjustments they are sent. */
export const SAMPLING_ADJUSTMENT_RANGES = {
  presence_penalty: [-2, 2],
  frequency_penalty: [-2, 2],
  repetition_penalty: [0.01, 10],
  logit_bias: [-100, 100],
} as const;

/**
 * Why `value` is outside the range of `name`, or null when it is in it. NOTE: the bounds are
 * compared as float32, the type these fields travel in, so a bound sent over the wire still passes.
 */
export function adjustmentRangeProblem(
  name: keyof typeof SAMPLING_ADJUSTMENT_RANGES,
  value: number,
): string | null {
  const [min, max] = SAMPLING_ADJUSTMENT_RANGES[name];
  if (Number.isFinite(value) && value >= Math.fround(min) && value <= Math.fround(max)) return null;
  return `must be in [${min}, ${max}], got ${value}`;
}

export const GREEDY: SamplingOptions = { temperature: 0, topK: 0, topP: 1 };

/** Checks every option's range; biased token ids must also be below `vocabSize` when given. */
export function checkSampling(options: SamplingOptions, vocabSize?: number): void {
  const { temperature, topK, topP, seed } = options;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 100) {
    throw new InvalidArgumentError(`temperature must be in [0, 100], got ${temperature}`, { temperature });
  }
  if (!Number.isInteger(topK) || topK < 0)
    throw new InvalidArgumentError(`topK must be an integer ≥ 0, got ${topK}`, { topK });
  if (!Number.isFinite(topP) || topP <= 0 || topP > 1)
    throw new InvalidArgumentError(`topP must be in (0, 1], got ${topP}`, { topP });
  if (seed !== undefined && (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32)) {
    throw new InvalidArgumentError(`seed must be an integer in [0, 2^32), got ${seed}`, { seed });
  }
  checkAdjustments(options, optionName, vocabSize);
}

type AdjustmentField = keyof typeof SAMPLING_ADJUSTMENT_RANGES;

/** How errors name an adjustment: as its SamplingOptions field, or as a request's wire field. */
const optionName = (field: AdjustmentField): string =>
  field.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
const wireName = (field: AdjustmentField): string => `sampling.${field}`;

/**
 * Checks the bias and penalties of `options`: each in its range, at most LOGIT_BIAS_ENTRIES_MAX
 * biased ids, each a token id (below `vocabSize` when given); errors name fields by `nameOf`.
 */
function checkAdjustments(
  options: SamplingOptions,
  nameOf: (field: AdjustmentField) => string,
  vocabSize?: number,
): void {
  const values = [
    ['presence_penalty', options.presencePenalty ?? 0],
    ['frequency_penalty', options.frequencyPenalty ?? 0],
    ['repetition_penalty', options.repetitionPenalty ?? 1],
  ] as const;
  for (const [field, value] of values) {
    const problem = adjustmentRangeProblem(field, value);
    if (problem !== null)
      throw new InvalidArgumentError(`${nameOf(field)} ${problem}`, { field: nameOf(field), value });
  }
  const bias = options.logitBias ?? new Map<number, number>();
  const name = nameOf('logit_bias');
  if (bias.size > LOGIT_BIAS_ENTRIES_MAX)
    throw new InvalidArgumentError(`${name} lists ${bias.size} tokens, at most ${LOGIT_BIAS_ENTRIES_MAX}`, {
      field: name,
      entries: bias.size,
    });
  for (const [token, value] of bias) {
    if (!Number.isInteger(token) || token < 0)
      throw new InvalidArgumentError(`${name} token ${token} is not a token id`, { field: name, token });
    if (vocabSize !== undefined && token >= vocabSize)
      throw new InvalidArgumentError(`${name} token ${token} is outside the vocabulary [0, ${vocabSize})`, {
        field: name,
        token,
        vocabSize,
      });
    const problem = adjustmentRangeProblem('logit_bias', value);
    if (problem !== null)
      throw new InvalidArgumentError(`${name} of token ${token} ${problem}`, { field: name, token, value });
  }
}

/** The sampling adjustments as a request carries them (proto SamplingParams' fields). */
export interface RequestedAdjustments {
  readonly presencePenalty?: number;
  readonly frequencyPenalty?: number;
  /** 0 (proto3's unset) means off, like 1. */
  readonly repetitionPenalty?: number;
  readonly logitBias?: { readonly [token: number]: number };
}

/**
 * The adjustments of a request, checked as checkSampling does (below `vocabSize` when given), with
 * those left at their neutral value dropped. Throws an InvalidArgumentError naming the wire field
 * (`sampling.<field>`).
 */
export function parseRequestedAdjustments(
  requested: RequestedAdjustments,
  vocabSize?: number,
): Pick<SamplingOptions, 'presencePenalty' | 'frequencyPenalty' | 'repetitionPenalty' | 'logitBias'> {
  const { presencePenalty = 0, frequencyPenalty = 0 } = requested;
  const repetitionPenalty = requested.repetitionPenalty ?? 0;
  const logitBias = new Map(
    Object.entries(requested.logitBias ?? {}).map(([token, bias]) => [Number(token), bias]),
  );
  const adjustments = {
    ...(presencePenalty === 0 ? {} : { presencePenalty }),
    ...(frequencyPenalty === 0 ? {} : { frequencyPenalty }),
    ...(repetitionPenalty === 0 || repetitionPenalty === 1 ? {} : { repetitionPenalty }),
    ...(logitBias.size === 0 ? {} : { logitBias }),
  };
  checkAdjustments(adjustments as SamplingOptions, wireName, vocabSize);
  return adjustments;
}

/** Whether `options` asks for any change to the logits before sampling (a bias or a penalty). */
export function adjustsLogits(options: SamplingOptions): boolean {
  return (
    (options.presencePenalty ?? 0) !== 0 ||
    (options.frequencyPenalty ?? 0) !== 0 ||
    (options.repetitionPenalty ?? 1) !== 1 ||
    (options.logitBias?.size ?? 0) > 0
  );
}

/**
 * One sequence's changes to its logits before sampling: its logit bias, and for the penalties how
 * often each token was generated and which tokens the prompt holds. Bounded by the sequence: at
 * most one entry per distinct token of the prompt and output.
 */
export class LogitAdjustments {
  private readonly generated = new Map<number, number>();
  private readonly prompt: ReadonlySet<number>;

  constructor(
    private readonly options: SamplingOptions,
    promptTokens: readonly number[],
  ) {
    this.prompt = (options.repetitionPenalty ?? 1) === 1 ? new Set() : new Set(promptTokens);
  }

  /** Counts a token the sequence produced. */
  add(token: number): void {
    this.generated.set(token, (this.generated.get(token) ?? 0) + 1);
  }

  /** Applies the bias, then the penalties, to `logits` in place. */
  apply(logits: Float32Array): void {
    for (const [token, bias] of this.options.logitBias ?? []) {
      if (token < logits.length) logits[token] = (logits[token] as number) + bias;
    }
    const presence = this.options.presencePenalty ?? 0;
    const frequency = this.options.frequencyPenalty ?? 0;
    const repetition = this.options.repetitionPenalty ?? 1;
    const repeat = (token: number): void => {
      const logit = logits[token] as number;
      logits[token] = logit > 0 ? logit / repetition : logit * repetition;
    };
    if (repetition !== 1) {
      for (const token of this.prompt) repeat(token);
      for (const token of this.generated.keys()) if (!this.prompt.has(token)) repeat(token);
    }
    for (const [token, count] of this.generated)
      logits[token] = (logits[token] as number) - presence - frequency * count;
  }
}

export interface SampledToken {
  token: number;
  /** log p(token) under softmax(logits), before temperature / top-k / top-p. */
  logprob: number;
}

function logSumExp(logits: Float32Array, n: number): { max: number; lse: number } {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if ((logits[i] as number) > max) max = logits[i] as number;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp((logits[i] as number) - max);
  return { max, lse: max + Math.log(sum) };
}

/** The log-probability of `token` under `logits[0..vocab)` (what a forced token reports). */
export function tokenLogprob(logits: Float32Array, vocab: number, token: number): number {
  return (logits[token] as number) - logSumExp(logits, vocab).lse;
}

/** The most tokens a position's alternatives may list (OpenAI's top_logprobs bound). */
export const TOP_LOGPROBS_MAX = 20;

/** The `k` most likely tokens of `logits[0..vocab)`, most likely first (ties: lower id), with logprobs. */
export function topLogprobs(
  logits: Float32Array,
  vocab: number,
  k: number,
): { tokenIds: number[]; logprobs: number[] } {
  const { lse } = logSumExp(logits, vocab);
  // NOTE: k is at most TOP_LOGPROBS_MAX: an insertion into a short sorted list beats sorting the vocabulary.
  const best: number[] = [];
  const before = (a: number, b: number): boolean =>
    (logits[a] as number) > (logits[b] as number) ||
    ((logits[a] as number) === (logits[b] as number) && a < b);
  for (let t = 0; t < vocab; t++) {
    if (best.length === k && !before(t, best[k - 1] as number)) continue;
    let at = best.length < k ? best.length : k - 1;
    if (best.length < k) best.push(t);
    while (at > 0 && before(t, best[at - 1] as number)) {
      best[at] = best[at - 1] as number;
      at--;
    }
    best[at] = t;
  }
  return { tokenIds: best, logprobs: best.map((t) => (logits[t] as number) - lse) };
}

/** Samples one token from `logits[0..vocab)`; `rng` is the sequence's stream (unused when greedy). */
export function sampleToken(
  logits: Float32Array,
  vocab: number,
  options: SamplingOptions,
  rng: Xoshiro128,
): SampledToken {
  const { lse } = logSumExp(logits, vocab);
  if (options.temperature === 0) {
    let best = 0;
    for (let i = 1; i < vocab; i++) if ((logits[i] as number) > (logits[best] as number)) best = i;
    return { token: best, logprob: (logits[best] as number) - lse };
  }
  // Candidates sorted by logit (ties by id, so the order is deterministic), cut by top-k.
  const order = Array.from({ length: vocab }, (_, i) => i).sort(
    (a, b) => (logits[b] as number) - (logits[a] as number) || a - b,
  );
  const k = options.topK > 0 ? Math.min(options.topK, vocab) : vocab;
  const top = order.slice(0, k);
  const invT = 1 / options.temperature;
  const first = logits[top[0] as number] as number;
  const weights = top.map((t) => Math.exp(((logits[t] as number) - first) * invT));
  const total = weights.reduce((s, w) => s + w, 0);
  // Nucleus: the shortest prefix whose mass reaches topP (always at least one token).
  let kept = 0;
  let mass = 0;
  while (kept < top.length && (kept === 0 || mass < options.topP * total)) mass += weights[kept++] as number;
  let r = rng.nextUnit() * mass;
  for (let i = 0; i < kept; i++) {
    r -= weights[i] as number;
    if (r < 0) return { token: top[i] as number, logprob: (logits[top[i] as number] as number) - lse };
  }
  const last = top[kept - 1] as number;
  return { token: last, logprob: (logits[last] as number) - lse };
}
