// Crash safety of the SSD tier with a real process: a child appends, removes and compacts in a loop
// and prints each acknowledged operation; it is killed with SIGKILL mid-stream (after at least one
// compaction, so moved records and dropped tombstones are part of what must survive). After a reopen every
// acknowledged block reads back byte-identical (checksums verified) and every acknowledged removal
// stays removed. Then a torn tail is made by hand (a record cut in half, garbage appended): it is
// dropped on the next open, never returned, and nothing before it is lost.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, readdirSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';

import { blockHashFromBytes, parseBlockHash, type BlockHash } from '@kvmesh/protocol';

import { SegmentLog, type FsyncPolicy, type SegmentLogOptions } from '../src/adapters/segment-log.ts';
import { SEGMENT_RECORD_ALIGN_BYTES } from '../src/core/segment-records.ts';

const fixture = fileURLToPath(new URL('./fixtures/segment-writer.ts', import.meta.url));
const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
/** Acknowledged puts to see before the kill. */
const PUTS_BEFORE_KILL = 150;
/** Generous bound on the child's run (startup included); the test fails, never hangs. */
const CHILD_DEADLINE_MS = 120_000;

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

interface Acks {
  puts: Map<BlockHash, string>;
  removing: Set<BlockHash>;
  removed: Set<BlockHash>;
  /** Compaction runs that reclaimed something before the kill. */
  compactions: number;
}

/** Runs the writer until it has acknowledged PUTS_BEFORE_KILL puts and a compaction, then SIGKILLs it. */
async function runAndKill(dir: string, fsync: FsyncPolicy): Promise<Acks> {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, dir, fsync], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const acks: Acks = { puts: new Map(), removing: new Set(), removed: new Set(), compactions: 0 };
  const deadline = setTimeout(() => child.kill('SIGKILL'), CHILD_DEADLINE_MS);
  let killed = false;
  for await (const line of createInterface({ input: child.stdout })) {
    const [op, text, digest] = line.split(' ');
    if (op === 'ready') continue;
    if (op === 'compacted') {
      acks.compactions++;
      continue;
    }
    const hash = parseBlockHash(text ?? '');
    if (op === 'put') acks.puts.set(hash, digest ?? '');
    else if (op === 'removing') acks.removing.add(hash);
    else if (op === 'removed') acks.removed.add(hash);
    if (!killed && acks.puts.size >= PUTS_BEFORE_KILL && acks.compactions > 0) {
      killed = true;
      child.kill('SIGKILL'); // lines already in the pipe are still read: they were acknowledged
    }
  }
  await exited;
  clearTimeout(deadline);
  assert.ok(killed, `the writer stopped on its own after ${acks.puts.size} puts: ${stderr}`);
  assert.equal(child.signalCode, 'SIGKILL');
  return acks;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function expectAcknowledged(log: SegmentLog, acks: Acks): Promise<number> {
  let checked = 0;
  for (const [hash, digest] of acks.puts) {
    if (acks.removing.has(hash)) continue; // removal in flight at the kill: either outcome is fine
    const got = await log.read(hash);
    assert.ok(got !== null, `acknowledged block ${hash} is missing`);
    assert.equal(sha256(got), digest, `acknowledged block ${hash} came back different`);
    checked++;
  }
  for (const hash of acks.removed)
    assert.equal(log.has(hash), false, `acknowledged removal of ${hash} undone`);
  return checked;
}

function lastSegment(dir: string): string {
  const names = readdirSync(dir)
    .filter((name) => name.startsWith('seg-'))
    .sort();
  return join(dir, names[names.length - 1] as string);
}

describe('tiering - segment log crash recovery', () => {
  for (const fsync of ['always', 'group', 'interval'] as FsyncPolicy[]) {
    it(`segment crash - fsync '${fsync}': SIGKILL mid-stream loses no acknowledged put or removal`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'kvmesh-segcrash-'));
      dirs.push(dir);
      const acks = await runAndKill(dir, fsync);
      const options: SegmentLogOptions = {
        dir,
        capacityBytes: 1024 * 1024 * 1024,
        segmentBytesMax: 512 * 1024,
      };
      const log = await SegmentLog.open(options);
      assert.ok((await expectAcknowledged(log, acks)) >= PUTS_BEFORE_KILL / 2);
      assert.equal(log.stats().checksumFailures, 0);
      await log.close();
    });
  }

  it('segment crash - a record cut in half or garbage after the last record is dropped, never returned', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvmesh-segtorn-'));
    dirs.push(dir);
    const options: SegmentLogOptions = {
      dir,
      capacityBytes: 1024 * 1024 * 1024,
      segmentBytesMax: 512 * 1024,
    };
    const blocks = new Map<BlockHash, Uint8Array>();
    let log = await SegmentLog.open(options);
    for (let i = 0; i < 20; i++) {
      const hash = blockHashFromBytes(randomBytes(16));
      const payload = randomBytes(30_000 + i * 1000);
      await log.append(hash, payload);
      blocks.set(hash, payload);
    }
    const cut = blockHashFromBytes(randomBytes(16));
    await log.append(cut, randomBytes(50_000));
    await log.close();

    // The last record of the newest segment is `cut`: lose its second half, as a crash mid-write would.
    const path = lastSegment(dir);
    const sizeFull = statSync(path).size;
    truncateSync(path, sizeFull - 20_000);
    log = await SegmentLog.open(options);
    assert.equal(log.has(cut), false);
    assert.equal(await log.read(cut), null);
    assert.equal(log.stats().tornRecordsDropped, 1);
    assert.equal(log.recovery().tornTails.length, 1);
    const sizeCut = statSync(path).size;
    assert.equal(sizeCut % SEGMENT_RECORD_ALIGN_BYTES, 0, 'truncated back to a record boundary');
    assert.ok(sizeCut < sizeFull - 20_000);
    for (const [hash, payload] of blocks) {
      const got = await log.read(hash);
      assert.ok(got !== null && Buffer.from(payload).equals(Buffer.from(got)));
    }
    await log.close();

    // Garbage after the last record (random bytes, part of a page): dropped, nothing appears.
    appendFileSync(path, randomBytes(10_000));
    log = await SegmentLog.open(options);
    assert.equal(log.stats().tornRecordsDropped, 1);
    assert.equal(log.stats().blocks, blocks.size);
    assert.equal(statSync(path).size, sizeCut);
    const after = blockHashFromBytes(randomBytes(16));
    const payload = randomBytes(40_000);
    await log.append(after, payload);
    blocks.set(after, payload);
    await log.close();

    log = await SegmentLog.open(options);
    assert.equal(log.stats().tornRecordsDropped, 0);
    assert.deepEqual(new Set(log.hashes()), new Set(blocks.keys()));
    for (const [hash, bytes] of blocks) {
      const got = await log.read(hash);
      assert.ok(got !== null && Buffer.from(bytes).equals(Buffer.from(got)));
    }
    await log.close();
  });
});
