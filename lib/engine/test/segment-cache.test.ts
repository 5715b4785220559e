// SegmentCache: piece-by-piece encoding between added tokens, memoized and bounded; and the model
// loader's use of it, which must give exactly the tokenizer's own ids.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { Tokenizer } from '@huggingface/tokenizers';
import { InvalidArgumentError } from '@kvmesh/errors';

import { generateModel } from '../src/model/generate.ts';
import { loadModel, type ChatMessage } from '../src/model/load.ts';
import { NO_PROGRESS } from '../src/model/progress.ts';
import { Xoshiro128 } from '../src/model/random.ts';
import { SegmentCache, segmentCacheSafe } from '../src/model/segment-cache.ts';

let dir = '';
let modelDir = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmesh-segments-'));
  modelDir = join(dir, 'tiny');
  generateModel({ outDir: modelDir, preset: 'tiny', seed: 3, progress: NO_PROGRESS });
});

after(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

/** An encoder of single characters (its code points) that counts the pieces it was given. */
function countingEncoder(): { encode: (piece: string) => number[]; pieces: string[] } {
  const pieces: string[] = [];
  return {
    pieces,
    encode: (piece) => {
      pieces.push(piece);
      return [...piece].map((c) => c.codePointAt(0) as number);
    },
  };
}

const MARKERS = [
  { id: 1000, content: '<s>' },
  { id: 1001, content: '<s>x' },
  { id: 1002, content: '</s>' },
];

test('segment cache - added tokens by id (longest match first), the pieces between them encoded once', () => {
  const counter = countingEncoder();
  const cache = new SegmentCache(MARKERS, counter.encode);
  // '<s>x' is longer than '<s>' at the same position: it wins.
  assert.deepEqual(cache.encode('ab<s>xc</s><s>ab'), [97, 98, 1001, 99, 1002, 1000, 97, 98]);
  assert.deepEqual(counter.pieces, ['ab', 'c']);
  assert.deepEqual([cache.hits, cache.misses], [1, 2]);
  assert.deepEqual(cache.encode('<s></s>'), [1000, 1002]);
  assert.deepEqual(cache.encode(''), []);
  assert.deepEqual(
    cache.encode('no markers'),
    [...'no markers'].map((c) => c.codePointAt(0)),
  );
  // A piece with more ids than a call's arguments may hold (no spread into push).
  assert.equal(cache.encode(`<s>${'y'.repeat(300_000)}</s>`).length, 300_002);
});

test('segment cache - stays within its entries and characters, least recently used out first', () => {
  const counter = countingEncoder();
  const cache = new SegmentCache(MARKERS, counter.encode, { entriesMax: 2, charsMax: 64 });
  cache.encode('aa<s>bb');
  cache.encode('aa'); // a hit: 'aa' is now the most recent, 'bb' the least
  cache.encode('cc'); // over 2 entries: 'bb' leaves
  assert.equal(cache.size, 2);
  counter.pieces.length = 0;
  cache.encode('aa</s>cc</s>bb');
  assert.deepEqual(counter.pieces, ['bb']);
  // A piece over an eighth of charsMax is encoded every time, never held.
  const long = 'x'.repeat(9);
  cache.encode(long);
  cache.encode(long);
  assert.equal(counter.pieces.filter((p) => p === long).length, 2);
  // Characters bound: eight 2-character pieces fill 16 of 16; a ninth pushes the oldest out.
  const small = new SegmentCache([], countingEncoder().encode, { entriesMax: 100, charsMax: 16 });
  for (let i = 0; i < 9; i++) small.encode(`p${i}`);
  assert.equal(small.size, 8);
  assert.throws(
    () => new SegmentCache([], counter.encode, { entriesMax: -1, charsMax: 1 }),
    InvalidArgumentError,
  );
});

test('segment cache - refuses tokenizer shapes whose pieces do not encode independently', () => {
  const token = {
    id: 5,
    content: '<|x|>',
    lstrip: false,
    rstrip: false,
    single_word: false,
    normalized: false,
  };
  assert.deepEqual(segmentCacheSafe({ added_tokens: [token], pre_tokenizer: { type: 'ByteLevel' } }), [
    { id: 5, content: '<|x|>' },
  ]);
  for (const flag of ['lstrip', 'rstrip', 'single_word', 'normalized'])
    assert.equal(segmentCacheSafe({ added_tokens: [{ ...token, [flag]: true }] }), null, flag);
  assert.equal(segmentCacheSafe({ added_tokens: [{ ...token, content: '' }] }), null);
  // An absent `normalized` means "not special" to the tokenizers library.
  const { normalized: _, ...bare } = token;
  assert.equal(segmentCacheSafe({ added_tokens: [{ ...bare, special: false }] }), null);
  assert.deepEqual(segmentCacheSafe({ added_tokens: [{ ...bare, special: true }] }), [
    { id: 5, content: '<|x|>' },
  ]);
  assert.equal(
    segmentCacheSafe({
      added_tokens: [token],
      pre_tokenizer: { type: 'Metaspace', prepend_scheme: 'first' },
    }),
    null,
  );
});

test('segment cache - the loaded tokenizer gives the tokenizer’s own ids on random chat prompts', () => {
  const model = loadModel(modelDir);
  const cache = model.tokenizer.pieceCache;
  assert.ok(cache !== null, 'the generated tokenizer is one whose pieces encode independently');
  const own = new Tokenizer(
    JSON.parse(readFileSync(join(modelDir, 'tokenizer.json'), 'utf8')),
    JSON.parse(readFileSync(join(modelDir, 'tokenizer_config.json'), 'utf8')),
  );
  const seed = (Date.now() ^ (process.pid << 8)) >>> 0;
  const rng = new Xoshiro128(seed);
  const alphabet = [
    'the',
    'a',
    'of',
    'river',
    'city',
    ',',
    '.',
    '!',
    '?',
    ' ',
    '  ',
    '\n',
    '\n\n',
    '12',
    '345',
    "'s",
    'é',
    '—',
    '<|im_start|>',
    '<|im_end|>',
    '<|im',
  ];
  const text = (words: number): string =>
    Array.from({ length: words }, () => alphabet[rng.nextUint32() % alphabet.length]).join(
      rng.nextUint32() % 2 === 0 ? ' ' : '',
    );
  const system = text(400);
  for (let i = 0; i < 40; i++) {
    const messages: ChatMessage[] = [{ role: 'system', content: system }];
    for (let turn = 0; turn <= i % 4; turn++) {
      messages.push({ role: 'user', content: text(1 + (rng.nextUint32() % 60)) });
      messages.push({ role: 'assistant', content: text(rng.nextUint32() % 60) });
    }
    const prompt = model.tokenizer.applyChatTemplate(messages.slice(0, -1), true);
    assert.deepEqual(
      model.tokenizer.encode(prompt, { addSpecialTokens: false }),
      own.encode(prompt, { add_special_tokens: false }).ids,
      `seed ${seed}, prompt ${i}`,
    );
    // With special tokens added the whole text goes to the tokenizer as before.
    assert.deepEqual(
      model.tokenizer.encode(prompt, { addSpecialTokens: true }),
      own.encode(prompt, { add_special_tokens: true }).ids,
      `seed ${seed}, prompt ${i}`,
    );
  }
  // Every prompt repeats the system prompt: all but the first found it held.
  assert.ok(cache.hits >= 39, `hits ${cache.hits}`);
});
