// Branded identifiers: values that must never be mixed up get distinct types even though they share
// a representation. Constructors validate, so a branded value is always well-formed.
import { InvalidArgumentError } from '@kvmesh/errors';

declare const brand: unique symbol;
export type Brand<T, B extends string> = T & { readonly [brand]: B };

/** A block hash (spec v1): 16 bytes, written as 32 lowercase hex characters (canonical XXH3-128 order). */
export type BlockHash = Brand<string, 'BlockHash'>;
/** A model fingerprint: 16 bytes as 32 lowercase hex characters. */
export type ModelFingerprint = Brand<string, 'ModelFingerprint'>;
/** A service instance id, unique in the cluster (e.g. `kvstore-0`). */
export type NodeId = Brand<string, 'NodeId'>;
/** One client request, end to end. */
export type RequestId = Brand<string, 'RequestId'>;
/** A tenant / cache-salt namespace; '' is the shared default. */
export type Namespace = Brand<string, 'Namespace'>;

const HEX32 = /^[0-9a-f]{32}$/;
const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const NAMESPACE_BYTES_MAX = 256;

function hex16(bytes: Uint8Array, what: string): string {
  if (bytes.length !== 16)
    throw new InvalidArgumentError(`${what} must be 16 bytes, got ${bytes.length}`, { length: bytes.length });
  return Buffer.from(bytes.buffer, bytes.byteOffset, 16).toString('hex');
}

function parseHex16(text: string, what: string): string {
  const lower = text.toLowerCase();
  if (!HEX32.test(lower))
    throw new InvalidArgumentError(`${what} must be 32 hex characters, got '${text}'`, { value: text });
  return lower;
}

export function blockHashFromBytes(bytes: Uint8Array): BlockHash {
  return hex16(bytes, 'block hash') as BlockHash;
}
export function parseBlockHash(text: string): BlockHash {
  return parseHex16(text, 'block hash') as BlockHash;
}
export function blockHashToBytes(hash: BlockHash): Uint8Array {
  return new Uint8Array(Buffer.from(hash, 'hex'));
}

export function modelFingerprintFromBytes(bytes: Uint8Array): ModelFingerprint {
  return hex16(bytes, 'model fingerprint') as ModelFingerprint;
}
export function parseModelFingerprint(text: string): ModelFingerprint {
  return parseHex16(text, 'model fingerprint') as ModelFingerprint;
}
export function modelFingerprintToBytes(fp: ModelFingerprint): Uint8Array {
  return new Uint8Array(Buffer.from(fp, 'hex'));
}

export function parseNodeId(text: string): NodeId {
  if (!NODE_ID.test(text))
    throw new InvalidArgumentError(`node id must match ${NODE_ID}, got '${text}'`, { value: text });
  return text as NodeId;
}

export function parseRequestId(text: string): RequestId {
  if (!REQUEST_ID.test(text))
    throw new InvalidArgumentError(`request id must match ${REQUEST_ID}, got '${text}'`, { value: text });
  return text as RequestId;
}

export function parseNamespace(text: string): Namespace {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > NAMESPACE_BYTES_MAX) {
    throw new InvalidArgumentError(`namespace is ${bytes} bytes, limit is ${NAMESPACE_BYTES_MAX}`, {
      bytes,
      limit: NAMESPACE_BYTES_MAX,
    });
  }
  return text as Namespace;
}

export const DEFAULT_NAMESPACE = '' as Namespace;
