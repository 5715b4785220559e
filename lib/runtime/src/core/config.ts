// Typed service configuration from defaults, environment and command line (later wins: default <
// KVMESH_* env var < --flag). Pure: env and argv are parameters. Every field is typed and bounded,
// and every failure is an InvalidArgumentError that names the field, where the value came from and
// the limit it broke, so a bad deployment fails at start with a message that says what to fix.
import { InvalidArgumentError } from '@kvmesh/errors';

/** `bytes` accepts `512MiB`, `64k`, `1.5GB`; `duration` accepts `30s`, `250ms`, `1m30s`; both yield numbers. */
export type ConfigFieldType = 'int' | 'number' | 'string' | 'bool' | 'bytes' | 'duration';

interface FieldBase {
  readonly description?: string;
  /** Environment variable; defaults to KVMESH_<SCREAMING_SNAKE_NAME>. */
  readonly env?: string;
  /** Command-line flag; defaults to --<kebab-name>. */
  readonly flag?: string;
}

export interface NumericField extends FieldBase {
  readonly type: 'int' | 'number';
  readonly default?: number;
  readonly min?: number;
  readonly max?: number;
}

/** Bytes in, bytes out; bounds and default may be written with units. */
export interface BytesField extends FieldBase {
  readonly type: 'bytes';
  readonly default?: number | string;
  readonly min?: number | string;
  readonly max?: number | string;
}

/** Milliseconds in, milliseconds out; bounds and default may be written with units. */
export interface DurationField extends FieldBase {
  readonly type: 'duration';
  readonly default?: number | string;
  readonly min?: number | string;
  readonly max?: number | string;
}

export interface StringField extends FieldBase {
  readonly type: 'string';
  readonly default?: string;
  /** When set, the value must be one of these. */
  readonly choices?: readonly string[];
  /** Longest accepted value in characters. Default 4096. */
  readonly lengthMax?: number;
}

export interface BoolField extends FieldBase {
  readonly type: 'bool';
  readonly default?: boolean;
}

export type ConfigField = NumericField | BytesField | DurationField | StringField | BoolField;
export type ConfigSchema = Readonly<Record<string, ConfigField>>;

type ValueOf<F extends ConfigField> = F extends StringField ? string : F extends BoolField ? boolean : number;

/** The loaded configuration: one typed value per schema field. */
export type ConfigOf<S extends ConfigSchema> = { readonly [K in keyof S]: ValueOf<S[K]> };

export interface LoadConfigOptions {
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Arguments after the script (process.argv.slice(2)). */
  readonly argv?: readonly string[];
  /** Ignore flags the schema does not know instead of failing (for wrappers that add their own). */
  readonly allowUnknownFlags?: boolean;
}

const STRING_LENGTH_MAX_DEFAULT = 4096;

const BYTE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

const DURATION_UNITS_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** Parses `512MiB`, `64k` (binary), `1.5GB` (decimal) or a plain byte count into a safe integer. */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = BYTE_UNITS[(m?.[2] ?? '').toLowerCase() || 'b'];
  if (m === null || unit === undefined)
    throw new InvalidArgumentError(`'${text}' is not a byte size (examples: 4096, 64KiB, 512MiB, 2GB)`, {
      value: text,
    });
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes))
    throw new InvalidArgumentError(`byte size '${text}' is too large`, { value: text });
  return bytes;
}

/** Parses `250ms`, `30s`, `1m30s`, `2h` or plain milliseconds into milliseconds. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const invalid = (): InvalidArgumentError =>
    new InvalidArgumentError(`'${text}' is not a duration (examples: 250ms, 30s, 1m30s, 2h)`, {
      value: text,
    });
  if (trimmed.length === 0) throw invalid();
  let totalMs = 0;
  let rest = trimmed;
  const part = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)/;
  while (rest.length > 0) {
    const m = part.exec(rest);
    if (m === null) throw invalid();
    totalMs += Number(m[1]) * DURATION_UNITS_MS[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return totalMs;
}

export function envVarOf(name: string, field: ConfigField): string {
  return field.env ?? 'KVMESH_' + name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

export function flagOf(name: string, field: ConfigField): string {
  return field.flag ?? '--' + name.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
}

type Source = 'default' | 'env' | 'flag';

function describeSource(name: string, field: ConfigField, source: Source): string {
  const from = source === 'env' ? envVarOf(name, field) : source === 'flag' ? flagOf(name, field) : 'default';
  return `config ${name} (from ${from})`;
}

function toNumber(name: string, field: ConfigField, raw: number | string, source: Source): number {
  const where = describeSource(name, field, source);
  const wrap = (parse: (t: string) => number): number => {
    if (typeof raw === 'number') return raw;
    try {
      return parse(raw);
    } catch (err) {
      throw new InvalidArgumentError(`${where}: ${(err as Error).message}`, {
        field: name,
        value: raw,
        source,
      });
    }
  };
  switch (field.type) {
    case 'bytes':
      return wrap(parseBytes);
    case 'duration':
      return wrap(parseDuration);
    default: {
      const value = typeof raw === 'number' ? raw : raw.trim() === '' ? Number.NaN : Number(raw);
      if (!Number.isFinite(value))
        throw new InvalidArgumentError(`${where}: '${raw}' is not a number`, {
          field: name,
          value: raw,
          source,
        });
      if (field.type === 'int' && !Number.isSafeInteger(value))
        throw new InvalidArgumentError(`${where}: '${raw}' is not an integer`, {
          field: name,
          value: raw,
          source,
        });
      return value;
    }
  }
}

function bound(name: string, field: ConfigField, limit: number | string | undefined): number | undefined {
  if (limit === undefined) return undefined;
  return toNumber(name, field, limit, 'default');
}

function convert(name: string, field: ConfigField, raw: unknown, source: Source): string | number | boolean {
  const where = describeSource(name, field, source);
  switch (field.type) {
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      const text = String(raw).trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(text)) return true;
      if (['0', 'false', 'no', 'off', ''].includes(text)) return false;
      throw new InvalidArgumentError(`${where}: '${String(raw)}' is not a boolean (true/false)`, {
        field: name,
        value: raw,
        source,
      });
    }
    case 'string': {
      const text = String(raw);
      const lengthMax = field.lengthMax ?? STRING_LENGTH_MAX_DEFAULT;
      if (text.length > lengthMax)
        throw new InvalidArgumentError(
          `${where}: value is ${text.length} characters, limit is ${lengthMax}`,
          {
            field: name,
            length: text.length,
            limit: lengthMax,
            source,
          },
        );
      if (field.choices !== undefined && !field.choices.includes(text))
        throw new InvalidArgumentError(`${where}: '${text}' is not one of ${field.choices.join(', ')}`, {
          field: name,
          value: text,
          choices: field.choices,
          source,
        });
      return text;
    }
    default: {
      const value = toNumber(name, field, raw as number | string, source);
      const min = bound(name, field, field.min);
      const max = bound(name, field, field.max);
      if (min !== undefined && value < min)
        throw new InvalidArgumentError(`${where}: ${String(raw)} is below the minimum ${String(field.min)}`, {
          field: name,
          value,
          min,
          source,
        });
      if (max !== undefined && value > max)
        throw new InvalidArgumentError(`${where}: ${String(raw)} is above the maximum ${String(field.max)}`, {
          field: name,
          value,
          max,
          source,
        });
      return value;
    }
  }
}

/** Splits argv into flag → raw value; a bare boolean flag is `true`, `--no-x` is `false`. */
function parseArgv(
  schema: ConfigSchema,
  argv: readonly string[],
  allowUnknownFlags: boolean,
): Map<string, string | boolean> {
  const byFlag = new Map<string, [string, ConfigField]>();
  for (const [name, field] of Object.entries(schema)) byFlag.set(flagOf(name, field), [name, field]);
  const values = new Map<string, string | boolean>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      if (allowUnknownFlags) continue;
      throw new InvalidArgumentError(`unexpected argument '${arg}' (every setting is a --flag)`, { arg });
    }
    const eq = arg.indexOf('=');
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    let entry = byFlag.get(flag);
    let negated = false;
    if (entry === undefined && flag.startsWith('--no-')) {
      const positive = byFlag.get('--' + flag.slice(5));
      if (positive?.[1].type === 'bool') {
        entry = positive;
        negated = true;
      }
    }
    if (entry === undefined) {
      if (allowUnknownFlags) continue;
      throw new InvalidArgumentError(`unknown flag ${flag}`, { flag, known: [...byFlag.keys()] });
    }
    const [name, field] = entry;
    if (negated) {
      if (eq >= 0) throw new InvalidArgumentError(`${flag} takes no value`, { flag });
      values.set(name, false);
    } else if (eq >= 0) {
      values.set(name, arg.slice(eq + 1));
    } else if (field.type === 'bool') {
      const next = argv[i + 1];
      // `--flag true|false` is accepted; a bare `--flag` means true.
      if (next !== undefined && /^(true|false)$/i.test(next)) {
        values.set(name, next);
        i++;
      } else {
        values.set(name, true);
      }
    } else {
      const next = argv[i + 1];
      if (next === undefined) throw new InvalidArgumentError(`${flag} needs a value`, { flag, field: name });
      values.set(name, next);
      i++;
    }
  }
  return values;
}

/** Loads and validates every field of `schema`; throws InvalidArgumentError on the first bad one. */
export function loadConfig<const S extends ConfigSchema>(
  schema: S,
  options: LoadConfigOptions = {},
): ConfigOf<S> {
  const env = options.env ?? {};
  const flags = parseArgv(schema, options.argv ?? [], options.allowUnknownFlags ?? false);
  const out: Record<string, string | number | boolean> = {};
  for (const [name, field] of Object.entries(schema)) {
    const fromFlag = flags.get(name);
    const fromEnv = env[envVarOf(name, field)];
    if (fromFlag !== undefined) out[name] = convert(name, field, fromFlag, 'flag');
    else if (fromEnv !== undefined) out[name] = convert(name, field, fromEnv, 'env');
    else if (field.default !== undefined) out[name] = convert(name, field, field.default, 'default');
    else
      throw new InvalidArgumentError(
        `config ${name} is required: set ${flagOf(name, field)} or ${envVarOf(name, field)}`,
        { field: name },
      );
  }
  return out as ConfigOf<S>;
}

/** One line per field (flag, env var, type, default, bounds, description) for `--help`. */
export function describeConfig(schema: ConfigSchema): string {
  const lines: string[] = [];
  for (const [name, field] of Object.entries(schema)) {
    const parts = [`${flagOf(name, field)} / ${envVarOf(name, field)}`, `<${field.type}>`];
    if (field.default !== undefined) parts.push(`default ${String(field.default)}`);
    else parts.push('required');
    if ('min' in field && field.min !== undefined) parts.push(`min ${String(field.min)}`);
    if ('max' in field && field.max !== undefined) parts.push(`max ${String(field.max)}`);
    if (field.type === 'string' && field.choices !== undefined)
      parts.push(`one of ${field.choices.join('|')}`);
    if (field.description !== undefined) parts.push(`— ${field.description}`);
    lines.push('  ' + parts.join('  '));
  }
  return lines.join('\n');
}
