// Byte-level BPE trainer that emits a Hugging Face `tokenizer.json` (GPT-2 byte-to-unicode alphabet,
// Llama-3 pre-tokenizer split, ByteLevel decoder, special tokens appended after the merges). Training
// is a pure function of its inputs (text, vocab size, special tokens, minimum pair count): ties between
// equally frequent pairs break on the smaller (left id, right id), so the same corpus always yields
// byte-identical vocab and merges.
import { InvalidArgumentError } from '@kvmesh/errors';

/**
 * Llama-3's pre-tokenizer split, in the case-folded spelling llama.cpp uses for its `llama-bpe`
 * pre-tokenizer. It means the same as the original `(?i:'s|'t|...)` form but needs no inline flag
 * groups, so JavaScript RegExp, Oniguruma (HF tokenizers) and llama.cpp all read it alike.
 */
export const LLAMA3_SPLIT_PATTERN =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** The name llama.cpp gives this split in `tokenizer.ggml.pre`. */
export const LLAMA3_PRE_TOKENIZER_NAME = 'llama-bpe';

const BYTE_SYMBOLS = 256;
/** Pair keys pack (left, right) as left * 2^20 + right; vocabularies stay far below 2^20. */
const PAIR_SHIFT = 2 ** 20;
const VOCAB_SIZE_MAX = PAIR_SHIFT;

/**
 * GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, every other byte to
 * code points from U+0100 up, so that each byte is one visible character (space becomes 'Ġ').
 */
export function byteToUnicode(): string[] {
  const table = new Array<string>(BYTE_SYMBOLS);
  const printable = (b: number): boolean =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 0;
  for (let b = 0; b < BYTE_SYMBOLS; b++) {
    table[b] = String.fromCodePoint(printable(b) ? b : BYTE_SYMBOLS + next++);
  }
  return table;
}

/** Splits text into pre-tokens exactly as the tokenizer.json Split step does (no byte mapping). */
export function preTokenize(text: string): string[] {
  return text.match(new RegExp(LLAMA3_SPLIT_PATTERN, 'gu')) ?? [];
}

export interface BpeTrainOptions {
  /** Total vocabulary: 256 byte symbols + learned tokens + special tokens. */
  vocabSize: number;
  /** Appended after the learned tokens, in this order (then reserved tokens fill any shortfall). */
  specialTokens: readonly string[];
  /** Stop merging when the most frequent pair occurs fewer times than this (default 2). */
  pairCountMin?: number;
  /** Called every few hundred merges with (merges done, merges wanted). */
  onProgress?: (done: number, total: number) => void;
}

export interface BpeModel {
  /** Token strings in the byte-level alphabet, indexed by id; special tokens last. */
  vocab: string[];
  /** Merges in rank order, as pairs of byte-level token strings. */
  merges: Array<[string, string]>;
  specialTokens: Array<{ id: number; content: string }>;
}

class PairHeap {
  // Max-heap on (count, then smaller pair key); entries may be stale, the caller checks the count.
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  private above(i: number, j: number): boolean {
    const ci = this.counts[i] as number;
    const cj = this.counts[j] as number;
    return ci > cj || (ci === cj && (this.keys[i] as number) < (this.keys[j] as number));
  }

  private swap(i: number, j: number): void {
    const c = this.counts[i] as number;
    this.counts[i] = this.counts[j] as number;
    this.counts[j] = c;
    const k = this.keys[i] as number;
    this.keys[i] = this.keys[j] as number;
    this.keys[j] = k;
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.keys.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.above(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): { count: number; key: number } | undefined {
    if (this.keys.length === 0) return undefined;
    const top = { count: this.counts[0] as number, key: this.keys[0] as number };
    const lastCount = this.counts.pop() as number;
    const lastKey = this.keys.pop() as number;
    if (this.keys.length > 0) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < this.keys.length && this.above(l, best)) best = l;
        if (r < this.keys.length && this.above(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}

/**
 * Trains byte-level BPE. Pair counts are kept incrementally: a merge only revisits the words that
 * contain the merged pair (found through a pair → words index), so the cost per merge is the size
 * of those words, not of the corpus.
 */
export function trainBpe(text: string, options: BpeTrainOptions): BpeModel {
  const { vocabSize, specialTokens } = options;
  const pairCountMin = options.pairCountMin ?? 2;
  const mergesWanted = vocabSize - BYTE_SYMBOLS - specialTokens.length;
  if (!Number.isInteger(vocabSize) || vocabSize > VOCAB_SIZE_MAX || mergesWanted < 0) {
    throw new InvalidArgumentError(
      `vocabSize ${vocabSize} must be an integer in [${BYTE_SYMBOLS + specialTokens.length}, ${VOCAB_SIZE_MAX}] ` +
        `(256 byte symbols + ${specialTokens.length} special tokens + merges)`,
      { field: 'vocabSize', value: vocabSize },
    );
  }
  if (new Set(specialTokens).size !== specialTokens.length) {
    throw new InvalidArgumentError(`specialTokens has duplicates: ${specialTokens.join(', ')}`, {
      field: 'specialTokens',
    });
  }

  // Unique pre-tokens with their frequencies, as byte-id sequences.
  const wordFreq = new Map<string, number>();
  for (const piece of preTokenize(text)) wordFreq.set(piece, (wordFreq.get(piece) ?? 0) + 1);
  const encoder = new TextEncoder();
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [piece, freq] of wordFreq) {
    words.push(Array.from(encoder.encode(piece)));
    freqs.push(freq);
  }

  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: 1 | -1, touched: Set<number>): void => {
    const syms = words[w] as number[];
    const f = (freqs[w] as number) * sign;
    for (let i = 0; i + 1 < syms.length; i++) {
      const key = (syms[i] as number) * PAIR_SHIFT + (syms[i + 1] as number);
      const c = (pairCounts.get(key) ?? 0) + f;
      if (c === 0) pairCounts.delete(key);
      else pairCounts.set(key, c);
      touched.add(key);
      if (sign === 1) {
        let set = pairWords.get(key);
        if (set === undefined) pairWords.set(key, (set = new Set()));
        set.add(w);
      }
    }
  };
  const initial = new Set<number>();
  for (let w = 0; w < words.length; w++) addPairs(w, 1, initial);
  const heap = new PairHeap();
  for (const key of initial) heap.push(pairCounts.get(key) as number, key);

  const symbols = byteToUnicode();
  const idOf = new Map(symbols.map((s, id) => [s, id]));
  const symbolsWanted = BYTE_SYMBOLS + mergesWanted;
  const merges: Array<[string, string]> = [];
  const progressEvery = Math.max(1, Math.floor(mergesWanted / 100));
  while (symbols.length < symbolsWanted) {
    const top = heap.pop();
    if (top === undefined) break;
    // NOTE: every count change pushes a fresh entry, so an entry whose count differs from the live
    // count is stale and can be dropped.
    if (pairCounts.get(top.key) !== top.count) continue;
    if (top.count < pairCountMin) break;
    const left = Math.floor(top.key / PAIR_SHIFT);
    const right = top.key % PAIR_SHIFT;
    // NOTE: two merge paths can spell the same string ('ab'+'c', 'a'+'bc'); like HF's trainer the
    // second merge is recorded but reuses the existing token, so ids and strings stay one-to-one.
    const spelled = (symbols[left] as string) + (symbols[right] as string);
    let merged = idOf.get(spelled);
    if (merged === undefined) {
      merged = symbols.length;
      symbols.push(spelled);
      idOf.set(spelled, merged);
      if ((merged - BYTE_SYMBOLS + 1) % progressEvery === 0)
        options.onProgress?.(merged - BYTE_SYMBOLS + 1, mergesWanted);
    }
    merges.push([symbols[left] as string, symbols[right] as string]);

    const touched = new Set<number>();
    for (const w of pairWords.get(top.key) ?? []) {
      const syms = words[w] as number[];
      let has = false;
      for (let i = 0; i + 1 < syms.length; i++) {
        if (syms[i] === left && syms[i + 1] === right) {
          has = true;
          break;
        }
      }
      if (!has) continue; // an earlier merge already consumed the pair in this word
      addPairs(w, -1, touched);
      const out: number[] = [];
      for (let i = 0; i < syms.length; i++) {
        if (i + 1 < syms.length && syms[i] === left && syms[i + 1] === right) {
          out.push(merged as number);
          i++;
        } else {
          out.push(syms[i] as number);
        }
      }
      words[w] = out;
      addPairs(w, 1, touched);
    }
    pairWords.delete(top.key);
    for (const key of touched) {
      const c = pairCounts.get(key);
      if (c !== undefined) heap.push(c, key);
    }
  }
  options.onProgress?.(mergesWanted, mergesWanted);

  // Like Llama 3's reserved tokens: when the corpus runs out of pairs before the vocabulary is full,
  // the rest is filled with never-produced special tokens so the vocabulary has the requested size.
  const reserved: string[] = [];
  for (let k = 0; symbols.length + specialTokens.length + reserved.length < vocabSize; k++) {
    reserved.push(`<|reserved_special_token_${k}|>`);
  }
  const vocab = symbols.slice();
  const taken = new Set(vocab);
  const specials = [...specialTokens, ...reserved].map((content) => {
    if (taken.has(content)) {
      throw new InvalidArgumentError(`special token ${content} collides with a learned token`, {
        field: 'specialTokens',
        value: content,
      });
    }
    vocab.push(content);
    return { id: vocab.length - 1, content };
  });
  return { vocab, merges, specialTokens: specials };
}

/**
 * The HF `tokenizer.json` for a trained model. Like Llama 3: `ignore_merges` (a pre-token that is
 * itself in the vocabulary becomes one token, which llama.cpp's llama-bpe also does) and a template
 * post-processor that prepends `bosToken` when special tokens are requested.
 */
export function tokenizerJson(model: BpeModel, bosToken: string): Record<string, unknown> {
  const bos = model.specialTokens.find((t) => t.content === bosToken);
  if (bos === undefined) {
    throw new InvalidArgumentError(`bos token ${bosToken} is not one of the special tokens`, {
      field: 'bosToken',
      value: bosToken,
    });
  }
  const vocab: Record<string, number> = {};
  model.vocab.forEach((token, id) => {
    if (id < model.vocab.length - model.specialTokens.length) vocab[token] = id;
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: model.specialTokens.map((t) => ({
      id: t.id,
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: LLAMA3_SPLIT_PATTERN }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bosToken, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bosToken, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bosToken, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bosToken]: { id: bosToken, ids: [bos.id], tokens: [bosToken] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      merges: model.merges,
    },
  };
}
