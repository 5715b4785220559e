// Conversions between the wire messages of kvstore.proto and the BlockStore's branded shapes. Every
// decode validates (16-byte hashes and fingerprints, namespace bounds) and throws
// InvalidArgumentError naming the field and position, so a handler never passes unchecked bytes on.
import {
  blockFieldsFromWire,
  blockToWire,
  parseNamespace,
  type Block,
  type Namespace,
} from '@kvmesh/protocol';

import type { BlockRecord, PutBlockInput } from '../core/index.ts';

export { hashFromWire as hashOf, hashesFromWire as hashesOf } from '@kvmesh/protocol';

export function namespaceOf(text: string): Namespace {
  return parseNamespace(text);
}

/**
 * A payload the store may keep: small frame bodies can be views into a shared allocation pool, and
 * holding one would pin (and under-count) the whole slab, so those are copied.
 */
export function ownedPayload(bytes: Uint8Array): Uint8Array {
  // NOTE: not bytes.slice(): on a Buffer that is a view of the same memory, not a copy.
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
    ? bytes
    : new Uint8Array(bytes);
}

/**
 * A wire block as a put input; `payload` overrides block.payload (the data channel sends it apart).
 * `keep` says a view may be held as is (memory from the node's payload pool).
 */
export function putInputOf(
  block: Block | undefined,
  payload?: Uint8Array,
  keep?: (bytes: Uint8Array) => boolean,
): PutBlockInput {
  const fields = blockFieldsFromWire(block, 'put');
  return {
    ...fields,
    payload:
      keep !== undefined && payload !== undefined && keep(payload)
        ? payload
        : ownedPayload(payload ?? (block as Block).payload),
  };
}

/** A stored block (or put input) as a wire Block; the payload is shared, not copied, or left empty. */
export function blockOf(record: BlockRecord | PutBlockInput, withPayload: boolean): Block {
  return blockToWire(record, withPayload);
}
