// tokenizer_truth.mjs: writes the ground-truth token ids the tokenizer tests compare against,
// computed by the packages' OWN tokenizers (never by peft.cpp):
//   llama3, qwen3, mistral  @lenml/tokenizers (a transformers.js fork) on the tokenizer.json /
//                           tokenizer_config.json that scripts/fetch_assets.sh unpacked
//   gpt2                    gpt-3-encoder's encode() (the original GPT-2 BPE port)
// The Llama 2 tokenizer.model ids come from libsentencepiece: tools/tokenizer_truth_spm.cpp.
//
// Usage (after scripts/fetch_assets.sh; needs node >= 18, no network):
//   node tools/tokenizer_truth.mjs
// Reads tests/fixtures/tokenizer/cases.json, writes tests/fixtures/tokenizer/expected_<model>.json.
// `hex` cases hold raw bytes; invalid UTF-8 is decoded the WHATWG way (each maximal invalid
// subpart becomes U+FFFD), which is what a JS string sees and what peft.cpp does too.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const assets = process.env.PEFT_ASSET_DIR || path.join(os.homedir(), ".cache", "peft-assets");
const fixdir = path.join(root, "tests", "fixtures", "tokenizer");

// Unpack the two packed packages into a scratch node_modules (both have no dependencies).
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "peft-truth-"));
const unpack = (tgz, name) => {
  const dst = path.join(scratch, "node_modules", name);
  fs.mkdirSync(dst, { recursive: true });
  execFileSync("tar", ["xzf", path.join(assets, "npm", tgz), "-C", dst, "--strip-components=1"]);
};
unpack("lenml-tokenizers-3.7.2.tgz", "@lenml/tokenizers");
unpack("gpt-3-encoder-1.1.4.tgz", "gpt-3-encoder");
const req = createRequire(path.join(scratch, "index.js"));
const { TokenizerLoader } = req("@lenml/tokenizers");
const gpt3 = req("gpt-3-encoder");

const cases = JSON.parse(fs.readFileSync(path.join(fixdir, "cases.json"), "utf8")).cases;
const text_of = (c) => (c.hex !== undefined ? Buffer.from(c.hex, "hex").toString("utf8") : c.text);

function write(model, generator, rows) {
  const out = { model, generator, cases: rows };
  const file = path.join(fixdir, `expected_${model}.json`);
  // One case per line keeps diffs readable.
  const body = rows.map((r) => "  " + JSON.stringify(r)).join(",\n");
  fs.writeFileSync(file, `{"model": ${JSON.stringify(model)}, "generator": ${JSON.stringify(generator)}, "cases": [\n${body}\n]}\n`);
  console.log(`${file}: ${rows.length} cases`);
}

for (const model of ["llama3", "qwen3", "mistral"]) {
  const dir = path.join(assets, model);
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
  });
  const rows = cases.map((c) => {
    const s = text_of(c);
    return {
      ids: Array.from(tok.encode(s, { add_special_tokens: false })),
      ids_special: Array.from(tok.encode(s, { add_special_tokens: true })),
    };
  });
  write(model, "@lenml/tokenizers 3.7.2", rows);
  // Chat templates: the Jinja template in tokenizer_config.json, rendered and tokenized by the package.
  if (model === "llama3") {
    const chats = JSON.parse(fs.readFileSync(path.join(fixdir, "chat_cases.json"), "utf8")).cases;
    const crow = chats.map((c) => ({ ids: Array.from(tok.apply_chat_template(c.messages, { tokenize: true, add_generation_prompt: false, return_tensor: false })) }));
    write("chat_" + model, "@lenml/tokenizers 3.7.2 apply_chat_template", crow);
  }
}

// gpt-3-encoder knows no special tokens; HF's GPT-2 tokenizer splits off <|endoftext|> (50256)
// first, so do the same here around the package's encode().
{
  const rows = cases.map((c) => {
    const parts = text_of(c).split("<|endoftext|>");
    const ids = [];
    parts.forEach((p, i) => {
      if (i > 0) ids.push(50256);
      if (p.length) ids.push(...gpt3.encode(p));
    });
    return { ids, ids_special: ids };
  });
  write("gpt2", "gpt-3-encoder 1.1.4 (+ <|endoftext|> split)", rows);
}

// Llama 2 tokenizer.model through libsentencepiece (see tools/tokenizer_truth_spm.cpp). Text is
// passed as raw bytes, so invalid UTF-8 is handled the way libsentencepiece handles it.
{
  const exe = path.join(scratch, "spm_truth");
  execFileSync("g++", ["-O1", "-std=c++17", path.join(root, "tools", "tokenizer_truth_spm.cpp"), "-o", exe, "-lsentencepiece"]);
  const hex = cases.map((c) => (c.hex !== undefined ? c.hex : Buffer.from(c.text, "utf8").toString("hex"))).join("\n") + "\n";
  const out = execFileSync(exe, [path.join(assets, "llama2", "tokenizer.model")], { input: hex }).toString().split("\n");
  const rows = cases.map((c, i) => {
    const ids = out[i].length ? out[i].split(" ").map(Number) : [];
    return { ids, ids_special: [1, ...ids] };
  });
  write("llama2", "libsentencepiece (tools/tokenizer_truth_spm.cpp)", rows);
}

fs.rmSync(scratch, { recursive: true, force: true });
