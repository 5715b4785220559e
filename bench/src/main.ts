// Benchmark entry point: `npm run bench -- <suite> [--json] [suite options]`. Each suite lives in
// ./suites/<name>.ts, measures kvmesh next to its anchor in the same run, and returns one result
// object; with --json it is printed as a single JSON line, last on stdout.
import { readdirSync } from 'node:fs';

export interface BenchContext {
  /** Remaining command-line arguments after the suite name. */
  args: string[];
  /** Progress lines go to stderr so stdout's last line stays the JSON result. */
  log: (line: string) => void;
}

export interface BenchSuite {
  name: string;
  description: string;
  run(ctx: BenchContext): Promise<Record<string, unknown>>;
}

const suitesDir = new URL('./suites/', import.meta.url);

function listSuites(): string[] {
  return readdirSync(suitesDir)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => f.slice(0, -3))
    .sort();
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const json = argv.includes('--json');
  const rest = argv.filter((a) => a !== '--json');
  const name = rest[0];
  const available = listSuites();
  if (name === undefined || !available.includes(name)) {
    console.error(`usage: npm run bench -- <suite> [--json]\nsuites: ${available.join(', ')}`);
    process.exit(name === undefined ? 0 : 2);
  }
  const mod = (await import(new URL(`${name}.ts`, suitesDir).href)) as { suite: BenchSuite };
  const result = await mod.suite.run({
    args: rest.slice(1),
    log: (line) => console.error(`[bench:${name}] ${line}`),
  });
  const out = { suite: mod.suite.name, ...result };
  console.log(json ? JSON.stringify(out) : JSON.stringify(out, null, 2));
}

await main();
