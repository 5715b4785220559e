// The tiering service as a real child process for integration tests: `services/tiering/src/main.ts`
// on loopback with a far-memory pool and an SSD directory of the test's choosing. A fixed gRPC port
// lets a test kill the service and start it again at the same address (its clients reconnect there).
import { spawnService, type ServiceHandle } from './service.ts';

export interface TieringServiceOptions {
  /** Names the default far-memory file (/dev/shm/kvmesh-far-<id>); keep it across a restart. */
  readonly serviceId: string;
  readonly ssdDir: string;
  /** Far-memory pool bytes (0: no far memory). */
  readonly farBytes: number;
  /** SSD tier bytes (0: no SSD tier). */
  readonly ssdBytes: number;
  /** 0 picks a free port. */
  readonly grpcPort?: number;
  /** Further --flag value pairs (e.g. 'ssd-direct-io': 'false'). */
  readonly flags?: Readonly<Record<string, string>>;
}

export interface TieringReadyInfo {
  readonly serviceId: string;
  readonly grpcAddress: string;
  readonly dataAddress: string;
  /** What backs far memory, in words ('none' without it). */
  readonly far: string;
  readonly farPath: string;
  readonly ssdDir: string;
}

/** Starts one tiering service and resolves once it printed its ready line. */
export function spawnTieringService(options: TieringServiceOptions): Promise<ServiceHandle> {
  const flags: Record<string, string> = {
    'service-id': options.serviceId,
    host: '127.0.0.1',
    'grpc-port': String(options.grpcPort ?? 0),
    'data-port': '0',
    'far-bytes': String(options.farBytes),
    'ssd-bytes': String(options.ssdBytes),
    'ssd-dir': options.ssdDir,
    'log-level': 'warn',
    ...options.flags,
  };
  return spawnService({
    name: `tiering ${options.serviceId}`,
    entry: 'services/tiering/src/main.ts',
    args: Object.entries(flags).flatMap(([flag, value]) => [`--${flag}`, value]),
  });
}

/** The ready line's fields of a spawned tiering service. */
export function tieringInfo(handle: ServiceHandle): TieringReadyInfo {
  return handle.info as unknown as TieringReadyInfo;
}
