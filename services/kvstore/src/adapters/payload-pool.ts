// Receive memory for block payloads arriving on the data channel: fixed-size slots carved from a few
// large slabs the pool keeps for the process lifetime. Allocating a fresh 256 KiB buffer per PUT
// makes V8 run a full collection every few dozen milliseconds ("external memory pressure"); slots
// do not. A slot is handed out as a Buffer view and returns to its free list either when the store
// releases it (a block dropped before anything but the put path touched its payload, see
// BlockStoreDeps.releasePayload) or after the view has been garbage-collected
// (FinalizationRegistry), so memory is never reused while the store, a socket write or a
// computation still references it.
// NOTE: code that keeps a sub-view of a pooled payload must keep the payload view itself alive too
// (the node's handlers pass the payload object around, never a re-wrapped copy of its range).
// When no slot is free the caller allocates a fresh buffer as before: the pool bounds its memory
// and never blocks.
//
// Why explicit release matters: a stored payload lives long, so its view is promoted to V8's old
// generation and only a full collection finds it garbage. A store that evicts as fast as it takes
// new blocks would otherwise run dry between full collections and fall back to fresh buffers,
// whose external memory pressure is what forces those collections: measured on the store bench,
// about one PUT in eight fell back and full collections ran every ~200 ms.

export interface PayloadPoolOptions {
  /** Most bytes of slabs over all size classes. */
  bytesMax: number;
  /** Bytes of one slab (rounded down to whole slots). Default 32 MiB. */
  slabBytes?: number;
  /** Distinct payload sizes pooled; other sizes are not pooled. Default 8. */
  sizeClassesMax?: number;
  /** Smaller payloads are not pooled (a fresh small buffer is cheap). Default 64 KiB. */
  slotBytesMin?: number;
}

export interface PayloadPoolStats {
  slabs: number;
  bytes: number;
  slotsFree: number;
  pooled: number;
  /** Slots handed back by release() (the rest return after their view is garbage). */
  released: number;
  fallbacks: number;
}

interface SizeClass {
  slotBytes: number;
  slotsPerSlab: number;
  slabs: ArrayBuffer[];
  /** Slot numbers (slab * slotsPerSlab + index) ready for reuse. */
  free: number[];
}

interface Ticket {
  cls: SizeClass;
  slot: number;
}

export class PayloadPool {
  private readonly bytesMax: number;
  private readonly slabBytes: number;
  private readonly sizeClassesMax: number;
  private readonly slotBytesMin: number;
  private readonly classes = new Map<number, SizeClass>();
  /** Live views → their slot; a view leaves when it is released (or collected). */
  private readonly issued = new WeakMap<Uint8Array, Ticket>();
  private readonly registry: FinalizationRegistry<Ticket>;
  private bytes = 0;
  private pooled = 0;
  private released = 0;
  private fallbacks = 0;

  constructor(options: PayloadPoolOptions) {
    this.bytesMax = Math.max(0, Math.floor(options.bytesMax));
    this.slabBytes = options.slabBytes ?? 32 * 2 ** 20;
    this.sizeClassesMax = options.sizeClassesMax ?? 8;
    this.slotBytesMin = options.slotBytesMin ?? 64 * 1024;
    this.registry = new FinalizationRegistry(({ cls, slot }) => cls.free.push(slot));
  }

  /** A view of exactly `bytes` bytes from a free slot, or undefined (allocate a fresh buffer). */
  allocate(bytes: number): Uint8Array | undefined {
    if (bytes < this.slotBytesMin) return undefined;
    const cls = this.classFor(bytes);
    if (cls === undefined) return this.fallback();
    let slot = cls.free.pop();
    if (slot === undefined) {
      const slabBytes = cls.slotsPerSlab * cls.slotBytes;
      if (this.bytes + slabBytes > this.bytesMax) return this.fallback();
      cls.slabs.push(new ArrayBuffer(slabBytes));
      this.bytes += slabBytes;
      const first = (cls.slabs.length - 1) * cls.slotsPerSlab;
      for (let i = cls.slotsPerSlab - 1; i > 0; i--) cls.free.push(first + i);
      slot = first;
    }
    const slab = cls.slabs[Math.floor(slot / cls.slotsPerSlab)] as ArrayBuffer;
    const view = Buffer.from(slab, (slot % cls.slotsPerSlab) * cls.slotBytes, bytes);
    const ticket: Ticket = { cls, slot };
    this.issued.set(view, ticket);
    // The view is its own unregister token, so release() can cancel the finalizer.
    this.registry.register(view, ticket, view);
    this.pooled++;
    return view;
  }

  /**
   * Takes back the slot behind `bytes` at once, for the next allocate(). The caller vouches that
   * nothing will read or write the view again (the store calls this only for payloads it never
   * handed out). False, changing nothing, for memory this pool did not issue or already took back.
   */
  release(bytes: Uint8Array): boolean {
    const ticket = this.issued.get(bytes);
    if (ticket === undefined) return false;
    this.issued.delete(bytes);
    this.registry.unregister(bytes);
    ticket.cls.free.push(ticket.slot);
    this.released++;
    return true;
  }

  /** Whether `bytes` is a view this pool issued (the store may keep it without copying). */
  owns(bytes: Uint8Array): boolean {
    return this.issued.has(bytes);
  }

  stats(): PayloadPoolStats {
    let slabs = 0;
    let slotsFree = 0;
    for (const cls of this.classes.values()) {
      slabs += cls.slabs.length;
      slotsFree += cls.free.length;
    }
    return {
      slabs,
      bytes: this.bytes,
      slotsFree,
      pooled: this.pooled,
      released: this.released,
      fallbacks: this.fallbacks,
    };
  }

  private classFor(bytes: number): SizeClass | undefined {
    const existing = this.classes.get(bytes);
    if (existing !== undefined) return existing;
    if (this.classes.size >= this.sizeClassesMax || bytes > this.bytesMax) return undefined;
    const slotsPerSlab = Math.max(1, Math.floor(Math.min(this.slabBytes, this.bytesMax) / bytes));
    const cls: SizeClass = { slotBytes: bytes, slotsPerSlab, slabs: [], free: [] };
    this.classes.set(bytes, cls);
    return cls;
  }

  private fallback(): undefined {
    this.fallbacks++;
    return undefined;
  }
}
