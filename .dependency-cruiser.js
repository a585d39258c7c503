// The import rules of docs/ARCHITECTURE.md, checked by `npm run lint:deps`
// (part of `npm run lint`, run by CI). lib/ is layered:
//   core → netdev → virtio → vhost → vmm → vsock → guest → device → cli
// and each layer imports only itself and the layers before it. Type-only
// imports count too: a type names the module it comes from.
'use strict';

const LAYERS = ['core', 'netdev', 'virtio', 'vhost', 'vmm', 'vsock', 'guest', 'device', 'cli'];

/** One rule per layer: nothing in it imports a later layer. */
const layerRules = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `layer-${layer}`,
  comment: `lib/${layer}/ imports only ${LAYERS.slice(0, i + 1).join(', ')} (layers run ${LAYERS.join(' → ')})`,
  severity: 'error',
  from: { path: `^lib/${layer}/` },
  to: { path: `^lib/(${LAYERS.slice(i + 1).join('|')})/` },
}));

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'no-circular',
      comment: 'no import circles anywhere in lib/',
      severity: 'error',
      from: { path: '^lib/' },
      to: { circular: true },
    },
    {
      name: 'lib-stays-the-library',
      comment: 'lib/ never imports test/, scripts/ or bench/ (they are not shipped)',
      severity: 'error',
      from: { path: '^lib/' },
      to: { path: '^(test|scripts|bench)/' },
    },
    {
      name: 'layers-not-to-index',
      comment: 'lib/index.ts is the public surface on top of every layer; no layer imports it',
      severity: 'error',
      from: { path: '^lib/[^/]+/' },
      to: { path: '^lib/index\\.ts$' },
    },
    {
      name: 'index-not-to-cli',
      comment: 'lib/index.ts exports any layer but cli/ (the bin is not part of require("linux-vhost"))',
      severity: 'error',
      from: { path: '^lib/index\\.ts$' },
      to: { path: '^lib/cli/' },
    },
    {
      name: 'unit-not-to-kernel',
      comment: 'test/unit runs anywhere: it imports nothing from the kernel suite (shared helpers live in test/support/)',
      severity: 'error',
      from: { path: '^test/unit/' },
      to: { path: '^test/kernel/' },
    },
    {
      name: 'support-not-to-suites',
      comment: 'test/support/ is shared by both suites, so it imports neither',
      severity: 'error',
      from: { path: '^test/support/' },
      to: { path: '^test/(unit|kernel)/' },
    },
    {
      name: 'no-unresolvable',
      comment: 'an import that resolves to nothing is a typo or a missing file',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(node_modules|dist|build|docs/api)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.test.json' },
    moduleSystems: ['cjs', 'es6'],
  },
};
