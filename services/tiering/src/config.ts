// Configuration of one tiering service (one per host): listeners, the far-memory pool (capacity,
// backing, NUMA node), the SSD tier (directory, capacity, segment and fsync policy), and every
// request bound of the service edge. Loaded once at start from defaults < KVMESH_* env < --flags; a
// bad value fails the start with a message naming the field. Pure: env and argv are parameters.
import { hostname } from 'node:os';

import { InvalidArgumentError } from '@kvmesh/errors';
import { parseNodeId, type NodeId } from '@kvmesh/protocol';
import { loadConfig, type ConfigOf, type LoadConfigOptions } from '@kvmesh/runtime';

export const TIERING_CONFIG_SCHEMA = {
  serviceId: {
    type: 'string',
    default: '',
    lengthMax: 63,
    description:
      'id of this service (one per host); empty means tiering-<host>. Names the default pool and SSD paths',
  },
  host: { type: 'string', default: '127.0.0.1', description: 'address both listeners bind' },
  advertiseHost: { type: 'string', default: '', description: 'host clients dial; empty means --host' },
  grpcPort: { type: 'int', default: 0, min: 0, max: 65535, description: '0 picks a free port' },
  dataPort: { type: 'int', default: 0, min: 0, max: 65535, description: 'data channel port; 0 picks one' },
  dataToken: {
    type: 'string',
    default: '',
    lengthMax: 256,
    description: 'shared secret for the data channel HELLO; empty disables the check',
  },
  farBytes: {
    type: 'bytes',
    default: '1GiB',
    min: 0,
    max: '1TiB',
    description: 'far-memory pool capacity; 0 runs without far memory',
  },
  farBacking: {
    type: 'string',
    default: 'auto',
    choices: ['auto', 'shm', 'dax', 'process'],
    description:
      'auto: map farPath (a DAX device when it names /dev/daxX.Y, else a shared-memory file); ' +
      'process: in-process memory same-host readers cannot map',
  },
  farPath: {
    type: 'string',
    default: '',
    lengthMax: 4096,
    description: 'file or DAX device of the pool; empty means /dev/shm/kvmesh-far-<serviceId>',
  },
  farNumaNode: {
    type: 'int',
    default: -1,
    min: -2,
    max: 1023,
    description:
      'NUMA node the pool pages are bound to; -1 picks the first CPU-less node if any, -2 never binds',
  },
  farAlignBytes: {
    type: 'int',
    default: 64,
    min: 64,
    max: 1 << 21,
    description: 'alignment of pool extents',
  },
  farBlocksMax: { type: 'int', default: 1 << 20, min: 1, description: 'most blocks held in far memory' },
  farPrefault: { type: 'bool', default: false, description: 'fault the pool pages in at start' },
  farDrainOnShutdown: {
    type: 'bool',
    default: true,
    description:
      'at a clean shutdown, demote far-memory blocks to SSD (far memory does not survive a restart)',
  },
  ssdDir: {
    type: 'string',
    default: '',
    lengthMax: 4096,
    description: 'directory of the SSD segment log; empty means /var/tmp/kvmesh/<serviceId>/ssd',
  },
  ssdBytes: { type: 'bytes', default: '16GiB', min: 0, description: 'SSD tier capacity; 0 runs without it' },
  ssdSegmentBytes: { type: 'bytes', default: '256MiB', min: '1MiB', description: 'largest segment file' },
  ssdFsync: {
    type: 'string',
    default: 'group',
    choices: ['always', 'group', 'interval'],
    description: 'when appends are made durable before they are acknowledged',
  },
  ssdFsyncIntervalMs: { type: 'duration', default: '10ms', min: 1 },
  ssdDirectIo: { type: 'bool', default: true, description: 'O_DIRECT reads where the filesystem allows' },
  ssdBlocksMax: { type: 'int', default: 1 << 22, min: 1, description: 'most blocks held on SSD' },
  ssdCompactIntervalMs: {
    type: 'duration',
    default: '30s',
    min: 0,
    description: 'period of the SSD compaction check; 0: compact only when an append finds the tier full',
  },
  ssdCompactGarbageRatio: {
    type: 'number',
    default: 0.3,
    min: 0,
    max: 1,
    description: 'dead bytes (removed or promoted blocks) over bytes on disk from which the check compacts',
  },
  ssdReadMergeBytesMax: {
    type: 'bytes',
    default: '4MiB',
    min: '4KiB',
    description: 'largest single read that serves adjacent records pending together',
  },
  ssdReadsInFlightMax: {
    type: 'int',
    default: 16,
    min: 1,
    max: 1024,
    description: 'SSD reads issued at once',
  },
  ssdReadAheadBytes: {
    type: 'bytes',
    default: '2MiB',
    min: 0,
    description:
      'how far the SSD tier reads ahead of a sequential reader (O_DIRECT reads of back-to-back records); 0 turns it off',
  },
  ssdStageBytes: {
    type: 'bytes',
    default: '64MiB',
    min: 0,
    description:
      'room after the far-memory pool (same mapping) where LocateFar stages SSD blocks for same-host readers; 0 turns staging off',
  },
  ssdReadsQueuedMax: {
    type: 'int',
    default: 65536,
    min: 1,
    description: 'SSD reads waiting for a slot; beyond it a read is RESOURCE_EXHAUSTED',
  },
  readAheadBlocks: {
    type: 'int',
    default: 16,
    min: 1,
    max: 1024,
    description: 'blocks of one Read / Promote whose reads run ahead of the one being sent',
  },
  blockBytesMax: {
    type: 'bytes',
    default: '64MiB',
    min: 1,
    max: '1GiB',
    description: 'largest block payload',
  },
  hashesPerRequestMax: { type: 'int', default: 8192, min: 1, max: 1 << 20 },
  demoteMessagesPerStreamMax: {
    type: 'int',
    default: 65536,
    min: 1,
    description: 'most blocks one Demote stream may carry',
  },
  leaseMsDefault: {
    type: 'duration',
    default: '5s',
    min: 0,
    description: 'lease LocateFar grants when the request names none',
  },
  leaseMsMax: { type: 'duration', default: '60s', min: 0, description: 'longest lease LocateFar grants' },
  dataConnectionsMax: { type: 'int', default: 256, min: 1, description: 'data channel connections held' },
  shutdownGraceMs: { type: 'duration', default: '5s', min: 0 },
  logLevel: { type: 'string', default: 'info', choices: ['debug', 'info', 'warn', 'error'] },
} as const;

export type TieringConfig = ConfigOf<typeof TIERING_CONFIG_SCHEMA>;

export function loadTieringConfig(options: LoadConfigOptions = {}): TieringConfig {
  return loadConfig(TIERING_CONFIG_SCHEMA, options);
}

/** Defaults overlaid with `overrides`: for in-process services (tests, the local launcher). */
export function tieringConfig(overrides: Partial<TieringConfig> = {}): TieringConfig {
  return { ...loadConfig(TIERING_CONFIG_SCHEMA, {}), ...overrides };
}

/** The configured id, or `tiering-<host>` (stable across restarts: it names the pool and SSD paths). */
export function resolveServiceId(configured: string): NodeId {
  if (configured !== '') return parseNodeId(configured);
  const host = hostname()
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 40);
  return parseNodeId(`tiering-${host || 'host'}`);
}

/** Cross-field rules loadConfig cannot express; throws InvalidArgumentError naming them. */
export function checkTieringConfig(config: TieringConfig): void {
  if (config.farBytes === 0 && config.ssdBytes === 0)
    throw new InvalidArgumentError(
      'config farBytes and ssdBytes are both 0: the service would hold nothing',
      {
        farBytes: 0,
        ssdBytes: 0,
      },
    );
  if (config.leaseMsDefault > config.leaseMsMax)
    throw new InvalidArgumentError(
      `config leaseMsDefault ${config.leaseMsDefault} exceeds leaseMsMax ${config.leaseMsMax}`,
      { leaseMsDefault: config.leaseMsDefault, leaseMsMax: config.leaseMsMax },
    );
  if ((config.farAlignBytes & (config.farAlignBytes - 1)) !== 0)
    throw new InvalidArgumentError(`config farAlignBytes ${config.farAlignBytes} must be a power of two`, {
      farAlignBytes: config.farAlignBytes,
    });
}
