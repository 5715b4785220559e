// Incremental detokenization with stop strings: turns a stream of generated token ids into text
// deltas that are safe to show. A byte-level BPE token may end inside a UTF-8 character, so text is
// only released once it decodes without a trailing U+FFFD; text that could still become the start
// of a stop string is held back until it cannot. Stop text itself is never emitted.
import { InvalidArgumentError } from '@kvmesh/errors';

import type { ModelTokenizer } from '../model/load.ts';

export const STOP_STRINGS_MAX = 16;
export const STOP_STRING_CHARS_MAX = 256;

export interface TextDelta {
  /** Text to append to what was emitted before (may be empty). */
  text: string;
  /** A stop string was found: generation should end; `text` ends right before it. */
  stopped: boolean;
}

/** Checks stop strings against the bounds; returns them without empty entries. */
export function checkStopStrings(stop: readonly string[]): string[] {
  if (stop.length > STOP_STRINGS_MAX) {
    throw new InvalidArgumentError(`at most ${STOP_STRINGS_MAX} stop strings, got ${stop.length}`, {
      count: stop.length,
      limit: STOP_STRINGS_MAX,
    });
  }
  for (const s of stop) {
    if (typeof s !== 'string' || s.length > STOP_STRING_CHARS_MAX) {
      throw new InvalidArgumentError(
        `stop strings must be strings of at most ${STOP_STRING_CHARS_MAX} chars`,
        {
          limit: STOP_STRING_CHARS_MAX,
        },
      );
    }
  }
  return stop.filter((s) => s.length > 0);
}

export class TextStream {
  private readonly tokenizer: ModelTokenizer;
  private readonly stop: string[];
  private readonly ids: number[] = [];
  /** ids[prefixStart..readStart) is the context already turned into text; decoding it again
   *  alongside new ids keeps tokenizer spacing rules (e.g. a leading space) right. */
  private prefixStart = 0;
  private readStart = 0;
  /** Decoded but not yet emitted (it may begin a stop string). */
  private pending = '';
  private stopped = false;

  constructor(tokenizer: ModelTokenizer, stop: readonly string[] = []) {
    this.tokenizer = tokenizer;
    this.stop = checkStopStrings(stop);
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** Feeds one generated token; returns the text that became safe to show. */
  push(token: number): TextDelta {
    if (this.stopped) return { text: '', stopped: true };
    this.ids.push(token);
    const decode = (ids: number[]): string => this.tokenizer.decode(ids, { skipSpecialTokens: true });
    const before = decode(this.ids.slice(this.prefixStart, this.readStart));
    const now = decode(this.ids.slice(this.prefixStart));
    // An unfinished UTF-8 sequence decodes to U+FFFD; wait for the token that completes it.
    if (now.length <= before.length || now.endsWith('\uFFFD')) return { text: '', stopped: false };
    this.pending += now.slice(before.length);
    this.prefixStart = this.readStart;
    this.readStart = this.ids.length;
    return this.release(false);
  }

  /** End of generation: releases held-back text (unless a stop string already ended it). */
  finish(): string {
    if (this.stopped) return '';
    const tail = this.tokenizer.decode(this.ids.slice(this.prefixStart), { skipSpecialTokens: true });
    const before = this.tokenizer.decode(this.ids.slice(this.prefixStart, this.readStart), {
      skipSpecialTokens: true,
    });
    this.pending += tail.slice(before.length);
    this.readStart = this.ids.length;
    return this.release(true).text;
  }

  private release(final: boolean): TextDelta {
    let cut = -1;
    for (const s of this.stop) {
      const at = this.pending.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const text = this.pending.slice(0, cut);
      this.pending = '';
      this.stopped = true;
      return { text, stopped: true };
    }
    const hold = final ? 0 : this.heldSuffix();
    const text = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text, stopped: false };
  }

  /** Length of the longest suffix of `pending` that is a proper prefix of some stop string. */
  private heldSuffix(): number {
    let best = 0;
    for (const s of this.stop) {
      const max = Math.min(s.length - 1, this.pending.length);
      for (let n = max; n > best; n--) {
        if (this.pending.endsWith(s.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
