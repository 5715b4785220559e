// Lists the C++ sources of one build flavour for binding.gyp: `avx512` and `avx2` are the files
// compiled with those instruction sets enabled (cpu/*_avx512.cc, cpu/*_avx2.cc); `base` is the rest.
import { readdirSync } from 'node:fs';

const flavour = process.argv[2];
const files = readdirSync(new URL('../cpu', import.meta.url))
  .filter((f) => f.endsWith('.cc'))
  .sort();
const picked = files.filter((f) => {
  if (flavour === 'avx512') return f.endsWith('_avx512.cc');
  if (flavour === 'avx2') return f.endsWith('_avx2.cc');
  return !f.endsWith('_avx512.cc') && !f.endsWith('_avx2.cc');
});
console.log(picked.map((f) => `cpu/${f}`).join(' '));
