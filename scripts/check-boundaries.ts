// Import-boundary check (STYLE.md): core modules import no transport, packages are used only
// through their entry file (no deep imports of another package's src/), and there are no import
// cycles between files or between packages. Prints every violation and exits 1 if there is any.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const root = resolve(new URL('..', import.meta.url).pathname);
const SKIP = new Set(['node_modules', 'build', '.git', 'gen']);
const TRANSPORT = [
  /^@grpc\//,
  /^nats$/,
  /^@nats-io\//,
  /^grpc-health-check$/,
  /^redis$/,
  /^node:(net|fs|fs\/promises|http|http2|https|dgram|child_process|worker_threads)$/,
  /^(net|fs|http|http2|https|dgram|child_process)$/,
  /^@opentelemetry\/sdk/,
  /^node-rdkafka$/,
];

interface PackageInfo {
  name: string;
  dir: string;
}

function walk(dir: string, out: string[]): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) {
      if (!SKIP.has(e.name) && !e.name.startsWith('.')) walk(join(dir, e.name), out);
    } else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
      out.push(join(dir, e.name));
    }
  }
  return out;
}

function findPackages(): PackageInfo[] {
  const rootPkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { workspaces: string[] };
  const dirs: string[] = [];
  for (const pattern of rootPkg.workspaces) {
    if (pattern.endsWith('/*')) {
      const parent = join(root, pattern.slice(0, -2));
      if (existsSync(parent)) {
        for (const e of readdirSync(parent, { withFileTypes: true }))
          if (e.isDirectory()) dirs.push(join(parent, e.name));
      }
    } else {
      dirs.push(join(root, pattern));
    }
  }
  return dirs
    .filter((d) => existsSync(join(d, 'package.json')))
    .map((d) => ({
      dir: d,
      name: (JSON.parse(readFileSync(join(d, 'package.json'), 'utf8')) as { name: string }).name,
    }));
}

const packages = findPackages();
const byName = new Map(packages.map((p) => [p.name, p]));
const packageOf = (file: string): PackageInfo | undefined =>
  packages.find((p) => file === p.dir || file.startsWith(p.dir + '/'));

const violations: string[] = [];
const fileEdges = new Map<string, string[]>();
const packageEdges = new Map<string, Set<string>>();

const files = walk(root, []).filter((f) => !relative(root, f).startsWith('scripts/'));
for (const file of files) {
  const rel = relative(root, file);
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  const isCore = rel.split('/').includes('core');
  const pkg = packageOf(file);
  const edges: string[] = [];
  for (const imp of info.importedFiles) {
    const spec = imp.fileName;
    if (isCore && TRANSPORT.some((re) => re.test(spec))) {
      violations.push(`${rel}: core module imports transport '${spec}'`);
    }
    if (spec.startsWith('.')) {
      const target = resolve(dirname(file), spec.replace(/\.js$/, '.ts'));
      const targetPkg = packageOf(target);
      if (pkg && targetPkg && targetPkg !== pkg) {
        violations.push(
          `${rel}: relative import '${spec}' reaches into package ${targetPkg.name}; import '${targetPkg.name}'`,
        );
      }
      if (existsSync(target)) edges.push(target);
      continue;
    }
    const match = /^(@kvmesh\/[^/]+)(\/.*)?$/.exec(spec);
    if (match) {
      const target = byName.get(match[1] as string);
      if (match[2] !== undefined)
        violations.push(`${rel}: deep import '${spec}'; use the package entry '${match[1]}'`);
      if (target && pkg && target !== pkg) {
        const set = packageEdges.get(pkg.name) ?? new Set<string>();
        set.add(target.name);
        packageEdges.set(pkg.name, set);
      }
    }
  }
  fileEdges.set(file, edges);
}

function findCycles(
  nodes: Iterable<string>,
  next: (n: string) => Iterable<string>,
  label: (n: string) => string,
): void {
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 'active');
    stack.push(n);
    for (const m of next(n)) {
      const s = state.get(m);
      if (s === 'active') {
        const cycle = stack.slice(stack.indexOf(m)).concat(m);
        violations.push(`import cycle: ${cycle.map(label).join(' -> ')}`);
      } else if (s === undefined) {
        visit(m);
      }
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of nodes) if (!state.has(n)) visit(n);
}

findCycles(
  fileEdges.keys(),
  (n) => fileEdges.get(n) ?? [],
  (n) => relative(root, n),
);
findCycles(
  packageEdges.keys(),
  (n) => packageEdges.get(n) ?? [],
  (n) => n,
);

if (violations.length > 0) {
  console.error(`boundaries: ${violations.length} violation(s)`);
  for (const v of violations) console.error(`  ${v}`);
  process.exit(1);
}
console.log(`boundaries: ok (${files.length} files, ${packages.length} packages)`);
