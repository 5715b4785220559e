// `kvmesh up` as a user runs it: the real CLI in a child process starts nats-server, 2 kvstore
// nodes, a prefill and a decode worker and the router; the OpenAI endpoints answer; SIGTERM stops
// every child (no orphans) and the launcher exits 0. A greedy completion of a prompt long enough to
// be prefilled (prefill worker → blocks through the store → decode worker, three processes) is
// token-identical to `kvmesh generate` in one process (f32 KV), and repeating it reports cached tokens.
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { generateModel, NO_PROGRESS } from '@kvmesh/engine';
import { freePort } from '@kvmesh/runtime';
import OpenAI from 'openai';

const execFileAsync = promisify(execFile);

const bin = fileURLToPath(new URL('../bin/kvmesh.mjs', import.meta.url));

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('cli - kvmesh up', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmesh-up-test-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Starts the launcher and waits for its ready line; the base URL, the process and its exit. */
  const startUp = async (
    extra: string[],
  ): Promise<{
    launcher: ReturnType<typeof spawn>;
    base: string;
    exited: Promise<number | null>;
    stderr: () => string;
  }> => {
    const modelDir = join(dir, 'tiny');
    if (!existsSync(join(modelDir, 'config.json')))
      generateModel({ outDir: modelDir, preset: 'tiny', seed: 3, progress: NO_PROGRESS });
    const launcher = spawn(
      process.execPath,
      [bin, 'up', '--model', modelDir, '--port', '0', '--block-tokens', '16', ...extra],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    launcher.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    const exited = new Promise<number | null>((done) => launcher.once('exit', (code) => done(code)));
    const base = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ready line; stderr:\n${stderr}`)), 90_000);
      createInterface({ input: launcher.stdout as NodeJS.ReadableStream }).on('line', (line) => {
        const m = /^kvmesh ready: (http:\/\/\S+)$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(m[1] as string);
        }
      });
      void exited.then((code) => reject(new Error(`launcher exited ${code}; stderr:\n${stderr}`)));
    }).catch((err: unknown) => {
      launcher.kill('SIGKILL');
      throw err;
    });
    return { launcher, base, exited, stderr: () => stderr };
  };

  const childrenOf = (pid: number | undefined): number[] =>
    execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .map((s) => Number(s.trim()))
      .filter((p) => p > 0);

  it('up - serves the OpenAI API from child processes and stops all of them on SIGTERM', async () => {
    const { launcher, base, exited, stderr: output } = await startUp([]);
    try {
      const models = (await (await fetch(`${base}/models`)).json()) as { data: { id: string }[] };
      assert.equal(models.data.length, 1);
      const response = await fetch(`${base}/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: models.data[0]?.id, prompt: 'Once upon a time', max_tokens: 8 }),
      });
      assert.equal(response.status, 200, `completion failed: ${await response.clone().text()}\n${output()}`);
      const body = (await response.json()) as {
        choices: { text: string }[];
        usage: { completion_tokens: number };
      };
      assert.equal(body.choices.length, 1);
      assert.ok(body.usage.completion_tokens >= 1);

      // The official client, unmodified, pointed at the router.
      const openai = new OpenAI({ baseURL: base, apiKey: 'unused' });
      const listed = await openai.models.list();
      assert.deepEqual(
        listed.data.map((m) => m.id),
        [models.data[0]?.id],
      );
      const completion = await openai.completions.create({
        model: models.data[0]?.id as string,
        prompt: 'The quick brown fox',
        max_tokens: 6,
      });
      assert.equal(completion.choices.length, 1);
      const stream = await openai.chat.completions.create({
        model: models.data[0]?.id as string,
        messages: [{ role: 'user', content: 'Hello there' }],
        max_tokens: 8,
        stream: true,
      });
      let chunks = 0;
      let finish: string | null = null;
      for await (const chunk of stream) {
        chunks++;
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      assert.ok(chunks >= 2, `streamed ${chunks} chunks`);
      assert.ok(finish === 'stop' || finish === 'length', `finish_reason ${finish}`);
      // n, logprobs and top_logprobs as the official client types them.
      const scored = await openai.chat.completions.create({
        model: models.data[0]?.id as string,
        messages: [{ role: 'user', content: 'Two answers, scored' }],
        max_tokens: 4,
        n: 2,
        seed: 3,
        logprobs: true,
        top_logprobs: 2,
      });
      assert.deepEqual(
        scored.choices.map((c) => c.index),
        [0, 1],
      );
      for (const choice of scored.choices) {
        const content = choice.logprobs?.content ?? [];
        assert.ok(content.length >= 1);
        for (const entry of content) assert.equal(entry.top_logprobs.length, 2);
      }

      // Prefill → store → decode across processes equals one process (the router prefills prompts
      // with at least 512 uncached tokens).
      const words = ['cache', 'block', 'mesh', 'token', 'prefix', 'store', 'route', 'decode'];
      const longPrompt = Array.from({ length: 700 }, (_, i) => words[(i * 7 + (i >> 3)) % 8]).join(' ');
      const complete = async (): Promise<{ text: string; cached: number; promptTokens: number }> => {
        const res = await fetch(`${base}/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: models.data[0]?.id,
            prompt: longPrompt,
            max_tokens: 16,
            temperature: 0,
          }),
        });
        assert.equal(res.status, 200, `long completion failed: ${await res.clone().text()}\n${output()}`);
        const b = (await res.json()) as {
          choices: { text: string }[];
          usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
        };
        return {
          text: b.choices[0]?.text ?? '',
          cached: b.usage.prompt_tokens_details.cached_tokens,
          promptTokens: b.usage.prompt_tokens,
        };
      };
      const first = await complete();
      assert.ok(first.promptTokens >= 600, `prompt has ${first.promptTokens} tokens`);
      // NOTE: asynchronous: a test blocked in execFileSync for seconds starves the HTTP client's
      // idle-socket timer, and its next request then races the router closing that idle socket.
      const { stdout: local } = await execFileAsync(
        process.execPath,
        [
          bin,
          'generate',
          '--model',
          join(dir, 'tiny'),
          '--prompt',
          longPrompt,
          '--max-tokens',
          '16',
          '--block-tokens',
          '16',
        ],
        { encoding: 'utf8' },
      );
      assert.ok(first.text.length > 0, 'the model generates text for this prompt');
      assert.equal(first.text, local.replace(/\n$/, ''), 'mesh and one process agree');
      const again = await complete();
      assert.equal(again.text, first.text);
      assert.ok(again.cached >= 512, `repeat reused ${again.cached} tokens`);

      const children = childrenOf(launcher.pid);
      assert.ok(
        children.length >= 6,
        `nats + 2 kvstore + prefill + decode + router, got ${children.length}\n${output()}`,
      );
      const pool = /shared-memory file (\/dev\/shm\/kvmesh-far-tiering-up-[0-9a-f]+)/.exec(output())?.[1];
      assert.ok(pool !== undefined && existsSync(pool), `the tiering service's far pool\n${output()}`);
      launcher.kill('SIGTERM');
      assert.equal(await exited, 0, output());
      assert.deepEqual(children.filter(alive), [], 'every child stopped with the launcher');
      assert.equal(existsSync(pool), false, 'the far pool (RAM in /dev/shm) is gone with the mesh');
    } finally {
      if (launcher.exitCode === null) launcher.kill('SIGKILL');
    }
  });

  it('up - a launcher killed with SIGKILL leaves no process behind', async () => {
    const dataPort = await freePort();
    const { launcher, exited } = await startUp([
      '--kvstore',
      '1',
      '--no-tiering',
      '--kvstore-data-port',
      String(dataPort),
    ]);
    // --kvstore-data-port: the kvstore node's data channel listens where it was told.
    await new Promise<void>((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port: dataPort }, () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', reject);
    });
    const children = childrenOf(launcher.pid);
    assert.ok(children.length >= 5, `nats + kvstore + prefill + decode + router, got ${children.length}`);
    launcher.kill('SIGKILL');
    await exited;
    // Our services see their stdin pipe end; nats-server gets its parent-death signal (setpriv).
    const deadline = Date.now() + 30_000;
    while (children.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const left = children.filter(alive);
    const commands = left.map((pid) =>
      execFileSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' }).trim(),
    );
    for (const pid of left) process.kill(pid, 'SIGKILL');
    assert.deepEqual(commands, [], 'every child stopped after its launcher was killed');
  });
});
