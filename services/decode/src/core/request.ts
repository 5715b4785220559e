// Validation of a Worker.Decode request against what this worker serves: a non-empty prompt that
// leaves room in the context, token ids inside the vocabulary, block hashes of well-formed bytes, a
// first token inside the vocabulary, a well-formed namespace and request id, sampling in range
// (stop strings and stop token ids bounded), and a codec that is this worker's (or unspecified).
// Every refusal names the proto field at fault; nothing invalid reaches the engine or the store.
import { InvalidArgumentError } from '@kvmesh/errors';
import { checkStopStrings, type SamplingOptions } from '@kvmesh/engine';
import type { CodecName } from '@kvmesh/kernels';
import {
  Codec,
  blockHashFromBytes,
  parseNamespace,
  parseRequestId,
  type BlockHash,
  type DecodeRequest,
  type Namespace,
  type RequestId,
} from '@kvmesh/protocol';

import { CodecMismatchError, ModelMismatchError } from './errors.ts';

/** Most stop token ids one request may list. */
export const STOP_TOKEN_IDS_MAX = 64;

export interface DecodeLimits {
  readonly modelName: string;
  readonly vocabSize: number;
  /** The engine's context: a prompt must be shorter (room for at least one new token). */
  readonly maxContextTokens: number;
  readonly codec: CodecName;
  readonly blockTokens: number;
  /** Tokens generated when sampling.max_tokens is 0 (unset). */
  readonly maxTokensDefault: number;
}

export interface DecodeInput {
  /** undefined when the caller sent none. */
  readonly requestId: RequestId | undefined;
  readonly namespace: Namespace;
  readonly promptTokens: readonly number[];
  /** Hashes of the prompt's leading full blocks the caller says the store holds, in order. */
  readonly blockHashes: readonly BlockHash[];
  readonly firstTokenId: number | undefined;
  readonly sampling: SamplingOptions;
  readonly maxTokens: number;
  /** undefined: the model's end-of-sequence tokens. */
  readonly stopTokenIds: readonly number[] | undefined;
  readonly stop: readonly string[];
  readonly logprobs: boolean;
}

const CODEC_NAMES_OF_WIRE: ReadonlyMap<Codec, CodecName> = new Map([
  [Codec.CODEC_F32, 'f32'],
  [Codec.CODEC_F16, 'f16'],
  [Codec.CODEC_KIVI8, 'kivi8'],
  [Codec.CODEC_KIVI4, 'kivi4'],
  [Codec.CODEC_KIVI2, 'kivi2'],
]);

function field<T>(name: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new InvalidArgumentError(`${name}: ${(err as Error).message}`, { field: name });
  }
}

/** A namespace with an unpaired surrogate has no UTF-8 form; replacing it would alias another namespace. */
const LONE_SURROGATE = /\p{Cs}/u;

function checkTokenId(name: string, token: number, vocabSize: number): void {
  if (!Number.isInteger(token) || token < 0 || token >= vocabSize)
    throw new InvalidArgumentError(`${name} is ${token}, outside the vocabulary [0, ${vocabSize})`, {
      field: name.replace(/\[\d+\]$/, ''),
      token,
      vocabSize,
    });
}

function parseSampling(sampling: NonNullable<DecodeRequest['sampling']>): SamplingOptions {
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
  return { temperature, topK, topP, ...(seed === undefined ? {} : { seed: Number(seed) }) };
}

const NO_SAMPLING: NonNullable<DecodeRequest['sampling']> = {
  temperature: 0,
  topP: 1,
  topK: 0,
  maxTokens: 0,
  stop: [],
  stopTokenIds: [],
  logprobs: false,
};

export function parseDecodeRequest(request: DecodeRequest, limits: DecodeLimits): DecodeInput {
  const requestId =
    request.requestId === '' ? undefined : field('request_id', () => parseRequestId(request.requestId));
  if (request.model !== '' && request.model !== limits.modelName)
    throw new ModelMismatchError(request.model, limits.modelName);
  if (request.codec !== Codec.CODEC_UNSPECIFIED) {
    const requested = CODEC_NAMES_OF_WIRE.get(request.codec);
    if (requested === undefined)
      throw new InvalidArgumentError(`codec: unknown codec value ${request.codec}`, {
        field: 'codec',
        value: request.codec,
      });
    if (requested !== limits.codec) throw new CodecMismatchError(requested, limits.codec);
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
  for (let i = 0; i < prompt.length; i++)
    checkTokenId(`prompt_token_ids[${i}]`, prompt[i] as number, limits.vocabSize);
  // NOTE: a caller may list every full prompt block (a prefill's answer does); more than that
  // cannot belong to this prompt.
  const fullBlocks = Math.floor(prompt.length / limits.blockTokens);
  if (request.blockHashes.length > fullBlocks)
    throw new InvalidArgumentError(
      `block_hashes lists ${request.blockHashes.length} blocks; the prompt has ${fullBlocks} full ones`,
      { field: 'block_hashes', blockHashes: request.blockHashes.length, fullBlocks },
    );
  const blockHashes = request.blockHashes.map((bytes, i) =>
    field(`block_hashes[${i}]`, () => blockHashFromBytes(bytes)),
  );
  if (request.firstTokenId !== undefined)
    checkTokenId('first_token_id', request.firstTokenId, limits.vocabSize);

  const wire = request.sampling ?? NO_SAMPLING;
  const sampling = parseSampling(wire);
  const maxTokens = wire.maxTokens === 0 ? limits.maxTokensDefault : wire.maxTokens;
  if (!Number.isInteger(maxTokens) || maxTokens < 1)
    throw new InvalidArgumentError(`sampling.max_tokens must be a positive integer, got ${maxTokens}`, {
      field: 'sampling.max_tokens',
      value: maxTokens,
    });
  if (wire.stopTokenIds.length > STOP_TOKEN_IDS_MAX)
    throw new InvalidArgumentError(
      `sampling.stop_token_ids lists ${wire.stopTokenIds.length} ids, at most ${STOP_TOKEN_IDS_MAX}`,
      { field: 'sampling.stop_token_ids', count: wire.stopTokenIds.length, limit: STOP_TOKEN_IDS_MAX },
    );
  wire.stopTokenIds.forEach((t, i) => checkTokenId(`sampling.stop_token_ids[${i}]`, t, limits.vocabSize));
  const stop = field('sampling.stop', () => checkStopStrings(wire.stop));
  return {
    requestId,
    namespace,
    promptTokens: prompt,
    blockHashes,
    firstTokenId: request.firstTokenId,
    sampling,
    maxTokens,
    // NOTE: proto3 cannot tell "none" from "unset"; an empty list keeps the model's EOS tokens.
    stopTokenIds: wire.stopTokenIds.length === 0 ? undefined : wire.stopTokenIds,
    stop,
    logprobs: wire.logprobs,
  };
}
