// Jest reporter: appends "<file> › <test>" to $LINUX_VHOST_TEST_PROGRESS as each
// test starts, synchronously, so a run that hangs or is killed (the test VM's
// timeout) can still say which test it was in (scripts/test.js prints the last).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

class ProgressReporter {
  constructor(globalConfig) {
    this.file = process.env.LINUX_VHOST_TEST_PROGRESS;
    this.root = globalConfig.rootDir;
  }

  onTestCaseStart(test, info) {
    if (this.file) fs.appendFileSync(this.file, `${path.relative(this.root, test.path)} › ${info.fullName}\n`);
  }

  getLastError() {}
}

module.exports = ProgressReporter;
