// Progress reporting for long model-building steps (BPE training, writing ~400 MB of weights). On a
// TTY it redraws one bar line in place; otherwise (CI logs, pipes) it prints a line per quarter so
// logs stay short. It only ever writes to the given stream, never to stdout.

export interface Progress {
  update(done: number): void;
  finish(): void;
}

export interface ProgressStream {
  write(chunk: string): boolean;
  isTTY?: boolean;
}

const BAR_WIDTH = 30;

export function createProgress(
  label: string,
  total: number,
  stream: ProgressStream = process.stderr,
): Progress {
  let lastShown = -1;
  let finished = false;
  const tty = stream.isTTY === true;
  const show = (done: number): void => {
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    if (tty) {
      const percent = Math.floor(fraction * 100);
      if (percent === lastShown) return;
      lastShown = percent;
      const filled = Math.round(fraction * BAR_WIDTH);
      stream.write(
        `\r${label} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${String(percent).padStart(3)}%`,
      );
    } else {
      const quarter = Math.floor(fraction * 4);
      if (quarter === lastShown) return;
      lastShown = quarter;
      stream.write(`${label}: ${quarter * 25}%\n`);
    }
  };
  return {
    update: (done) => {
      if (!finished) show(done);
    },
    finish: () => {
      if (finished) return;
      show(total);
      finished = true;
      if (tty) stream.write('\n');
    },
  };
}

/** A sink that shows nothing (tests, library callers that want quiet). */
export const NO_PROGRESS: (label: string, total: number) => Progress = () => ({
  update: () => {},
  finish: () => {},
});
