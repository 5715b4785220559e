// Tokenizing a text piece by piece between its added tokens, with the pieces' ids memoized. Hugging
// Face tokenizers cut the text at every added token (the chat template's markers) before they
// normalize and pre-tokenize it, and encode each piece on its own; so a chat prompt's system prompt
// and earlier turns, each a piece between markers, encode to the same ids in every later request
// that repeats them, and only the new message needs the BPE. Exact only for tokenizers whose pieces
// really are independent: segmentCacheSafe() says which, and the loader also compares both ways on
// sample texts before it trusts the cache. Bounded by entries and by characters held, least
// recently used first out.
import { InvalidArgumentError } from '@kvmesh/errors';

export interface AddedToken {
  readonly id: number;
  readonly content: string;
}

export interface SegmentCacheLimits {
  /** Pieces held at most. */
  readonly entriesMax: number;
  /** Characters of held pieces at most; a piece longer than an eighth of it is never held. */
  readonly charsMax: number;
}

export const SEGMENT_CACHE_DEFAULTS: SegmentCacheLimits = { entriesMax: 4096, charsMax: 8 << 20 };

interface TokenizerJsonShape {
  readonly added_tokens?: readonly {
    readonly id?: unknown;
    readonly content?: unknown;
    readonly lstrip?: unknown;
    readonly rstrip?: unknown;
    readonly single_word?: unknown;
    readonly normalized?: unknown;
    readonly special?: unknown;
  }[];
  readonly normalizer?: unknown;
  readonly pre_tokenizer?: unknown;
}

/**
 * The added tokens to cut at, when tokenizer.json's pieces encode independently; null when they may
 * not: an added token that strips or matches whitespace around it, or is matched after
 * normalization, joins its piece to its neighbour, and Metaspace's "prepend to the first piece only"
 * treats a piece differently from the same text encoded alone.
 */
export function segmentCacheSafe(tokenizerJson: unknown): AddedToken[] | null {
  const json = tokenizerJson as TokenizerJsonShape;
  const added = json.added_tokens ?? [];
  const tokens: AddedToken[] = [];
  for (const t of added) {
    if (typeof t.id !== 'number' || typeof t.content !== 'string' || t.content === '') return null;
    // NOTE: the tokenizers library takes an absent `normalized` as "not special".
    const normalized = t.normalized ?? t.special !== true;
    if (t.lstrip === true || t.rstrip === true || t.single_word === true || normalized === true) return null;
    tokens.push({ id: t.id, content: t.content });
  }
  const shape = JSON.stringify([json.normalizer ?? null, json.pre_tokenizer ?? null]);
  if (shape.includes('Metaspace')) return null;
  return tokens;
}

const escapeRegex = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A copy of `text` that shares no memory with the string it was sliced from. NOTE: V8 keeps a long
 * slice as a view of its parent, so a held piece would keep its whole prompt alive and charsMax
 * would not bound memory.
 */
const flatCopy = (text: string): string => Buffer.from(text, 'utf16le').toString('utf16le');

const append = (ids: number[], more: readonly number[]): void => {
  // NOTE: not push(...more): spreading a very long piece's ids overflows the call stack.
  for (const id of more) ids.push(id);
};

interface HeldPiece {
  /** The piece as held (a flat copy): re-inserted under it, never under a caller's slice. */
  readonly key: string;
  readonly ids: readonly number[];
}

export class SegmentCache {
  /** Least recently used first (Map insertion order, refreshed by delete + set). */
  private readonly entries = new Map<string, HeldPiece>();
  private chars = 0;
  private readonly splitter: RegExp | null;
  private readonly idOf: Map<string, number>;
  hits = 0;
  misses = 0;

  constructor(
    addedTokens: readonly AddedToken[],
    /** Encodes one piece that holds no added token, without special tokens around it. */
    private readonly encodePiece: (piece: string) => number[],
    readonly limits: SegmentCacheLimits = SEGMENT_CACHE_DEFAULTS,
  ) {
    for (const [name, value] of Object.entries(limits)) {
      if (!Number.isSafeInteger(value) || value < 0)
        throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${value}`, {
          [name]: value,
        });
    }
    this.idOf = new Map(addedTokens.map((t) => [t.content, t.id]));
    // NOTE: longest first, so that at any position the alternation takes the longest added token
    // (leftmost-longest, as the tokenizer's own matcher does).
    const contents = [...this.idOf.keys()].sort((a, b) => b.length - a.length);
    this.splitter = contents.length === 0 ? null : new RegExp(contents.map(escapeRegex).join('|'), 'g');
  }

  get size(): number {
    return this.entries.size;
  }

  /** The ids of `text` without special tokens added around it: added tokens by id, pieces memoized. */
  encode(text: string): number[] {
    const ids: number[] = [];
    let from = 0;
    if (this.splitter !== null) {
      this.splitter.lastIndex = 0;
      for (let match = this.splitter.exec(text); match !== null; match = this.splitter.exec(text)) {
        if (match.index > from) append(ids, this.piece(text.slice(from, match.index)));
        ids.push(this.idOf.get(match[0]) as number);
        from = match.index + match[0].length;
      }
    }
    if (from < text.length) append(ids, this.piece(text.slice(from)));
    return ids;
  }

  private piece(piece: string): readonly number[] {
    const held = this.entries.get(piece);
    if (held !== undefined) {
      this.hits++;
      this.entries.delete(piece);
      this.entries.set(held.key, held);
      return held.ids;
    }
    this.misses++;
    const ids = this.encodePiece(piece);
    if (piece.length > this.limits.charsMax / 8 || this.limits.entriesMax === 0) return ids;
    const key = flatCopy(piece);
    this.entries.set(key, { key, ids });
    this.chars += piece.length;
    for (const [oldest] of this.entries) {
      if (this.entries.size <= this.limits.entriesMax && this.chars <= this.limits.charsMax) break;
      this.entries.delete(oldest);
      this.chars -= oldest.length;
    }
    return ids;
  }
}
