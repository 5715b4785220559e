// The frame decoder without sockets: frames survive being split at every byte boundary, bounds and
// bad prefixes are refused before any blob is buffered, and pause/resume keeps frame order.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { KvmeshError, LimitExceededError } from '@kvmesh/errors';

import { DataChannelProtocolError } from '../src/index.ts';
import { encodeFrameHead, FRAME_PREFIX_BYTES, FrameDecoder, FrameType, type Frame } from '../src/frame.ts';

const bounds = { headerBytesMax: 1024, bodyBytesMax: 1 << 20 };

function encode(requestId: number, header: Uint8Array, body: Uint8Array): Buffer {
  return Buffer.concat([encodeFrameHead(FrameType.request, requestId, 7, 0, header, body.length), body]);
}

function collect(): { frames: Frame[]; decoder: FrameDecoder } {
  const frames: Frame[] = [];
  return { frames, decoder: new FrameDecoder(bounds, (f) => frames.push(f)) };
}

describe('dataplane frame decoder', () => {
  it('frame - decodes frames split at every byte boundary', () => {
    const inputs = [
      { header: randomBytes(0), body: randomBytes(0) },
      { header: randomBytes(5), body: randomBytes(0) },
      { header: randomBytes(0), body: randomBytes(33) },
      { header: randomBytes(17), body: randomBytes(300) },
    ];
    const stream = Buffer.concat(inputs.map((f, i) => encode(i + 1, f.header, f.body)));
    for (let cut = 0; cut <= stream.length; cut++) {
      const { frames, decoder } = collect();
      decoder.push(stream.subarray(0, cut));
      decoder.push(stream.subarray(cut));
      assert.equal(frames.length, inputs.length, `cut ${cut}`);
      frames.forEach((f, i) => {
        assert.equal(f.requestId, i + 1);
        assert.equal(f.methodId, 7);
        assert.deepEqual(f.header, inputs[i]?.header);
        assert.deepEqual(f.body, inputs[i]?.body);
      });
      assert.ok(decoder.atFrameBoundary);
    }
  });

  it('frame - byte-at-a-time delivery and position of a truncated frame', () => {
    const body = randomBytes(100);
    const stream = encode(9, Buffer.from('meta'), body);
    const { frames, decoder } = collect();
    for (let i = 0; i < stream.length - 10; i++) decoder.push(stream.subarray(i, i + 1));
    assert.equal(frames.length, 0);
    assert.equal(decoder.atFrameBoundary, false);
    assert.deepEqual(decoder.describePosition(), {
      part: 'body',
      bytesHave: 90,
      bytesWant: 100,
      framesDecoded: 0,
    });
  });

  it('frame - oversized header or body is refused from the prefix alone', () => {
    const big = encodeFrameHead(FrameType.request, 3, 1, 0, new Uint8Array(0), bounds.bodyBytesMax + 1);
    const { decoder } = collect();
    assert.throws(
      () => decoder.push(big),
      (e: unknown) =>
        e instanceof LimitExceededError &&
        e.details.part === 'body' &&
        e.details.bytes === bounds.bodyBytesMax + 1 &&
        e.details.bytesMax === bounds.bodyBytesMax &&
        e.details.requestId === 3,
    );
    const bigHeader = Buffer.alloc(FRAME_PREFIX_BYTES);
    encodeFrameHead(FrameType.request, 4, 1, 0, new Uint8Array(0), 0).copy(bigHeader);
    bigHeader.writeUInt32LE(bounds.headerBytesMax + 1, 16);
    const second = collect();
    assert.throws(
      () => second.decoder.push(bigHeader),
      (e: unknown) => e instanceof LimitExceededError && e.details.part === 'header',
    );
  });

  it('frame - bad magic, version, type and flags are protocol errors and kill the decoder', () => {
    const good = encode(1, new Uint8Array(0), new Uint8Array(0));
    const cases: [number, number, string][] = [
      [0, 0x00, 'bad-magic'],
      [4, 2, 'bad-version'],
      [5, 99, 'bad-frame-type'],
      [6, 1, 'bad-flags'],
    ];
    for (const [offset, value, reason] of cases) {
      const bad = Buffer.from(good);
      bad[offset] = value;
      const { frames, decoder } = collect();
      assert.throws(
        () => decoder.push(bad),
        (e: unknown) => e instanceof DataChannelProtocolError && e.details.reason === reason,
        reason,
      );
      decoder.push(good);
      assert.equal(frames.length, 0, 'a dead decoder delivers nothing');
    }
    const { decoder } = collect();
    assert.throws(
      () => decoder.push(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')),
      (e: unknown) => e instanceof KvmeshError && e.code === 'DATA_CHANNEL_PROTOCOL',
    );
  });

  it('frame - pause stops delivery mid-chunk and resume continues in order', () => {
    const stream = Buffer.concat([1, 2, 3, 4].map((id) => encode(id, new Uint8Array(0), randomBytes(id))));
    const seen: number[] = [];
    const decoder = new FrameDecoder(bounds, (f) => {
      seen.push(f.requestId);
      if (f.requestId === 2) decoder.pause();
    });
    decoder.push(stream.subarray(0, stream.length - 3));
    assert.deepEqual(seen, [1, 2]);
    decoder.push(stream.subarray(stream.length - 3));
    assert.deepEqual(seen, [1, 2]);
    decoder.resume();
    assert.deepEqual(seen, [1, 2, 3, 4]);
  });

  it('frame - direct reads land in the body and complete the frame', () => {
    const body = randomBytes(200_000);
    const stream = encode(5, Buffer.from('h'), body);
    const { frames, decoder } = collect();
    decoder.push(stream.subarray(0, 1000));
    const target = decoder.directTarget(16 * 1024);
    assert.ok(target !== undefined);
    const rest = stream.subarray(1000);
    assert.equal(target.length, rest.length);
    rest.copy(target);
    decoder.commitDirect(rest.length);
    assert.equal(frames.length, 1);
    assert.ok(frames[0]?.body.equals(body));
    assert.equal(decoder.directTarget(1), undefined);
  });

  it('frame - a body allocator’s Buffer is delivered as that very object', () => {
    // An allocator may track its memory by object identity (the kvstore payload pool reuses a slot
    // once the view it gave out is garbage); a re-wrapped view would outlive that and alias reused memory.
    const body = randomBytes(70_000);
    const given: Buffer[] = [];
    const frames: Frame[] = [];
    const decoder = new FrameDecoder(bounds, (f) => frames.push(f), {
      allocate: ({ bytes }) => {
        const view = Buffer.from(new ArrayBuffer(bytes + 64), 32, bytes);
        given.push(view);
        return view;
      },
    });
    decoder.push(encode(9, Buffer.from('h'), body));
    assert.equal(frames.length, 1);
    assert.equal(frames[0]?.body, given[0], 'the allocator’s own view, not a copy or a re-wrap');
    assert.ok(frames[0]?.body.equals(body));
  });
});
