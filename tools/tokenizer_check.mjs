// tokenizer_check.mjs: checks a tokenizer directory written by `peft train-tokenizer` against
// an independent implementation: @lenml/tokenizers (the transformers.js fork that
// scripts/fetch_assets.sh packs, unpacked here offline) must load it and give the same ids as
// `peft tokenize --json` for every case of tests/fixtures/tokenizer/cases.json.
//   node tools/tokenizer_check.mjs MODEL_DIR [PEFT_BINARY]    (default binary: build-base/peft)
// Prints one line per mismatch and a summary; exit code 1 on any mismatch.
// Not a unit test (needs node and the fetched assets); models/README.md quotes its result.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const assets = process.env.PEFT_ASSET_DIR || path.join(os.homedir(), ".cache", "peft-assets");
const [dir, bin = path.join(root, "build-base", "peft")] = process.argv.slice(2);
if (!dir) { console.error("usage: node tools/tokenizer_check.mjs MODEL_DIR [PEFT_BINARY]"); process.exit(2); }

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "peft-tokcheck-"));
const dst = path.join(scratch, "node_modules", "@lenml", "tokenizers");
fs.mkdirSync(dst, { recursive: true });
execFileSync("tar", ["xzf", path.join(assets, "npm", "lenml-tokenizers-3.7.2.tgz"), "-C", dst, "--strip-components=1"]);
const { TokenizerLoader } = createRequire(path.join(scratch, "index.js"))("@lenml/tokenizers");
const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
});

const cases = JSON.parse(fs.readFileSync(path.join(root, "tests/fixtures/tokenizer/cases.json"), "utf8")).cases;
let bad = 0, n = 0;
for (const c of cases) {
    // Only valid-UTF-8 text cases: the CLI takes the text as an argument (no NUL, no raw bytes).
    if (c.hex !== undefined || c.text.includes("\0") || c.text === "") continue;
    const want = tok.encode(c.text);
    const got = JSON.parse(execFileSync(bin, ["tokenize", "--tokenizer", dir, "--text", c.text, "--json"])).ids;
    ++n;
    if (JSON.stringify(want) !== JSON.stringify(got)) {
        ++bad;
        console.log(`mismatch ${JSON.stringify(c.text)}: lenml ${JSON.stringify(want)} peft ${JSON.stringify(got)}`);
    }
}
fs.rmSync(scratch, { recursive: true, force: true });
console.log(`${n - bad}/${n} cases identical (@lenml/tokenizers 3.7.2 vs ${bin})`);
process.exit(bad ? 1 : 0);
