// Large buffers the tiering service takes again and again at the same few sizes (demoted payloads
// received from the data channel, SSD records being appended): kept on a free list per size once
// their user hands them back, instead of a fresh allocation each time. A fresh 256 KiB buffer per
// demote kept V8 collecting (~43% of the service's CPU at SSD speed). Bounded: at most
// `buffersPerSize` buffers of at most `sizesMax` sizes are kept; anything else is left to the GC.
// Pure bookkeeping; the caller guarantees a buffer is handed back only once nothing reads it.
import { InvalidArgumentError } from '@kvmesh/errors';

export interface ReusableBuffersOptions {
  readonly buffersPerSize: number;
  readonly sizesMax: number;
  /** Smaller requests get fresh buffers (cheap, and not worth a free list). */
  readonly bytesMin: number;
}

export class ReusableBuffers {
  private readonly free = new Map<number, Buffer[]>();
  /** Buffers this pool handed out and not yet got back (a second give-back is ignored). */
  private readonly out = new WeakSet<Uint8Array>();
  reused = 0;
  fresh = 0;

  constructor(private readonly options: ReusableBuffersOptions) {
    for (const [name, value] of Object.entries(options))
      if (!Number.isSafeInteger(value) || value < 1)
        throw new InvalidArgumentError(`reusable buffers ${name} must be a positive integer, got ${value}`, {
          [name]: value,
        });
  }

  /** A buffer of exactly `bytes` bytes (contents undefined). */
  take(bytes: number): Buffer {
    const buffer = this.free.get(bytes)?.pop();
    if (buffer !== undefined) {
      this.reused++;
      this.out.add(buffer);
      return buffer;
    }
    this.fresh++;
    // NOTE: a Buffer of its own memory: the data channel delivers an allocator's Buffer as is (by
    // identity, which is how giveBack knows it), and nothing else shares its backing store.
    const made = Buffer.allocUnsafeSlow(bytes);
    if (bytes >= this.options.bytesMin) this.out.add(made);
    return made;
  }

  /** Hands `buffer` (from take(), nothing reading it any more) back for reuse. */
  giveBack(buffer: Uint8Array): void {
    if (!this.out.has(buffer)) return;
    this.out.delete(buffer);
    let list = this.free.get(buffer.length);
    if (list === undefined) {
      if (this.free.size >= this.options.sizesMax) return;
      list = [];
      this.free.set(buffer.length, list);
    }
    if (list.length < this.options.buffersPerSize) list.push(buffer as Buffer);
  }
}
