// An emulated network between the kvstore nodes and everything else, for the mesh bench. On one
// machine every fetch from the store crosses loopback, which is nearly free next to compute; in a
// cluster it crosses a NIC. Linux traffic control shapes the loopback device with HTB: each kvstore
// node's data channel (a fixed port, see `kvmesh up --kvstore-data-port`) gets a full-duplex link of
// the given rate, one class for what the node sends (source port) and one for what it receives
// (destination port), while all other loopback traffic (gRPC, NATS, HTTP) keeps a class of its own
// at loopback speed. Reads, puts and replication between kvstore nodes all cross the shaped links.
// Needs root and `tc` with the htb qdisc. It never replaces a root qdisc it did not install, and it
// removes its own when the run ends, however the process exits.
import { execFileSync } from 'node:child_process';

const DEVICE = 'lo';
// The class of unshaped loopback traffic: far above what loopback moves here (~10 GB/s memcpy).
const UNSHAPED_RATE = '100gbit';
// Bytes a class may send at once above its rate: one 64 KiB loopback packet.
const BURST = '64k';
const FIRST_CLASS = 10;

export interface StoreLink {
  readonly mbit: number;
  /** Bytes sent through the shaped classes since the link was installed. */
  bytes(): number;
  /** Removes the shaping; loopback is unshaped again. Idempotent. */
  remove(): void;
}

/** Runs tc with `command`'s words as its arguments (none of them holds a space). */
function tc(command: string): string {
  try {
    return execFileSync('tc', command.split(' '), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? '';
    throw new Error(`tc ${command} failed: ${stderr || (err as Error).message}`);
  }
}

/** The root qdisc of the loopback device, as tc names it (e.g. 'noqueue', 'htb'). */
export function loopbackRootQdisc(): string {
  const line = tc(`qdisc show dev ${DEVICE}`)
    .split('\n')
    .find((l) => / root /.test(l));
  return /^qdisc (\S+)/.exec(line ?? '')?.[1] ?? 'noqueue';
}

/** Why this process cannot shape the store link now (no root, no tc, loopback shaped already); undefined if it can. */
export function storeLinkUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  let root: string;
  try {
    root = loopbackRootQdisc();
  } catch {
    return 'needs tc';
  }
  return root === 'noqueue' ? undefined : `${DEVICE} is already shaped (root qdisc ${root})`;
}

/** Sum of the bytes sent by the classes `ids` (HTB class minors) of the device. */
function classBytes(ids: ReadonlySet<number>): number {
  let total = 0;
  let current: number | undefined;
  for (const line of tc(`-s class show dev ${DEVICE}`).split('\n')) {
    const head = /^class htb 1:(\d+) /.exec(line);
    if (head !== null) current = Number(head[1]);
    const sent = /^\s*Sent (\d+) bytes/.exec(line);
    if (sent !== null && current !== undefined && ids.has(current)) total += Number(sent[1]);
  }
  return total;
}

/** Shapes the data channels on `ports` (one per kvstore node) to `mbit` Mbit/s each way. */
export function shapeStoreLink(ports: readonly number[], mbit: number): StoreLink {
  if (!(mbit > 0)) throw new Error(`the store link needs a rate above 0 Mbit/s, got ${mbit}`);
  const unavailable = storeLinkUnavailable();
  if (unavailable !== undefined)
    throw new Error(
      `cannot shape the store link: ${unavailable} (tc on ${DEVICE}; a qdisc left by an earlier run: tc qdisc del dev ${DEVICE} root)`,
    );
  let installed = true;
  const remove = (): void => {
    if (!installed) return;
    installed = false;
    process.off('exit', remove);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    try {
      tc(`qdisc del dev ${DEVICE} root`);
    } catch {
      // NOTE: already gone (removed by hand): nothing is shaped either way.
    }
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    remove();
    process.kill(process.pid, signal);
  };
  process.once('exit', remove);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const shaped = new Set<number>();
  try {
    // r2q keeps HTB's quantum (rate ÷ r2q) within its range for both the fast and the slow classes.
    tc(`qdisc add dev ${DEVICE} root handle 1: htb default 1 r2q 1000`);
    tc(`class add dev ${DEVICE} parent 1: classid 1:1 htb rate ${UNSHAPED_RATE}`);
    let id = FIRST_CLASS;
    for (const port of ports) {
      for (const side of ['sport', 'dport']) {
        tc(`class add dev ${DEVICE} parent 1: classid 1:${id} htb rate ${mbit}mbit burst ${BURST}`);
        tc(
          `filter add dev ${DEVICE} parent 1: protocol ip prio 1 u32 match ip ${side} ${port} 0xffff flowid 1:${id}`,
        );
        shaped.add(id++);
      }
    }
  } catch (err) {
    remove();
    throw err;
  }
  return { mbit, bytes: () => (installed ? classBytes(shaped) : 0), remove };
}
