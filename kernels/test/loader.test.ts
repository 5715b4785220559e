import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const entry = fileURLToPath(new URL('../src/index.ts', import.meta.url));

// Runs a snippet in a fresh process whose addon path points at a file that does not exist.
function withoutAddon(
  requireNative: string,
  code: string,
): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    encoding: 'utf8',
    env: {
      ...process.env,
      KVMESH_KERNELS_ADDON: '/nonexistent/kvmesh_kernels.node',
      KVMESH_REQUIRE_NATIVE: requireNative,
    },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('kernels - loader', () => {
  it('kernels - without a native build the loader falls back to the reference and warns once', () => {
    const r = withoutAddon(
      '0',
      `const k = await import(${JSON.stringify(entry)});
       const a = k.loadKernels(); const b = k.loadKernels();
       console.log(JSON.stringify({ backend: a.backend, same: a === b, describe: k.describeKernels() }));`,
    );
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      backend: string;
      same: boolean;
      describe: { backend: string; detail: string };
    };
    assert.equal(out.backend, 'reference');
    assert.equal(out.same, true);
    assert.equal(out.describe.backend, 'reference');
    assert.match(out.describe.detail, /nonexistent.*not built/);
    assert.equal(r.stderr.match(/using the TypeScript reference/g)?.length, 1, r.stderr);
  });

  it('kernels - when native is required a missing build is a typed error, not a silent fallback', () => {
    const r = withoutAddon(
      '1',
      `const k = await import(${JSON.stringify(entry)});
       try { k.loadKernels(); console.log('loaded'); } catch (e) { console.log(e.code + ': ' + e.message); }`,
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^NATIVE_UNAVAILABLE: native kernels unavailable: .*nonexistent/);
  });

  it('kernels - the native build reports the instruction set it picked', async (t) => {
    const { describeKernels, nativeKernels } = await import('../src/index.ts');
    const native = nativeKernels();
    if (native === null) {
      assert.notEqual(
        process.env.KVMESH_REQUIRE_NATIVE,
        '1',
        'native build missing under KVMESH_REQUIRE_NATIVE=1',
      );
      t.skip(`no native build: ${describeKernels().detail}`);
      return;
    }
    assert.match(native.isa(), /^(avx512|avx2|scalar)$/);
    assert.equal(describeKernels().isa, native.isa());
  });
});
