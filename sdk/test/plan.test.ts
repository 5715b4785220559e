// Unit tests of the client's pure rules: node order for a block (rendezvous, suspects last), the
// merge of per-node prefix matches, the DistAttention assignment of hashes to holders, the query
// checks, and that partial results merged with kernels.mergePartials equal attention over all blocks.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { attendPayloads } from '@kvmesh/block';
import { relativeL2Error } from '@kvmesh/kernels';
import { Codec, Tier, blockHashToBytes, type BlockHash, type NodeId } from '@kvmesh/protocol';
import { rankNodes } from '@kvmesh/runtime';

import {
  assignHolders,
  candidateNodes,
  checkAttentionQuery,
  decodePartial,
  emptyPartial,
  mergeMatches,
  queryBytes,
} from '../src/index.ts';
import { DIMS, kernels, makeChain, randomPayload } from './support.ts';

const nodes = ['kv-a', 'kv-b', 'kv-c', 'kv-d'] as NodeId[];
const hashes = makeChain(6).map((b) => b.hash);
const bytes = (h: BlockHash): Buffer => Buffer.from(blockHashToBytes(h));

describe('sdk plan - placement order', () => {
  it('placement - candidates follow rendezvous rank when no node is suspect', () => {
    for (const hash of hashes)
      assert.deepEqual(
        candidateNodes(hash, nodes, () => false),
        rankNodes(hash, nodes),
      );
  });

  it('placement - suspects move behind the healthy nodes, keeping rank order among both', () => {
    const hash = hashes[0]!;
    const rank = rankNodes(hash, nodes);
    const suspects = new Set([rank[0]!, rank[2]!]);
    assert.deepEqual(
      candidateNodes(hash, nodes, (n) => suspects.has(n)),
      [rank[1], rank[3], rank[0], rank[2]],
    );
  });
});

describe('sdk plan - prefix match merge', () => {
  const [h0, h1, h2, h3] = hashes as [BlockHash, BlockHash, BlockHash, BlockHash];
  const location = (hash: BlockHash, nodeId: string, tier = Tier.TIER_DRAM) => ({
    hash: bytes(hash),
    nodeIds: [nodeId],
    tier,
    codec: Codec.CODEC_KIVI4,
  });

  it('merge - a block counts if any node holds it; matchedBlocks is the leading run over the union', () => {
    const merged = mergeMatches(
      [h0, h1, h2, h3],
      [
        {
          nodeId: 'kv-b' as NodeId,
          response: { matchedBlocks: 1, locations: [location(h0, 'kv-b'), location(h3, 'kv-b')] },
        },
        {
          nodeId: 'kv-a' as NodeId,
          response: {
            matchedBlocks: 0,
            locations: [location(h1, 'kv-a'), location(h0, 'kv-a', Tier.TIER_SSD)],
          },
        },
      ],
      ['kv-c' as NodeId],
    );
    assert.equal(merged.matchedBlocks, 2);
    assert.deepEqual(
      merged.locations.map((l) => [l.hash, l.nodeIds, l.tier, l.codec]),
      [
        [h0, ['kv-a', 'kv-b'], 'dram', 'kivi4'],
        [h1, ['kv-a'], 'dram', 'kivi4'],
        [h3, ['kv-b'], 'dram', 'kivi4'],
      ],
    );
    assert.deepEqual(merged.unreachable, ['kv-c']);
  });

  it('merge - locations for hashes that were not asked about are ignored', () => {
    const merged = mergeMatches(
      [h0],
      [{ nodeId: 'kv-a' as NodeId, response: { matchedBlocks: 1, locations: [location(h2, 'kv-a')] } }],
    );
    assert.equal(merged.matchedBlocks, 0);
    assert.deepEqual(merged.locations, []);
  });
});

describe('sdk plan - DistAttention assignment', () => {
  it('assignment - every hash goes to one of its holders and the load is spread evenly', () => {
    const holders = ['kv-a', 'kv-b', 'kv-c'] as NodeId[];
    const { byNode, unassigned } = assignHolders(hashes, () => holders);
    assert.deepEqual(unassigned, []);
    assert.deepEqual([...byNode.values()].map((l) => l.length).sort(), [2, 2, 2]);
    assert.deepEqual([...byNode.values()].flat().sort(), [...hashes].sort());
  });

  it('assignment - a hash goes to its only holder; hashes without candidates are returned', () => {
    const only = new Map<BlockHash, NodeId[]>([
      [hashes[0]!, ['kv-a' as NodeId]],
      [hashes[1]!, ['kv-a' as NodeId, 'kv-b' as NodeId]],
    ]);
    const load = new Map<NodeId, number>([['kv-a' as NodeId, 5]]);
    const { byNode, unassigned } = assignHolders(hashes.slice(0, 3), (h) => only.get(h) ?? [], load);
    assert.deepEqual(byNode.get('kv-a' as NodeId), [hashes[0]]);
    assert.deepEqual(byNode.get('kv-b' as NodeId), [hashes[1]]);
    assert.deepEqual(unassigned, [hashes[2]]);
    assert.equal(load.get('kv-a' as NodeId), 6);
  });
});

describe('sdk plan - attention inputs and outputs', () => {
  const query = new Float32Array(4 * 32);

  it('attention - query shape errors are INVALID_ARGUMENT before anything is sent', () => {
    for (const bad of [
      { layer: -1, queryHeads: 4, headDim: 32, query },
      { layer: 0, queryHeads: 0, headDim: 32, query },
      { layer: 0, queryHeads: 4, headDim: 16, query },
      { layer: 0, queryHeads: 4, headDim: 32, query: new Float32Array(3) },
      { layer: 0, queryHeads: 4, headDim: 32, query, scale: Number.NaN },
    ])
      assert.throws(() => checkAttentionQuery(bad), { kind: 'invalid-argument' });
    checkAttentionQuery({ layer: 1, queryHeads: 4, headDim: 32, query, scale: 0 });
  });

  it('attention - a node answer of the wrong size is DATA_LOSS', () => {
    const wire = { o: Buffer.alloc(4 * 32 * 4), m: Buffer.alloc(16), l: Buffer.alloc(12) };
    assert.throws(() => decodePartial(wire, 4, 32, 'kv-a'), { kind: 'data-loss' });
  });

  it('attention - partials over disjoint block sets merge to attention over all blocks (rel. L2 ≤ 1e-5)', async () => {
    for (const codec of ['f32', 'kivi4'] as const) {
      const payloads = Array.from({ length: 7 }, () => randomPayload(codec));
      const q = new Float32Array(4 * DIMS.headDim).map(() => Math.random() * 2 - 1);
      const args = { layer: 1, queryHeads: 4, headDim: DIMS.headDim, query: q };
      const whole = await attendPayloads(kernels, { ...args, payloads });
      // The wire round trip (f32 LE bytes) is part of what is tested.
      const wire = async (ps: Uint8Array[]) => {
        const p = await attendPayloads(kernels, { ...args, payloads: ps });
        return decodePartial(
          { o: queryBytes(p.o), m: queryBytes(p.m), l: queryBytes(p.l) },
          4,
          DIMS.headDim,
          'n',
        );
      };
      const parts = [
        await wire(payloads.slice(0, 3)),
        await wire(payloads.slice(3, 4)),
        await wire(payloads.slice(4)),
        emptyPartial(4, DIMS.headDim),
      ];
      const merged = kernels.mergePartials(parts, 4, DIMS.headDim);
      assert.ok(
        relativeL2Error(merged.o, whole.o) <= 1e-5,
        `${codec}: o error ${relativeL2Error(merged.o, whole.o)}`,
      );
      assert.ok(relativeL2Error(merged.l, whole.l) <= 1e-5, `${codec}: l error`);
    }
  });
});
