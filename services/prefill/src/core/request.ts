// Validation of a Worker.Prefill request against what this worker serves: the shared head (request
// id, model, codec, namespace, prompt length, sampling) is @kvmesh/worker's; here the prompt's token
// ids are checked against the vocabulary. Every refusal names the proto field at fault; nothing
// invalid ever reaches the engine or the store.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { SamplingOptions } from '@kvmesh/engine';
import type { Namespace, PrefillRequest, RequestId } from '@kvmesh/protocol';
import { parseSampling, parseWorkerRequestCommon, type WorkerLimits } from '@kvmesh/worker';

export type PrefillLimits = WorkerLimits;

export interface PrefillInput {
  /** undefined when the caller sent none. */
  readonly requestId: RequestId | undefined;
  readonly namespace: Namespace;
  readonly promptTokens: readonly number[];
  readonly sampling: SamplingOptions;
}

export function parsePrefillRequest(request: PrefillRequest, limits: PrefillLimits): PrefillInput {
  const {
    requestId,
    namespace,
    promptTokens: prompt,
  } = parseWorkerRequestCommon(request, limits, 'computes');
  for (let i = 0; i < prompt.length; i++) {
    const token = prompt[i] as number;
    if (!Number.isInteger(token) || token < 0 || token >= limits.vocabSize)
      throw new InvalidArgumentError(
        `prompt_token_ids[${i}] is ${token}, outside the vocabulary [0, ${limits.vocabSize})`,
        { field: 'prompt_token_ids', index: i, token, vocabSize: limits.vocabSize },
      );
  }
  return {
    requestId,
    namespace,
    promptTokens: prompt,
    sampling: parseSampling(request.sampling, limits.vocabSize),
  };
}
