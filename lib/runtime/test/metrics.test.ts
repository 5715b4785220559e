// Unit tests of the metrics registry: the text exposition format 0.0.4 (read back by a small strict
// parser written here, not by the code under test), counter / gauge / histogram semantics, label
// escaping, registration rules and the label-set bound with its overflow series.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

import {
  METRICS_CONTENT_TYPE,
  MetricsRegistry,
  OVERFLOW_LABEL_VALUE,
  OVERFLOW_METRIC_NAME,
} from '../src/index.ts';

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}
interface Family {
  help: string;
  type: string;
  readonly samples: Sample[];
}

/** Parses the text format strictly enough to catch malformed output (unknown lines, bad escapes). */
function parseExposition(text: string): Map<string, Family> {
  assert.ok(text.endsWith('\n'), 'output ends with a newline');
  const families = new Map<string, Family>();
  const family = (name: string): Family => {
    let f = families.get(name);
    if (f === undefined) families.set(name, (f = { help: '', type: 'untyped', samples: [] }));
    return f;
  };
  for (const line of text.slice(0, -1).split('\n')) {
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta !== null) {
      const f = family(meta[2] as string);
      if (meta[1] === 'HELP') f.help = (meta[3] as string).replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
      else f.type = meta[3] as string;
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(sample !== null, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const body = sample[2] ?? '';
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\[\\"n])*)"(,|$)/y;
    for (let at = 0; at < body.length;) {
      labelRe.lastIndex = at;
      const m = labelRe.exec(body);
      assert.ok(m !== null, `bad label set: ${body}`);
      labels[m[1] as string] = (m[2] as string).replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
      at = labelRe.lastIndex;
    }
    const raw = sample[3] as string;
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw);
    assert.ok(!Number.isNaN(value) || raw === 'NaN', `bad value ${raw}`);
    const name = sample[1] as string;
    const base = name.replace(/_(bucket|sum|count)$/, '');
    const owner = families.has(name) ? name : base;
    assert.ok(families.has(owner), `sample ${name} before its # TYPE line`);
    family(owner).samples.push({ name, labels, value });
  }
  return families;
}

const valueOf = (
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number => {
  const owner = families.get(name) ?? families.get(name.replace(/_(bucket|sum|count)$/, ''));
  const found = owner?.samples.find(
    (s) =>
      s.name === name &&
      Object.keys(labels).length === Object.keys(s.labels).length &&
      Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  assert.ok(found, `no sample ${name}${JSON.stringify(labels)}`);
  return found.value;
};

describe('metrics - registry and exposition format', () => {
  it('metrics - counters, gauges and histograms render as parseable text 0.0.4', () => {
    assert.match(METRICS_CONTENT_TYPE, /version=0\.0\.4/);
    const registry = new MetricsRegistry();
    const requests = registry.counter({
      name: 'kvmesh_test_requests_total',
      help: 'Requests by endpoint and status.',
      labelNames: ['endpoint', 'status'],
    });
    const active = registry.gauge({ name: 'kvmesh_test_active', help: 'Active requests.' });
    const latency = registry.histogram({
      name: 'kvmesh_test_latency_seconds',
      help: 'Latency.\nSecond line \\ with a backslash.',
      buckets: [0.1, 1, 10],
    });
    requests.inc({ endpoint: '/v1/completions', status: 200 });
    requests.inc({ endpoint: '/v1/completions', status: 200 }, 2);
    requests.inc({ endpoint: 'odd "quoted"\nvalue\\', status: 500 });
    active.inc();
    active.inc(3);
    active.dec();
    for (const v of [0.05, 0.1, 0.5, 3, 100]) latency.observe(v);

    const families = parseExposition(registry.render());
    assert.deepEqual(
      [...families.keys()],
      ['kvmesh_test_requests_total', 'kvmesh_test_active', 'kvmesh_test_latency_seconds'],
    );
    assert.equal(families.get('kvmesh_test_requests_total')?.type, 'counter');
    assert.equal(families.get('kvmesh_test_active')?.type, 'gauge');
    assert.equal(families.get('kvmesh_test_latency_seconds')?.type, 'histogram');
    assert.equal(
      families.get('kvmesh_test_latency_seconds')?.help,
      'Latency.\nSecond line \\ with a backslash.',
    );
    assert.equal(
      valueOf(families, 'kvmesh_test_requests_total', { endpoint: '/v1/completions', status: '200' }),
      3,
    );
    assert.equal(
      valueOf(families, 'kvmesh_test_requests_total', { endpoint: 'odd "quoted"\nvalue\\', status: '500' }),
      1,
    );
    assert.equal(valueOf(families, 'kvmesh_test_active'), 3);
    // Buckets are cumulative and `le` is inclusive: 0.1 falls into le="0.1".
    assert.equal(valueOf(families, 'kvmesh_test_latency_seconds_bucket', { le: '0.1' }), 2);
    assert.equal(valueOf(families, 'kvmesh_test_latency_seconds_bucket', { le: '1' }), 3);
    assert.equal(valueOf(families, 'kvmesh_test_latency_seconds_bucket', { le: '10' }), 4);
    assert.equal(valueOf(families, 'kvmesh_test_latency_seconds_bucket', { le: '+Inf' }), 5);
    assert.equal(valueOf(families, 'kvmesh_test_latency_seconds_count'), 5);
    assert.equal(valueOf(families, 'kvmesh_test_latency_seconds_sum'), 0.05 + 0.1 + 0.5 + 3 + 100);
  });

  it('metrics - registering the same name again returns the same metric; a conflicting one throws', () => {
    const registry = new MetricsRegistry();
    const a = registry.counter({ name: 'kvmesh_x_total', help: 'x', labelNames: ['a'] });
    const b = registry.counter({ name: 'kvmesh_x_total', help: 'x', labelNames: ['a'] });
    assert.equal(a, b);
    assert.throws(
      () => registry.gauge({ name: 'kvmesh_x_total', help: 'x', labelNames: ['a'] }),
      InvalidArgumentError,
    );
    assert.throws(
      () => registry.counter({ name: 'kvmesh_x_total', help: 'x', labelNames: ['b'] }),
      InvalidArgumentError,
    );
    registry.histogram({ name: 'kvmesh_h', help: 'h', buckets: [1, 2] });
    assert.throws(
      () => registry.histogram({ name: 'kvmesh_h', help: 'h', buckets: [1, 3] }),
      InvalidArgumentError,
    );
  });

  it('metrics - bad names, labels, buckets and amounts are refused', () => {
    const registry = new MetricsRegistry();
    assert.throws(() => registry.counter({ name: '1bad', help: '' }), InvalidArgumentError);
    assert.throws(
      () => registry.counter({ name: 'kvmesh_y', help: '', labelNames: ['le'] }),
      InvalidArgumentError,
    );
    assert.throws(
      () => registry.counter({ name: 'kvmesh_y', help: '', labelNames: ['__x'] }),
      InvalidArgumentError,
    );
    assert.throws(() => registry.counter({ name: OVERFLOW_METRIC_NAME, help: '' }), InvalidArgumentError);
    assert.throws(
      () => registry.histogram({ name: 'kvmesh_z', help: '', buckets: [2, 1] }),
      InvalidArgumentError,
    );
    assert.throws(
      () => registry.histogram({ name: 'kvmesh_z', help: '', buckets: [] }),
      InvalidArgumentError,
    );
    const c = registry.counter({ name: 'kvmesh_c_total', help: '', labelNames: ['a'] });
    assert.throws(() => c.inc({ a: 'x' }, -1), InvalidArgumentError);
    assert.throws(() => c.inc({ b: 'x' }), InvalidArgumentError, 'wrong label name');
    assert.throws(() => c.inc(), InvalidArgumentError, 'missing label');
    const h = registry.histogram({ name: 'kvmesh_h2', help: '', buckets: [1] });
    assert.throws(() => h.observe(NaN), InvalidArgumentError);
  });

  it('metrics - past labelSetsMax new label sets fold into one overflow series and are counted', () => {
    const registry = new MetricsRegistry({ labelSetsMax: 3 });
    const decisions = registry.counter({
      name: 'kvmesh_decisions_total',
      help: 'Decisions by worker.',
      labelNames: ['worker'],
    });
    for (let i = 0; i < 100; i++) decisions.inc({ worker: `w-${i % 10}` });
    // Three kept label sets plus the overflow series, however many workers came and went.
    assert.equal(decisions.labelSets, 4);
    const families = parseExposition(registry.render());
    const samples = families.get('kvmesh_decisions_total')?.samples ?? [];
    assert.equal(samples.length, 4);
    assert.deepEqual(
      samples.map((s) => s.labels.worker),
      ['w-0', 'w-1', 'w-2', OVERFLOW_LABEL_VALUE],
    );
    // Nothing is lost: the total over all series is every increment.
    assert.equal(
      samples.reduce((sum, s) => sum + s.value, 0),
      100,
    );
    assert.equal(valueOf(families, 'kvmesh_decisions_total', { worker: 'w-0' }), 10);
    assert.equal(valueOf(families, 'kvmesh_decisions_total', { worker: OVERFLOW_LABEL_VALUE }), 70);
    assert.equal(valueOf(families, OVERFLOW_METRIC_NAME, { metric: 'kvmesh_decisions_total' }), 70);
    // An existing label set still counts in its own series.
    decisions.inc({ worker: 'w-1' });
    assert.equal(decisions.get({ worker: 'w-1' }), 11);
    decisions.reset();
    assert.equal(decisions.labelSets, 0);
  });

  it('metrics - long label values are cut, and the registry holds at most metricsMax metrics', () => {
    const registry = new MetricsRegistry({ metricsMax: 2, labelValueCharsMax: 8 });
    const g = registry.gauge({ name: 'kvmesh_g', help: '', labelNames: ['k'] });
    g.set({ k: 'x'.repeat(100) }, 7);
    assert.equal(valueOf(parseExposition(registry.render()), 'kvmesh_g', { k: 'x'.repeat(8) }), 7);
    registry.counter({ name: 'kvmesh_second_total', help: '' });
    assert.throws(() => registry.counter({ name: 'kvmesh_third_total', help: '' }), LimitExceededError);
  });

  it('metrics - collectors run before each render until removed', () => {
    const registry = new MetricsRegistry();
    const live = registry.gauge({ name: 'kvmesh_live', help: '', labelNames: ['role'] });
    let n = 0;
    const remove = registry.onCollect(() => live.set({ role: 'decode' }, ++n));
    assert.equal(valueOf(parseExposition(registry.render()), 'kvmesh_live', { role: 'decode' }), 1);
    assert.equal(valueOf(parseExposition(registry.render()), 'kvmesh_live', { role: 'decode' }), 2);
    remove();
    assert.equal(valueOf(parseExposition(registry.render()), 'kvmesh_live', { role: 'decode' }), 2);
  });
});
