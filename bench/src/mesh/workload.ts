// The mesh bench's chat workload: S system prompts of ~T tokens each (cut to exactly T tokens of the
// model's own tokenizer), C conversations each bound to one system prompt (conversation i uses
// prompt i mod S, so each prompt is shared by ⌊C/S⌋ or ⌈C/S⌉ conversations), K turns per
// conversation with a user message of ~U tokens each. Conversation starts are a Poisson process of
// rate λ per second (exponential gaps); turn k+1 starts when turn k's reply has ended plus an
// exponential think time of mean `thinkMs`. Turn k+1 sends the system prompt, every earlier user
// message with the assistant's actual reply to it, then the new user message; when that no longer
// fits the context (prompt + max_tokens), the oldest turns are dropped first and the system prompt
// is always kept.
// Every text and time comes from one xoshiro128** stream per seed, so a seed fixes the workload up
// to the model's replies (greedy decoding makes those deterministic too, for one model).
import { Xoshiro128, type ChatMessage, type ModelTokenizer } from '@kvmesh/engine';

export interface WorkloadParams {
  systemPrompts: number;
  systemTokens: number;
  conversations: number;
  turns: number;
  userTokens: number;
  /** Conversation starts per second (λ of the Poisson process). */
  ratePerSecond: number;
  /** Mean of the exponential pause between a reply's end and the conversation's next turn. */
  thinkMs: number;
  maxTokens: number;
  seed: number;
}

export interface Conversation {
  index: number;
  systemPrompt: number;
  /** Offset of the first turn from the start of the run. */
  startMs: number;
  userMessages: string[];
  /** Pause before turn k + 1 (length turns - 1). */
  thinkMs: number[];
}

export interface Workload {
  params: WorkloadParams;
  systemPrompts: string[];
  conversations: Conversation[];
}

type ChatTokenizer = Pick<ModelTokenizer, 'encode' | 'decode' | 'applyChatTemplate'>;

// Plain words so that the BPE tokenizer sees ordinary text (a few tokens per word), not noise.
const WORDS = (
  'the a an of to and in on for with from by at as is are was be been will can may should must ' +
  'answer question user assistant reply briefly clearly politely always never please explain ' +
  'order shipment refund invoice account password settings network server request response ' +
  'weather garden river mountain city market bicycle kitchen recipe bread water coffee morning ' +
  'evening winter summer season travel ticket train station library book chapter story letter ' +
  'number table list step first second third last next before after during because however ' +
  'customer support policy rule example format short long detail summary note warning error ' +
  'memory cache block token model layer head query value key store node worker router queue ' +
  'quick small large warm cold bright quiet careful simple honest useful friendly exact'
).split(' ');

const SENTENCE_WORDS_MIN = 6;
const SENTENCE_WORDS_MAX = 16;

function pick<T>(rng: Xoshiro128, items: readonly T[]): T {
  return items[rng.nextUint32() % items.length] as T;
}

/** Exponential deviate of the given mean (inverse transform of a uniform in (0, 1)). */
function exponential(rng: Xoshiro128, mean: number): number {
  return -Math.log(rng.nextUnit()) * mean;
}

/** Sentences of seeded words, long enough to hold `tokens` tokens. */
function sentences(rng: Xoshiro128, tokens: number): string {
  // NOTE: every word is at least one token, so `tokens` words always suffice.
  const parts: string[] = [];
  let words = 0;
  while (words < tokens) {
    const n = SENTENCE_WORDS_MIN + (rng.nextUint32() % (SENTENCE_WORDS_MAX - SENTENCE_WORDS_MIN + 1));
    const sentence = Array.from({ length: n }, () => pick(rng, WORDS)).join(' ');
    parts.push(`${sentence[0]?.toUpperCase() ?? ''}${sentence.slice(1)}.`);
    words += n;
  }
  return parts.join(' ');
}

/** `lead` followed by seeded sentences, cut to `tokens` tokens of the model's tokenizer. */
function textOfTokens(rng: Xoshiro128, tokenizer: ChatTokenizer, lead: string, tokens: number): string {
  const ids = tokenizer.encode(`${lead} ${sentences(rng, tokens)}`, { addSpecialTokens: false });
  // Decoding a prefix of the ids gives text that re-encodes to (almost exactly) that many tokens.
  return tokenizer.decode(ids.slice(0, tokens), { skipSpecialTokens: true }).trim();
}

export function generateWorkload(params: WorkloadParams, tokenizer: ChatTokenizer): Workload {
  const rng = new Xoshiro128(params.seed >>> 0);
  const systemPrompts = Array.from({ length: params.systemPrompts }, (_, s) =>
    textOfTokens(
      rng,
      tokenizer,
      `You are assistant number ${s + 1}. Follow these rules.`,
      params.systemTokens,
    ),
  );
  let startMs = 0;
  const conversations = Array.from({ length: params.conversations }, (_, c): Conversation => {
    // The first conversation starts at 0; each later one after an exponential gap of mean 1/λ.
    if (c > 0) startMs += exponential(rng, 1000 / params.ratePerSecond);
    return {
      index: c,
      systemPrompt: c % params.systemPrompts,
      startMs,
      userMessages: Array.from({ length: params.turns }, (_, t) =>
        textOfTokens(rng, tokenizer, `Question ${t + 1}:`, params.userTokens),
      ),
      thinkMs: Array.from({ length: params.turns - 1 }, () => exponential(rng, params.thinkMs)),
    };
  });
  return { params, systemPrompts, conversations };
}

export interface TurnPrompt {
  messages: ChatMessage[];
  promptTokens: number;
  /** Earlier turns left out so that prompt + max_tokens fits the context. */
  turnsDropped: number;
}

/**
 * The messages of `conversation`'s turn `turn` (0-based), given the assistant's replies to the
 * earlier turns; drops the oldest turns while the prompt and max_tokens exceed `contextTokensMax`.
 */
export function turnPrompt(
  workload: Workload,
  conversation: Conversation,
  turn: number,
  replies: readonly string[],
  tokenizer: ChatTokenizer,
  contextTokensMax: number,
): TurnPrompt {
  const system: ChatMessage = {
    role: 'system',
    content: workload.systemPrompts[conversation.systemPrompt] ?? '',
  };
  const current: ChatMessage = { role: 'user', content: conversation.userMessages[turn] ?? '' };
  const promptOf = (first: number): TurnPrompt => {
    const history: ChatMessage[] = [];
    for (let t = first; t < turn; t++) {
      history.push({ role: 'user', content: conversation.userMessages[t] ?? '' });
      history.push({ role: 'assistant', content: replies[t] ?? '' });
    }
    const messages = [system, ...history, current];
    const promptTokens = tokenizer.encode(tokenizer.applyChatTemplate(messages, true), {
      addSpecialTokens: false,
    }).length;
    return { messages, promptTokens, turnsDropped: first };
  };
  // NOTE: with every earlier turn dropped the prompt is as long as a first turn's, which the suite
  // checks fits before it starts.
  for (let first = 0; first < turn; first++) {
    const prompt = promptOf(first);
    if (prompt.promptTokens + workload.params.maxTokens <= contextTokensMax) return prompt;
  }
  return promptOf(turn);
}
