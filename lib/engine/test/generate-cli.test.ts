import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { generateModel } from '../src/model/generate.ts';
import { loadModel, type LoadedModel } from '../src/model/load.ts';
import { Engine } from '../src/runtime/engine.ts';
import { TextStream } from '../src/runtime/text-stream.ts';
import { generateText, parseGenerateArgs, runGenerateCommand } from '../src/generate-cli.ts';

function capture(): {
  io: Parameters<typeof runGenerateCommand>[1] & object;
  out: () => string;
  err: () => string;
} {
  let out = '';
  let err = '';
  return {
    io: { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } },
    out: () => out,
    err: () => err,
  };
}

describe('engine - text streaming and kvmesh generate', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmesh-generate-'));
  let model: LoadedModel;
  before(() => {
    generateModel({ outDir: dir, preset: 'tiny', seed: 11 });
    model = loadModel(dir);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Greedy tokens of a prompt on the tiny model (random weights: arbitrary but fixed text). */
  function greedyTokens(prompt: string, n: number): number[] {
    const engine = new Engine(model, { maxBatch: 1 });
    const tokens = model.tokenizer.encode(prompt);
    engine.addSequence({ promptTokens: tokens, maxTokens: n, stopTokenIds: [] });
    const out: number[] = [];
    while (out.length < n) for (const e of engine.step()) out.push(e.token);
    return out;
  }

  it('text stream - deltas concatenate to the decoded text, whatever the token boundaries', () => {
    for (const prompt of ['Once upon a time', 'ünïcödé ✓ 日本語 text', 'a b c']) {
      const tokens = greedyTokens(prompt, 40);
      const stream = new TextStream(model.tokenizer);
      let text = '';
      for (const t of tokens) {
        const delta = stream.push(t);
        assert.equal(delta.stopped, false);
        assert.ok(!delta.text.includes('\uFFFD') || model.tokenizer.decode(tokens).includes('\uFFFD'));
        text += delta.text;
      }
      text += stream.finish();
      assert.equal(text, model.tokenizer.decode(tokens, { skipSpecialTokens: true }));
    }
  });

  it('text stream - a stop string ends the text right before it, even across tokens', () => {
    const tokens = greedyTokens('The quick brown fox', 48);
    const full = model.tokenizer.decode(tokens, { skipSpecialTokens: true });
    assert.ok(full.length > 12, `need some text, got '${full}'`);
    // A stop string that straddles a token boundary: take 4 chars from the middle of the text.
    const at = Math.floor(full.length / 2);
    const stop = full.slice(at, at + 4);
    const stream = new TextStream(model.tokenizer, ['never-generated-xyz', stop]);
    let text = '';
    let stopped = false;
    for (const t of tokens) {
      const delta = stream.push(t);
      text += delta.text;
      if (delta.stopped) {
        stopped = true;
        break;
      }
    }
    assert.ok(stopped);
    assert.equal(text, full.slice(0, full.indexOf(stop)));
    assert.deepEqual(stream.push(tokens[0] as number), { text: '', stopped: true });
  });

  it('text stream - too many or too long stop strings are rejected', () => {
    assert.throws(
      () =>
        new TextStream(
          model.tokenizer,
          Array.from({ length: 17 }, (_, i) => `s${i}`),
        ),
      /at most 16/,
    );
    assert.throws(() => new TextStream(model.tokenizer, ['x'.repeat(257)]), /at most 256/);
  });

  it('generate - streams the same text the engine produces and reports counts', () => {
    const chunks: string[] = [];
    const summary = generateText(
      parseGenerateArgs(['--model', dir, '--prompt', 'The quick brown fox', '--max-tokens', '24']),
      { stdout: { write: (s: string) => chunks.push(s) }, stderr: { write: () => true } },
    );
    assert.ok(chunks.length > 1, 'text arrives in several pieces');
    assert.equal(chunks.join(''), summary.text);
    const tokens = model.tokenizer.encode('The quick brown fox');
    assert.equal(summary.promptTokens, tokens.length);
    assert.ok(summary.generatedTokens >= 1 && summary.generatedTokens <= 24);
    assert.ok(summary.prefillTokps > 0);
  });

  it('generate - seeded sampling repeats; kivi4 KV and chat mode run', async () => {
    const args = ['--model', dir, '--prompt', 'Hello there', '--max-tokens', '16', '--temperature', '0.9'];
    const a = capture();
    const b = capture();
    assert.equal(await runGenerateCommand([...args, '--seed', '7'], a.io), 0);
    assert.equal(await runGenerateCommand([...args, '--seed', '7'], b.io), 0);
    assert.equal(a.out(), b.out());
    assert.match(
      a.err(),
      /^prompt \d+ tokens, generated \d+ tokens \(finish: (stop|length)\); prefill [\d.]+ tok\/s/,
    );
    const c = capture();
    assert.equal(await runGenerateCommand([...args, '--chat', '--codec', 'kivi4'], c.io), 0);
    assert.match(c.err(), /generated \d+ tokens/);
  });

  it('generate - bad arguments exit 2 naming the argument; a too-long prompt exits 1 naming the limit', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--prompt', 'x'], /--model DIR is required/],
      [['--model', dir], /--prompt TEXT is required/],
      [['--model', join(dir, 'nope'), '--prompt', 'x'], /model directory .* does not exist/],
      [
        ['--model', dir, '--prompt', 'x', '--codec', 'zip'],
        /--codec must be one of f32, f16, kivi8, kivi4, kivi2/,
      ],
      [['--model', dir, '--prompt', 'x', '--max-tokens', '0'], /--max-tokens must be in \[1, /],
      [['--model', dir, '--prompt', 'x', '--top-p', 'abc'], /--top-p must be a number/],
      [['--model', dir, '--prompt', 'x', '--bogus'], /unknown argument '--bogus'/],
    ];
    for (const [args, pattern] of cases) {
      const c = capture();
      assert.equal(await runGenerateCommand(args, c.io), 2, args.join(' '));
      assert.match(c.err(), pattern);
    }
    const c = capture();
    const longPrompt = 'word '.repeat(model.config.maxContextTokens);
    assert.equal(await runGenerateCommand(['--model', dir, '--prompt', longPrompt], c.io), 1);
    assert.match(c.err(), /leaves no room in the \d+-token context/);
  });
});
