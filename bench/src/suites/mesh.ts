// The whole mesh under a multi-turn chat workload with shared system prompts, once per routing
// policy: each policy gets a fresh `kvmesh up` (2 kvstore, 2 prefill, 2 decode workers; caches
// start cold) and replays the same seeded workload (../mesh/workload.ts) through the OpenAI chat API
// with streaming. Per policy: TTFT P50/P90 and inter-token latency P50 seen by the client, output
// tokens/s (completion tokens ÷ wall time from the first request to the last reply's end), the
// cached fraction of prompt tokens (Σ cached_tokens ÷ Σ prompt_tokens from the usage chunks), errors,
// and the same split into first turns and later turns; ratio.ttftP90 = round-robin ÷ kv-aware,
// ratio.outputTokps = kv-aware ÷ round-robin. Percentiles are nearest-rank (exact sample values).
//
// Defaults (tiny model): 8 system prompts × 1024 tokens, 32 conversations × 4 turns of 64-token user
// messages, max_tokens 64, think time 1 s mean, conversation starts at λ = 5/s. Capacity, measured
// closed-loop with all 32 conversations started at once and no think time (--rate 1000 --think-ms 1)
// on this 2-core machine when it was quiet: ~17 requests/s (~1080 output tokens/s) under either
// policy. λ = 5 offers ~10 requests/s, about 60% of that: loaded enough for placement to matter,
// not so much that queues grow without bound. Each replay takes about 13 s.
// The machine's own drift between runs (P90 of one policy swung 84-172 ms across back-to-back runs
// here) is larger than the policies' difference, so each policy runs --repeats times (default 3), in
// rounds that alternate the policies' order, and its figures are over all its rounds' requests
// together (384 by default); `rounds` lists each run's P90 and the load average before it.
// Latency percentiles and tokens/s count successful requests; the router figures (plans, decode
// workers chosen) are its /metrics counters and include the launcher's one warm-up request.
//
// Where the store sits. On one machine a fetch from the store crosses loopback, nearly free next to
// computing the tokens on a CPU (fetch ÷ compute per token ~0.05-0.1 here), while in a cluster it
// crosses a NIC and the compute is a GPU's. Where the link can be shaped (root, tc, loopback not
// shaped yet: ../mesh/link.ts), the bench runs the policies twice: first on bare loopback, then with
// each kvstore node's data channel behind a full-duplex link whose rate is calibrated from the
// loopback rounds, so that fetching a token's KV takes --fetch-compute (default 1) times as long
// as the workers measured computing one (their heartbeats, through the router's /metrics; see
// ../mesh/rates.ts for where an 8B model on an H100 behind 25 GbE stands). The JSON's `policies`
// and `ratio` are the network regime's, with `storeLink` saying how it was calibrated and what the
// workers measured, and `loopback` holding the bare-loopback figures beside it. Without the means
// to shape, only loopback runs and `storeLink.network` says why.
// Options: --model tiny|small|DIR, --policies P,P, --system-prompts N, --system-tokens N,
// --conversations N, --turns N, --user-tokens N, --rate R, --think-ms MS, --max-tokens N, --seed N,
// --block-tokens N, --codec C, --kvstore N, --prefill N, --decode N, --request-timeout-ms MS,
// --repeats N, --store-link loopback|calibrated (loopback only; or fail if the link cannot be
// shaped), --fetch-compute X, --store-link-mbit R (the network regime only, at R Mbit/s per
// kvstore node), --kvstore-data-port N (node 0's data port while shaped, default 61100).
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { payloadBytesFor } from '@kvmesh/block';
import { loadModel, type ModelTokenizer } from '@kvmesh/engine';
import { loadKernels, type CodecName } from '@kvmesh/kernels';

import type { BenchContext, BenchSuite } from '../main.ts';
import { streamChat, type ChatSample } from '../mesh/client.ts';
import { ensureModel } from '../models.ts';
import { startMesh, type MeshOptions, type RunningMesh } from '../mesh/launcher.ts';
import { shapeStoreLink, storeLinkUnavailable } from '../mesh/link.ts';
import { metricSamples, metricsUrlOf } from '../mesh/metrics.ts';
import {
  calibratedLinkMbit,
  COMPUTE_RATE,
  FETCH_RATE,
  medianRate,
  sampleWorkerRates,
  type RateSample,
} from '../mesh/rates.ts';
import { generateWorkload, turnPrompt, type Workload, type WorkloadParams } from '../mesh/workload.ts';
import { numberOption, round, stringOption } from '../options.ts';

const OUT_DIR = new URL('../../out/', import.meta.url).pathname;
const POLICIES = ['kv-aware', 'round-robin', 'least-loaded'] as const;
const ERROR_SAMPLES_MAX = 5;
// Data-channel port of kvstore node 0 when the store link is shaped (node i: + i). Above Linux's
// default range of ephemeral ports (32768-60999), so no other connection on the machine shares the
// shaped ports while the bench runs.
const KVSTORE_DATA_PORT = 61100;

interface TurnRecord {
  conversation: number;
  turn: number;
  /** When the request was sent, from the start of the replay. */
  sentAtMs: number;
  turnsDropped: number;
  sample: ChatSample;
}

function intOption(args: readonly string[], name: string, fallback: number): number {
  const value = numberOption(args, name, fallback);
  if (!Number.isInteger(value)) throw new Error(`--${name} needs an integer, got ${value}`);
  return value;
}

function parsePolicies(args: readonly string[]): string[] {
  const raw = stringOption(args, 'policies') ?? 'kv-aware,round-robin';
  const policies = raw.split(',');
  for (const p of policies) {
    if (!(POLICIES as readonly string[]).includes(p))
      throw new Error(`--policies takes ${POLICIES.join(', ')} separated by commas, got '${raw}'`);
  }
  return policies;
}

/** The model's tokenizer, context length and KV payload bytes a token in the mesh's codec and block size. */
function loadTokenizer(
  dir: string,
  mesh: { codec: string; blockTokens: number },
): { tokenizer: ModelTokenizer; contextTokensMax: number; kvBytesPerToken: number } {
  const kernels = loadKernels();
  const { tokenizer, config } = loadModel(dir, kernels);
  const dims = {
    layers: config.layers,
    kvHeads: config.kvHeads,
    blockTokens: mesh.blockTokens,
    headDim: config.headDim,
    groupSize: Math.min(32, mesh.blockTokens, config.headDim),
  };
  return {
    tokenizer,
    contextTokensMax: config.maxContextTokens,
    kvBytesPerToken: payloadBytesFor(kernels, mesh.codec as CodecName, dims) / mesh.blockTokens,
  };
}

/**
 * Where the kvstore nodes sit, from --store-link and --store-link-mbit: on bare loopback; behind a
 * link calibrated from the loopback rounds (both regimes run, loopback first; the default where
 * the link can be shaped); or behind a link of a fixed rate (that regime only).
 */
type StoreLinkPlan =
  | { mode: 'loopback'; why: string }
  | { mode: 'calibrated'; fetchComputeRatio: number }
  | { mode: 'fixed'; mbit: number };

function storeLinkPlan(args: readonly string[]): StoreLinkPlan {
  const fixed = args.includes('--store-link-mbit');
  const mode = stringOption(args, 'store-link') ?? (fixed ? 'fixed' : 'auto');
  if (fixed && mode !== 'fixed')
    throw new Error(`--store-link-mbit sets the link's rate itself: leave out --store-link ${mode}`);
  const unavailable = storeLinkUnavailable();
  switch (mode) {
    case 'fixed':
      if (unavailable !== undefined) throw new Error(`--store-link-mbit: the store link ${unavailable}`);
      return { mode, mbit: numberOption(args, 'store-link-mbit', 0) };
    case 'loopback':
      return { mode, why: 'left out (--store-link loopback)' };
    case 'auto':
    case 'calibrated': {
      if (unavailable !== undefined) {
        if (mode === 'calibrated') throw new Error(`--store-link calibrated: the store link ${unavailable}`);
        return { mode: 'loopback', why: `not run: the store link ${unavailable}` };
      }
      return { mode: 'calibrated', fetchComputeRatio: numberOption(args, 'fetch-compute', 1) };
    }
    default:
      throw new Error(`--store-link takes loopback or calibrated, got '${mode}'`);
  }
}

function describePlan(plan: StoreLinkPlan): string {
  switch (plan.mode) {
    case 'loopback':
      return `loopback only; the network regime ${plan.why.replace(/^not run: /, 'is not run: ')}`;
    case 'calibrated':
      return `loopback, then a link calibrated to fetch ÷ compute = ${plan.fetchComputeRatio}`;
    case 'fixed':
      return `${plan.mbit} Mbit/s per kvstore node`;
  }
}

/** Nearest-rank percentile: the smallest sample with at least p % of the samples at or below it. */
function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1] as number;
}

const ascending = (values: number[]): number[] => values.sort((a, b) => a - b);

interface LatencySummary {
  requests: number;
  errors: number;
  ttftP50Ms: number;
  ttftP90Ms: number;
  ttftP99Ms: number;
  promptTokensMean: number;
  cachedTokenFraction: number;
}

/** TTFT percentiles and cache figures of the successful requests among `records`. */
function latencySummary(records: readonly TurnRecord[]): LatencySummary {
  const ok = records.filter((r) => r.sample.error === undefined);
  const ttft = ascending(ok.flatMap((r) => (r.sample.ttftMs === undefined ? [] : [r.sample.ttftMs])));
  const prompt = ok.reduce((sum, r) => sum + r.sample.promptTokens, 0);
  const cached = ok.reduce((sum, r) => sum + r.sample.cachedTokens, 0);
  return {
    requests: records.length,
    errors: records.length - ok.length,
    ttftP50Ms: round(percentile(ttft, 50)),
    ttftP90Ms: round(percentile(ttft, 90)),
    ttftP99Ms: round(percentile(ttft, 99)),
    promptTokensMean: round(prompt / Math.max(1, ok.length)),
    cachedTokenFraction: round(cached / Math.max(1, prompt)),
  };
}

/** Counters of one metric by one label's value (summed over the other labels), of one pool if given. */
function countersByLabel(text: string, metric: string, label: string, pool?: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const { labels, value } of metricSamples(text, metric)) {
    const key = labels.get(label);
    if (key !== undefined && (pool === undefined || labels.get('pool') === pool))
      out[key] = (out[key] ?? 0) + value;
  }
  return out;
}

/** The router's own view of the run (plans, workers chosen per pool), for telling where time went. */
async function routerCounters(baseUrl: string): Promise<Record<string, unknown>> {
  try {
    const text = await (await fetch(metricsUrlOf(baseUrl))).text();
    const workersOf = (pool: string): Record<string, number> =>
      countersByLabel(text, 'kvmesh_router_routing_decisions_total', 'worker', pool);
    return {
      plans: countersByLabel(text, 'kvmesh_router_plans_total', 'plan'),
      // Prompt tokens by where the chosen decode worker was estimated to get them (local, store, computed).
      decodeTokens: countersByLabel(text, 'kvmesh_router_routed_prompt_tokens_total', 'source', 'decode'),
      decodeWorkers: workersOf('decode'),
      prefillWorkers: workersOf('prefill'),
    };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

async function replay(
  workload: Workload,
  baseUrl: string,
  model: string,
  tokenizer: ModelTokenizer,
  contextTokensMax: number,
  requestTimeoutMs: number,
  log: BenchContext['log'],
): Promise<{ records: TurnRecord[]; wallSeconds: number }> {
  const records: TurnRecord[] = [];
  const total = workload.conversations.length * workload.params.turns;
  const start = performance.now();
  let lastEnd = start;
  const conversation = async (c: Workload['conversations'][number]): Promise<void> => {
    await sleep(Math.max(0, start + c.startMs - performance.now()));
    const replies: string[] = [];
    for (let turn = 0; turn < workload.params.turns; turn++) {
      const prompt = turnPrompt(workload, c, turn, replies, tokenizer, contextTokensMax);
      const sentAtMs = performance.now() - start;
      const sample = await streamChat({
        baseUrl,
        model,
        messages: prompt.messages,
        maxTokens: workload.params.maxTokens,
        timeoutMs: requestTimeoutMs,
      });
      lastEnd = Math.max(lastEnd, performance.now());
      records.push({ conversation: c.index, turn, sentAtMs, turnsDropped: prompt.turnsDropped, sample });
      if (records.length % 16 === 0 || records.length === total)
        log(`  ${records.length}/${total} requests, ${((performance.now() - start) / 1000).toFixed(1)} s`);
      // NOTE: after an error the conversation goes on with whatever reply arrived (often none).
      replies.push(sample.text);
      const think = c.thinkMs[turn];
      if (think !== undefined) await sleep(think);
    }
  };
  await Promise.all(workload.conversations.map(conversation));
  return { records, wallSeconds: (lastEnd - start) / 1000 };
}

interface PolicyRun {
  records: TurnRecord[];
  wallSeconds: number;
  loadAverage1m: number;
  router: Record<string, unknown>;
  /** Bytes through the emulated store links during the run, from the mesh's start to the last reply. */
  storeLinkBytes: number | undefined;
  /** The workers' measured rates, read from the router every second during the replay. */
  rateSamples: RateSample[];
}

/** Where the kvstore nodes sit during a set of rounds: on bare loopback, or behind the shaped link. */
type Regime = 'loopback' | 'network';

interface WorkerRates {
  /** Medians over every worker and every second of the regime's replays (ms). */
  computeMsPerToken?: number;
  fetchMsPerToken?: number;
  fetchComputeRatio?: number;
}

interface RegimeResult {
  results: Record<string, PolicyResult>;
  ratio: { ttftP90: number | null; outputTokps: number | null };
  workerRates: WorkerRates;
}

function workerRatesOf(samples: readonly RateSample[]): WorkerRates {
  const compute = medianRate(samples, COMPUTE_RATE);
  const fetch = medianRate(samples, FETCH_RATE);
  return {
    ...(compute === undefined ? {} : { computeMsPerToken: round(compute) }),
    ...(fetch === undefined ? {} : { fetchMsPerToken: round(fetch) }),
    ...(compute === undefined || fetch === undefined ? {} : { fetchComputeRatio: round(fetch / compute, 3) }),
  };
}

/** round-robin's P90 TTFT over kv-aware's, and kv-aware's output tokens/s over round-robin's. */
function ratioOf(results: Readonly<Record<string, PolicyResult>>): RegimeResult['ratio'] {
  const kvAware = results['kv-aware'];
  const roundRobin = results['round-robin'];
  return kvAware === undefined || roundRobin === undefined
    ? { ttftP90: null, outputTokps: null }
    : {
        ttftP90: round(roundRobin.ttftP90Ms / kvAware.ttftP90Ms, 3),
        outputTokps: round(kvAware.outputTokps / roundRobin.outputTokps, 3),
      };
}

/** A regime beside the headline one: its contract figures, per-round P90s and the ratio. */
function compactRegime(regime: RegimeResult): Record<string, unknown> {
  const policies: Record<string, unknown> = {};
  for (const [policy, r] of Object.entries(regime.results)) {
    const { ttftP50Ms, ttftP90Ms, itlP50Ms, outputTokps, cachedTokenFraction, errors, rounds } = r;
    policies[policy] = { ttftP50Ms, ttftP90Ms, itlP50Ms, outputTokps, cachedTokenFraction, errors, rounds };
  }
  return { policies, ratio: regime.ratio, workerRates: regime.workerRates };
}

/** Every request's timing, for telling where a tail came from (not part of the JSON line). */
function writeSamples(file: string, records: readonly TurnRecord[]): void {
  writeFileSync(
    file,
    records
      .map((r) => {
        const { interTokenMs, text, ...sample } = r.sample;
        return JSON.stringify({
          ...r,
          sample: { ...sample, tokens: interTokenMs.length + 1, chars: text.length },
        });
      })
      .join('\n') + '\n',
  );
}

const round3 = (value: number): number => round(value, 3);

/** The router counters of several runs added up, leaf by leaf (a leaf missing from a run counts 0). */
function sumCounters(runs: readonly Record<string, unknown>[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const run of runs) {
    for (const [key, value] of Object.entries(run)) {
      if (typeof value === 'number') out[key] = ((out[key] as number | undefined) ?? 0) + value;
      else if (typeof value === 'object' && value !== null)
        out[key] = sumCounters([
          (out[key] as Record<string, unknown> | undefined) ?? {},
          value as Record<string, unknown>,
        ]);
      else out[key] = value;
    }
  }
  return out;
}

interface PolicyResult {
  ttftP50Ms: number;
  ttftP90Ms: number;
  itlP50Ms: number;
  outputTokps: number;
  cachedTokenFraction: number;
  [more: string]: unknown;
}

function policySummary(records: readonly TurnRecord[], wallSeconds: number): PolicyResult {
  const ok = records.filter((r) => r.sample.error === undefined);
  const itl = ascending(ok.flatMap((r) => r.sample.interTokenMs));
  const completionTokens = ok.reduce((sum, r) => sum + r.sample.completionTokens, 0);
  const all = latencySummary(records);
  const errorSamples = [
    ...new Set(records.flatMap((r) => (r.sample.error === undefined ? [] : [r.sample.error]))),
  ];
  return {
    ttftP50Ms: all.ttftP50Ms,
    ttftP90Ms: all.ttftP90Ms,
    itlP50Ms: round(percentile(itl, 50)),
    outputTokps: round(completionTokens / wallSeconds),
    cachedTokenFraction: all.cachedTokenFraction,
    ttftP99Ms: all.ttftP99Ms,
    itlP90Ms: round(percentile(itl, 90)),
    requests: records.length,
    errors: all.errors,
    ...(errorSamples.length > 0 ? { errorSamples: errorSamples.slice(0, ERROR_SAMPLES_MAX) } : {}),
    completionTokens,
    promptTokensMean: all.promptTokensMean,
    turnsDropped: records.reduce((sum, r) => sum + r.turnsDropped, 0),
    wallSeconds: round(wallSeconds),
    firstTurns: latencySummary(records.filter((r) => r.turn === 0)),
    laterTurns: latencySummary(records.filter((r) => r.turn > 0)),
  };
}

export const suite: BenchSuite = {
  name: 'mesh',
  description: 'the whole mesh (2 kvstore, 2 prefill, 2 decode) on multi-turn chat, per routing policy',
  async run({ args, log }: BenchContext) {
    const policies = parsePolicies(args);
    const params: WorkloadParams = {
      systemPrompts: intOption(args, 'system-prompts', 8),
      systemTokens: intOption(args, 'system-tokens', 1024),
      conversations: intOption(args, 'conversations', 32),
      turns: intOption(args, 'turns', 4),
      userTokens: intOption(args, 'user-tokens', 64),
      ratePerSecond: numberOption(args, 'rate', 5),
      thinkMs: numberOption(args, 'think-ms', 1000),
      maxTokens: intOption(args, 'max-tokens', 64),
      seed: intOption(args, 'seed', 1),
    };
    const mesh = {
      kvstore: intOption(args, 'kvstore', 2),
      prefill: intOption(args, 'prefill', 2),
      decode: intOption(args, 'decode', 2),
      blockTokens: intOption(args, 'block-tokens', 64),
      codec: stringOption(args, 'codec') ?? 'f32',
    };
    const link = storeLinkPlan(args);
    const kvstoreDataPort =
      link.mode === 'loopback' ? undefined : intOption(args, 'kvstore-data-port', KVSTORE_DATA_PORT);
    const requestTimeoutMs = numberOption(args, 'request-timeout-ms', 120_000);
    const repeats = intOption(args, 'repeats', 3);
    if (repeats < 1) throw new Error(`--repeats needs at least 1, got ${repeats}`);
    const model = ensureModel(log, stringOption(args, 'model') ?? 'tiny');

    const { tokenizer, contextTokensMax, kvBytesPerToken } = loadTokenizer(model.dir, mesh);
    const workload = generateWorkload(params, tokenizer);
    for (const c of workload.conversations) {
      const first = turnPrompt(workload, c, 0, [], tokenizer, contextTokensMax);
      if (first.promptTokens + params.maxTokens > contextTokensMax)
        throw new Error(
          `a first turn has ${first.promptTokens} prompt tokens + max_tokens ${params.maxTokens}, more ` +
            `than the model's context of ${contextTokensMax}: lower --system-tokens or --user-tokens`,
        );
    }
    const lastStartS = (workload.conversations.at(-1)?.startMs ?? 0) / 1000;
    log(
      `model ${model.name} (context ${contextTokensMax}), ${params.conversations} conversations × ` +
        `${params.turns} turns over ${params.systemPrompts} system prompts of ${params.systemTokens} ` +
        `tokens; starts span ${lastStartS.toFixed(1)} s; store link: ${describePlan(link)}`,
    );

    mkdirSync(join(OUT_DIR, 'mesh'), { recursive: true });
    const runPolicy = async (
      regime: Regime,
      storeLinkMbit: number | undefined,
      policy: string,
      round: number,
    ): Promise<PolicyRun> => {
      const meshOptions: MeshOptions = {
        modelDir: model.dir,
        policy,
        ...mesh,
        ...(storeLinkMbit === undefined || kvstoreDataPort === undefined ? {} : { kvstoreDataPort }),
        logFile: join(OUT_DIR, 'mesh', `${regime}-${policy}.log`),
      };
      // Others may share this machine: the load before the mesh starts says how quiet it was.
      const loadAverage1m = round3(loadavg()[0] ?? 0);
      log(
        `${regime} round ${round}, ${policy}: starting the mesh (log ${meshOptions.logFile}), load average ${loadAverage1m}`,
      );
      const shaped =
        meshOptions.kvstoreDataPort === undefined || storeLinkMbit === undefined
          ? undefined
          : shapeStoreLink(
              Array.from({ length: mesh.kvstore }, (_, i) => (meshOptions.kvstoreDataPort as number) + i),
              storeLinkMbit,
            );
      let running: RunningMesh | undefined;
      try {
        running = await startMesh(meshOptions);
        const models = (await (await fetch(`${running.baseUrl}/models`)).json()) as {
          data: { id: string }[];
        };
        const served = models.data[0]?.id ?? model.name;
        const sampler = sampleWorkerRates(metricsUrlOf(running.baseUrl));
        const replayed = await replay(
          workload,
          running.baseUrl,
          served,
          tokenizer,
          contextTokensMax,
          requestTimeoutMs,
          log,
        );
        const rateSamples = await sampler.stop();
        const router = await routerCounters(running.baseUrl);
        const storeLinkBytes = shaped?.bytes();
        const run = { ...replayed, loadAverage1m, router, storeLinkBytes, rateSamples };
        log(
          `${regime} round ${round}, ${policy}: ${JSON.stringify(policySummary(replayed.records, replayed.wallSeconds))}`,
        );
        return run;
      } finally {
        await running?.stop();
        shaped?.remove();
      }
    };

    // Rounds alternate the policies' order, so a machine that drifts (other tenants, thermal) weighs
    // on each policy alike; each policy's figures are over all of its rounds' requests together.
    const runRegime = async (regime: Regime, storeLinkMbit: number | undefined): Promise<RegimeResult> => {
      const runs = new Map<string, PolicyRun[]>(policies.map((p) => [p, []]));
      for (let round = 1; round <= repeats; round++) {
        const order = round % 2 === 1 ? policies : [...policies].reverse();
        for (const policy of order)
          runs.get(policy)?.push(await runPolicy(regime, storeLinkMbit, policy, round));
      }
      const results: Record<string, PolicyResult> = {};
      for (const [policy, policyRuns] of runs) {
        const records = policyRuns.flatMap((r, i) =>
          r.records.map((record) => ({ ...record, round: i + 1 })),
        );
        results[policy] = {
          ...policySummary(
            records,
            policyRuns.reduce((sum, r) => sum + r.wallSeconds, 0),
          ),
          rounds: policyRuns.map((r) => ({
            ttftP90Ms: latencySummary(r.records).ttftP90Ms,
            loadAverage1m: r.loadAverage1m,
          })),
          router: sumCounters(policyRuns.map((r) => r.router)),
          ...(storeLinkMbit === undefined
            ? {}
            : { storeLinkBytes: policyRuns.reduce((sum, r) => sum + (r.storeLinkBytes ?? 0), 0) }),
        };
        writeSamples(join(OUT_DIR, 'mesh', `${regime}-${policy}-samples.jsonl`), records);
      }
      const samples = [...runs.values()].flat().flatMap((r) => r.rateSamples);
      return { results, ratio: ratioOf(results), workerRates: workerRatesOf(samples) };
    };

    const regimes: Partial<Record<Regime, RegimeResult>> = {};
    let storeLink: Record<string, unknown>;
    if (link.mode === 'fixed') {
      regimes.network = await runRegime('network', link.mbit);
      storeLink = { regime: 'network', mbit: link.mbit };
    } else {
      regimes.loopback = await runRegime('loopback', undefined);
      storeLink = { regime: 'loopback', ...(link.mode === 'loopback' ? { network: link.why } : {}) };
      if (link.mode === 'calibrated') {
        const computeMsPerToken = regimes.loopback.workerRates.computeMsPerToken;
        if (computeMsPerToken === undefined)
          throw new Error('no worker reported a compute rate during the loopback rounds: cannot calibrate');
        const mbit = round(calibratedLinkMbit(kvBytesPerToken, computeMsPerToken, link.fetchComputeRatio));
        log(
          `store link calibrated: ${kvBytesPerToken} KV bytes a token, ${computeMsPerToken.toFixed(4)} ms a ` +
            `computed token on loopback, fetch ÷ compute ${link.fetchComputeRatio} → ${mbit} Mbit/s`,
        );
        regimes.network = await runRegime('network', mbit);
        storeLink = {
          regime: 'network',
          mbit,
          calibration: {
            fetchComputeRatio: link.fetchComputeRatio,
            kvBytesPerToken,
            computeMsPerToken: round(computeMsPerToken),
          },
        };
      }
    }
    // The headline is the store behind a network when it ran; the other regime sits beside it.
    const headline = (regimes.network ?? regimes.loopback) as RegimeResult;
    return {
      model: model.name,
      policies: headline.results,
      ratio: headline.ratio,
      storeLink: { ...storeLink, workerRates: headline.workerRates },
      ...(regimes.network !== undefined && regimes.loopback !== undefined
        ? { loopback: compactRegime(regimes.loopback) }
        : {}),
      workload: params,
      repeats,
      mesh,
      machine: { cores: availableParallelism(), cpu: cpus()[0]?.model ?? 'unknown' },
    };
  },
};
