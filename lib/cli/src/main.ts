// `kvmesh <command>`: dispatches subcommands. Each command is a module exporting a run function
// that returns the process exit code; later issues add `model`, `generate`, `up` and services.
import { runGenerateCommand, runModelCommand } from '@kvmesh/engine';

import { runDoctor } from './doctor.ts';
import { runUp } from './up.ts';

const HELP = `usage: kvmesh <command> [options]

commands:
  doctor [--json]   check this machine: Node, compiler, OpenBLAS, xxhash, nats-server, redis,
                    native kernels, nvcc/GPU, CXL far memory, disk; says what is missing and how to get it
  model init --out DIR --preset tiny|small [--seed N]
                    generate a Llama-family test model (seeded weights, BPE tokenizer, chat template)
  model export-gguf DIR OUT.gguf
                    write the model as GGUF (F32) for llama.cpp
  generate --model DIR --prompt TEXT [--chat] [--max-tokens N] [--codec C]
           [--temperature T --top-p P --top-k K --seed S --stop TEXT]
                    run one prompt through the engine; text streams to stdout, counts and
                    tokens/s to stderr
  up [--model DIR --port N --kvstore N --prefill N --decode N --codec C --block-tokens N --policy P]
                    run the local mesh: nats-server, kvstore nodes, prefill and decode workers and
                    the router as child processes; prints the OpenAI base URL; Ctrl-C stops all
  help              this text
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'doctor':
      return runDoctor(rest);
    case 'model':
      return runModelCommand(rest);
    case 'generate':
      return runGenerateCommand(rest);
    case 'up':
      return runUp(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(HELP);
      return 0;
    default:
      process.stderr.write(`kvmesh: unknown command '${command}'\n\n${HELP}`);
      return 2;
  }
}
