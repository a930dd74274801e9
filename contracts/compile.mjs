// Compile contracts/*.sol with the pinned solcjs (npm `solc`) and write one artifact per contract.
//
//   node contracts/compile.mjs [--out DIR]    (default: src/tally/chain/artifacts)
//
// Imports such as "@openzeppelin/contracts/..." are read from node_modules. The settings are fixed and the output
// carries no metadata hash, so recompiling the same sources gives byte-for-byte identical artifacts.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CONTRACTS = "contracts";

const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 10000 },
  viaIR: false,
  metadata: { bytecodeHash: "none" },
};

function parseArgs(argv) {
  let out = join(ROOT, "src", "tally", "chain", "artifacts");
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out" && i + 1 < argv.length) {
      out = resolve(argv[++i]);
    } else if (argv[i].startsWith("--out=")) {
      out = resolve(argv[i].slice("--out=".length));
    } else {
      console.error(`usage: node contracts/compile.mjs [--out DIR]  (unknown argument ${JSON.stringify(argv[i])})`);
      process.exit(2);
    }
  }
  return out;
}

// A source unit name ("contracts/X.sol" or "@openzeppelin/contracts/...") -> the file it is read from.
function sourcePath(name) {
  if (name.startsWith(`${CONTRACTS}/`)) return join(ROOT, name);
  return join(ROOT, "node_modules", name);
}

function readSource(name) {
  if (name.includes("..") || name.startsWith("/")) throw new Error(`refusing import ${name}`);
  return readFileSync(sourcePath(name), "utf8");
}

function sha256(text) {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

const out = parseArgs(process.argv.slice(2));
const files = readdirSync(join(ROOT, CONTRACTS))
  .filter((f) => f.endsWith(".sol"))
  .sort();
const sources = Object.fromEntries(files.map((f) => [`${CONTRACTS}/${f}`, { content: readSource(`${CONTRACTS}/${f}`) }]));

const input = {
  language: "Solidity",
  sources,
  settings: {
    ...SETTINGS,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] } },
  },
};

function findImports(name) {
  try {
    return { contents: readSource(name) };
  } catch (err) {
    return { error: `${name}: ${err.message} (run npm ci)` };
  }
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
let failed = false;
for (const e of output.errors ?? []) {
  console.error(e.formattedMessage ?? e.message);
  if (e.severity === "error") failed = true;
}
if (failed) process.exit(1);

mkdirSync(out, { recursive: true });
const compiler = solc.version();
for (const file of Object.keys(sources)) {
  for (const [name, contract] of Object.entries(output.contracts[file] ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) {
    const used = Object.keys(JSON.parse(contract.metadata).sources).sort();
    const artifact = {
      contractName: name,
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
      deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
      compiler,
      settings: SETTINGS,
      sourceHashes: Object.fromEntries(used.map((s) => [s, sha256(readSource(s))])),
    };
    writeFileSync(join(out, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
    console.log(`${name}: ${(contract.evm.deployedBytecode.object.length / 2) | 0} bytes deployed -> ${join(out, `${name}.json`)}`);
  }
}
