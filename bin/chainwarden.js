#!/usr/bin/env node
import v8 from 'node:v8';

// Node 20's V8 can abort the process (a fatal error in its deoptimizer, SIGTRAP) when it lazily
// deoptimizes a function into which TurboFan inlined a call into WebAssembly (Cedar's), as a map
// change elsewhere does under load. Not inlining JS-to-Wasm calls avoids it. Set before any of
// the program is loaded, so nothing is compiled with them inlined.
if (process.versions.node.startsWith('20.')) v8.setFlagsFromString('--no-turbo-inline-js-wasm-calls');

// Also run by kubectl as the plugin kubectl-chainwarden: argv[1] says which name it was run under.
const { main } = await import('../dist/cli/main.js');
process.exitCode = await main(process.argv.slice(2), process.argv[1]);
