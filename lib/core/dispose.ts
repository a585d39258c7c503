// Node 20 defines Symbol.dispose as Symbol.for('nodejs.dispose') on its main
// realm only; other realms (vm contexts such as jest's) lack it, and then
// `[Symbol.dispose]` would become a method named "undefined". Define the same
// registered symbols where they are missing so `using` works everywhere.
for (const [name, key] of [['dispose', 'nodejs.dispose'], ['asyncDispose', 'nodejs.asyncDispose']] as const) {
  if (typeof (Symbol as unknown as Record<string, unknown>)[name] !== 'symbol') {
    Object.defineProperty(Symbol, name, { value: Symbol.for(key), configurable: false, writable: false });
  }
}

export {};
