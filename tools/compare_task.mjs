// compare_task.mjs: writes the second task of bench/compare_methods.sh, a rule-based one that is
// unlike the demo's (which text a passage is from): name the kind of things a list of words names.
//   node tools/compare_task.mjs OUT_DIR      -> OUT_DIR/train.jsonl (900), OUT_DIR/held_out.jsonl (90)
// {"instruction": "Are these animals, food or tools?\nraven ox goat", "output": "animals"}
// A list is 3 to 5 different words of one kind, drawn from that kind's fixed word list below (common
// words, each in the bundled model's pretraining text) by a seeded generator (mulberry32),
// so the output is byte-for-byte the same on every run. Every kind has the same number of lists
// (the prior is worth a third); training and held-out lists share the words, never a list.
// Not here: tokenization, training (bench/compare_methods.sh).
import { mkdirSync, writeFileSync } from 'node:fs';

const KINDS = {
    animals: `horse sheep lion whale wolf goat camel dog eagle dove serpent bear lamb raven fox ox
              bull calf hawk owl mule tiger shark seal`.split(/\s+/),
    food: `bread wine honey milk meat fruit oil corn wheat butter cheese salt fig grape barley cake
           apple beef pork rice sugar soup beans nuts`.split(/\s+/),
    tools: `hammer knife axe needle rope chain nail saw plough anchor harpoon spade oar hook lance
            chisel shovel ladder bucket net pick file drill pin`.split(/\s+/),
};
const QUESTION = 'Are these animals, food or tools?';
const TRAIN_PER_KIND = 300, HELD_PER_KIND = 30;

const out = process.argv[2];
if (!out) {
    console.error('usage: node tools/compare_task.mjs OUT_DIR');
    process.exit(2);
}

// mulberry32: a small seeded generator, so the data does not depend on node's Math.random
let state = 20261202 >>> 0;
function rand() {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (n) => Math.floor(rand() * n);

const seen = new Set();
// n lists per kind, kinds interleaved (the trainer shuffles with its own seed).
function make(n) {
    const rows = [];
    for (let i = 0; i < n; i++) {
        for (const [kind, words] of Object.entries(KINDS)) {
            for (;;) {
                const len = 3 + pick(3);
                const list = [];
                while (list.length < len) {
                    const w = words[pick(words.length)];
                    if (!list.includes(w)) list.push(w);
                }
                const key = list.join(' ');
                if (seen.has(key)) continue;
                seen.add(key);
                rows.push(JSON.stringify({ instruction: `${QUESTION}\n${key}`, output: kind }));
                break;
            }
        }
    }
    return rows.join('\n') + '\n';
}

mkdirSync(out, { recursive: true });
writeFileSync(`${out}/train.jsonl`, make(TRAIN_PER_KIND));
writeFileSync(`${out}/held_out.jsonl`, make(HELD_PER_KIND));
console.log(JSON.stringify({ kinds: Object.keys(KINDS).length, words_per_kind: Object.values(KINDS).map((w) => w.length),
                             train: 3 * TRAIN_PER_KIND, held_out: 3 * HELD_PER_KIND }));
