#!/usr/bin/env node
import { main } from '../dist/cli/main.js';

// Also run by kubectl as the plugin kubectl-chainwarden: argv[1] says which name it was run under.
process.exitCode = await main(process.argv.slice(2), process.argv[1]);
