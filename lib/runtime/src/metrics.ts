// A small, bounded Prometheus metrics registry: counters, gauges and fixed-bucket histograms with
// labels, rendered in the text exposition format 0.0.4 for a `/metrics` endpoint. Invariants: every
// metric keeps at most `labelSetsMax` label sets; observations for further label sets are folded into
// one overflow series (every label value OVERFLOW_LABEL_VALUE) and counted in
// `kvmesh_metrics_label_sets_overflowed_total{metric}`, so totals stay right and memory stays bounded.
// Pure: no clock, no I/O; the transport that serves `render()` belongs to each service.
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

/** Content-Type of `render()`'s output. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
/** The value of every label of a metric's overflow series. */
export const OVERFLOW_LABEL_VALUE = '__overflow__';
/** Counts, per metric, observations that went to the overflow series. */
export const OVERFLOW_METRIC_NAME = 'kvmesh_metrics_label_sets_overflowed_total';

export const METRICS_DEFAULTS = {
  metricsMax: 256,
  labelSetsMax: 1000,
  labelValueCharsMax: 128,
  collectorsMax: 64,
} as const;

/** Buckets (seconds) for request latencies from a millisecond to about a minute. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80,
];

export type Labels = Readonly<Record<string, string | number>>;

export interface MetricsRegistryOptions {
  /** Most metrics one registry holds; registering more throws LimitExceededError. Default 256. */
  readonly metricsMax?: number;
  /** Default bound of label sets per metric (a metric may set its own). Default 1000. */
  readonly labelSetsMax?: number;
  /** Longer label values are cut to this many characters. Default 128. */
  readonly labelValueCharsMax?: number;
}

export interface MetricOptions {
  /** `[a-zA-Z_:][a-zA-Z0-9_:]*`; by convention `kvmesh_<service>_<what>_<unit>`. */
  readonly name: string;
  readonly help: string;
  readonly labelNames?: readonly string[];
  /** Label sets kept before observations go to the overflow series. Default: the registry's. */
  readonly labelSetsMax?: number;
}

export interface HistogramOptions extends MetricOptions {
  /** Upper bounds, strictly increasing and finite; `+Inf` is implied. */
  readonly buckets: readonly number[];
}

type MetricType = 'counter' | 'gauge' | 'histogram';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
// NOTE: label values never contain this, so joined keys cannot collide (values are escaped on render).
const KEY_SEPARATOR = '\u0000';

function checkInteger(name: string, value: number, min: number): number {
  if (!Number.isSafeInteger(value) || value < min)
    throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${value}`, { [name]: value });
  return value;
}

/** A sample value as Prometheus writes it. */
export function formatSampleValue(value: number): string {
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  if (Number.isNaN(value)) return 'NaN';
  return String(value);
}

const escapeLabelValue = (value: string): string =>
  value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
const escapeHelp = (text: string): string => text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

function labelText(names: readonly string[], values: readonly string[], extra?: [string, string]): string {
  const parts = names.map((n, i) => `${n}="${escapeLabelValue(values[i] ?? '')}"`);
  if (extra !== undefined) parts.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

interface Series<V> {
  readonly values: readonly string[];
  readonly state: V;
}

/** One metric family: its label sets and their state, bounded by labelSetsMax. */
abstract class Metric<V> {
  abstract readonly type: MetricType;
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  readonly labelSetsMax: number;
  /** Observations that went to the overflow series. */
  overflowed = 0;
  private readonly series = new Map<string, Series<V>>();
  private overflow: Series<V> | undefined;

  constructor(
    options: MetricOptions,
    private readonly registry: { readonly labelValueCharsMax: number; readonly labelSetsMax: number },
  ) {
    if (!METRIC_NAME.test(options.name))
      throw new InvalidArgumentError(`metric name '${options.name}' is not a Prometheus name`, {
        name: options.name,
      });
    const labelNames = options.labelNames ?? [];
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label) || label.startsWith('__') || label === 'le' || label === 'quantile')
        throw new InvalidArgumentError(`metric ${options.name}: label name '${label}' is not allowed`, {
          name: options.name,
          label,
        });
    }
    if (new Set(labelNames).size !== labelNames.length)
      throw new InvalidArgumentError(`metric ${options.name}: label names repeat`, { name: options.name });
    this.name = options.name;
    this.help = options.help;
    this.labelNames = [...labelNames];
    this.labelSetsMax = checkInteger('labelSetsMax', options.labelSetsMax ?? registry.labelSetsMax, 1);
  }

  protected abstract initial(): V;
  protected abstract renderSeries(out: string[], values: readonly string[], state: V): void;

  /** Label sets held (the overflow series included). */
  get labelSets(): number {
    return this.series.size + (this.overflow === undefined ? 0 : 1);
  }

  private keyOf(labels: Labels | undefined): { key: string; values: string[] } {
    const given = labels ?? {};
    const names = this.labelNames;
    const keys = Object.keys(given);
    if (keys.length !== names.length || !names.every((n) => Object.hasOwn(given, n)))
      throw new InvalidArgumentError(
        `metric ${this.name} takes labels {${names.join(', ')}}, got {${keys.join(', ')}}`,
        { name: this.name, labelNames: [...names], given: keys },
      );
    const charsMax = this.registry.labelValueCharsMax;
    const values = names.map((n) => String(given[n]).slice(0, charsMax));
    return { key: values.join(KEY_SEPARATOR), values };
  }

  /** The state of one label set, created on first use (or the overflow series past the bound). */
  protected stateOf(labels: Labels | undefined): V {
    const { key, values } = this.keyOf(labels);
    const found = this.series.get(key);
    if (found !== undefined) return found.state;
    if (this.series.size < this.labelSetsMax) {
      const created = { values, state: this.initial() };
      this.series.set(key, created);
      return created.state;
    }
    // NOTE: the documented bound: past labelSetsMax label sets, observations fold into one series.
    this.overflowed++;
    this.overflow ??= { values: this.labelNames.map(() => OVERFLOW_LABEL_VALUE), state: this.initial() };
    return this.overflow.state;
  }

  /** The state of one label set without creating it; undefined when never observed. */
  protected peek(labels: Labels | undefined): V | undefined {
    return this.series.get(this.keyOf(labels).key)?.state;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`);
    out.push(`# TYPE ${this.name} ${this.type}`);
    for (const s of this.series.values()) this.renderSeries(out, s.values, s.state);
    if (this.overflow !== undefined) this.renderSeries(out, this.overflow.values, this.overflow.state);
  }

  /** Forgets every label set (e.g. after the thing they describe went away). */
  reset(): void {
    this.series.clear();
    this.overflow = undefined;
  }

  protected sample(out: string[], values: readonly string[], value: number, suffix = ''): void {
    out.push(`${this.name}${suffix}${labelText(this.labelNames, values)} ${formatSampleValue(value)}`);
  }
}

function split(a: Labels | number | undefined, b: number | undefined, fallback: number): [Labels, number] {
  return typeof a === 'number' ? [{}, a] : [a ?? {}, b ?? fallback];
}

/** A monotonically increasing count (requests, tokens). */
export class Counter extends Metric<{ value: number }> {
  readonly type = 'counter';
  protected initial(): { value: number } {
    return { value: 0 };
  }

  /** `inc()`, `inc(5)`, `inc({status: '200'})` or `inc({status: '200'}, 5)`; the amount must be >= 0. */
  inc(labels?: Labels | number, amount?: number): void {
    const [l, v] = split(labels, amount, 1);
    if (!Number.isFinite(v) || v < 0)
      throw new InvalidArgumentError(`counter ${this.name} can only grow by a finite amount >= 0, got ${v}`, {
        name: this.name,
        amount: v,
      });
    this.stateOf(l).value += v;
  }

  /** The current value of one label set (0 when never observed). */
  get(labels?: Labels): number {
    return this.peek(labels)?.value ?? 0;
  }

  protected renderSeries(out: string[], values: readonly string[], state: { value: number }): void {
    this.sample(out, values, state.value);
  }
}

/** A value that goes up and down (requests in flight, live workers). */
export class Gauge extends Metric<{ value: number }> {
  readonly type = 'gauge';
  protected initial(): { value: number } {
    return { value: 0 };
  }

  set(labels: Labels | number, value?: number): void {
    const [l, v] = split(labels, value, 0);
    this.stateOf(l).value = v;
  }

  inc(labels?: Labels | number, amount?: number): void {
    const [l, v] = split(labels, amount, 1);
    this.stateOf(l).value += v;
  }

  dec(labels?: Labels | number, amount?: number): void {
    const [l, v] = split(labels, amount, 1);
    this.stateOf(l).value -= v;
  }

  get(labels?: Labels): number {
    return this.peek(labels)?.value ?? 0;
  }

  protected renderSeries(out: string[], values: readonly string[], state: { value: number }): void {
    this.sample(out, values, state.value);
  }
}

interface HistogramState {
  /** Per bucket (not cumulative); the last entry is +Inf. */
  readonly counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into fixed buckets (latencies). */
export class Histogram extends Metric<HistogramState> {
  readonly type = 'histogram';
  readonly buckets: readonly number[];

  constructor(
    options: HistogramOptions,
    registry: { readonly labelValueCharsMax: number; readonly labelSetsMax: number },
  ) {
    super(options, registry);
    const buckets = options.buckets;
    if (
      buckets.length === 0 ||
      !buckets.every((b, i) => Number.isFinite(b) && (i === 0 || b > buckets[i - 1]!))
    )
      throw new InvalidArgumentError(
        `histogram ${options.name}: buckets must be finite and strictly increasing, got [${buckets.join(', ')}]`,
        { name: options.name },
      );
    this.buckets = [...buckets];
  }

  protected initial(): HistogramState {
    return { counts: new Array<number>(this.buckets.length + 1).fill(0), sum: 0, count: 0 };
  }

  /** `observe(0.2)` or `observe({plan: 'decode-only'}, 0.2)`; NaN is refused. */
  observe(labels: Labels | number, value?: number): void {
    const [l, v] = split(labels, value, NaN);
    if (Number.isNaN(v))
      throw new InvalidArgumentError(`histogram ${this.name}: cannot observe NaN`, { name: this.name });
    const state = this.stateOf(l);
    let i = 0;
    while (i < this.buckets.length && v > this.buckets[i]!) i++;
    state.counts[i]!++;
    state.sum += v;
    state.count++;
  }

  /** Count and sum of one label set. */
  get(labels?: Labels): { readonly count: number; readonly sum: number } {
    const state = this.peek(labels);
    return { count: state?.count ?? 0, sum: state?.sum ?? 0 };
  }

  protected renderSeries(out: string[], values: readonly string[], state: HistogramState): void {
    let cumulative = 0;
    for (let i = 0; i <= this.buckets.length; i++) {
      cumulative += state.counts[i] ?? 0;
      const le = i < this.buckets.length ? formatSampleValue(this.buckets[i]!) : '+Inf';
      out.push(`${this.name}_bucket${labelText(this.labelNames, values, ['le', le])} ${cumulative}`);
    }
    this.sample(out, values, state.sum, '_sum');
    this.sample(out, values, state.count, '_count');
  }
}

export class MetricsRegistry {
  readonly metricsMax: number;
  readonly labelSetsMax: number;
  readonly labelValueCharsMax: number;
  private readonly metrics = new Map<string, Metric<unknown>>();
  private readonly collectors = new Set<{ readonly collect: () => void }>();

  constructor(options: MetricsRegistryOptions = {}) {
    this.metricsMax = checkInteger('metricsMax', options.metricsMax ?? METRICS_DEFAULTS.metricsMax, 1);
    this.labelSetsMax = checkInteger(
      'labelSetsMax',
      options.labelSetsMax ?? METRICS_DEFAULTS.labelSetsMax,
      1,
    );
    this.labelValueCharsMax = checkInteger(
      'labelValueCharsMax',
      options.labelValueCharsMax ?? METRICS_DEFAULTS.labelValueCharsMax,
      1,
    );
  }

  /** Registers a counter, or returns the one already registered under the same name and labels. */
  counter(options: MetricOptions): Counter {
    return this.register(options, 'counter', () => new Counter(options, this));
  }

  gauge(options: MetricOptions): Gauge {
    return this.register(options, 'gauge', () => new Gauge(options, this));
  }

  histogram(options: HistogramOptions): Histogram {
    const histogram = this.register(options, 'histogram', () => new Histogram(options, this));
    if (histogram.buckets.join() !== options.buckets.join())
      throw new InvalidArgumentError(`histogram ${options.name} is already registered with other buckets`, {
        name: options.name,
      });
    return histogram;
  }

  /** Runs `collect` before every render (e.g. to set gauges from current state); returns its remover. */
  onCollect(collect: () => void): () => void {
    if (this.collectors.size >= METRICS_DEFAULTS.collectorsMax)
      throw new LimitExceededError(`at most ${METRICS_DEFAULTS.collectorsMax} collectors per registry`, {
        limit: METRICS_DEFAULTS.collectorsMax,
      });
    const entry = { collect };
    this.collectors.add(entry);
    return () => void this.collectors.delete(entry);
  }

  /** The registered metric of that name, if any. */
  get(name: string): Counter | Gauge | Histogram | undefined {
    return this.metrics.get(name) as Counter | Gauge | Histogram | undefined;
  }

  /** Every metric in the text exposition format 0.0.4 (METRICS_CONTENT_TYPE). */
  render(): string {
    for (const entry of this.collectors) entry.collect();
    const out: string[] = [];
    const overflowed: Metric<unknown>[] = [];
    for (const metric of this.metrics.values()) {
      metric.render(out);
      if (metric.overflowed > 0) overflowed.push(metric);
    }
    if (overflowed.length > 0) {
      out.push(`# HELP ${OVERFLOW_METRIC_NAME} Observations folded into a metric's overflow series.`);
      out.push(`# TYPE ${OVERFLOW_METRIC_NAME} counter`);
      for (const m of overflowed) out.push(`${OVERFLOW_METRIC_NAME}{metric="${m.name}"} ${m.overflowed}`);
    }
    return out.join('\n') + '\n';
  }

  private register<M extends Metric<unknown>>(options: MetricOptions, type: MetricType, create: () => M): M {
    const existing = this.metrics.get(options.name);
    if (existing !== undefined) {
      if (existing.type !== type || existing.labelNames.join() !== (options.labelNames ?? []).join())
        throw new InvalidArgumentError(
          `metric ${options.name} is already registered as a ${existing.type} with labels {${existing.labelNames.join(', ')}}`,
          { name: options.name },
        );
      return existing as M;
    }
    if (options.name === OVERFLOW_METRIC_NAME)
      throw new InvalidArgumentError(`metric name ${OVERFLOW_METRIC_NAME} is reserved`, {
        name: options.name,
      });
    if (this.metrics.size >= this.metricsMax)
      throw new LimitExceededError(`at most ${this.metricsMax} metrics per registry (metricsMax)`, {
        limit: this.metricsMax,
        name: options.name,
      });
    const metric = create();
    this.metrics.set(options.name, metric as Metric<unknown>);
    return metric;
  }
}
