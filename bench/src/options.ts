// Helpers shared by the bench suites: `--name value` options after the suite name, and timing.

/** A positive number option, or `fallback` when absent. */
export function numberOption(args: readonly string[], name: string, fallback: number): number {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(args[i + 1]);
  if (!Number.isFinite(value) || value <= 0)
    throw new Error(`--${name} needs a positive number, got ${args[i + 1]}`);
  return value;
}

/** A string option, or undefined when absent. */
export function stringOption(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i < 0 ? undefined : args[i + 1];
}

/** Rounds to `digits` significant digits for JSON output. */
export const round = (v: number, digits = 4): number => Number(v.toPrecision(digits));

/** Mean seconds per call of `body`, repeated for at least `seconds` after one warm-up call. */
export function secondsPerCall(seconds: number, body: () => void): number {
  body();
  let calls = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    body();
    calls++;
    elapsed = (performance.now() - start) / 1000;
  } while (elapsed < seconds);
  return elapsed / calls;
}
