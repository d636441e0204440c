// Bundles src/ into dist/ (no CDN at run time): `npm run build`, run by `make web`.
import { build } from 'esbuild'
import { copyFile, mkdir } from 'node:fs/promises'

await mkdir('dist', { recursive: true })
await build({
  entryPoints: { app: 'src/app.js', console: 'src/console.js' },
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  outdir: 'dist',
  logLevel: 'warning',
})
for (const page of ['index.html', 'console.html', 'style.css']) await copyFile(`src/${page}`, `dist/${page}`)
