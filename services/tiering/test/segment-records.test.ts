// The SSD tier's on-disk format, without files: records round-trip, the tail scan keeps every
// verified record and stops at a torn or damaged last record (skipping damage that valid records
// follow), a flipped byte in a header or a payload is caught, and a newer format is refused.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { describe, it } from 'node:test';

import { CorruptDataError } from '@kvmesh/errors';
import { loadKernels } from '@kvmesh/kernels';
import { blockHashFromBytes, type BlockHash } from '@kvmesh/protocol';

import { SegmentFormatVersionError } from '../src/core/errors.ts';
import {
  SEGMENT_FORMAT_VERSION,
  SEGMENT_RECORD_ALIGN_BYTES,
  SEGMENT_RECORD_HEADER_BYTES,
  decodeSegmentRecordHeader,
  encodeSegmentManifest,
  encodeSegmentRecordBytes,
  encodeTombstonePayload,
  parseSegmentFileName,
  parseSegmentManifest,
  scanSegmentRecords,
  segmentChecksum,
  segmentFileName,
  segmentRecordBytes,
  verifySegmentPayload,
  type SegmentManifest,
} from '../src/core/segment-records.ts';

const kernels = loadKernels();
const hash128 = (data: Uint8Array): Uint8Array => kernels.hash128(data);

function randomHash(): BlockHash {
  return blockHashFromBytes(randomBytes(16));
}

interface Built {
  hash: BlockHash;
  payload: Uint8Array;
  offset: number;
  bytes: Uint8Array;
}

/** A segment image of `count` put records with random payloads of random sizes. */
function segmentOf(count: number): { image: Uint8Array; records: Built[] } {
  const records: Built[] = [];
  let offset = 0;
  for (let i = 0; i < count; i++) {
    const hash = randomHash();
    const payload = randomBytes(randomInt(1, 3 * SEGMENT_RECORD_ALIGN_BYTES));
    const bytes = encodeSegmentRecordBytes(hash128, 'put', hash, BigInt(i), payload);
    records.push({ hash, payload, offset, bytes });
    offset += bytes.length;
  }
  const image = new Uint8Array(offset);
  for (const r of records) image.set(r.bytes, r.offset);
  return { image, records };
}

function flip(bytes: Uint8Array, at: number): void {
  bytes[at] = (bytes[at] as number) ^ 0x40;
}

describe('tiering - segment records', () => {
  it('segment records - put and tombstone records round-trip, aligned to 4096 bytes', () => {
    const hash = randomHash();
    const payload = randomBytes(10_000);
    const bytes = encodeSegmentRecordBytes(hash128, 'put', hash, 42n, payload);
    assert.equal(bytes.length, segmentRecordBytes(payload.length));
    assert.equal(bytes.length % SEGMENT_RECORD_ALIGN_BYTES, 0);
    assert.equal(bytes.length, 12_288);
    const decoded = decodeSegmentRecordHeader(hash128, bytes.subarray(0, SEGMENT_RECORD_HEADER_BYTES));
    assert.ok(decoded.ok);
    assert.equal(decoded.version, SEGMENT_FORMAT_VERSION);
    assert.equal(decoded.header.kind, 'put');
    assert.equal(decoded.header.hash, hash);
    assert.equal(decoded.header.payloadBytes, payload.length);
    assert.equal(decoded.header.sequence, 42n);
    const stored = bytes.subarray(SEGMENT_RECORD_HEADER_BYTES, SEGMENT_RECORD_HEADER_BYTES + payload.length);
    assert.deepEqual(Buffer.from(stored), payload);
    assert.ok(verifySegmentPayload(hash128, decoded.header, stored));
    assert.ok(bytes.subarray(SEGMENT_RECORD_HEADER_BYTES + payload.length).every((b) => b === 0));

    const tombstone = encodeSegmentRecordBytes(hash128, 'tombstone', hash, 43n, encodeTombstonePayload(7));
    assert.equal(tombstone.length, SEGMENT_RECORD_ALIGN_BYTES);
    const scan = scanSegmentRecords(hash128, tombstone, { verifyPayloads: false });
    assert.equal(scan.records.length, 1);
    assert.equal(scan.records[0]?.header.kind, 'tombstone');
    assert.equal(scan.records[0]?.tombstoneTarget, 7);
    assert.equal(scan.records[0]?.header.sequence, 43n);
  });

  it('segment records - a payload exactly filling its alignment gets no padding; an empty one is valid', () => {
    const full = encodeSegmentRecordBytes(
      hash128,
      'put',
      randomHash(),
      1n,
      randomBytes(2 * SEGMENT_RECORD_ALIGN_BYTES - SEGMENT_RECORD_HEADER_BYTES),
    );
    assert.equal(full.length, 2 * SEGMENT_RECORD_ALIGN_BYTES);
    const empty = encodeSegmentRecordBytes(hash128, 'put', randomHash(), 2n, new Uint8Array(0));
    assert.equal(empty.length, SEGMENT_RECORD_ALIGN_BYTES);
    const image = new Uint8Array(full.length + empty.length);
    image.set(full, 0);
    image.set(empty, full.length);
    const scan = scanSegmentRecords(hash128, image, { verifyPayloads: true });
    assert.deepEqual(
      scan.records.map((r) => r.offset),
      [0, full.length],
    );
    assert.equal(scan.torn, false);
  });

  it('segment records - the scan keeps every record of an intact segment', () => {
    const { image, records } = segmentOf(6);
    const scan = scanSegmentRecords(hash128, image, { verifyPayloads: true });
    assert.deepEqual(
      scan.records.map((r) => [r.header.hash, r.offset]),
      records.map((r) => [r.hash, r.offset]),
    );
    assert.equal(scan.validBytes, image.length);
    assert.equal(scan.torn, false);
    assert.deepEqual(scan.damaged, []);
  });

  it('segment records - a last record cut mid-payload or mid-header is torn: dropped, prefix kept', () => {
    const { image, records } = segmentOf(4);
    const last = records[3] as Built;
    for (const cut of [last.offset + 10, last.offset + SEGMENT_RECORD_HEADER_BYTES + 1, image.length - 1]) {
      const scan = scanSegmentRecords(hash128, image.subarray(0, cut), { verifyPayloads: true });
      assert.equal(scan.records.length, 3, `cut at ${cut}`);
      assert.equal(scan.validBytes, last.offset);
      assert.equal(scan.torn, true);
    }
    // Garbage (random bytes, then zeros) after the last record is a torn tail too.
    const extended = new Uint8Array(image.length + 3 * SEGMENT_RECORD_ALIGN_BYTES);
    extended.set(image, 0);
    extended.set(randomBytes(5000), image.length);
    const scan = scanSegmentRecords(hash128, extended, { verifyPayloads: true });
    assert.equal(scan.records.length, 4);
    assert.equal(scan.validBytes, image.length);
    assert.equal(scan.torn, true);
  });

  it('segment records - a flipped byte in the last header or payload is a torn tail', () => {
    for (const where of ['header', 'payload'] as const) {
      const { image, records } = segmentOf(3);
      const last = records[2] as Built;
      flip(
        image,
        last.offset + (where === 'header' ? 20 : SEGMENT_RECORD_HEADER_BYTES + last.payload.length - 1),
      );
      const scan = scanSegmentRecords(hash128, image, { verifyPayloads: true });
      assert.equal(scan.records.length, 2, where);
      assert.equal(scan.validBytes, last.offset);
      assert.equal(scan.torn, true);
      assert.equal(scan.tornReason, where === 'header' ? 'header-checksum' : 'payload-checksum');
    }
  });

  it('segment records - a flipped byte in a middle header or payload is skipped; later records are kept', () => {
    for (const where of ['header', 'payload'] as const) {
      const { image, records } = segmentOf(5);
      const hit = records[2] as Built;
      flip(image, hit.offset + (where === 'header' ? 9 : SEGMENT_RECORD_HEADER_BYTES + 3));
      const scan = scanSegmentRecords(hash128, image, { verifyPayloads: true });
      assert.deepEqual(
        scan.records.map((r) => r.header.hash),
        [0, 1, 3, 4].map((i) => records[i]?.hash),
        where,
      );
      assert.equal(scan.torn, false);
      assert.equal(scan.validBytes, image.length);
      assert.deepEqual(scan.damaged, [
        {
          offset: hit.offset,
          bytes: hit.bytes.length,
          reason: where === 'header' ? 'header-checksum' : 'payload-checksum',
        },
      ]);
    }
  });

  it('segment records - without payload verification a damaged payload passes the scan (reads verify it)', () => {
    const { image, records } = segmentOf(2);
    const first = records[0] as Built;
    flip(image, first.offset + SEGMENT_RECORD_HEADER_BYTES);
    const scan = scanSegmentRecords(hash128, image, { verifyPayloads: false });
    assert.equal(scan.records.length, 2);
    const header = scan.records[0]?.header;
    assert.ok(header !== undefined);
    const payload = image.subarray(
      SEGMENT_RECORD_HEADER_BYTES,
      SEGMENT_RECORD_HEADER_BYTES + first.payload.length,
    );
    assert.equal(verifySegmentPayload(hash128, header, payload), false);
  });

  it('segment records - a newer record version stops the scan without marking anything torn', () => {
    const { image, records } = segmentOf(3);
    const newer = records[1] as Built;
    const view = new DataView(image.buffer, image.byteOffset + newer.offset, SEGMENT_RECORD_HEADER_BYTES);
    view.setUint16(4, SEGMENT_FORMAT_VERSION + 1, true);
    const headerStart = image.subarray(newer.offset, newer.offset + 56);
    image.set(segmentChecksum(hash128, headerStart), newer.offset + 56);
    const decoded = decodeSegmentRecordHeader(hash128, image.subarray(newer.offset, newer.offset + 64));
    assert.deepEqual(decoded, { ok: false, reason: 'newer-version', version: SEGMENT_FORMAT_VERSION + 1 });
    const scan = scanSegmentRecords(hash128, image, { verifyPayloads: true });
    assert.equal(scan.records.length, 1);
    assert.deepEqual(scan.newerVersion, { offset: newer.offset, version: SEGMENT_FORMAT_VERSION + 1 });
    assert.equal(scan.torn, false);
  });

  it('segment records - manifest round-trips; a newer version is refused; damage is corrupt data', () => {
    const manifest: SegmentManifest = {
      tailFrom: 9,
      sequenceNext: 2n ** 60n + 5n,
      sealed: [
        { id: 3, bytes: 65536, records: 12, bytesLive: 4096, bytesDead: 61440 },
        { id: 8, bytes: 8192, records: 2, bytesLive: 8192, bytesDead: 0 },
      ],
    };
    const text = encodeSegmentManifest(hash128, manifest);
    assert.deepEqual(parseSegmentManifest(hash128, text), manifest);

    const newer = JSON.parse(text) as Record<string, unknown>;
    newer.version = 2;
    assert.throws(
      () => parseSegmentManifest(hash128, JSON.stringify(newer)),
      (err: unknown) =>
        err instanceof SegmentFormatVersionError &&
        err.code === 'UNSUPPORTED_FORMAT_VERSION' &&
        /version 2/.test(err.message),
    );
    const tampered = text.replace('"bytes":65536', '"bytes":65537');
    assert.throws(() => parseSegmentManifest(hash128, tampered), CorruptDataError);
    assert.throws(() => parseSegmentManifest(hash128, text.slice(0, 40)), CorruptDataError);
    assert.throws(() => parseSegmentManifest(hash128, '[]'), CorruptDataError);
  });

  it('segment records - segment file names', () => {
    assert.equal(segmentFileName(12), 'seg-00000012.log');
    assert.equal(parseSegmentFileName('seg-00000012.log'), 12);
    assert.equal(parseSegmentFileName('seg-7.log'), 7);
    for (const name of ['seg-.log', 'seg-1.log.tmp', 'manifest.json', 'seg-99999999999.log', 'xseg-1.log']) {
      assert.equal(parseSegmentFileName(name), null, name);
    }
  });
});
