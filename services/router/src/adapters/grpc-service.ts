// The public gRPC front door, kvmesh.v1.Router: Generate (server stream) and ListModels over the same
// GenerationBackend as the OpenAI HTTP server, with the same chat template, API key and Admission.
// Every field is checked before any work starts, and each refusal has one precise status:
// INVALID_ARGUMENT (bad input), NOT_FOUND (another model), RESOURCE_EXHAUSTED (over the context or
// the requests-in-flight bound), FAILED_PRECONDITION (a codec the workers do not compute in),
// UNAUTHENTICATED (missing or wrong `authorization: Bearer` key); backend errors map by kind
// (UNAVAILABLE when no worker is live). A client that cancels, or whose deadline passes, aborts the
// backend generation, which cancels the worker calls and frees the sequence.
import { randomBytes, timingSafeEqual } from 'node:crypto';

import { Metadata, status as GrpcStatus, type ServerWritableStream } from '@grpc/grpc-js';
import { TOP_LOGPROBS_MAX, parseRequestedAdjustments } from '@kvmesh/engine';
import { InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import {
  Codec,
  FinishReason,
  RouterService,
  parseNamespace,
  parseRequestId,
  type GenerateRequest,
  type GenerateResponse,
  type ListModelsRequest,
  type ListModelsResponse,
  type RouterServer,
} from '@kvmesh/protocol';
import {
  ERROR_CODE_METADATA_KEY,
  createGrpcServer,
  loggingWrapOptions,
  toGrpcStatus,
  wrapServerStream,
  wrapUnary,
  type Counter,
  type GrpcServer,
  type Logger,
  type MetricsRegistry,
  type WrapOptions,
} from '@kvmesh/runtime';

import {
  CHAT_MESSAGES_MAX,
  STOP_STRINGS_MAX,
  STOP_TOKEN_IDS_MAX,
  chatPromptTokens,
  chatRoleOf,
  requestsCounter,
  type Admission,
  type GenerationBackend,
  type GenerationChunk,
  type GenerationInput,
  type SamplingInput,
} from '../http.ts';

/** The service name the standard health service reports on (besides the whole server, ''). */
export const ROUTER_SERVICE_NAME = 'kvmesh.v1.Router';
const TEMPERATURE_MAX = 2;
const TOP_K_MAX = 1 << 20;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export interface RouterGrpcOptions {
  readonly maxTokensDefault: number;
  readonly maxTokensMax: number;
  /** Empty: no authentication. Otherwise calls need metadata `authorization: Bearer <apiKey>`. */
  readonly apiKey: string;
  /** Shared with the HTTP server, so both front doors together stay under one bound. */
  readonly admission: Admission;
  /** The codec the workers compute KV in; a request naming another is refused. */
  readonly codec: Codec;
  /** Requests are counted in `kvmesh_router_requests_total` when given. */
  readonly metrics?: MetricsRegistry;
  readonly wrap?: WrapOptions;
}

/** Another model than the one served was named. */
export class ModelNotFoundError extends KvmeshError {
  constructor(model: string, served: string) {
    super(
      'MODEL_NOT_FOUND',
      'not-found',
      `The model '${model}' does not exist; this server serves '${served}'`,
      {
        field: 'model',
        model,
        served,
      },
    );
  }
}

/** Prompt plus max_tokens do not fit the model's context. */
export class ContextLengthExceededError extends KvmeshError {
  constructor(promptTokens: number, maxTokens: number, maxContextTokens: number) {
    super(
      'CONTEXT_LENGTH_EXCEEDED',
      'resource-exhausted',
      `This model's maximum context length is ${maxContextTokens} tokens; the prompt has ${promptTokens} ` +
        `and max_tokens asks ${maxTokens} more`,
      { promptTokens, maxTokens, maxContextTokens },
    );
  }
}

/** The request names a codec the workers do not compute KV in. */
export class CodecNotServedError extends KvmeshError {
  constructor(requested: string, served: string) {
    super(
      'CODEC_MISMATCH',
      'failed-precondition',
      `codec: the workers compute KV in ${served}, the request asks for ${requested}`,
      { field: 'codec', requested, served },
    );
  }
}

/**
 * UNAUTHENTICATED has no ErrorKind, so it travels as a status-shaped error (toGrpcStatus passes those
 * through, with the kvmesh code in metadata).
 */
class UnauthenticatedStatus extends Error {
  readonly code = GrpcStatus.UNAUTHENTICATED;
  readonly details: string;
  readonly metadata = new Metadata();
  constructor(message: string) {
    super(message);
    this.details = message;
    this.metadata.set(ERROR_CODE_METADATA_KEY, 'UNAUTHENTICATED');
  }
}

const invalid = (
  field: string,
  message: string,
  details: Record<string, unknown> = {},
): InvalidArgumentError => new InvalidArgumentError(`${field}: ${message}`, { field, ...details });

const codecName = (codec: Codec): string =>
  (Codec[codec] ?? String(codec)).replace(/^CODEC_/, '').toLowerCase();

/** Validates a GenerateRequest in wire order and turns it into the backend's input; throws on the first fault. */
export function parseGenerateRequest(
  request: GenerateRequest,
  backend: GenerationBackend,
  options: Pick<RouterGrpcOptions, 'maxTokensDefault' | 'maxTokensMax' | 'codec'>,
): Omit<GenerationInput, 'signal'> {
  let requestId: string;
  if (request.requestId === '') requestId = `gen-${randomBytes(12).toString('hex')}`;
  else {
    try {
      requestId = parseRequestId(request.requestId);
    } catch (err) {
      throw invalid('request_id', (err as Error).message);
    }
  }
  // NOTE: proto3 cannot send "no model"; an empty name means the one this router serves.
  if (request.model !== '' && request.model !== backend.modelName)
    throw new ModelNotFoundError(request.model, backend.modelName);

  const promptTokens = promptTokensOf(request, backend);

  const wire = request.sampling;
  const temperature = wire?.temperature ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > TEMPERATURE_MAX)
    throw invalid('sampling.temperature', `must be in [0, ${TEMPERATURE_MAX}], got ${temperature}`);
  // NOTE: proto3 sends an unset top_p as 0; 0 would keep nothing, so it means "all" like 1.
  const topP = wire === undefined || wire.topP === 0 ? 1 : wire.topP;
  if (!Number.isFinite(topP) || topP < 0 || topP > 1)
    throw invalid('sampling.top_p', `must be in [0, 1], got ${topP}`);
  const topK = wire?.topK ?? 0;
  if (topK > TOP_K_MAX) throw invalid('sampling.top_k', `must be at most ${TOP_K_MAX}, got ${topK}`);
  const seed = wire?.seed;
  if (seed !== undefined && (seed < 0n || seed >= 1n << 32n))
    throw invalid('sampling.seed', `must be in [0, 2^32), got ${seed}`);
  const stop = wire?.stop ?? [];
  if (stop.length > STOP_STRINGS_MAX)
    throw invalid('sampling.stop', `lists ${stop.length} strings, at most ${STOP_STRINGS_MAX}`);
  if (stop.some((s) => s.length === 0)) throw invalid('sampling.stop', 'stop strings must not be empty');
  const stopTokenIds = wire?.stopTokenIds ?? [];
  if (stopTokenIds.length > STOP_TOKEN_IDS_MAX)
    throw invalid(
      'sampling.stop_token_ids',
      `lists ${stopTokenIds.length} ids, at most ${STOP_TOKEN_IDS_MAX}`,
    );
  checkTokenIds('sampling.stop_token_ids', stopTokenIds, backend.vocabSize);

  const adjustments = parseRequestedAdjustments(wire ?? {}, backend.vocabSize);
  const topLogprobs = wire?.topLogprobs ?? 0;
  if (topLogprobs > TOP_LOGPROBS_MAX)
    throw invalid('sampling.top_logprobs', `must be at most ${TOP_LOGPROBS_MAX}, got ${topLogprobs}`);

  const room = backend.maxContextTokens - promptTokens.length;
  const askedMaxTokens = wire?.maxTokens ?? 0;
  if (askedMaxTokens > options.maxTokensMax)
    throw invalid('sampling.max_tokens', `must be at most ${options.maxTokensMax}, got ${askedMaxTokens}`);
  // NOTE: an unset max_tokens (0) is the default cut to what the context has room for.
  const maxTokens = askedMaxTokens === 0 ? Math.min(options.maxTokensDefault, room) : askedMaxTokens;
  if (maxTokens < 1 || maxTokens > room)
    throw new ContextLengthExceededError(
      promptTokens.length,
      Math.max(1, maxTokens),
      backend.maxContextTokens,
    );

  if (LONE_SURROGATE.test(request.namespace))
    throw invalid('namespace', 'contains an unpaired UTF-16 surrogate (not encodable as UTF-8)');
  let namespace: string;
  try {
    namespace = parseNamespace(request.namespace);
  } catch (err) {
    throw invalid('namespace', (err as Error).message);
  }
  if (request.codec !== Codec.CODEC_UNSPECIFIED && request.codec !== options.codec) {
    if (Codec[request.codec] === undefined || request.codec === Codec.UNRECOGNIZED)
      throw invalid('codec', `unknown codec value ${request.codec}`);
    throw new CodecNotServedError(codecName(request.codec), codecName(options.codec));
  }

  const sampling: SamplingInput = {
    temperature,
    topP,
    topK,
    seed: seed === undefined ? undefined : Number(seed),
    ...adjustments,
  };
  return {
    requestId,
    promptTokens,
    maxTokens,
    sampling,
    stop,
    namespace,
    // NOTE: alternatives come with the chosen token's logprob.
    logprobs: (wire?.logprobs ?? false) || topLogprobs > 0,
    topLogprobs,
    ...(stopTokenIds.length === 0 ? {} : { stopTokenIds }),
    ...(wire?.ignoreEos === true ? { ignoreEos: true } : {}),
  };
}

function checkTokenIds(field: string, ids: readonly number[], vocabSize: number | undefined): void {
  if (vocabSize === undefined) return;
  const bad = ids.findIndex((t) => t >= vocabSize);
  if (bad >= 0)
    throw invalid(field, `[${bad}] is ${ids[bad]}, outside the vocabulary [0, ${vocabSize})`, {
      index: bad,
      vocabSize,
    });
}

function promptTokensOf(request: GenerateRequest, backend: GenerationBackend): number[] {
  const input = request.input;
  switch (input?.$case) {
    case 'prompt':
      if (input.value === '') throw invalid('prompt', 'must not be empty');
      return backend.tokenizer.encode(input.value, { addSpecialTokens: true });
    case 'chat': {
      const messages = input.value.messages;
      if (messages.length === 0) throw invalid('chat.messages', 'must not be empty');
      if (messages.length > CHAT_MESSAGES_MAX)
        throw invalid('chat.messages', `holds ${messages.length} entries, at most ${CHAT_MESSAGES_MAX}`);
      return chatPromptTokens(
        backend.tokenizer,
        messages.map((m, i) => {
          const role = chatRoleOf(m.role);
          if (role === undefined)
            throw invalid(
              `chat.messages[${i}].role`,
              `must be system, developer, user or assistant, got '${m.role}'`,
            );
          return { role, content: m.content };
        }),
      );
    }
    case 'promptTokenIds': {
      const ids = input.value.ids;
      if (ids.length === 0) throw invalid('prompt_token_ids', 'must not be empty');
      checkTokenIds('prompt_token_ids', ids, backend.vocabSize);
      return [...ids];
    }
    default:
      throw invalid('input', 'one of prompt, chat or prompt_token_ids is required');
  }
}

const FINISH_REASONS = {
  stop: FinishReason.FINISH_REASON_STOP,
  length: FinishReason.FINISH_REASON_LENGTH,
} as const;

function responseOf(chunk: GenerationChunk): GenerateResponse {
  return {
    text: chunk.text,
    tokenIds: [...chunk.tokenIds],
    logprobs: chunk.logprobs === undefined ? [] : [...chunk.logprobs],
    topLogprobs: (chunk.topLogprobs ?? []).map((t) => ({
      tokenIds: [...t.tokenIds],
      logprobs: [...t.logprobs],
    })),
    finishReason:
      chunk.finishReason === null
        ? FinishReason.FINISH_REASON_UNSPECIFIED
        : FINISH_REASONS[chunk.finishReason],
    usage: chunk.usage === undefined ? undefined : { ...chunk.usage },
  };
}

/** The Router service implementation over `backend`, for `server.addService(RouterService, ...)`. */
export function routerGrpcService(backend: GenerationBackend, options: RouterGrpcOptions): RouterServer {
  const apiKey = options.apiKey === '' ? undefined : Buffer.from(`Bearer ${options.apiKey}`);
  const requests: Counter | undefined =
    options.metrics === undefined ? undefined : requestsCounter(options.metrics);
  const count = (path: string, code: GrpcStatus): void =>
    requests?.inc({ endpoint: path, status: GrpcStatus[code] ?? String(code) });

  const authorize = (metadata: Metadata): void => {
    if (apiKey === undefined) return;
    const value = metadata.get('authorization')[0];
    const given = Buffer.from(typeof value === 'string' ? value : '');
    if (given.length !== apiKey.length || !timingSafeEqual(given, apiKey))
      throw new UnauthenticatedStatus(
        value === undefined
          ? 'missing API key: send metadata "authorization: Bearer <key>"'
          : 'incorrect API key in metadata "authorization"',
      );
  };

  async function* generate(
    request: GenerateRequest,
    call: ServerWritableStream<GenerateRequest, GenerateResponse>,
  ): AsyncGenerator<GenerateResponse> {
    const path = RouterService.generate.path;
    let code: GrpcStatus = GrpcStatus.OK;
    let admitted = false;
    const abort = new AbortController();
    // NOTE: a client cancel or a passed deadline must stop the backend even while it waits for the
    // next token; the wrapper alone would only notice at the next write.
    const onCancelled = (): void => abort.abort();
    call.on('cancelled', onCancelled);
    try {
      authorize(call.metadata);
      const input = parseGenerateRequest(request, backend, options);
      if (!options.admission.tryAcquire())
        throw new LimitExceededError(
          `${options.admission.inFlight} requests are running, limit is ${options.admission.limit}; retry later`,
          { requestsInFlightMax: options.admission.limit },
        );
      admitted = true;
      if (call.cancelled) return;
      for await (const chunk of backend.generate({ ...input, signal: abort.signal })) {
        if (call.cancelled) break;
        yield responseOf(chunk);
      }
    } catch (err) {
      code = toGrpcStatus(err).code;
      throw err;
    } finally {
      call.removeListener('cancelled', onCancelled);
      if (admitted) options.admission.release();
      count(path, call.cancelled ? GrpcStatus.CANCELLED : code);
    }
  }

  return {
    generate: wrapServerStream(generate, options.wrap),
    listModels: wrapUnary<ListModelsRequest, ListModelsResponse>((_request, call) => {
      try {
        authorize(call.metadata);
      } catch (err) {
        count(RouterService.listModels.path, GrpcStatus.UNAUTHENTICATED);
        throw err;
      }
      count(RouterService.listModels.path, GrpcStatus.OK);
      return {
        models: [
          {
            id: backend.modelName,
            contextTokens: backend.maxContextTokens,
            blockTokens: backend.blockTokens,
            modelFingerprint: Buffer.from(backend.modelFingerprint ?? new Uint8Array(0)),
          },
        ],
      };
    }, options.wrap),
  };
}

export interface RouterGrpcServerOptions extends Omit<RouterGrpcOptions, 'wrap'> {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /** Largest request message accepted, in bytes. */
  readonly requestBytesMax: number;
  readonly logger: Logger;
}

export interface RouterGrpcServer {
  readonly port: number;
  readonly grpc: GrpcServer;
  /** Health of ROUTER_SERVICE_NAME (the whole server stays SERVING until close). */
  setServing(serving: boolean): void;
  close(graceMs: number): Promise<void>;
}

/** A gRPC server with the Router service and standard health checking, bound and SERVING. */
export async function startRouterGrpcServer(
  backend: GenerationBackend,
  options: RouterGrpcServerOptions,
): Promise<RouterGrpcServer> {
  const grpc = createGrpcServer({
    healthServices: [ROUTER_SERVICE_NAME],
    receiveMessageBytesMax: options.requestBytesMax,
  });
  grpc.server.addService(
    RouterService,
    routerGrpcService(backend, { ...options, wrap: loggingWrapOptions(options.logger) }),
  );
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  const port = await grpc.bind(`${host}:${options.port}`);
  grpc.setServing(true);
  return {
    port,
    grpc,
    setServing: (serving) => grpc.setServing(serving, ROUTER_SERVICE_NAME),
    async close(graceMs) {
      await grpc.shutdown(graceMs);
    },
  };
}
