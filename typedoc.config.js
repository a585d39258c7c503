// `npm run docs`: the API reference of lib/index.ts (the package root) into
// docs/api/ (not committed). Warnings are errors, so CI fails on an export
// without a doc comment, a public signature naming a type that is not
// exported, or a {@link} that leads nowhere.
'use strict';

/** @type {Partial<import('typedoc').TypeDocOptions>} */
module.exports = {
  entryPoints: ['lib/index.ts'],
  tsconfig: 'tsconfig.json',
  out: 'docs/api',
  name: 'linux-vhost',
  readme: 'none',
  excludePrivate: true,
  // Protected members are the builders' extension points, not the user's API.
  excludeProtected: true,
  // Node stream hooks (_read, _write, ...) are marked @internal: streams are used through their public methods.
  excludeInternal: true,
  // Source links need a hosted remote; a clone (CI's) has none.
  disableSources: true,
  treatWarningsAsErrors: true,
  treatValidationWarningsAsErrors: true,
  validation: { notExported: true, invalidLink: true, rewrittenLink: true, notDocumented: true, unusedMergeModuleWith: true },
  // Every exported name, class, function, method and accessor needs a comment.
  // Fields of interfaces and members of constant tables (features.net.MRG_RXBUF,
  // tunFlags.IFF_TAP, ...) are not required: most carry the kernel's own name.
  requiredToBeDocumented: ['Enum', 'Variable', 'Function', 'Class', 'Interface', 'Method', 'Accessor', 'TypeAlias', 'Namespace'],
  // Links to Node's own stream methods go to Node's documentation.
  externalSymbolLinkMappings: {
    '@types/node': {
      'Stream.Writable.end': 'https://nodejs.org/api/stream.html#writableendchunk-encoding-callback',
      'Stream.Writable.write': 'https://nodejs.org/api/stream.html#writablewritechunk-encoding-callback',
      'Stream.Readable._read': 'https://nodejs.org/api/stream.html#readable_readsize',
    },
  },
};
