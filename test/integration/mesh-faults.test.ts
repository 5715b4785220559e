// Faults in the serving mesh, every service a real child process: nats-server (JetStream), two
// kvstore nodes (R = 2), one prefill and two decode workers and the router, tiny generated model.
// What must hold: a decode worker killed with SIGKILL mid-stream ends that stream with a clear error
// (never a hang) while the other stream completes, and the next requests are served by the
// survivor; a NATS restart (crash, same store) is survived: the router serves again and its block
// index recovers; a kvstore node killed with SIGKILL leaves the mesh serving from the other replica.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  REPO_ROOT,
  spawnKvStoreNodes,
  spawnService,
  startNatsServer,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';

const B = 16;
const TOKEN = 'mesh-faults-token';
const HEARTBEAT_MS = 200;
const MISSED_MAX = 3;

interface StreamResult {
  text: string;
  chunks: number;
  finish: string | null;
  /** The error object of an SSE error event, or the HTTP error body. */
  error: { message: string; type: string } | null;
  cached: number;
}

describe('mesh faults - every service a child process', { timeout: 240_000 }, () => {
  let dir = '';
  let modelDir = '';
  let nats: NatsServerHandle;
  const kv: ServiceHandle[] = [];
  const decoders: ServiceHandle[] = [];
  let prefill: ServiceHandle;
  let router: ServiceHandle;
  let base = '';

  const workerEnv = (nodeId: string): Record<string, string> => ({
    KVMESH_NODE_ID: nodeId,
    KVMESH_MODEL_DIR: modelDir,
    KVMESH_NATS_URL: nats.url,
    KVMESH_DATA_TOKEN: TOKEN,
    KVMESH_REPLICAS: '2',
    KVMESH_BLOCK_TOKENS: String(B),
    KVMESH_CODEC: 'f32',
    KVMESH_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
    KVMESH_STORE_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
    KVMESH_STORE_MISSED_HEARTBEATS_MAX: String(MISSED_MAX),
    KVMESH_STORE_TIMEOUT_MS: '3s',
    KVMESH_LOG_LEVEL: 'warn',
  });
  const spawnDecode = (nodeId: string) =>
    spawnService({ name: nodeId, entry: 'services/decode/src/main.ts', env: workerEnv(nodeId) });

  /** A streamed completion, read to its end; errors come back in the result, not thrown. */
  const stream = async (
    prompt: string,
    maxTokens: number,
    onChunk?: (chunks: number) => void,
  ): Promise<StreamResult> => {
    const res = await fetch(`${base}/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'tiny',
        prompt,
        max_tokens: maxTokens,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    const result: StreamResult = { text: '', chunks: 0, finish: null, error: null, cached: 0 };
    if (res.status !== 200) {
      result.error = ((await res.json()) as { error: { message: string; type: string } }).error;
      return result;
    }
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffered.indexOf('\n\n')) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
        const data = JSON.parse(event.slice('data: '.length)) as {
          error?: { message: string; type: string };
          choices?: { text: string; finish_reason: string | null }[];
          usage?: { prompt_tokens_details: { cached_tokens: number } } | null;
        };
        if (data.error !== undefined) result.error = data.error;
        for (const choice of data.choices ?? []) {
          result.text += choice.text;
          result.finish = choice.finish_reason ?? result.finish;
          result.chunks++;
          onChunk?.(result.chunks);
        }
        if (data.usage) result.cached = data.usage.prompt_tokens_details.cached_tokens;
      }
    }
    return result;
  };

  /** The router's per-node index seqs from /metrics. */
  const indexSeqs = async (): Promise<Map<string, number>> => {
    const text = await (await fetch(base.replace(/\/v1$/, '/metrics'))).text();
    const seqs = new Map<string, number>();
    for (const m of text.matchAll(/^kvmesh_router_index_node_seq\{node="([^"]+)"\} (\d+)$/gm))
      seqs.set(m[1] as string, Number(m[2]));
    return seqs;
  };
  const storeSeq = (seqs: Map<string, number>): number => (seqs.get('kv-a') ?? 0) + (seqs.get('kv-b') ?? 0);

  const words = ['cache', 'block', 'mesh', 'token', 'prefix', 'store', 'route', 'decode'];
  const promptOf = (seed: number, length: number): string =>
    Array.from({ length }, (_, i) => words[(i * 5 + seed * 3 + (i >> 2)) % 8]).join(' ');

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvmesh-mesh-faults-'));
    modelDir = join(dir, 'tiny');
    // The CLI, not @kvmesh/engine: the harness package must not depend on the engine (a cycle).
    execFileSync(
      process.execPath,
      [
        join(REPO_ROOT, 'lib/cli/bin/kvmesh.mjs'),
        'model',
        'init',
        '--out',
        modelDir,
        '--preset',
        'tiny',
        '--seed',
        '11',
      ],
      { stdio: 'ignore' },
    );
    nats = await startNatsServer({ jetstream: true });
    kv.push(
      ...(await spawnKvStoreNodes({
        natsUrl: nats.url,
        nodeIds: ['kv-a', 'kv-b'],
        heartbeatIntervalMs: HEARTBEAT_MS,
        missedHeartbeatsMax: MISSED_MAX,
        dataToken: TOKEN,
      })),
    );
    let started: ServiceHandle[];
    [prefill, ...started] = await Promise.all([
      spawnService({ name: 'prefill-0', entry: 'services/prefill/src/main.ts', env: workerEnv('prefill-0') }),
      spawnDecode('decode-0'),
      spawnDecode('decode-1'),
    ]);
    decoders.push(...started);
    router = await spawnService({
      name: 'router',
      entry: 'services/router/src/main.ts',
      env: {
        KVMESH_MODEL_DIR: modelDir,
        KVMESH_NATS_URL: nats.url,
        KVMESH_HTTP_PORT: '0',
        KVMESH_POLICY: 'round-robin',
        KVMESH_BLOCK_TOKENS: String(B),
        KVMESH_CODEC: 'f32',
        KVMESH_PREFILL_UNCACHED_TOKENS_MIN: String(2 * B),
        KVMESH_WORKER_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
        KVMESH_WORKER_MISSED_HEARTBEATS_MAX: String(MISSED_MAX),
        KVMESH_LOG_LEVEL: 'warn',
      },
    });
    base = `http://${String(router.info.httpAddress)}/v1`;
    // Until the kvstore nodes meet each other, puts (and so prefills) fail: warm up.
    await waitFor(
      async () => {
        const r = await stream(promptOf(99, 40), 2);
        return r.error === null && r.finish !== null;
      },
      { timeoutMs: 30_000, intervalMs: 300, message: 'a prefilled completion through the mesh' },
    );
  });

  after(async () => {
    for (const s of [router, prefill, ...decoders, ...kv]) await s?.stop();
    await nats?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('faults - a decode worker killed mid-stream fails its stream clearly; the survivor serves the rest', async () => {
    // Round-robin: two concurrent streams land on the two decode workers.
    let started = 0;
    let kill: Promise<unknown> | undefined;
    const onChunk = (chunks: number): void => {
      if (chunks === 3 && ++started === 2) kill = decoders[0]?.kill9();
    };
    const results = await Promise.all([
      stream(promptOf(1, 10), 400, onChunk),
      stream(promptOf(2, 10), 400, onChunk),
    ]);
    await kill;
    const failed = results.filter((r) => r.error !== null);
    const completed = results.filter((r) => r.error === null && r.finish !== null);
    assert.equal(completed.length + failed.length, 2, JSON.stringify(results));
    assert.ok(completed.length >= 1, `the other stream completes: ${JSON.stringify(results)}`);
    for (const r of failed) assert.match(r.error?.message ?? '', /decode|unavailable|worker/i);

    // Until its heartbeats lapse the router may still pick the dead worker: those requests are
    // retried on the live one (no token was sent yet), so every request succeeds.
    for (let i = 0; i < 4; i++) {
      const r = await stream(promptOf(10 + i, 8), 4);
      assert.equal(r.error, null, `request ${i} after the kill: ${JSON.stringify(r.error)}`);
      assert.ok(r.finish !== null);
    }
  });

  it('faults - after a NATS crash and restart the router serves again and its index recovers', async () => {
    const prompt = promptOf(40, 70);
    const first = await stream(prompt, 4);
    assert.equal(first.error, null);
    await nats.kill('SIGKILL');
    // Long enough for every heartbeat to lapse: membership must be rebuilt from new heartbeats.
    await new Promise((resolve) => setTimeout(resolve, (MISSED_MAX + 3) * HEARTBEAT_MS));
    const during = await stream(prompt, 4);
    assert.ok(
      during.error === null || /worker|unavailable/i.test(during.error.message),
      JSON.stringify(during),
    );
    await nats.restart();
    // Heartbeats and kv events resume once every client reconnects; a repeat of the prompt is
    // routed with its cached prefix again.
    await waitFor(
      async () => {
        const r = await stream(prompt, 4);
        return r.error === null && r.cached > 0 && r.text === first.text;
      },
      { timeoutMs: 30_000, intervalMs: 500, message: 'the mesh serves cached prefixes after the restart' },
    );
    // The index follows the event stream again: a new prompt's stored blocks reach it.
    const before = storeSeq(await indexSeqs());
    const fresh = await stream(promptOf(50, 60), 4);
    assert.equal(fresh.error, null);
    await waitFor(async () => storeSeq(await indexSeqs()) > before, {
      timeoutMs: 15_000,
      intervalMs: 200,
      message: "the router's index applies kv events published after the restart",
    });
  });
  it('faults - a kvstore node killed with SIGKILL leaves the mesh serving from the other replica', async () => {
    const prompt = promptOf(20, 60);
    const before = await stream(prompt, 4);
    assert.equal(before.error, null);
    await kv[0]?.kill9();
    // The prefix stored under R = 2 is still served from the survivor; new prompts are still served
    // (their blocks cannot reach R = 2 copies, so they are computed, not stored).
    await waitFor(
      async () => {
        const r = await stream(prompt, 4);
        return r.error === null && r.cached > 0 && r.text === before.text;
      },
      { timeoutMs: 20_000, intervalMs: 300, message: 'the surviving replica serves the cached prefix' },
    );
    for (let i = 0; i < 3; i++) {
      const r = await stream(promptOf(30 + i, 50), 4);
      assert.equal(r.error, null, `new prompt ${i} with one kvstore node: ${JSON.stringify(r.error)}`);
    }
  });
});
