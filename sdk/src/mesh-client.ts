// MeshClient: the serving mesh's gRPC front door (kvmesh.v1.Router) as one object. `generate()` streams
// a completion as an async iterable of chunks; `listModels()` says what the router serves. Invariants:
// a call is retried only when repeating it cannot duplicate work the caller saw — ListModels on
// UNAVAILABLE, and Generate only when it failed with UNAVAILABLE before any chunk arrived — with
// exponential backoff and jitter, within the call's one deadline; an aborted signal, a `break` out of
// the loop or close() cancels the call on the router (which frees the sequence on its worker); every
// failure is a KvmeshError (DeadlineExceededError, RequestCancelledError, UnauthenticatedError,
// ModelNotFoundError, ... or the server's class rebuilt by fromGrpcError).
import {
  Metadata,
  credentials as channelCredentials,
  status as GrpcCode,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  type ServiceError,
} from '@grpc/grpc-js';
import { InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import {
  Codec,
  FinishReason,
  RouterClient,
  WIRE_CODEC_NAMES,
  codecToWire,
  type WireCodecName,
  type GenerateRequest,
  type GenerateResponse,
  type ListModelsResponse,
} from '@kvmesh/protocol';
import { grpcClientOptions } from '@kvmesh/runtime';

import { toKvmeshError } from './calls.ts';
import {
  ClientClosedError,
  DeadlineExceededError,
  RequestCancelledError,
  UnauthenticatedError,
} from './errors.ts';

export interface MeshClientOptions {
  /** host:port of the router's gRPC server. */
  readonly address: string;
  /** Sent as `authorization: Bearer <apiKey>` on every call. */
  readonly apiKey?: string;
  /** Deadline of a listModels() call (all attempts together) when the call names none. Default 10 s. */
  readonly timeoutMs?: number;
  /** Extra attempts of a retryable failure (see the file head). Default 3. */
  readonly retries?: number;
  /** First backoff before a retry; doubles each time, with jitter. Default 100 ms. */
  readonly retryBackoffMs?: number;
  /** Longest backoff. Default 2 s. */
  readonly retryBackoffMaxMs?: number;
  /** Calls open at once; more fail with LIMIT_EXCEEDED. Default 1024. */
  readonly callsInFlightMax?: number;
  /** Default: insecure (plaintext), as on loopback. */
  readonly credentials?: ChannelCredentials;
  /** Extra grpc-js channel options; they win over the client's. */
  readonly channelOptions?: ChannelOptions;
}

export const MESH_CLIENT_DEFAULTS = {
  timeoutMs: 10_000,
  retries: 3,
  retryBackoffMs: 100,
  retryBackoffMaxMs: 2_000,
  callsInFlightMax: 1024,
} as const;

export type MeshChatRole = 'system' | 'developer' | 'user' | 'assistant';
export type MeshCodecName = WireCodecName;

export interface MeshChatMessage {
  readonly role: MeshChatRole;
  readonly content: string;
}

/** One generation. Give exactly one of prompt, messages (the model's chat template) or promptTokenIds. */
export interface MeshGenerateRequest {
  /** Default: the model the router serves. */
  readonly model?: string;
  readonly prompt?: string;
  readonly messages?: readonly MeshChatMessage[];
  readonly promptTokenIds?: readonly number[];
  /** Default: the router's default, cut to what the context has room for. */
  readonly maxTokens?: number;
  /** 0 (the default) is greedy. */
  readonly temperature?: number;
  readonly topP?: number;
  readonly topK?: number;
  readonly seed?: number;
  readonly stop?: readonly string[];
  /** Replace the model's end-of-sequence tokens. */
  readonly stopTokenIds?: readonly number[];
  /** Do not stop at the model's end-of-sequence tokens (with stopTokenIds empty: only maxTokens and stop strings end it). */
  readonly ignoreEos?: boolean;
  /** Report each token's log-probability. */
  readonly logprobs?: boolean;
  /** Also list the most likely tokens at each position with their logprobs (0-20; implies logprobs). */
  readonly topLogprobs?: number;
  /** OpenAI's presence penalty on generated tokens, in [-2, 2]; default 0 (off). */
  readonly presencePenalty?: number;
  /** OpenAI's frequency penalty on generated tokens, in [-2, 2]; default 0 (off). */
  readonly frequencyPenalty?: number;
  /** Repetition penalty on prompt and generated tokens, in [0.01, 10]; default 1 (off). */
  readonly repetitionPenalty?: number;
  /** Token id → bias in [-100, 100] added to its logit before sampling (OpenAI's logit_bias). */
  readonly logitBias?: Readonly<Record<number, number>>;
  /** Tenant namespace; default '' (shared). */
  readonly namespace?: string;
  /** Must be the codec the deployment computes KV in; default: that one. */
  readonly codec?: MeshCodecName;
  /** [A-Za-z0-9._:-]{1,128}; default: the router makes one. */
  readonly requestId?: string;
}

export interface MeshUsage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** Prompt tokens whose KV came from a cache instead of being computed. */
  readonly cachedTokens: number;
}

export type MeshFinishReason = 'stop' | 'length' | 'cancelled' | 'error';

export interface MeshGenerateChunk {
  /** Text delta. */
  readonly text: string;
  readonly tokenIds: readonly number[];
  /** One per token id, when the request asked for logprobs. */
  readonly logprobs?: readonly number[];
  /** One per token id, when the request asked for topLogprobs: the most likely tokens, most likely first. */
  readonly topLogprobs?: readonly {
    readonly tokenIds: readonly number[];
    readonly logprobs: readonly number[];
  }[];
  /** On the last chunk. */
  readonly finishReason?: MeshFinishReason;
  /** On the last chunk. */
  readonly usage?: MeshUsage;
}

export interface MeshCallOptions {
  /** Aborting cancels the call; the pending or next read throws RequestCancelledError. */
  readonly signal?: AbortSignal;
  /** Deadline of the whole call, all attempts together. Generate: none by default. */
  readonly deadlineMs?: number;
}

export interface MeshModel {
  readonly id: string;
  readonly contextTokens: number;
  readonly blockTokens: number;
  /** 32 hex digits (block identity spec v1); '' when the router does not report it. */
  readonly modelFingerprint: string;
}

export interface MeshClientCounters {
  /** Attempts that failed and were tried again. */
  readonly retries: number;
  readonly callsInFlight: number;
}

const FINISH_REASONS: ReadonlyMap<FinishReason, MeshFinishReason> = new Map([
  [FinishReason.FINISH_REASON_STOP, 'stop'],
  [FinishReason.FINISH_REASON_LENGTH, 'length'],
  [FinishReason.FINISH_REASON_CANCELLED, 'cancelled'],
  [FinishReason.FINISH_REASON_ERROR, 'error'],
]);

const UINT32_MAX = 2 ** 32 - 1;

function integer(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min)
    throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(v)}`, { [name]: v });
  return v;
}

/** uint32 fields are checked here: protobuf would silently wrap a negative or fractional number. */
function uint32(name: string, value: number | undefined): number {
  if (value === undefined) return 0;
  if (!Number.isInteger(value) || value < 0 || value > UINT32_MAX)
    throw new InvalidArgumentError(`${name} must be an integer in [0, 2^32), got ${String(value)}`, {
      field: name,
      value,
    });
  return value;
}

function uint32s(name: string, values: readonly number[] | undefined): number[] {
  if (values === undefined) return [];
  if (!Array.isArray(values)) throw new InvalidArgumentError(`${name} must be an array`, { field: name });
  return values.map((v, i) => uint32(`${name}[${i}]`, v));
}

function finite(name: string, value: number | undefined): number {
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !Number.isFinite(value))
    throw new InvalidArgumentError(`${name} must be a finite number, got ${String(value)}`, { field: name });
  return value;
}

/** A logit bias as the wire carries it: uint32 token ids to finite numbers (their range is the router's to check). */
function logitBiasOf(bias: Readonly<Record<number, number>> | undefined): Record<number, number> {
  const out: Record<number, number> = {};
  for (const [key, value] of Object.entries(bias ?? {}))
    out[uint32('logitBias token id', /^\d+$/.test(key) ? Number(key) : Number.NaN)] = finite(
      `logitBias[${key}]`,
      value,
    );
  return out;
}

/** The wire request for `request`; throws InvalidArgumentError for what the wire cannot carry. */
export function toGenerateRequest(request: MeshGenerateRequest): GenerateRequest {
  const given = [request.prompt, request.messages, request.promptTokenIds].filter((v) => v !== undefined);
  if (given.length !== 1)
    throw new InvalidArgumentError('give exactly one of prompt, messages or promptTokenIds', {
      given: given.length,
    });
  let input: GenerateRequest['input'];
  if (request.prompt !== undefined) {
    if (typeof request.prompt !== 'string')
      throw new InvalidArgumentError('prompt must be a string', { field: 'prompt' });
    input = { $case: 'prompt', value: request.prompt };
  } else if (request.messages !== undefined) {
    if (!Array.isArray(request.messages))
      throw new InvalidArgumentError('messages must be an array', { field: 'messages' });
    input = {
      $case: 'chat',
      value: {
        messages: request.messages.map((m) => ({ role: String(m.role), content: String(m.content) })),
      },
    };
  } else {
    input = { $case: 'promptTokenIds', value: { ids: uint32s('promptTokenIds', request.promptTokenIds) } };
  }
  let codec = Codec.CODEC_UNSPECIFIED;
  if (request.codec !== undefined) {
    const wire = WIRE_CODEC_NAMES.includes(request.codec) ? codecToWire(request.codec) : undefined;
    if (wire === undefined)
      throw new InvalidArgumentError(`codec must be one of ${WIRE_CODEC_NAMES.join(', ')}`, {
        field: 'codec',
        codec: request.codec,
      });
    codec = wire;
  }
  return {
    requestId: request.requestId ?? '',
    model: request.model ?? '',
    input,
    sampling: {
      temperature: finite('temperature', request.temperature),
      topP: finite('topP', request.topP),
      topK: uint32('topK', request.topK),
      seed: request.seed === undefined ? undefined : BigInt(uint32('seed', request.seed)),
      maxTokens: uint32('maxTokens', request.maxTokens),
      stop: [...(request.stop ?? [])],
      stopTokenIds: uint32s('stopTokenIds', request.stopTokenIds),
      ignoreEos: request.ignoreEos ?? false,
      logprobs: request.logprobs ?? false,
      presencePenalty: finite('presencePenalty', request.presencePenalty),
      frequencyPenalty: finite('frequencyPenalty', request.frequencyPenalty),
      // NOTE: on the wire 0 means off, like 1.
      repetitionPenalty: finite('repetitionPenalty', request.repetitionPenalty),
      topLogprobs: uint32('topLogprobs', request.topLogprobs),
      logitBias: logitBiasOf(request.logitBias),
    },
    namespace: request.namespace ?? '',
    codec,
  };
}

function chunkOf(message: GenerateResponse): MeshGenerateChunk {
  const finishReason = FINISH_REASONS.get(message.finishReason);
  const usage = message.usage;
  return {
    text: message.text,
    tokenIds: message.tokenIds,
    ...(message.logprobs.length > 0 ? { logprobs: message.logprobs } : {}),
    ...(message.topLogprobs.length > 0 ? { topLogprobs: message.topLogprobs } : {}),
    ...(finishReason === undefined ? {} : { finishReason }),
    ...(usage === undefined
      ? {}
      : {
          usage: {
            promptTokens: usage.promptTokens,
            completionTokens: usage.completionTokens,
            cachedTokens: usage.cachedTokens,
          },
        }),
  };
}

const grpcCodeOf = (err: unknown): number | undefined => {
  const code = (err as Partial<ServiceError> | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
};

type Cancellable = Pick<ClientUnaryCall, 'cancel'>;

export class MeshClient {
  private readonly client: RouterClient;
  private readonly metadata: Metadata;
  private readonly options: Required<
    Pick<
      MeshClientOptions,
      'timeoutMs' | 'retries' | 'retryBackoffMs' | 'retryBackoffMaxMs' | 'callsInFlightMax'
    >
  >;
  private readonly calls = new Set<Cancellable>();
  private closed = false;
  private retried = 0;

  private constructor(options: MeshClientOptions) {
    if (typeof options.address !== 'string' || options.address === '')
      throw new InvalidArgumentError('address (host:port of the router gRPC server) is required', {
        field: 'address',
      });
    this.options = {
      timeoutMs: integer('timeoutMs', options.timeoutMs, MESH_CLIENT_DEFAULTS.timeoutMs, 1),
      retries: integer('retries', options.retries, MESH_CLIENT_DEFAULTS.retries, 0),
      retryBackoffMs: integer(
        'retryBackoffMs',
        options.retryBackoffMs,
        MESH_CLIENT_DEFAULTS.retryBackoffMs,
        0,
      ),
      retryBackoffMaxMs: integer(
        'retryBackoffMaxMs',
        options.retryBackoffMaxMs,
        MESH_CLIENT_DEFAULTS.retryBackoffMaxMs,
        0,
      ),
      callsInFlightMax: integer(
        'callsInFlightMax',
        options.callsInFlightMax,
        MESH_CLIENT_DEFAULTS.callsInFlightMax,
        1,
      ),
    };
    this.metadata = new Metadata();
    if (options.apiKey !== undefined && options.apiKey !== '')
      this.metadata.set('authorization', `Bearer ${options.apiKey}`);
    const backoffMs = Math.max(1, this.options.retryBackoffMs);
    this.client = new RouterClient(
      options.address,
      options.credentials ?? channelCredentials.createInsecure(),
      {
        ...grpcClientOptions(),
        // NOTE: the channel's own reconnect backoff (1 s at first by default) would otherwise outlast
        // our retries while a router is coming up.
        'grpc.initial_reconnect_backoff_ms': backoffMs,
        'grpc.max_reconnect_backoff_ms': Math.max(backoffMs, this.options.retryBackoffMaxMs),
        ...options.channelOptions,
      },
    );
  }

  /**
   * A client for the router at `options.address`. The channel connects lazily, so this succeeds while
   * the router is still starting; the first calls retry until it answers (see `retries`).
   */
  static async connect(options: MeshClientOptions): Promise<MeshClient> {
    return new MeshClient(options);
  }

  counters(): MeshClientCounters {
    return { retries: this.retried, callsInFlight: this.calls.size };
  }

  /**
   * Streams one generation. Request errors that need no server (shape, ranges the wire cannot carry)
   * throw here; everything else is thrown by the iteration.
   */
  generate(request: MeshGenerateRequest, options: MeshCallOptions = {}): AsyncIterable<MeshGenerateChunk> {
    this.checkOpen();
    const wire = toGenerateRequest(request);
    const deadlineMs =
      options.deadlineMs === undefined ? undefined : integer('deadlineMs', options.deadlineMs, 0, 1);
    return this.stream(wire, options.signal, deadlineMs);
  }

  /** The models the router serves (one today). Retried on UNAVAILABLE. */
  async listModels(options: MeshCallOptions = {}): Promise<MeshModel[]> {
    this.checkOpen();
    const deadlineMs = integer('deadlineMs', options.deadlineMs, this.options.timeoutMs, 1);
    const deadline = Date.now() + deadlineMs;
    const signal = options.signal;
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      if (signal?.aborted) throw new RequestCancelledError('ListModels', signal.reason);
      try {
        const response = await this.unary<ListModelsResponse>(
          (metadata, callOptions, callback) => this.client.listModels({}, metadata, callOptions, callback),
          deadline,
          signal,
        );
        return response.models.map((m) => ({
          id: m.id,
          contextTokens: m.contextTokens,
          blockTokens: m.blockTokens,
          modelFingerprint: Buffer.from(m.modelFingerprint).toString('hex'),
        }));
      } catch (err) {
        const error = this.errorOf(err, 'ListModels', deadlineMs, signal);
        if (grpcCodeOf(err) !== GrpcCode.UNAVAILABLE || attempt >= this.options.retries) throw error;
        await this.backoff(attempt, 'ListModels', deadline, deadlineMs, signal);
      }
    }
  }

  /** Cancels every call in flight and closes the channel; idempotent. Later calls throw CLIENT_CLOSED. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const call of this.calls) call.cancel();
    this.calls.clear();
    this.client.close();
    await Promise.resolve();
  }

  // -------------------------------------------------------------------------------------------

  private async *stream(
    wire: GenerateRequest,
    signal: AbortSignal | undefined,
    deadlineMs: number | undefined,
  ): AsyncGenerator<MeshGenerateChunk> {
    const deadline = deadlineMs === undefined ? undefined : Date.now() + deadlineMs;
    let received = false;
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      if (signal?.aborted) throw new RequestCancelledError('Generate', signal.reason);
      const call: ClientReadableStream<GenerateResponse> = this.client.generate(
        wire,
        this.metadata,
        deadline === undefined ? {} : { deadline: new Date(deadline) },
      );
      this.track(call);
      // NOTE: cancelling the call is what makes the router abort the generation on its worker.
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const message of call as AsyncIterable<GenerateResponse>) {
          received = true;
          yield chunkOf(message);
        }
        return;
      } catch (err) {
        const error = this.errorOf(err, 'Generate', deadlineMs, signal);
        // NOTE: once a chunk arrived the caller has seen output; repeating the call would not resume it.
        if (received || grpcCodeOf(err) !== GrpcCode.UNAVAILABLE || attempt >= this.options.retries)
          throw error;
        await this.backoff(attempt, 'Generate', deadline, deadlineMs, signal);
      } finally {
        signal?.removeEventListener('abort', onAbort);
        // A consumer that stops early (break, throw) must not leave the stream running.
        call.cancel();
        this.calls.delete(call);
      }
    }
  }

  private unary<Res>(
    invoke: (
      metadata: Metadata,
      options: { deadline: Date },
      callback: (err: ServiceError | null, response?: Res) => void,
    ) => ClientUnaryCall,
    deadline: number,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      // NOTE: the callback and the abort listener run only after invoke() returned `call`.
      const onAbort = (): void => call.cancel();
      const done = (): void => {
        signal?.removeEventListener('abort', onAbort);
        this.calls.delete(call);
      };
      const call: ClientUnaryCall = invoke(
        this.metadata,
        { deadline: new Date(deadline) },
        (err, response) => {
          done();
          if (err !== null && err !== undefined) reject(err);
          else if (response === undefined)
            reject(new KvmeshError('INTERNAL', 'internal', 'gRPC call returned no response'));
          else resolve(response);
        },
      );
      try {
        this.track(call);
      } catch (err) {
        call.cancel();
        reject(err);
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private track(call: Cancellable): void {
    if (this.calls.size >= this.options.callsInFlightMax) {
      call.cancel();
      throw new LimitExceededError(
        `${this.calls.size} calls are open, limit is ${this.options.callsInFlightMax} (callsInFlightMax)`,
        { callsInFlightMax: this.options.callsInFlightMax },
      );
    }
    this.calls.add(call);
  }

  /** Waits the backoff of `attempt` (jittered), unless the deadline or the signal comes first. */
  private async backoff(
    attempt: number,
    what: string,
    deadline: number | undefined,
    deadlineMs: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    this.retried++;
    const ceiling = Math.min(this.options.retryBackoffMaxMs, this.options.retryBackoffMs * 2 ** attempt);
    // Half fixed, half random: retries of many clients spread out without ever waiting 0.
    let waitMs = ceiling / 2 + (Math.random() * ceiling) / 2;
    if (deadline !== undefined) {
      const leftMs = deadline - Date.now();
      if (leftMs <= waitMs) throw new DeadlineExceededError(what, deadlineMs, { attempts: attempt + 1 });
      waitMs = Math.min(waitMs, leftMs);
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(new RequestCancelledError(what, signal?.reason));
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, waitMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private errorOf(
    err: unknown,
    what: string,
    deadlineMs: number | undefined,
    signal: AbortSignal | undefined,
  ): KvmeshError {
    if (signal?.aborted) return new RequestCancelledError(what, signal.reason);
    if (err instanceof KvmeshError) return err;
    const code = grpcCodeOf(err);
    if (this.closed && code === GrpcCode.CANCELLED) return new ClientClosedError('mesh client');
    if (code === GrpcCode.DEADLINE_EXCEEDED)
      return new DeadlineExceededError(what, deadlineMs, { grpcCode: code });
    const error = toKvmeshError(err);
    if (code === GrpcCode.UNAUTHENTICATED && !(error instanceof UnauthenticatedError))
      return new UnauthenticatedError(error.message, { ...error.details });
    return error;
  }

  private checkOpen(): void {
    if (this.closed) throw new ClientClosedError('mesh client');
  }
}
