import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { runModelCommand } from '../src/model/cli.ts';

function capture(): {
  io: Parameters<typeof runModelCommand>[1] & object;
  out: () => string;
  err: () => string;
} {
  let out = '';
  let err = '';
  return {
    io: {
      stdout: { write: (s: string) => (out += s) },
      stderr: {
        write: (s: string) => {
          err += s;
          return true;
        },
      },
    },
    out: () => out,
    err: () => err,
  };
}

describe('engine - kvmesh model command', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmesh-model-cli-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('model cli - bad arguments exit 2 with a message naming the argument and the usage', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['init', '--preset', 'tiny'], /--out DIR is required/],
      [['init', '--out', dir, '--preset', 'huge'], /--preset must be one of tiny, small, got 'huge'/],
      [['init', '--out', dir, '--preset', 'tiny', '--seed', '-3'], /--seed must be an integer/],
      [['init', '--out', dir, '--preset', 'tiny', '--seed', '4294967296'], /--seed must be an integer/],
      [['init', '--out'], /--out needs a value/],
      [['init', '--out', dir, '--preset', 'tiny', '--bogus'], /unknown argument '--bogus'/],
      [['export-gguf', dir], /exactly DIR and OUT.gguf/],
      [['export-gguf', join(dir, 'missing'), join(dir, 'x.gguf')], /does not exist/],
      [['frobnicate'], /unknown command 'frobnicate'/],
    ];
    for (const [args, message] of cases) {
      const c = capture();
      assert.equal(await runModelCommand(args, c.io), 2, args.join(' '));
      assert.match(c.err(), message, args.join(' '));
      assert.match(c.err(), /usage: kvmesh model/);
    }
  });

  it('model cli - init then export-gguf writes the model and the GGUF file', async () => {
    const modelDir = join(dir, 'tiny');
    const init = capture();
    assert.equal(
      await runModelCommand(['init', '--out', modelDir, '--preset', 'tiny', '--seed', '9'], init.io),
      0,
    );
    assert.match(init.out(), /wrote tiny model \(0\.8 M parameters, vocab 2048/);
    assert.match(
      init.err(),
      /training tokenizer: 100%\n[^]*drawing weights: 100%\n/,
      'progress lines when not a TTY',
    );
    assert.ok(existsSync(join(modelDir, 'model.safetensors')));
    const gguf = capture();
    const out = join(dir, 'tiny.gguf');
    assert.equal(await runModelCommand(['export-gguf', modelDir, out], gguf.io), 0);
    assert.match(gguf.out(), /21 tensors/);
    assert.ok(existsSync(out));
  });

  it('model cli - a model directory without weights fails with exit 1 naming the file', async () => {
    const c = capture();
    assert.equal(await runModelCommand(['export-gguf', dir, join(dir, 'y.gguf')], c.io), 1);
    assert.match(c.err(), /config\.json/);
  });
});
