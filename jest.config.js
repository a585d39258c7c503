// Three suites: unit runs anywhere; kernel needs the real vhost devices (as root),
// which scripts/test.js provides by running it inside the test VM when needed;
// host needs programs installed here (qemu-storage-daemon) and runs on the host.
const tsJest = ['ts-jest', { tsconfig: 'tsconfig.test.json' }];
module.exports = {
  // Kernel tests run under software emulation in CI (JS ~25x slower) on a
  // busy 2-core machine: a generous default; tests that need more set their own.
  testTimeout: 60_000,
  // The progress file names the test a hung or killed run was in (scripts/test.js).
  reporters: ['default', '<rootDir>/test/progress-reporter.js'],
  projects: [
    { displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts'], transform: { '^.+\\.ts$': tsJest }, testEnvironment: 'node' },
    { displayName: 'kernel', testMatch: ['<rootDir>/test/kernel/**/*.test.ts'], transform: { '^.+\\.ts$': tsJest }, testEnvironment: 'node' },
    // Needs programs on this host (qemu-storage-daemon, later QEMU itself), no kernel vhost: run here, not in the VM.
    { displayName: 'host', testMatch: ['<rootDir>/test/host/**/*.test.ts'], transform: { '^.+\\.ts$': tsJest }, testEnvironment: 'node' },
  ],
};
