// Copies the built ES modules (dist/*.js, not the declarations) into
// web/sdk/, which the confab binary embeds and serves at /sdk/*.js.
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const target = join(root, '..', '..', 'web', 'sdk');

mkdirSync(target, { recursive: true });
for (const name of readdirSync(target)) if (name.endsWith('.js')) rmSync(join(target, name));
const files = readdirSync(dist).filter((name) => name.endsWith('.js'));
for (const name of files) {
  writeFileSync(join(target, name), readFileSync(join(dist, name)));
}
console.log(`copied ${files.length} modules to ${target}`);
