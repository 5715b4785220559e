// Structured logs: one JSON object per line on stderr ({ts, level, service, node, msg, ...fields}),
// so stdout stays free for the readiness line and machine output. A line has a byte bound: a field
// set that would exceed it is replaced by a note saying so, never by a multi-megabyte log line.
import { KvmeshError } from '@kvmesh/errors';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  readonly level: LogLevel;
  enabled(level: LogLevel): boolean;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  readonly service: string;
  readonly nodeId?: string;
  readonly level?: LogLevel;
  /** Where lines go; default process.stderr. Each call gets one line ending in '\n'. */
  readonly sink?: (line: string) => void;
  /** Wall clock for `ts`; default Date.now. */
  readonly clock?: () => number;
  /** Longest line in characters before fields are dropped. Default 16384. */
  readonly lineCharsMax?: number;
}

const LEVEL_RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };
const LINE_CHARS_MAX_DEFAULT = 16_384;

export function isLogLevel(text: string): text is LogLevel {
  return Object.hasOwn(LEVEL_RANK, text);
}

/** JSON-safe view of a value: bigint as string, errors with their code and details, bytes by length. */
function replacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) {
    const out: Record<string, unknown> = { name: value.name, message: value.message };
    if (value instanceof KvmeshError) {
      out['code'] = value.code;
      out['details'] = value.details;
    }
    if (value.stack !== undefined) out['stack'] = value.stack;
    if (value.cause !== undefined) out['cause'] = value.cause;
    return out;
  }
  if (value instanceof Uint8Array) return { bytes: value.length };
  // Buffer#toJSON runs before the replacer sees it; catch that shape too.
  if (
    typeof value === 'object' &&
    value !== null &&
    (value as { type?: unknown }).type === 'Buffer' &&
    Array.isArray((value as { data?: unknown }).data)
  )
    return { bytes: (value as { data: unknown[] }).data.length };
  return value;
}

function stringify(record: Record<string, unknown>): string {
  try {
    return JSON.stringify(record, replacer);
  } catch (err) {
    // Cycles and throwing getters must not take the process down through its logger.
    return JSON.stringify({ ...pick(record), fieldsError: (err as Error).message });
  }
}

function pick(record: Record<string, unknown>): Record<string, unknown> {
  const { ts, level, service, node, msg } = record;
  return { ts, level, service, node, msg };
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? 'info';
  const sink = options.sink ?? ((line: string) => void process.stderr.write(line));
  const clock = options.clock ?? Date.now;
  const lineCharsMax = options.lineCharsMax ?? LINE_CHARS_MAX_DEFAULT;
  const base: Record<string, unknown> = { service: options.service };
  if (options.nodeId !== undefined) base['node'] = options.nodeId;

  const make = (bound: LogFields): Logger => {
    const write = (lvl: LogLevel, msg: string, fields?: LogFields): void => {
      if (LEVEL_RANK[lvl] < LEVEL_RANK[level]) return;
      const record = { ts: new Date(clock()).toISOString(), level: lvl, ...base, msg, ...bound, ...fields };
      let line = stringify(record);
      if (line.length > lineCharsMax) {
        const short = pick(record);
        short['msg'] = String(short['msg']).slice(0, Math.max(0, lineCharsMax - 512));
        line = stringify({ ...short, truncated: true, lineChars: line.length });
      }
      sink(line + '\n');
    };
    return {
      level,
      enabled: (lvl) => LEVEL_RANK[lvl] >= LEVEL_RANK[level],
      debug: (msg, fields) => write('debug', msg, fields),
      info: (msg, fields) => write('info', msg, fields),
      warn: (msg, fields) => write('warn', msg, fields),
      error: (msg, fields) => write('error', msg, fields),
      child: (fields) => make({ ...bound, ...fields }),
    };
  };
  return make({});
}
