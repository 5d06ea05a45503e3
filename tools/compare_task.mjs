// compare_task.mjs: writes the second task of bench/compare_methods.sh, a rule-based one that is
// unlike the demo's (classifying a verse by its book): copy the last word of a list.
//   node tools/compare_task.mjs OUT_DIR      -> OUT_DIR/train.jsonl (1000), OUT_DIR/held_out.jsonl (100)
// {"instruction": "What is the last word of this list?\nriver candle horse", "output": "horse"}
// Lists are 3 to 7 words drawn from the fixed list below by a seeded generator (mulberry32), so
// the output is byte-for-byte the same on every run; a held-out list never occurs in training.
// Not here: tokenization, training (bench/compare_methods.sh).
import { mkdirSync, writeFileSync } from 'node:fs';

const WORDS = `apple river stone candle horse window garden silver winter summer bread letter
market forest island anchor basket bottle bridge cloud copper desert dragon engine
feather finger flower guitar hammer harbor helmet jacket kettle ladder lemon lion
mirror monkey needle ocean orange pencil pepper pillow planet pocket rabbit rocket
saddle shadow sheep shield spider spoon table tiger tomato tower violin wagon whale
wheel wizard yellow zebra castle circle doctor farmer butter carpet cherry chimney
cotton dinner falcon garlic ginger hunter iron jungle kitchen lantern marble meadow
onion parrot pirate puzzle quarter ribbon sailor salmon shovel sugar sunset thunder
tunnel turtle valley velvet walnut wolf button camera cactus clock coffee cookie`.split(/\s+/);

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
function make(n) {
    const rows = [];
    while (rows.length < n) {
        const len = 3 + pick(5);
        const list = [];
        for (let i = 0; i < len; i++) list.push(WORDS[pick(WORDS.length)]);
        const key = list.join(' ');
        if (seen.has(key)) continue;
        seen.add(key);
        rows.push(JSON.stringify({ instruction: `What is the last word of this list?\n${key}`, output: list[len - 1] }));
    }
    return rows.join('\n') + '\n';
}

mkdirSync(out, { recursive: true });
writeFileSync(`${out}/train.jsonl`, make(1000));
writeFileSync(`${out}/held_out.jsonl`, make(100));
console.log(JSON.stringify({ words: WORDS.length, train: 1000, held_out: 100 }));
