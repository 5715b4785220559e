// Command-line options shared by the bench suites: `--name value` pairs after the suite name.

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
