// The readiness protocol between a service process and whoever started it (the test harness, the
// local launcher): once a service is listening it prints exactly one JSON line `{"ready":true,...}`
// to stdout, with whatever its starter needs (ports, node id). Logs go to stderr, so stdout stays
// parseable; bigints in the info are written as decimal strings.

export const READY_KEY = 'ready';

/** Writes the ready line to stdout. Call it once, after every listener is bound. */
export function announceReady(info: Readonly<Record<string, unknown>> = {}): void {
  const line = JSON.stringify({ ...info, [READY_KEY]: true }, (_k, v: unknown) =>
    typeof v === 'bigint' ? v.toString() : v,
  );
  process.stdout.write(line + '\n');
}

/** Parses one stdout line; returns the info object if it is a ready line, else undefined. */
export function parseReadyLine(line: string): Record<string, unknown> | undefined {
  const trimmed = line.trim();
  if (!trimmed.startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(trimmed);
    if (typeof value === 'object' && value !== null && (value as Record<string, unknown>)[READY_KEY] === true)
      return value as Record<string, unknown>;
  } catch {
    // Not JSON: an ordinary output line.
  }
  return undefined;
}
