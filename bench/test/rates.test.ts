// The mesh bench's reading of the workers' measured rates and the link it calibrates from them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { calibratedLinkMbit, medianRate, parseWorkerRates } from '../src/mesh/rates.ts';

describe('bench - worker rates', () => {
  it('rates - parses the router gauge whatever the label order, and skips other metrics and zeros', () => {
    const text = [
      '# TYPE kvmesh_router_worker_rate_ms gauge',
      'kvmesh_router_worker_rate_ms{pool="decode",worker="decode-0",rate="prefill_ms_per_token"} 0.125',
      'kvmesh_router_worker_rate_ms{rate="fetch_ms_per_token",pool="decode",worker="decode-1"} 0.03',
      'kvmesh_router_worker_rate_ms{pool="prefill",worker="prefill-0",rate="prefill_ms_per_token"} 0',
      'kvmesh_router_live_nodes{role="decode"} 2',
    ].join('\n');
    assert.deepEqual(parseWorkerRates(text), [
      { pool: 'decode', worker: 'decode-0', rate: 'prefill_ms_per_token', ms: 0.125 },
      { pool: 'decode', worker: 'decode-1', rate: 'fetch_ms_per_token', ms: 0.03 },
    ]);
  });

  it('rates - the median is over one rate only, and absent without samples', () => {
    const at = (rate: string, ms: number) => ({ pool: 'decode', worker: 'd', rate, ms });
    const samples = [at('r', 3), at('r', 1), at('other', 100), at('r', 2), at('r', 10)];
    assert.equal(medianRate(samples, 'r'), 2.5);
    assert.equal(medianRate(samples.slice(0, 3), 'r'), 2);
    assert.equal(medianRate(samples, 'missing'), undefined);
  });

  it('rates - the calibrated link moves a token in the asked multiple of its compute time', () => {
    // 1024 B in 0.128 ms: 8 MB/s = 64 Mbit/s; twice the time, half the rate.
    assert.equal(calibratedLinkMbit(1024, 0.128, 1), 64);
    assert.equal(calibratedLinkMbit(1024, 0.128, 2), 32);
    assert.throws(() => calibratedLinkMbit(1024, 0, 1), /positive KV bytes, compute time and ratio/);
    assert.throws(() => calibratedLinkMbit(1024, 0.1, Number.NaN), /positive/);
  });
});
