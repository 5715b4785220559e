// Validation of a Worker.Decode request against what this worker serves: the shared head (request
// id, model, codec, namespace, prompt length, sampling ranges) is @kvmesh/worker's; here the token
// ids are checked against the vocabulary, block hashes must be well-formed bytes, the first token
// inside the vocabulary, and stop strings and stop token ids bounded. Every refusal names the proto
// field at fault; nothing invalid reaches the engine or the store.
import { InvalidArgumentError } from '@kvmesh/errors';
import { checkStopStrings, TOP_LOGPROBS_MAX, type SamplingOptions } from '@kvmesh/engine';
import {
  SamplingParams,
  blockHashFromBytes,
  type BlockHash,
  type DecodeRequest,
  type Namespace,
  type RequestId,
} from '@kvmesh/protocol';
import { field, parseSampling, parseWorkerRequestCommon, type WorkerLimits } from '@kvmesh/worker';

/** Most stop token ids one request may list. */
export const STOP_TOKEN_IDS_MAX = 64;

export interface DecodeLimits extends WorkerLimits {
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
  /** Most likely tokens to list at each position (0: none). */
  readonly topLogprobs: number;
}

function checkTokenId(name: string, token: number, vocabSize: number): void {
  if (!Number.isInteger(token) || token < 0 || token >= vocabSize)
    throw new InvalidArgumentError(`${name} is ${token}, outside the vocabulary [0, ${vocabSize})`, {
      field: name.replace(/\[\d+\]$/, ''),
      token,
      vocabSize,
    });
}

const NO_SAMPLING: NonNullable<DecodeRequest['sampling']> = SamplingParams.fromPartial({ topP: 1 });

export function parseDecodeRequest(request: DecodeRequest, limits: DecodeLimits): DecodeInput {
  const { requestId, namespace, promptTokens: prompt } = parseWorkerRequestCommon(request, limits, 'decodes');
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
  const sampling = parseSampling(wire, limits.vocabSize);
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
  if (wire.topLogprobs > TOP_LOGPROBS_MAX)
    throw new InvalidArgumentError(
      `sampling.top_logprobs must be at most ${TOP_LOGPROBS_MAX}, got ${wire.topLogprobs}`,
      { field: 'sampling.top_logprobs', value: wire.topLogprobs },
    );
  return {
    requestId,
    namespace,
    promptTokens: prompt,
    blockHashes,
    firstTokenId: request.firstTokenId,
    sampling,
    maxTokens,
    // NOTE: proto3 cannot tell "none" from "unset"; an empty list keeps the model's EOS tokens.
    // An empty list with ignore_eos is "no stop token at all" (only max_tokens and stop strings).
    stopTokenIds: wire.stopTokenIds.length > 0 ? wire.stopTokenIds : wire.ignoreEos ? [] : undefined,
    stop,
    logprobs: wire.logprobs,
    topLogprobs: wire.topLogprobs,
  };
}
