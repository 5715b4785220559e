// Routing policies over crafted pools: kv-aware weighs local prefix, store fetch, recompute and queue
// (exact estimates under binary-exact costs), round-robin rotates by id across membership changes,
// least-loaded orders by queue, sequences and id; plus the conditional-disaggregation threshold,
// the index → route path, and config / input errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';
import { Tier, parseNodeId, type NodeId } from '@kvmesh/protocol';

import {
  BlockIndex,
  NoWorkerAvailableError,
  ROUTING_DEFAULTS,
  WorkerRouter,
  planRequest,
  resolveRoutingConfig,
  storeBlockTiers,
  storeCachedBlocks,
  type RouteInput,
  type RoutingConfig,
  type WorkerCandidate,
} from '../../src/core/index.ts';
import { NS, chainOf, event, hs } from './helpers.ts';

const DA = parseNodeId('dec-a');
const DB = parseNodeId('dec-b');
const DC = parseNodeId('dec-c');
const DD = parseNodeId('dec-d');

/** Binary-exact costs so estimates compare with ===. */
const COSTS: RoutingConfig = {
  prefillMsPerToken: 0.5,
  transferMsPerToken: 0.0625,
  queueWaitMsPerRequest: 100,
  activeSequenceMs: 0,
};

function worker(nodeId: NodeId, queueDepth = 0, activeSequences = 0, localCachedBlocks = 0): WorkerCandidate {
  return { nodeId, queueDepth, activeSequences, localCachedBlocks };
}

function input(workers: WorkerCandidate[], promptTokens = 1024, storeCachedBlocks = 0): RouteInput {
  return { promptTokens, blockSizeTokens: 64, storeCachedBlocks, workers };
}

test('kv-aware - the worker holding the prefix locally beats fetching it from the store', () => {
  const router = new WorkerRouter({ ...COSTS, policy: 'kv-aware' });
  const decision = router.route(input([worker(DB), worker(DA, 0, 0, 16)], 1024, 16));
  assert.deepEqual(decision, {
    nodeId: DA,
    policy: 'kv-aware',
    estimate: {
      nodeId: DA,
      promptTokens: 1024,
      cachedTokens: 1024,
      localCachedTokens: 1024,
      fetchedTokens: 0,
      uncachedTokens: 0,
      workMs: 0,
      transferMsPerToken: 0.0625,
      ttftMs: 0,
    },
  });
  // One queued request (100 ms) costs more than fetching 1024 tokens (64 ms): the store path wins.
  const busy = router.route(input([worker(DB), worker(DA, 1, 0, 16)], 1024, 16));
  assert.equal(busy.nodeId, DB);
  assert.equal(busy.estimate.fetchedTokens, 1024);
  assert.equal(busy.estimate.ttftMs, 64);
});

test('kv-aware - with no store copy, the cached worker wins unless its queue is much deeper', () => {
  const router = new WorkerRouter({ ...COSTS, policy: 'kv-aware' });
  // Recomputing 1024 tokens costs 512 ms; each queued request on dec-a costs 100 ms.
  assert.equal(router.route(input([worker(DA, 5, 0, 16), worker(DB)])).nodeId, DA);
  const deep = router.route(input([worker(DA, 6, 0, 16), worker(DB)]));
  assert.equal(deep.nodeId, DB);
  assert.equal(deep.estimate.uncachedTokens, 1024);
  assert.equal(deep.estimate.ttftMs, 512);
});

test('kv-aware - sequences running on a worker weigh against it (activeSequenceMs each)', () => {
  const router = new WorkerRouter({ ...COSTS, activeSequenceMs: 32, policy: 'kv-aware' });
  // Fetching 1024 tokens costs 64 ms: one running sequence (32 ms) is cheaper; two tie and the
  // lighter load wins; three lose.
  assert.equal(router.route(input([worker(DB), worker(DA, 0, 1, 16)], 1024, 16)).nodeId, DA);
  assert.equal(router.route(input([worker(DB), worker(DA, 0, 2, 16)], 1024, 16)).nodeId, DB);
  const loaded = router.route(input([worker(DB), worker(DA, 0, 3, 16)], 1024, 16));
  assert.equal(loaded.nodeId, DB);
  assert.equal(loaded.estimate.ttftMs, 64);
});

test('kv-aware - local prefix, store remainder and recompute add up exactly', () => {
  const router = new WorkerRouter({ ...COSTS, policy: 'kv-aware' });
  // 700 tokens; dec-a holds 4 blocks (256), the store 10 (640): fetch 384, compute 60.
  const decision = router.route(input([worker(DB), worker(DA, 0, 0, 4)], 700, 10));
  assert.deepEqual(decision.estimate, {
    nodeId: DA,
    promptTokens: 700,
    cachedTokens: 640,
    localCachedTokens: 256,
    fetchedTokens: 384,
    uncachedTokens: 60,
    workMs: 60 * 0.5 + 384 * 0.0625,
    transferMsPerToken: 0.0625,
    ttftMs: 60 * 0.5 + 384 * 0.0625,
  });
  // dec-b would fetch all 640 tokens: 30 + 40 = 70 ms against dec-a's 54 ms.
  assert.equal(decision.estimate.ttftMs, 54);
});

test('kv-aware - known pending work replaces the per-request queue price', () => {
  const router = new WorkerRouter({ ...COSTS, policy: 'kv-aware' });
  // dec-a holds the prefix but has 70 ms of work queued ahead; fetching from the store costs 64 ms.
  const pending = (nodeId: NodeId, pendingMs: number, local = 0): WorkerCandidate => ({
    ...worker(nodeId, 1, 0, local),
    pendingMs,
  });
  const decision = router.route(input([pending(DA, 70, 16), pending(DB, 0)], 1024, 16));
  assert.equal(decision.nodeId, DB);
  assert.equal(decision.estimate.workMs, 64);
  assert.equal(decision.estimate.ttftMs, 64);
  // 60 ms queued: waiting for the local copy is cheaper. The queue depth (1 × 100 ms) is not priced.
  const local = router.route(input([pending(DA, 60, 16), pending(DB, 0)], 1024, 16));
  assert.equal(local.nodeId, DA);
  assert.equal(local.estimate.workMs, 0);
  assert.equal(local.estimate.ttftMs, 60);
});

test("kv-aware - a worker's measured rates replace the cost model's; far and SSD copies keep theirs", () => {
  const router = new WorkerRouter({
    ...COSTS,
    activeSequenceMs: 8,
    ssdTransferMsPerToken: 1,
    policy: 'kv-aware',
  });
  const measured: WorkerCandidate = {
    ...worker(DA, 0, 2, 2),
    rates: { prefillMsPerToken: 0.25, transferMsPerToken: 0.125, activeSequenceMs: 4 },
  };
  // 700 tokens: 2 local blocks (128), 8 in the store (the last on SSD): fetch 320 + 64, compute 188.
  const tiers = [Tier.TIER_DRAM, Tier.TIER_DRAM, Tier.TIER_DRAM, Tier.TIER_DRAM, Tier.TIER_DRAM];
  const estimate = router.route({
    ...input([measured], 700, 8),
    storeBlockTiers: [...tiers, Tier.TIER_DRAM, Tier.TIER_DRAM, Tier.TIER_SSD],
  }).estimate;
  assert.equal(estimate.workMs, 188 * 0.25 + 320 * 0.125 + 64 * 1);
  assert.equal(estimate.transferMsPerToken, 0.125);
  assert.equal(estimate.ttftMs, estimate.workMs + 2 * 4);
  // A rate of 0 (not measured yet) falls back to the cost model's.
  const unmeasured = router.route(
    input([{ ...worker(DA, 0, 1), rates: { prefillMsPerToken: 0, activeSequenceMs: 0 } }], 640),
  ).estimate;
  assert.equal(unmeasured.ttftMs, 640 * 0.5 + 8);
});

test('kv-aware - equal estimates fall to the lighter worker, then the least recently chosen, then the lowest id', () => {
  const router = new WorkerRouter({ ...COSTS, policy: 'kv-aware' });
  assert.equal(router.route(input([worker(DA, 0, 3), worker(DB, 0, 1)])).nodeId, DB);
  const equals = [worker(DC), worker(DB), worker(DA)];
  // dec-a and dec-c were never chosen (the lower id first), then dec-b is the least recent.
  const chosen = [1, 2, 3, 4, 5].map(() => router.route(input(equals)).nodeId);
  assert.deepEqual(chosen, [DA, DC, DB, DA, DC]);
  // A lower estimate still wins over recency.
  assert.equal(router.route(input([worker(DA), worker(DB, 0, 0, 16)], 1024, 0)).nodeId, DB);
});

test('round-robin - rotates by id and stays fair when workers join or leave', () => {
  const router = new WorkerRouter({ policy: 'round-robin' });
  const pool = [worker(DC), worker(DA, 9), worker(DB)];
  const chosen = [1, 2, 3, 4].map(() => router.route(input(pool)).nodeId);
  assert.deepEqual(chosen, [DA, DB, DC, DA]);
  assert.equal(
    router.route(input([worker(DA), worker(DC)])).nodeId,
    DC,
    'dec-b left: after dec-a comes dec-c',
  );
  assert.equal(router.route(input([worker(DA), worker(DC), worker(DD)])).nodeId, DD, 'dec-d joined');
  assert.equal(router.route(input([worker(DA), worker(DC), worker(DD)])).nodeId, DA, 'wraps');
  // Every policy reports the estimate of the worker it chose.
  const decision = router.route(input([worker(DA), worker(DB, 2, 0, 16)], 1024, 0));
  assert.equal(decision.nodeId, DB);
  assert.equal(decision.estimate.ttftMs, 2 * 50);
});

test('least-loaded - lowest queue, then fewest active sequences, then least recently chosen, then lowest id; cache ignored', () => {
  const router = new WorkerRouter({ policy: 'least-loaded' });
  assert.equal(router.route(input([worker(DA, 2, 0, 16), worker(DB, 1, 5), worker(DC, 1, 2)])).nodeId, DC);
  assert.equal(router.route(input([worker(DC, 1, 2), worker(DA, 1, 2)])).nodeId, DA, 'dec-c was chosen last');
  assert.equal(
    router.route(input([worker(DB, 0, 0), worker(DA, 0, 0, 16)])).nodeId,
    DB,
    'dec-a was chosen last',
  );
  const fresh = new WorkerRouter({ policy: 'least-loaded' });
  assert.equal(fresh.route(input([worker(DB, 0, 0), worker(DA, 0, 0, 16)])).nodeId, DA, 'the lowest id');
});

test('planRequest - decode-only below prefillUncachedTokensMin, prefill-then-decode from it', () => {
  const config = resolveRoutingConfig();
  assert.equal(config.prefillUncachedTokensMin, 512);
  assert.deepEqual(planRequest({ promptTokens: 600, cachedTokens: 89 }, config), {
    kind: 'decode-only',
    uncachedTokens: 511,
  });
  assert.deepEqual(planRequest({ promptTokens: 600, cachedTokens: 88 }, config), {
    kind: 'prefill-then-decode',
    uncachedTokens: 512,
  });
  assert.deepEqual(planRequest({ promptTokens: 600, cachedTokens: 600 }, config), {
    kind: 'decode-only',
    uncachedTokens: 0,
  });
  assert.equal(
    planRequest({ promptTokens: 1, cachedTokens: 0 }, { prefillUncachedTokensMin: 0 }).kind,
    'prefill-then-decode',
  );
  assert.equal(
    planRequest({ promptTokens: 10_000, cachedTokens: 0 }, { prefillUncachedTokensMin: 10_001 }).kind,
    'decode-only',
  );
});

test('routing - from index match to decode worker and plan', () => {
  const index = new BlockIndex();
  const kv0 = parseNodeId('kv-0');
  const kv1 = parseNodeId('kv-1');
  index.apply(event(kv0, 1, { stored: chainOf([1, 2, 3]) }));
  index.apply(event(kv1, 1, { stored: chainOf([1, 2]) }));
  // dec-b publishes its pool's events too: it holds the first two blocks locally.
  index.apply(event(DB, 1, { stored: chainOf([1, 2]) }));
  const match = index.match(NS, hs(1, 2, 3, 4, 5));
  const store = storeCachedBlocks(match, (id) => id.startsWith('kv-'));
  assert.equal(store, 3);
  assert.equal(
    storeCachedBlocks(match, (id) => id === kv1),
    2,
  );

  const router = new WorkerRouter({ ...COSTS, policy: 'kv-aware' });
  const workers = [DA, DB].map((id) => worker(id, 0, 0, match.leadingBlocksByNode.get(id) ?? 0));
  // 330 tokens: dec-a fetches 192 (12 ms) + computes 138 (69 ms); dec-b fetches only 64 (4 ms).
  const decision = router.route(input(workers, 330, store));
  assert.equal(decision.nodeId, DB);
  assert.equal(decision.estimate.ttftMs, 73);
  assert.deepEqual(router.plan(decision.estimate), { kind: 'decode-only', uncachedTokens: 138 });
});

test('routing - an empty pool is NoWorkerAvailableError; bad input is InvalidArgumentError', () => {
  const router = new WorkerRouter({}, 'prefill');
  assert.throws(
    () => router.route(input([])),
    (err: unknown) =>
      err instanceof NoWorkerAvailableError &&
      err.code === 'NO_WORKER_AVAILABLE' &&
      err.details.pool === 'prefill',
  );
  for (const bad of [
    input([worker(DA), worker(DA)]),
    input([worker(DA, -1)]),
    input([worker(DA, 0, 0.5)]),
    input([worker(DA)], 0),
    { ...input([worker(DA)]), blockSizeTokens: 0 },
    input([{ ...worker(DA), pendingMs: -1 }]),
    input([{ ...worker(DA), rates: { prefillMsPerToken: Number.NaN } }]),
  ]) {
    assert.throws(() => router.route(bad), InvalidArgumentError);
  }
});

test('routing config - defaults resolve; bad fields are InvalidArgumentError naming them', () => {
  assert.deepEqual(resolveRoutingConfig(), ROUTING_DEFAULTS);
  assert.equal(new WorkerRouter().config.policy, 'kv-aware');
  const bad: [RoutingConfig, string][] = [
    [{ policy: 'random' as never }, 'policy'],
    [{ prefillMsPerToken: -1 }, 'prefillMsPerToken'],
    [{ transferMsPerToken: Number.NaN }, 'transferMsPerToken'],
    [{ queueWaitMsPerRequest: Infinity }, 'queueWaitMsPerRequest'],
    [{ prefillUncachedTokensMin: 1.5 }, 'prefillUncachedTokensMin'],
  ];
  for (const [config, field] of bad) {
    assert.throws(
      () => resolveRoutingConfig(config),
      (err: unknown) => err instanceof InvalidArgumentError && field in err.details,
    );
  }
});

test('kv-aware - a fetch is priced by the tier each store block lives in', () => {
  const router = new WorkerRouter({
    ...COSTS,
    farTransferMsPerToken: 0.125,
    ssdTransferMsPerToken: 0.25,
    policy: 'kv-aware',
  });
  const tiers = [Tier.TIER_DRAM, Tier.TIER_FAR, Tier.TIER_SSD, Tier.TIER_SSD];
  const decision = router.route({ ...input([worker(DA)], 256, 4), storeBlockTiers: tiers });
  // 64 tokens each at 0.0625, 0.125, 0.25 and 0.25 ms.
  assert.equal(decision.estimate.ttftMs, 4 + 8 + 16 + 16);
  // With its first two blocks local, a worker fetches only the two SSD blocks (32 ms) and beats one
  // that fetches all four (44 ms).
  const local = router.route({ ...input([worker(DA), worker(DB, 0, 0, 2)], 256, 4), storeBlockTiers: tiers });
  assert.equal(local.nodeId, DB);
  assert.equal(local.estimate.ttftMs, 32);
});

test('storeBlockTiers - the best tier among live store holders, for the leading store-held run', () => {
  const holder = (nodeId: string, tier: Tier) => ({ nodeId: parseNodeId(nodeId), tier, codec: 0, bytes: 0n });
  const match = {
    blocks: 3,
    positions: [
      { hash: 'a' as never, holders: [holder('kv-a', Tier.TIER_SSD), holder('kv-b', Tier.TIER_FAR)] },
      { hash: 'b' as never, holders: [holder('kv-a', Tier.TIER_DRAM), holder('dec-a', Tier.TIER_DRAM)] },
      { hash: 'c' as never, holders: [holder('dec-a', Tier.TIER_DRAM)] },
    ],
    leadingBlocksByNode: new Map(),
  };
  const isStore = (id: string): boolean => id.startsWith('kv-');
  assert.deepEqual(storeBlockTiers(match, isStore), [Tier.TIER_FAR, Tier.TIER_DRAM]);
  assert.equal(storeCachedBlocks(match, isStore), 2);
});
