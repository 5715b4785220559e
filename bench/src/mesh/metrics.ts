// The router's Prometheus text exposition as the mesh bench reads it: the samples of one metric,
// with their labels.

export interface MetricSample {
  readonly labels: ReadonlyMap<string, string>;
  readonly value: number;
}

/** The router's Prometheus endpoint, from the OpenAI base URL. */
export const metricsUrlOf = (baseUrl: string): string => `${baseUrl.replace(/\/v1$/, '')}/metrics`;

/** The labelled samples of `metric` in `text` (labels in any order; unlabelled samples are skipped). */
export function metricSamples(text: string, metric: string): MetricSample[] {
  const line = new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`);
  const out: MetricSample[] = [];
  for (const row of text.split('\n')) {
    const match = line.exec(row);
    if (match === null) continue;
    const labels = new Map(
      [...(match[1] as string).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1] as string, m[2] as string]),
    );
    out.push({ labels, value: Number(match[2]) });
  }
  return out;
}
