// The server side of a client stream of blocks whose answer is "the first N were acknowledged"
// (KvStore.PutBlocks, Tiering.Demote): each message starts its own operation, up to `concurrency`
// at once, in arrival order; the stream stops at its first failure (or past `messagesMax`), and the
// acknowledged count is the leading run that succeeded, so a client knows exactly which blocks to
// send again. The failure comes back as a KvmeshError naming the block and that count.
import { KvmeshError, LimitExceededError } from '@kvmesh/errors';

export interface BlockStreamOptions<M, R> {
  /** Names the RPC and its bound in the over-limit error, e.g. 'PutBlocks', 'putMessagesPerStreamMax'. */
  readonly rpc: string;
  readonly limitName: string;
  readonly messagesMax: number;
  readonly concurrency: number;
  /** The block's hash as hex, for errors (empty when the message carries none). */
  readonly hashOf: (message: M) => string;
  /** Starts the message's operation; throwing (or rejecting) fails the stream at this block. */
  readonly start: (message: M, index: number) => Promise<R>;
}

/** Every message's result, in order, when all succeeded; otherwise throws (see blockStreamFailure). */
export async function runBlockStream<M, R>(
  requests: AsyncIterable<M>,
  options: BlockStreamOptions<M, R>,
): Promise<R[]> {
  const results: R[] = [];
  const done: boolean[] = [];
  const inFlight = new Set<Promise<void>>();
  let failed: { index: number; hash: string; error: unknown } | undefined;
  const fail = (index: number, hash: string, error: unknown): void => {
    if (failed === undefined || index < failed.index) failed = { index, hash, error };
  };
  let count = 0;
  for await (const message of requests) {
    if (failed !== undefined) break;
    const i = count++;
    const hash = options.hashOf(message);
    if (i >= options.messagesMax) {
      fail(
        i,
        hash,
        new LimitExceededError(
          `${options.rpc} stream carries more than ${options.messagesMax} blocks (${options.limitName}); split it`,
          { [options.limitName]: options.messagesMax },
        ),
      );
      break;
    }
    let started: Promise<R>;
    try {
      started = options.start(message, i);
    } catch (err) {
      fail(i, hash, err);
      break;
    }
    const tracked: Promise<void> = started.then(
      (result) => {
        results[i] = result;
        done[i] = true;
      },
      (err: unknown) => fail(i, hash, err),
    );
    inFlight.add(tracked);
    void tracked.finally(() => inFlight.delete(tracked));
    if (inFlight.size >= options.concurrency) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  if (failed === undefined) return results.slice(0, count);
  let acknowledged = 0;
  while (acknowledged < failed.index && done[acknowledged] === true) acknowledged++;
  throw blockStreamFailure(failed.error, { index: failed.index, hash: failed.hash }, acknowledged);
}

/**
 * The same error with the position of the failing block in the caller's request: the code, kind
 * and details are kept (so clients still match on the code), the message names the block, and
 * `acknowledged` says how many earlier blocks were acknowledged and stay stored.
 */
export function blockStreamFailure(
  error: unknown,
  block: { index?: number; hash: string },
  acknowledged: number,
): KvmeshError {
  const where = block.index === undefined ? `block ${block.hash}` : `block ${block.index} (${block.hash})`;
  const tail =
    block.index === undefined
      ? ''
      : `; the ${acknowledged} block(s) before it were acknowledged and stay stored`;
  if (error instanceof KvmeshError) {
    // Errors raised for a block often start with its hash already; say it once.
    const own = `block ${block.hash}: `;
    const message = error.message.startsWith(own) ? error.message.slice(own.length) : error.message;
    return new KvmeshError(error.code, error.kind, `${where}: ${message}${tail}`, {
      ...error.details,
      ...(block.index === undefined ? {} : { index: block.index }),
      hash: block.hash,
      acknowledged,
    });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new KvmeshError('INTERNAL', 'internal', `${where}: internal error: ${message}${tail}`, {
    ...(block.index === undefined ? {} : { index: block.index }),
    hash: block.hash,
    acknowledged,
  });
}
