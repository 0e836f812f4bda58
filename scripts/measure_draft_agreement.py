#!/usr/bin/env python3
"""Measure how often a draft model's greedy next token agrees with a target model's.

Both models are loaded with HF ``AutoModelForCausalLM.from_pretrained`` in float32 on CPU and
run teacher-forced over the same token stream in non-overlapping windows (``--window`` input
tokens each; the last window may be shorter). For every position the script compares the two
argmax tokens (agreement) and the draft's argmax with the text's real next token (top-1
accuracy), and takes the draft's and target's cross-entropy on the real next token.

Two texts are measured:

* ``corpus``: the training corpus, CPython 3.11.7's ``pydoc_data.topics`` through
  ``llmserve.testing.local_text()`` (or ``--corpus FILE``), whose sha256 is printed;
* ``ood``: ``OOD_TEXT`` below, plain English that is not in the corpus (or ``--ood FILE``).

Greedy speculative decoding accepts a drafted token exactly when it equals the target's
argmax, so these agreement rates are what acceptance follows from; the script reports
agreement only.

Usage (defaults: the embedded default model and its draft)::

    python scripts/measure_draft_agreement.py --target core/llmserve/default_model \\
        --draft core/llmserve/default_model/draft --json /tmp/agreement.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Plain English written for this measurement; none of it comes from the Python docs.
OOD_TEXT = """\
On the first warm morning of spring, the whole street seems to wake up at once. Neighbours who \
have not spoken since the autumn stand at their gates and talk about the weather, the price of \
bread, and whether the old oak tree at the corner will finally be cut down. Children ride their \
bicycles in slow circles, and a dog that nobody owns follows them from house to house, hoping \
for a biscuit.

My grandmother kept a small garden behind her cottage, and she believed that every plant had a \
temper of its own. Tomatoes, she said, were proud and needed to be praised. Beans were patient \
and would climb anything you gave them. Mint was a thief that would steal the whole bed if you \
turned your back on it for a single summer. She planted marigolds between the rows to keep the \
insects away, and she never once used a chemical spray.

The river that runs through the valley used to flood almost every winter. Farmers moved their \
sheep to the high fields in November and brought them back down in March, when the water had \
gone and the grass was green again. Forty years ago the town built a stone wall along the \
banks, and since then the floods have come only twice. People still argue about whether the \
wall was worth the money.

Baking bread at home takes time, but very little skill. You mix flour, water, salt and a \
spoonful of yeast, and then you wait. The dough rises while you do something else, and when \
you come back it has doubled in size. You fold it, shape it, and let it rest once more before \
it goes into a hot oven. The smell that fills the kitchen half an hour later is the best \
reward I know.

Last year I took the night train from the capital to the coast. The carriage was old and the \
seats were hard, but the windows were wide and clean. For hours we passed dark forests and \
sleeping villages, each one marked by a single lamp at the station. Just before dawn the train \
came out of a tunnel and the sea appeared, grey and silver, stretching all the way to the edge \
of the sky.

Learning to play the violin as an adult is a lesson in humility. For the first few months every \
note sounds like a cat complaining about its dinner. Your fingers ache, your neck is stiff, and \
your teacher keeps telling you to relax your shoulders. Then one evening, almost by accident, \
you play a short tune from beginning to end without a single mistake, and you understand why \
people spend their whole lives on this strange wooden box.

The museum in our town is small, but it has a remarkable collection of clocks. Some are as tall \
as a man and stand in the corners of the rooms like silent guards. Others are no bigger than a \
coin and have to be looked at through a glass. At noon every day the keeper winds them all, and \
for a few seconds the building is full of bells, chimes and cuckoos, all slightly out of step \
with one another.

A good walking boot should be comfortable from the very first day. If it hurts in the shop, it \
will hurt on the mountain, and no amount of breaking in will make it right. Buy your boots in \
the afternoon, when your feet are at their largest, and wear the socks you plan to walk in. \
Walk up and down the stairs, stand on your toes, and make sure your heel does not slip.

When the power went out during the storm, we lit candles and sat together in the living room. \
There was no television, no music and no internet, and after a while we stopped missing them. \
My father told stories about his childhood on the farm, about the winter the lake froze so hard \
that a truck could drive across it, and about the summer his brother fell out of the apple tree \
and broke both arms. We laughed until very late, long after the lights came back on.

Bees are far more organised than most people imagine. Each hive has a single queen, thousands \
of workers and a few hundred drones. The workers clean the cells, feed the young, guard the \
entrance and fly out to gather nectar from flowers that may be several miles away. When a bee \
finds a good field, she returns to the hive and dances, and the shape of her dance tells the \
others which way to fly and how far to go.

The library opens at nine, but a small crowd is always waiting at the door by half past eight. \
There is an old man who reads every newspaper from the first page to the last, a student who \
sits in the same chair by the window each morning, and a mother with twins who comes for the \
picture books. The librarian knows all of them by name and greets each one with a quiet nod.

Painting a room is mostly preparation. You move the furniture, cover the floor, fill the holes \
in the walls and wait for the filler to dry. You sand it smooth, wipe away the dust and tape \
the edges of the windows. Only then do you open the tin, and the painting itself is over in an \
hour. The next morning, when the sun comes in, the room looks larger and brighter than before.

In the mountains the weather can change in minutes. A clear blue sky turns white with cloud, \
the wind rises, and rain begins to fall so hard that you can barely see the path in front of \
you. Experienced climbers always carry a warm jacket, a map and a little food, even on the \
shortest walk, because they have learned that the mountain does not care about their plans.

My friend opened a small cafe near the harbour three years ago. She bakes the cakes herself \
every morning before sunrise, and by noon most of them are gone. Fishermen come in for strong \
coffee after a night at sea, office workers stop by at lunch, and in the evening the tables \
fill with families who have spent the day on the beach. She says she has never been so tired \
or so happy.

Old photographs have a special kind of silence. The people in them stand very still, dressed \
in their best clothes, looking straight at the camera as if they knew that someone would study \
their faces a hundred years later. We do not know their names, where they lived or what they \
were thinking, and yet it is hard to look away from them.
"""


def _window_stats(target, draft, ids, window: int):
    """Per-position agreement/accuracy counts and summed losses over ``ids`` (a 1-D tensor)."""
    import torch
    import torch.nn.functional as F

    n = ids.numel()
    agree = acc_d = acc_t = count = 0
    loss_d = loss_t = 0.0
    per_window = []  # (start, positions, agreement)
    with torch.no_grad():
        for s in range(0, n - 1, window):
            chunk = ids[s:s + window + 1]
            if chunk.numel() < 2:
                break
            x, y = chunk[None, :-1], chunk[1:]
            lt = target(input_ids=x).logits[0].float()
            ld = draft(input_ids=x).logits[0].float()
            pt, pd = lt.argmax(-1), ld.argmax(-1)
            same = int((pt == pd).sum())
            per_window.append((s, y.numel(), same / y.numel()))
            agree += same
            acc_d += int((pd == y).sum())
            acc_t += int((pt == y).sum())
            loss_d += F.cross_entropy(ld, y, reduction="sum").item()
            loss_t += F.cross_entropy(lt, y, reduction="sum").item()
            count += y.numel()
    return {
        "tokens": n,
        "positions": count,
        "windows": math.ceil((n - 1) / window),
        "agreement": agree / count,
        "draft_top1_accuracy": acc_d / count,
        "target_top1_accuracy": acc_t / count,
        "draft_loss": loss_d / count,
        "target_loss": loss_t / count,
        "window_agreement_median": statistics.median(a for _, _, a in per_window),
        "window_agreement_min": min(per_window, key=lambda w: w[2]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=str(ROOT / "core/llmserve/default_model"))
    p.add_argument("--draft", default=str(ROOT / "core/llmserve/default_model/draft"))
    p.add_argument("--tokenizer", help="tokenizer folder (default: --target)")
    p.add_argument("--corpus", metavar="FILE", help="in-corpus text (default: local_text())")
    p.add_argument("--ood", metavar="FILE", help="out-of-corpus text (default: OOD_TEXT)")
    p.add_argument("--window", type=int, default=512, help="input tokens per window")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: default)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.corpus:
        with open(args.corpus, encoding="utf-8", newline="") as f:
            corpus = f.read()
    else:
        sys.path.insert(0, str(ROOT / "core"))
        from llmserve.testing import local_text

        corpus = local_text()
    ood = Path(args.ood).read_text(encoding="utf-8") if args.ood else OOD_TEXT

    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.target)
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    if draft.config.vocab_size != target.config.vocab_size:
        p.error(f"vocab sizes differ: draft {draft.config.vocab_size}, "
                f"target {target.config.vocab_size}")

    results = {
        "target": str(args.target),
        "draft": str(args.draft),
        "window": args.window,
        "dtype": "float32",
        "device": "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "texts": {},
    }
    for name, text in (("corpus", corpus), ("ood", ood)):
        t0 = time.time()
        ids = torch.tensor(tok(text, verbose=False)["input_ids"], dtype=torch.long)
        stats = _window_stats(target, draft, ids, args.window)
        stats["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        stats["chars"] = len(text)
        stats["seconds"] = round(time.time() - t0, 1)
        results["texts"][name] = stats

    print(f"target {args.target}\ndraft  {args.draft}\n"
          f"float32 on CPU, non-overlapping {args.window}-token windows\n")
    print("| text | tokens | draft/target top-1 agreement | draft top-1 acc | "
          "target top-1 acc | draft loss | target loss |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, s in results["texts"].items():
        print(f"| {name} | {s['tokens']:,} | {100 * s['agreement']:.2f}% | "
              f"{100 * s['draft_top1_accuracy']:.2f}% | {100 * s['target_top1_accuracy']:.2f}% | "
              f"{s['draft_loss']:.4f} | {s['target_loss']:.4f} |")
    for name, s in results["texts"].items():
        start, n, a = s["window_agreement_min"]
        print(f"{name}: {s['windows']} windows, agreement per window median "
              f"{100 * s['window_agreement_median']:.2f}%, min {100 * a:.2f}% "
              f"(tokens {start}..{start + n}); sha256 {s['sha256']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
