// The OpenAI-compatible HTTP front door on node:http: POST /v1/completions, POST /v1/chat/completions
// (SSE with `stream: true`), GET /v1/models, GET /health and GET /metrics (Prometheus). It validates
// every field before any work starts (an error is an OpenAI-style body `{error: {message, type, param,
// code}}`), bounds the body size and the requests in flight (an Admission shared with the gRPC front
// door), checks the API key when one is configured, and hands a tokenized prompt to the backend. A
// client that goes away aborts the generation, which cancels the workers. This file also defines the
// contract both front doors share: GenerationBackend, the chat template step and Admission.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import {
  LOGIT_BIAS_ENTRIES_MAX,
  SAMPLING_ADJUSTMENT_RANGES,
  TOP_LOGPROBS_MAX,
  adjustmentRangeProblem,
  type ChatMessage,
  type ModelTokenizer,
} from '@kvmesh/engine';
import { KvmeshError, type ErrorKind } from '@kvmesh/errors';
import { METRICS_CONTENT_TYPE, type Counter, type Logger, type MetricsRegistry } from '@kvmesh/runtime';

export interface SamplingInput {
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
  readonly seed: number | undefined;
  /** OpenAI's, in [-2, 2]; absent: 0. */
  readonly presencePenalty?: number;
  readonly frequencyPenalty?: number;
  /** In [0.01, 10]; absent: 1. */
  readonly repetitionPenalty?: number;
  /** Token id → bias in [-100, 100], added to the logits before sampling; absent: none. */
  readonly logitBias?: ReadonlyMap<number, number>;
}

export interface GenerationInput {
  readonly requestId: string;
  readonly promptTokens: readonly number[];
  readonly maxTokens: number;
  readonly sampling: SamplingInput;
  readonly stop: readonly string[];
  /** Aborted when the client goes away. */
  readonly signal: AbortSignal;
  /** Tenant namespace (already validated); default ''. */
  readonly namespace?: string;
  /** Report each generated token's log-probability. Default false. */
  readonly logprobs?: boolean;
  /** How many most likely tokens to report at each position (with logprobs); default 0. */
  readonly topLogprobs?: number;
  /** Tokens that end the generation instead of the model's EOS tokens; empty or absent: EOS. */
  readonly stopTokenIds?: readonly number[];
  /** With stopTokenIds empty: no token ends the generation (only max_tokens and stop strings). */
  readonly ignoreEos?: boolean;
}

export interface GenerationUsage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly cachedTokens: number;
}

export interface GenerationChunk {
  readonly text: string;
  readonly tokenIds: readonly number[];
  readonly finishReason: 'stop' | 'length' | null;
  /** One per token id, when the input asked for logprobs. */
  readonly logprobs?: readonly number[];
  /** One per token id, when the input asked for top logprobs: the most likely tokens, most likely first. */
  readonly topLogprobs?: readonly {
    readonly tokenIds: readonly number[];
    readonly logprobs: readonly number[];
  }[];
  /** On the last chunk. */
  readonly usage?: GenerationUsage;
}

/** What the HTTP layer needs from the router: the model's identity and a token stream per request. */
export interface GenerationBackend {
  readonly modelName: string;
  /** Prompt + max_tokens must fit. */
  readonly maxContextTokens: number;
  readonly blockTokens: number;
  /** 16 bytes (block identity spec v1); absent: not reported. */
  readonly modelFingerprint?: Uint8Array;
  /** Token ids must be below it; absent: the workers check. */
  readonly vocabSize?: number;
  /** The model's end-of-sequence tokens, which HTTP stop_token_ids add to (as vLLM's do). */
  readonly eosTokenIds?: readonly number[];
  readonly tokenizer: Pick<ModelTokenizer, 'encode' | 'decode' | 'applyChatTemplate'>;
  generate(input: GenerationInput): AsyncIterable<GenerationChunk>;
  health(): { readonly ok: boolean; readonly reason?: string };
}

export interface HttpServerOptions {
  readonly host: string;
  readonly port: number;
  readonly requestBytesMax: number;
  readonly requestsInFlightMax: number;
  readonly maxTokensDefault: number;
  readonly maxTokensMax: number;
  /** Empty: no authentication. */
  readonly apiKey: string;
  readonly logger: Logger;
  /** Shared with other front doors; default: one of requestsInFlightMax for this server alone. */
  readonly admission?: Admission;
  /** When given: GET /metrics serves it (no API key, like /health) and requests are counted in it. */
  readonly metrics?: MetricsRegistry;
}

/** Bounds the generations running at once across every front door that shares it. */
export interface Admission {
  readonly limit: number;
  readonly inFlight: number;
  /** Takes a slot; false when all `limit` are taken. Every true must be paired with one release(). */
  tryAcquire(): boolean;
  release(): void;
}

export function createAdmission(limit: number): Admission {
  let inFlight = 0;
  return {
    limit,
    get inFlight() {
      return inFlight;
    },
    tryAcquire() {
      if (inFlight >= limit) return false;
      inFlight++;
      return true;
    },
    release() {
      inFlight = Math.max(0, inFlight - 1);
    },
  };
}

/** Requests by front-door endpoint and status (HTTP code, or gRPC status name). */
export function requestsCounter(metrics: MetricsRegistry): Counter {
  return metrics.counter({
    name: 'kvmesh_router_requests_total',
    help: 'Requests to the router by endpoint and status (HTTP status code or gRPC status name).',
    labelNames: ['endpoint', 'status'],
  });
}

export interface HttpServer {
  readonly port: number;
  /** Stops accepting, waits up to graceMs for requests in flight, then closes the rest. */
  close(graceMs: number): Promise<void>;
}

/** Stop strings per request (OpenAI allows 4). */
export const STOP_STRINGS_MAX = 4;
/** Most stop token ids one request may list (the decode worker's own bound). */
export const STOP_TOKEN_IDS_MAX = 64;
export const CHAT_MESSAGES_MAX = 1024;
/** Choices one request may ask for (`n`); each is a sequence of its own on the workers. */
export const CHOICES_MAX = 16;
/** How long an idle keep-alive connection is held open. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;
const KNOWN_PATHS = new Set(['/health', '/metrics', '/v1/models', '/v1/completions', '/v1/chat/completions']);

/** The chat role a request's role maps to ('developer' is OpenAI's newer name for 'system'). */
export function chatRoleOf(role: unknown): ChatMessage['role'] | undefined {
  if (role === 'system' || role === 'developer') return 'system';
  if (role === 'user' || role === 'assistant') return role;
  return undefined;
}

/** Prompt tokens of a chat: the model's chat template with the assistant turn opened. */
export function chatPromptTokens(
  tokenizer: GenerationBackend['tokenizer'],
  messages: readonly ChatMessage[],
): number[] {
  // NOTE: the chat template writes its own BOS, so no special tokens are added on top.
  return tokenizer.encode(tokenizer.applyChatTemplate([...messages], true), { addSpecialTokens: false });
}

/** An OpenAI-style error: HTTP status plus the body's type, param and code. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

const invalid = (message: string, param: string | null, code: string | null = null): HttpError =>
  new HttpError(400, message, 'invalid_request_error', param, code);

const STATUS_OF_KIND: Readonly<Record<ErrorKind, number>> = {
  'invalid-argument': 400,
  'not-found': 404,
  'already-exists': 409,
  'resource-exhausted': 429,
  'failed-precondition': 400,
  'data-loss': 500,
  unavailable: 503,
  internal: 500,
};

function httpErrorOf(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof KvmeshError) {
    const status = STATUS_OF_KIND[err.kind];
    const type =
      status === 400 ? 'invalid_request_error' : status === 503 ? 'service_unavailable' : 'server_error';
    return new HttpError(status, err.message, type, null, err.code.toLowerCase());
  }
  return new HttpError(500, 'internal error', 'server_error', null, 'internal_error');
}

const errorBody = (err: HttpError): unknown => ({
  error: { message: err.message, type: err.type, param: err.param, code: err.code },
});

// ---------------------------------------------------------------------------------------------
// Request parsing

type Body = Readonly<Record<string, unknown>>;

interface ParsedRequest {
  readonly stream: boolean;
  readonly includeUsage: boolean;
  readonly maxTokens: number;
  readonly sampling: SamplingInput;
  readonly stop: readonly string[];
  /** Report the chosen token's log-probability with each token. */
  readonly logprobs: boolean;
  /** Most likely tokens to list at each position (0: none). */
  readonly topLogprobs: number;
  /** Choices to generate for the prompt (OpenAI's `n`). */
  readonly n: number;
  /** vLLM's stop_token_ids: tokens that end the generation, besides the model's EOS tokens. */
  readonly stopTokenIds: readonly number[];
  /** vLLM's ignore_eos: the model's EOS tokens do not end the generation. */
  readonly ignoreEos: boolean;
}

/**
 * OpenAI parameters this server does not implement, each with the test of its default value: a
 * request that sets one to anything else is refused, since ignoring it would quietly change what
 * the client asked for.
 */
const UNSUPPORTED_PARAMS: readonly (readonly [string, (value: unknown) => boolean])[] = [
  ['best_of', (v) => v === 1],
  ['echo', (v) => v === false],
  ['suffix', (v) => v === ''],
  ['tools', (v) => Array.isArray(v) && v.length === 0],
  ['functions', (v) => Array.isArray(v) && v.length === 0],
  ['response_format', (v) => typeof v === 'object' && v !== null && (v as Body).type === 'text'],
];

function refuseUnsupported(body: Body): void {
  for (const [name, isDefault] of UNSUPPORTED_PARAMS) {
    const value = body[name];
    if (value === undefined || value === null || isDefault(value)) continue;
    throw invalid(
      `${name} ${JSON.stringify(value)} is not supported by this server; leave it out or at its default`,
      name,
      'unsupported_parameter',
    );
  }
}

/**
 * What the request asks of logprobs: the chosen tokens' (`logprobs`) and how many most likely tokens
 * to list at each position (`top`). Chat: `logprobs` true, `top_logprobs` 0-TOP_LOGPROBS_MAX. Completions:
 * `logprobs` 0-5, the alternatives per token (null or absent: none).
 */
function parseLogprobs(body: Body, chat: boolean): { logprobs: boolean; top: number } {
  if (chat) {
    const value = body.logprobs ?? false;
    if (typeof value !== 'boolean') throw invalid('logprobs must be a boolean', 'logprobs');
    const top = optionalInteger(body, 'top_logprobs', 0, TOP_LOGPROBS_MAX, 0);
    if (top > 0 && !value) throw invalid('top_logprobs needs logprobs: true', 'top_logprobs');
    return { logprobs: value, top };
  }
  if (body.logprobs === undefined || body.logprobs === null) return { logprobs: false, top: 0 };
  return { logprobs: true, top: optionalInteger(body, 'logprobs', 0, 5, 0) };
}

function optionalNumber(body: Body, name: string, min: number, max: number, fallback: number): number {
  const value = body[name];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max)
    throw invalid(`${name} must be a number in [${min}, ${max}], got ${JSON.stringify(value)}`, name);
  return value;
}

function optionalInteger(body: Body, name: string, min: number, max: number, fallback: number): number {
  const value = optionalNumber(body, name, min, max, fallback);
  if (!Number.isInteger(value))
    throw invalid(`${name} must be an integer in [${min}, ${max}], got ${value}`, name);
  return value;
}

/** vLLM's stop_token_ids: at most STOP_TOKEN_IDS_MAX token ids of the vocabulary; absent: none. */
function parseStopTokenIds(body: Body, vocabSize: number | undefined): number[] {
  const value = body.stop_token_ids;
  if (value === undefined || value === null) return [];
  if (
    !Array.isArray(value) ||
    value.length > STOP_TOKEN_IDS_MAX ||
    !value.every((t) => Number.isSafeInteger(t) && t >= 0 && (vocabSize === undefined || t < vocabSize))
  )
    throw invalid(
      `stop_token_ids must be at most ${STOP_TOKEN_IDS_MAX} token ids` +
        (vocabSize === undefined ? '' : ` below ${vocabSize}`),
      'stop_token_ids',
    );
  return value as number[];
}

function parseIgnoreEos(body: Body): boolean {
  const value = body.ignore_eos ?? false;
  if (typeof value !== 'boolean') throw invalid('ignore_eos must be a boolean', 'ignore_eos');
  return value;
}

/** A sampling adjustment's value, in its range (SAMPLING_ADJUSTMENT_RANGES), or `fallback` when absent. */
function adjustmentOf(
  body: Body,
  name: 'presence_penalty' | 'frequency_penalty' | 'repetition_penalty',
  fallback: number,
): number {
  const [min, max] = SAMPLING_ADJUSTMENT_RANGES[name];
  return optionalNumber(body, name, min, max, fallback);
}

/** OpenAI's logit_bias: token ids (as object keys) to biases in [-100, 100]; absent or {}: none. */
function parseLogitBias(body: Body, vocabSize: number | undefined): Map<number, number> | undefined {
  const value = body.logit_bias;
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value))
    throw invalid('logit_bias must be an object of token ids to numbers', 'logit_bias');
  const entries = Object.entries(value as Body);
  if (entries.length > LOGIT_BIAS_ENTRIES_MAX)
    throw invalid(
      `logit_bias lists ${entries.length} tokens, at most ${LOGIT_BIAS_ENTRIES_MAX}`,
      'logit_bias',
    );
  const bias = new Map<number, number>();
  for (const [key, v] of entries) {
    const token = Number(key);
    if (!/^\d+$/.test(key) || !Number.isSafeInteger(token) || (vocabSize !== undefined && token >= vocabSize))
      throw invalid(
        `logit_bias key '${key}' is not a token id` + (vocabSize === undefined ? '' : ` below ${vocabSize}`),
        'logit_bias',
      );
    if (typeof v !== 'number') throw invalid(`logit_bias of token ${key} must be a number`, 'logit_bias');
    const problem = adjustmentRangeProblem('logit_bias', v);
    if (problem !== null) throw invalid(`logit_bias of token ${key} ${problem}`, 'logit_bias');
    bias.set(token, v);
  }
  return bias.size === 0 ? undefined : bias;
}

function parseCommon(
  body: Body,
  options: HttpServerOptions,
  chat: boolean,
  vocabSize?: number,
): ParsedRequest {
  refuseUnsupported(body);
  const maxTokensParam = chat ? 'max_completion_tokens' : 'max_tokens';
  const stream = body.stream ?? false;
  if (typeof stream !== 'boolean') throw invalid('stream must be a boolean', 'stream');
  const streamOptions = body.stream_options;
  let includeUsage = false;
  if (streamOptions !== undefined && streamOptions !== null) {
    if (typeof streamOptions !== 'object' || Array.isArray(streamOptions))
      throw invalid('stream_options must be an object', 'stream_options');
    includeUsage = (streamOptions as Body).include_usage === true;
  }
  const n = optionalInteger(body, 'n', 1, CHOICES_MAX, 1);
  const asked = parseLogprobs(body, chat);
  const logitBias = parseLogitBias(body, vocabSize);
  const maxTokens =
    body[maxTokensParam] !== undefined && body[maxTokensParam] !== null
      ? optionalInteger(body, maxTokensParam, 1, options.maxTokensMax, options.maxTokensDefault)
      : optionalInteger(body, 'max_tokens', 1, options.maxTokensMax, options.maxTokensDefault);
  const temperature = optionalNumber(body, 'temperature', 0, 2, 1);
  const topP = optionalNumber(body, 'top_p', 0, 1, 1);
  const topK = optionalInteger(body, 'top_k', 0, 1 << 20, 0);
  const seedValue = body.seed;
  const seed =
    seedValue === undefined || seedValue === null
      ? undefined
      : optionalInteger(body, 'seed', 0, 2 ** 32 - 1, 0);
  let stop: string[] = [];
  const stopValue = body.stop;
  if (typeof stopValue === 'string') stop = [stopValue];
  else if (Array.isArray(stopValue)) {
    if (stopValue.length > STOP_STRINGS_MAX || !stopValue.every((s) => typeof s === 'string'))
      throw invalid(`stop must be a string or at most ${STOP_STRINGS_MAX} strings`, 'stop');
    stop = stopValue as string[];
  } else if (stopValue !== undefined && stopValue !== null)
    throw invalid('stop must be a string or an array of strings', 'stop');
  if (stop.some((s) => s.length === 0)) throw invalid('stop strings must not be empty', 'stop');
  return {
    stream,
    includeUsage,
    maxTokens,
    sampling: {
      temperature,
      topP,
      topK,
      seed,
      presencePenalty: adjustmentOf(body, 'presence_penalty', 0),
      frequencyPenalty: adjustmentOf(body, 'frequency_penalty', 0),
      repetitionPenalty: adjustmentOf(body, 'repetition_penalty', 1),
      ...(logitBias === undefined ? {} : { logitBias }),
    },
    stop,
    logprobs: asked.logprobs,
    topLogprobs: asked.top,
    n,
    stopTokenIds: parseStopTokenIds(body, vocabSize),
    ignoreEos: parseIgnoreEos(body),
  };
}

function parseChatMessages(value: unknown): ChatMessage[] {
  if (!Array.isArray(value) || value.length === 0)
    throw invalid('messages must be a non-empty array', 'messages');
  if (value.length > CHAT_MESSAGES_MAX)
    throw invalid(`messages holds ${value.length} entries, at most ${CHAT_MESSAGES_MAX}`, 'messages');
  return value.map((entry: unknown, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (typeof entry !== 'object' || entry === null) throw invalid(`${param} must be an object`, param);
    const { role: roleValue, content } = entry as Body;
    const role = chatRoleOf(roleValue);
    if (role === undefined)
      throw invalid(`${param}.role must be system, developer, user or assistant`, `${param}.role`);
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content)) {
      // Content parts: only text parts are understood.
      text = content
        .map((part: unknown, j) => {
          const p = part as Body | null;
          if (p === null || typeof p !== 'object' || p.type !== 'text' || typeof p.text !== 'string')
            throw invalid(`${param}.content[${j}] must be a text part`, `${param}.content`);
          return p.text;
        })
        .join('');
    } else throw invalid(`${param}.content must be a string or an array of text parts`, `${param}.content`);
    return { role, content: text };
  });
}

type Pulled<T> = { index: number } & ({ result: IteratorResult<T> } | { error: unknown });

/**
 * The chunks of several generations as they come, each with its generation's index. A generation
 * that fails ends the merge with its error; a merge that ends early returns the rest (their
 * consumers stop, and the request's abort signal is what cancels their workers).
 */
async function* mergeStreams<T>(
  streams: readonly AsyncIterable<T>[],
): AsyncGenerator<{ index: number; chunk: T }> {
  const iterators = streams.map((s) => s[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<Pulled<T>>>();
  // NOTE: a failure becomes a value, so a pull nobody waits for any more is never an unhandled rejection.
  const pull = (index: number): void => {
    pending.set(
      index,
      (iterators[index] as AsyncIterator<T>).next().then(
        (result) => ({ index, result }),
        (error: unknown) => ({ index, error }),
      ),
    );
  };
  iterators.forEach((_, index) => pull(index));
  try {
    while (pending.size > 0) {
      const pulled = await Promise.race(pending.values());
      pending.delete(pulled.index);
      if ('error' in pulled) throw pulled.error;
      if (pulled.result.done === true) continue;
      pull(pulled.index);
      yield { index: pulled.index, chunk: pulled.result.value };
    }
  } finally {
    for (const index of pending.keys()) void iterators[index]?.return?.(undefined).catch(() => undefined);
  }
}

interface TokenLogprob {
  token: string;
  logprob: number;
}

/**
 * OpenAI `logprobs` objects from generation chunks: chat's `{content: [{token, logprob, bytes,
 * top_logprobs}]}` and completions' `{tokens, token_logprobs, top_logprobs, text_offset}`, where
 * text_offset counts characters of the token texts from the start of the completion and each
 * top_logprobs entry maps the most likely tokens and the chosen one to their logprobs. `add` records
 * a chunk's tokens and says where they start, `slice(from)` renders those from there on (a stream
 * chunk's part, or from 0 the whole). A token's text is its own decode, which for a token holding
 * part of a UTF-8 character is a replacement character.
 */
class LogprobsBuilder {
  private readonly entries: (TokenLogprob & { top: TokenLogprob[]; offset: number })[] = [];
  private offset = 0;

  constructor(
    private readonly tokenizer: Pick<ModelTokenizer, 'decode'>,
    private readonly chat: boolean,
  ) {}

  private entry(id: number, logprob: number): TokenLogprob {
    // NOTE: a token's own text, spaces as they are: the tokenizer's clean-up would turn " ," into ",".
    return { token: this.tokenizer.decode([id], { cleanUpSpaces: false }), logprob };
  }

  /** Records the chunk's tokens; returns the index of its first one. */
  add(chunk: GenerationChunk): number {
    const first = this.entries.length;
    chunk.tokenIds.forEach((id, i) => {
      // NOTE: NaN (null in JSON) if a worker left a logprob out.
      const chosen = this.entry(id, chunk.logprobs?.[i] ?? Number.NaN);
      const alternatives = chunk.topLogprobs?.[i];
      const top = (alternatives?.tokenIds ?? []).map((t, j) =>
        this.entry(t, alternatives?.logprobs[j] ?? Number.NaN),
      );
      this.entries.push({ ...chosen, top, offset: this.offset });
      this.offset += chosen.token.length;
    });
    return first;
  }

  /** The OpenAI object for the tokens recorded from `from` on. */
  slice(from: number): unknown {
    const entries = this.entries.slice(from);
    const withBytes = ({ token, logprob }: TokenLogprob) => ({
      token,
      logprob,
      bytes: [...Buffer.from(token, 'utf8')],
    });
    if (this.chat)
      return {
        content: entries.map((e) => ({ ...withBytes(e), top_logprobs: e.top.map(withBytes) })),
      };
    return {
      tokens: entries.map((e) => e.token),
      token_logprobs: entries.map((e) => e.logprob),
      top_logprobs: entries.map((e) => ({
        ...Object.fromEntries(e.top.map((t) => [t.token, t.logprob])),
        [e.token]: e.logprob,
      })),
      text_offset: entries.map((e) => e.offset),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Server

export async function startHttpServer(
  backend: GenerationBackend,
  options: HttpServerOptions,
): Promise<HttpServer> {
  const { logger } = options;
  const apiKey = options.apiKey === '' ? undefined : Buffer.from(`Bearer ${options.apiKey}`);
  const created = (): number => Math.floor(Date.now() / 1000);
  const admission = options.admission ?? createAdmission(options.requestsInFlightMax);
  const requests = options.metrics === undefined ? undefined : requestsCounter(options.metrics);

  const sendJson = (res: ServerResponse, status: number, body: unknown): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  };
  const sendError = (res: ServerResponse, err: HttpError): void => {
    if (res.headersSent) {
      if (!res.writableEnded) res.end();
      return;
    }
    sendJson(res, err.status, errorBody(err));
  };

  const authorized = (req: IncomingMessage): boolean => {
    if (apiKey === undefined) return true;
    const given = Buffer.from(req.headers.authorization ?? '');
    return given.length === apiKey.length && timingSafeEqual(given, apiKey);
  };

  const readBody = (req: IncomingMessage): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      const declared = Number(req.headers['content-length'] ?? 0);
      const tooLarge = (): HttpError =>
        new HttpError(
          413,
          `request body exceeds ${options.requestBytesMax} bytes`,
          'invalid_request_error',
          null,
          'request_too_large',
        );
      if (declared > options.requestBytesMax) {
        reject(tooLarge());
        return;
      }
      const chunks: Buffer[] = [];
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > options.requestBytesMax) {
          req.removeAllListeners('data');
          reject(tooLarge());
          return;
        }
        chunks.push(chunk);
      });
      req.on('end', () => resolve(Buffer.concat(chunks)));
      req.on('error', reject);
    });

  const parseJson = (raw: Buffer): Body => {
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw invalid(`request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body))
      throw invalid('request body must be a JSON object', null, 'invalid_json');
    return body as Body;
  };

  const checkModel = (body: Body): void => {
    const model = body.model;
    if (typeof model !== 'string' || model === '') throw invalid('model is required', 'model');
    if (model !== backend.modelName)
      throw new HttpError(
        404,
        `The model '${model}' does not exist; this server serves '${backend.modelName}'`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
  };

  const tokenizePrompt = (body: Body, chat: boolean): number[] => {
    if (chat) return chatPromptTokens(backend.tokenizer, parseChatMessages(body.messages));
    const prompt = body.prompt;
    if (typeof prompt === 'string') {
      if (prompt === '') throw invalid('prompt must not be empty', 'prompt');
      return backend.tokenizer.encode(prompt, { addSpecialTokens: true });
    }
    if (Array.isArray(prompt) && prompt.length > 0 && prompt.every((t) => Number.isInteger(t) && t >= 0))
      return prompt as number[];
    throw invalid('prompt must be a non-empty string or a non-empty array of token ids', 'prompt');
  };

  const handleGeneration = async (
    req: IncomingMessage,
    res: ServerResponse,
    chat: boolean,
  ): Promise<void> => {
    const body = parseJson(await readBody(req));
    checkModel(body);
    const parsed = parseCommon(body, options, chat, backend.vocabSize);
    const promptTokens = tokenizePrompt(body, chat);
    if (promptTokens.length + parsed.maxTokens > backend.maxContextTokens)
      throw invalid(
        `This model's maximum context length is ${backend.maxContextTokens} tokens; the prompt has ` +
          `${promptTokens.length} and max_tokens asks ${parsed.maxTokens} more`,
        chat ? 'messages' : 'prompt',
        'context_length_exceeded',
      );
    // NOTE: each choice is a sequence of its own on the workers, so it takes an admission slot.
    if (parsed.n > admission.limit)
      throw invalid(
        `n ${parsed.n} is more than the ${admission.limit} sequences this server runs at once`,
        'n',
      );
    let acquired = 0;
    while (acquired < parsed.n && admission.tryAcquire()) acquired++;
    if (acquired < parsed.n) {
      for (; acquired > 0; acquired--) admission.release();
      throw new HttpError(
        429,
        `${admission.inFlight} sequences are running, limit is ${admission.limit}` +
          (parsed.n > 1 ? ` (this request asks ${parsed.n})` : '') +
          '; retry later',
        'rate_limit_error',
        null,
        'too_many_requests',
      );
    }
    const abort = new AbortController();
    // NOTE: 'close' on the response fires once it is done or the socket went away; only the latter
    // (before our end) means the client left mid-request.
    const onClose = (): void => {
      if (!res.writableFinished) abort.abort();
    };
    res.on('close', onClose);
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const object = chat ? 'chat.completion' : 'text_completion';
    const base = {
      id,
      object: chat ? 'chat.completion.chunk' : 'text_completion',
      created: created(),
      model: backend.modelName,
    };
    const choices = Array.from({ length: parsed.n }, (_, index) => ({
      index,
      logprobs: parsed.logprobs ? new LogprobsBuilder(backend.tokenizer, chat) : undefined,
      first: true,
      text: '',
      finishReason: null as string | null,
      usage: undefined as GenerationUsage | undefined,
    }));
    type Choice = (typeof choices)[number];
    /** One chunk of one choice, as a stream chunk's choice (the first carries the role). */
    const chunkChoice = (choice: Choice, chunk: GenerationChunk): unknown => {
      const { index, first } = choice;
      const { text, finishReason } = chunk;
      choice.first = false;
      const builder = choice.logprobs;
      const lp = builder === undefined ? null : builder.slice(builder.add(chunk));
      return chat
        ? {
            index,
            delta: first ? { role: 'assistant', content: text } : text === '' ? {} : { content: text },
            logprobs: lp,
            finish_reason: finishReason,
          }
        : { index, text, logprobs: lp, finish_reason: finishReason };
    };
    // The prompt is counted once (as OpenAI does for n > 1), completions for every choice; cached
    // tokens are the first choice's.
    const usageOf = (): unknown => {
      const usages = choices.map((c) => c.usage);
      const first = usages[0];
      if (first === undefined || usages.some((u) => u === undefined)) return null;
      const completionTokens = usages.reduce((sum, u) => sum + (u?.completionTokens ?? 0), 0);
      return {
        prompt_tokens: first.promptTokens,
        completion_tokens: completionTokens,
        total_tokens: first.promptTokens + completionTokens,
        prompt_tokens_details: { cached_tokens: first.cachedTokens },
      };
    };
    try {
      const streams = choices.map(({ index }) =>
        backend.generate({
          requestId: parsed.n === 1 ? id : `${id}-${index}`,
          promptTokens,
          maxTokens: parsed.maxTokens,
          // A seeded request gives each choice its own seed, so that they differ and replay alike.
          sampling: {
            ...parsed.sampling,
            seed: parsed.sampling.seed === undefined ? undefined : (parsed.sampling.seed + index) % 2 ** 32,
          },
          stop: parsed.stop,
          // NOTE: the wire's stop_token_ids replace the model's EOS tokens; HTTP's add to them.
          stopTokenIds:
            parsed.stopTokenIds.length === 0 || parsed.ignoreEos
              ? parsed.stopTokenIds
              : [...parsed.stopTokenIds, ...(backend.eosTokenIds ?? [])],
          ignoreEos: parsed.ignoreEos,
          signal: abort.signal,
          logprobs: parsed.logprobs,
          topLogprobs: parsed.topLogprobs,
        }),
      );
      const merged = mergeStreams(streams);
      if (parsed.stream) {
        // Routing or prefill errors come before the first chunk: they still get a proper status.
        let next = await merged.next();
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-cache',
          connection: 'keep-alive',
        });
        const send = (payload: unknown): void => void res.write(`data: ${JSON.stringify(payload)}\n\n`);
        try {
          for (; next.done !== true; next = await merged.next()) {
            const choice = choices[next.value.index] as Choice;
            const chunk = next.value.chunk;
            choice.usage = chunk.usage ?? choice.usage;
            if (abort.signal.aborted) break;
            send({ ...base, choices: [chunkChoice(choice, chunk)] });
          }
        } catch (err) {
          // NOTE: one choice failing ends the others too (their sequences are cancelled).
          abort.abort();
          logger.warn('stream failed', { requestId: id, err });
          if (!res.destroyed) {
            send(errorBody(httpErrorOf(err)));
            res.write('data: [DONE]\n\n');
            res.end();
          }
          return;
        }
        if (abort.signal.aborted) {
          // The client left: end the merge (the abort already cancels every choice's sequence).
          await merged.return(undefined);
          return;
        }
        if (parsed.includeUsage) send({ ...base, choices: [], usage: usageOf() });
        res.write('data: [DONE]\n\n');
        res.end();
        return;
      }
      for await (const { index, chunk } of merged) {
        const choice = choices[index] as Choice;
        choice.text += chunk.text;
        choice.finishReason = chunk.finishReason ?? choice.finishReason;
        choice.usage = chunk.usage ?? choice.usage;
        choice.logprobs?.add(chunk);
      }
      if (abort.signal.aborted) return;
      sendJson(res, 200, {
        id,
        object,
        created: base.created,
        model: backend.modelName,
        choices: choices.map((c) => {
          const logprobs = c.logprobs?.slice(0) ?? null;
          return chat
            ? {
                index: c.index,
                message: { role: 'assistant', content: c.text },
                logprobs,
                finish_reason: c.finishReason,
              }
            : { index: c.index, text: c.text, logprobs, finish_reason: c.finishReason };
        }),
        usage: usageOf(),
      });
    } catch (err) {
      // A choice that failed before streaming began (or at all, unstreamed) ends its siblings too.
      abort.abort();
      throw err;
    } finally {
      for (let i = 0; i < parsed.n; i++) admission.release();
      res.removeListener('close', onClose);
    }
  };

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/health' && req.method === 'GET') {
      const health = backend.health();
      sendJson(res, health.ok ? 200 : 503, { status: health.ok ? 'ok' : 'unavailable', ...health });
      return;
    }
    if (path === '/metrics' && req.method === 'GET' && options.metrics !== undefined) {
      const text = options.metrics.render();
      res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    if (!authorized(req))
      throw new HttpError(
        401,
        'Incorrect or missing API key',
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
    if (path === '/v1/models') {
      if (req.method !== 'GET') throw new HttpError(405, 'use GET', 'invalid_request_error');
      sendJson(res, 200, {
        object: 'list',
        data: [{ id: backend.modelName, object: 'model', created: 0, owned_by: 'kvmesh' }],
      });
      return;
    }
    if (path === '/v1/completions' || path === '/v1/chat/completions') {
      if (req.method !== 'POST') throw new HttpError(405, 'use POST', 'invalid_request_error');
      await handleGeneration(req, res, path === '/v1/chat/completions');
      return;
    }
    throw new HttpError(
      404,
      `no route for ${req.method ?? ''} ${path}`,
      'invalid_request_error',
      null,
      'not_found',
    );
  };

  const server = createServer((req, res) => {
    if (requests !== undefined) {
      // NOTE: the label values come from fixed sets (known paths, HTTP codes), so series stay few.
      const path = (req.url ?? '/').split('?')[0] ?? '/';
      const endpoint = KNOWN_PATHS.has(path) ? path : 'other';
      // 499: the client closed the connection before the answer was complete (nginx's convention).
      res.once('close', () =>
        requests.inc({ endpoint, status: res.writableFinished ? res.statusCode : 499 }),
      );
    }
    route(req, res).catch((err: unknown) => {
      const httpErr = httpErrorOf(err);
      if (httpErr.status >= 500) logger.error('request failed', { url: req.url, err });
      if (httpErr.status === 413) {
        // The rest of the body is not read: close the connection once the answer is out.
        res.setHeader('connection', 'close');
        res.on('finish', () => req.destroy());
      }
      sendError(res, httpErr);
    });
  });
  server.headersTimeout = 30_000;
  // NOTE: longer than HTTP clients keep an idle connection (undici 4 s, agentkeepalive 15 s, load
  // balancers 60 s): a client must be the one to drop it, or its next request on it can race our
  // close and fail with "socket hang up" / "other side closed".
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;

  return {
    port,
    close: (graceMs) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => server.closeAllConnections(), graceMs);
        timer.unref();
        server.close(() => {
          clearTimeout(timer);
          resolve();
        });
        server.closeIdleConnections();
      }),
  };
}
