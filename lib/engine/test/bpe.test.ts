import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { byteToUnicode, preTokenize, trainBpe } from '../src/model/bpe.ts';
import { Xoshiro128 } from '../src/model/random.ts';

describe('engine - byte-level BPE', () => {
  it('bpe - byte alphabet is GPT-2 style: 256 distinct visible symbols, space is Ġ', () => {
    const table = byteToUnicode();
    assert.equal(new Set(table).size, 256);
    assert.equal(table[0x20], 'Ġ');
    assert.equal(table[0x0a], 'Ċ');
    assert.equal(table[0x41], 'A');
  });

  it('bpe - pre-tokenizer splits like Llama 3 (contractions, digits in threes, leading space)', () => {
    assert.deepEqual(preTokenize("We'll pay 12345 coins, OK?\n\n  end"), [
      'We',
      "'ll",
      ' pay',
      ' ',
      '123',
      '45',
      ' coins',
      ',',
      ' OK',
      '?\n\n',
      ' ',
      ' end',
    ]);
  });

  it('bpe - merges the most frequent pair first, ties to the smaller ids, in a fixed order', () => {
    // l-o and o-w both occur 5 times; (l, o) has the smaller ids so it merges first.
    const model = trainBpe('low low low lower lowest', {
      vocabSize: 256 + 4 + 1,
      specialTokens: ['<|eot|>'],
    });
    assert.deepEqual(model.merges, [
      ['l', 'o'],
      ['lo', 'w'],
      ['Ġ', 'low'],
      ['Ġlow', 'e'],
    ]);
    assert.equal(model.vocab.length, 261);
    assert.deepEqual(model.specialTokens, [{ id: 260, content: '<|eot|>' }]);
  });

  it('bpe - stops at pairs seen once and fills the vocabulary with reserved tokens', () => {
    const model = trainBpe('low low low lower lowest', {
      vocabSize: 256 + 6 + 1,
      specialTokens: ['<|eot|>'],
    });
    assert.equal(model.merges.length, 4);
    assert.deepEqual(
      model.specialTokens.map((t) => t.content),
      ['<|eot|>', '<|reserved_special_token_0|>', '<|reserved_special_token_1|>'],
    );
    assert.equal(model.vocab.length, 263);
  });

  it('bpe - same text gives the same model; ids are unique', () => {
    const seed = Date.now() >>> 0;
    const rng = new Xoshiro128(seed);
    const words = ['cache', 'block', 'token', 'prefix', 'évident', '🚀', 'x1', 'the'];
    let text = '';
    for (let i = 0; i < 3000; i++) text += `${words[rng.nextUint32() % words.length]}${i % 7 ? ' ' : '\n'}`;
    const a = trainBpe(text, { vocabSize: 400, specialTokens: ['<s>'] });
    const b = trainBpe(text, { vocabSize: 400, specialTokens: ['<s>'] });
    assert.deepEqual(a, b, `text seed ${seed}`);
    assert.equal(new Set(a.vocab).size, a.vocab.length, `text seed ${seed}`);
  });

  it('bpe - rejects a vocabulary too small for bytes and specials, naming the field', () => {
    assert.throws(
      () => trainBpe('abc', { vocabSize: 200, specialTokens: [] }),
      (err: unknown) => err instanceof InvalidArgumentError && /vocabSize 200/.test(err.message),
    );
    assert.throws(() => trainBpe('abc', { vocabSize: 300, specialTokens: ['<a>', '<a>'] }), /duplicates/);
  });

  it('random - a seed fixes the stream; normals have mean ~0 and std ~1', () => {
    const a = new Xoshiro128(42);
    const b = new Xoshiro128(42);
    const xs = Array.from({ length: 20000 }, () => a.nextNormal());
    assert.deepEqual(
      xs.slice(0, 5),
      Array.from({ length: 5 }, () => b.nextNormal()),
    );
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    const std = Math.sqrt(xs.reduce((s, x) => s + (x - mean) ** 2, 0) / xs.length);
    assert.ok(Math.abs(mean) < 0.03, `mean ${mean}`);
    assert.ok(Math.abs(std - 1) < 0.03, `std ${std}`);
    assert.notEqual(new Xoshiro128(43).nextUint32(), new Xoshiro128(42).nextUint32());
    assert.throws(() => new Xoshiro128(-1), /seed must be an integer/);
  });
});
