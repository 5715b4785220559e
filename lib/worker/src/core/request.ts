// Validation of the fields every worker request (Worker.Prefill, Worker.Decode) shares: request id,
// model, codec, namespace, a non-empty prompt that leaves room in the context, and sampling in
// range. Every refusal names the proto field at fault; role-specific fields are checked by each
// service after these.
import { InvalidArgumentError } from '@kvmesh/errors';
import { parseRequestedAdjustments, type SamplingOptions } from '@kvmesh/engine';
import type { CodecName } from '@kvmesh/kernels';
import {
  Codec,
  codecFromWire,
  parseNamespace,
  parseRequestId,
  type Namespace,
  type RequestId,
} from '@kvmesh/protocol';

import { CodecMismatchError, ModelMismatchError, type CodecUse } from './errors.ts';

export interface WorkerLimits {
  readonly modelName: string;
  readonly vocabSize: number;
  /** The engine's context: a prompt must be shorter (room for at least one new token). */
  readonly maxContextTokens: number;
  readonly codec: CodecName;
}

/** The request fields both Worker.Prefill and Worker.Decode carry, as they arrive on the wire. */
export interface WorkerRequestCommon {
  readonly requestId: string;
  readonly model: string;
  readonly codec: Codec;
  readonly namespace: string;
  readonly promptTokenIds: readonly number[];
}

/** The sampling fields both requests carry. */
export interface WireSampling {
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
  readonly seed?: bigint | undefined;
  readonly presencePenalty?: number;
  readonly frequencyPenalty?: number;
  readonly repetitionPenalty?: number;
  readonly logitBias?: { readonly [token: number]: number };
}

export interface WorkerInputCommon {
  /** undefined when the caller sent none. */
  readonly requestId: RequestId | undefined;
  readonly namespace: Namespace;
  /** Non-empty and shorter than the context; token ids not yet checked against the vocabulary. */
  readonly promptTokens: readonly number[];
}

/** Runs `parse`, turning any failure into an InvalidArgumentError naming the proto field. */
export function field<T>(name: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new InvalidArgumentError(`${name}: ${(err as Error).message}`, { field: name });
  }
}

/** A namespace with an unpaired surrogate has no UTF-8 form; replacing it would alias another namespace. */
const LONE_SURROGATE = /\p{Cs}/u;

/** Checks sampling ranges; an absent message means greedy over the whole vocabulary. */
export function parseSampling(sampling: WireSampling | undefined, vocabSize?: number): SamplingOptions {
  if (sampling === undefined) return { temperature: 0, topK: 0, topP: 1 };
  const { temperature, topK } = sampling;
  // NOTE: proto3 sends an unset top_p as 0; 0 would keep nothing, so it means "all" like 1.
  const topP = sampling.topP === 0 ? 1 : sampling.topP;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 100)
    throw new InvalidArgumentError(`sampling.temperature must be in [0, 100], got ${temperature}`, {
      field: 'sampling.temperature',
      value: temperature,
    });
  if (!Number.isFinite(topP) || topP < 0 || topP > 1)
    throw new InvalidArgumentError(`sampling.top_p must be in [0, 1], got ${topP}`, {
      field: 'sampling.top_p',
      value: topP,
    });
  if (!Number.isInteger(topK) || topK < 0)
    throw new InvalidArgumentError(`sampling.top_k must be an integer >= 0, got ${topK}`, {
      field: 'sampling.top_k',
      value: topK,
    });
  const seed = sampling.seed;
  if (seed !== undefined && (seed < 0n || seed >= 1n << 32n))
    throw new InvalidArgumentError(`sampling.seed must be in [0, 2^32), got ${seed}`, {
      field: 'sampling.seed',
      value: seed.toString(),
    });
  return {
    temperature,
    topK,
    topP,
    ...(seed === undefined ? {} : { seed: Number(seed) }),
    ...parseRequestedAdjustments(sampling, vocabSize),
  };
}

/**
 * Checks the shared head of a worker request in wire order: request id, model, codec (`use` words
 * the mismatch message), namespace, prompt length against the context.
 */
export function parseWorkerRequestCommon(
  request: WorkerRequestCommon,
  limits: WorkerLimits,
  use: CodecUse,
): WorkerInputCommon {
  const requestId =
    request.requestId === '' ? undefined : field('request_id', () => parseRequestId(request.requestId));
  if (request.model !== '' && request.model !== limits.modelName)
    throw new ModelMismatchError(request.model, limits.modelName);
  if (request.codec !== Codec.CODEC_UNSPECIFIED) {
    const requested = codecFromWire(request.codec);
    if (requested === undefined)
      throw new InvalidArgumentError(`codec: unknown codec value ${request.codec}`, {
        field: 'codec',
        value: request.codec,
      });
    if (requested !== limits.codec) throw new CodecMismatchError(requested, limits.codec, use);
  }
  const namespace = field('namespace', () => {
    if (LONE_SURROGATE.test(request.namespace))
      throw new Error('contains an unpaired UTF-16 surrogate (not encodable as UTF-8)');
    return parseNamespace(request.namespace);
  });
  const prompt = request.promptTokenIds;
  if (prompt.length === 0)
    throw new InvalidArgumentError('prompt_token_ids is empty', { field: 'prompt_token_ids' });
  if (prompt.length >= limits.maxContextTokens)
    throw new InvalidArgumentError(
      `prompt_token_ids holds ${prompt.length} tokens; the ${limits.maxContextTokens}-token context takes at most ${limits.maxContextTokens - 1}`,
      { field: 'prompt_token_ids', promptTokens: prompt.length, maxContextTokens: limits.maxContextTokens },
    );
  return { requestId, namespace, promptTokens: prompt };
}
