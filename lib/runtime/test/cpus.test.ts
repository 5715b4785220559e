// The CPUs a worker computes on when its threads are left at 0
// (scheduler affinity, capped by a cgroup v2 CPU quota such as a Kubernetes CPU limit).
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { describe, it } from 'node:test';

import { usableCpus } from '../src/cpus.ts';

describe('runtime - usable CPUs', () => {
  it('usableCpus - a cgroup CPU quota caps the affinity (rounded up); no quota or no file leaves it', () => {
    const affinity = availableParallelism();
    assert.equal(
      usableCpus(() => 'max 100000\n'),
      affinity,
    );
    assert.equal(
      usableCpus(() => '50000 100000\n'),
      1,
    );
    assert.equal(
      usableCpus(() => '150000 100000\n'),
      Math.min(affinity, 2),
    );
    assert.equal(
      usableCpus(() => '100000000 100000'),
      affinity,
    );
    assert.equal(
      usableCpus(() => {
        throw new Error('ENOENT');
      }),
      affinity,
    );
    assert.equal(
      usableCpus(() => 'garbage'),
      affinity,
    );
    // This host's own answer is one of those.
    assert.ok(usableCpus() >= 1 && usableCpus() <= affinity);
  });
});
