#!/usr/bin/env python3
"""Builds tests/fixtures/score_reference.json: caption sets scored by the REAL reference tools.

The Rust metrics (src/metrics/) must reproduce these numbers to 1e-6, so the expected values
come from the packages papers use, never from a re-implementation:

- convention `coco`: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 jar, needs java),
  then `Bleu(4)` and `Cider()` on its output;
- convention `nltk`: the classic cleaning (lower-case, strip non-ASCII-letters inside words,
  drop one-letter words), then `nltk.translate.bleu_score.corpus_bleu` with weights (1/n,)*n and
  no smoothing, and pycocoevalcap's `Cider()` on the same cleaned words.

It also records pycocoevalcap's PTB tokens for every fixture caption plus a list of tricky
captions (contractions, quotes, brackets, numbers, abbreviations), tokenized as one batch.

Usage (from the repository root):
    .venv/bin/pip install pycocoevalcap nltk
    .venv/bin/python scripts/score_reference.py [--flickr PATH/Flickr8k.token.txt]

The fixture text (50 Flickr8k captions of 10 images) is embedded below, so the script and
the tests need no dataset at run time; --flickr only checks that the embedded lines match.
"""

import argparse
import json
import re
import warnings
from pathlib import Path

import nltk
import pycocoevalcap
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "score_reference.json"

# The first 50 lines of Flickr8k.token.txt: 10 images, 5 reference captions each.
FLICKR = """\
1000268201_693b08cb0e.jpg#0	A child in a pink dress is climbing up a set of stairs in an entry way .
1000268201_693b08cb0e.jpg#1	A girl going into a wooden building .
1000268201_693b08cb0e.jpg#2	A little girl climbing into a wooden playhouse .
1000268201_693b08cb0e.jpg#3	A little girl climbing the stairs to her playhouse .
1000268201_693b08cb0e.jpg#4	A little girl in a pink dress going into a wooden cabin .
1001773457_577c3a7d70.jpg#0	A black dog and a spotted dog are fighting
1001773457_577c3a7d70.jpg#1	A black dog and a tri-colored dog playing with each other on the road .
1001773457_577c3a7d70.jpg#2	A black dog and a white dog with brown spots are staring at each other in the street .
1001773457_577c3a7d70.jpg#3	Two dogs of different breeds looking at each other on the road .
1001773457_577c3a7d70.jpg#4	Two dogs on pavement moving toward each other .
1002674143_1b742ab4b8.jpg#0	A little girl covered in paint sits in front of a painted rainbow with her hands in a bowl .
1002674143_1b742ab4b8.jpg#1	A little girl is sitting in front of a large painted rainbow .
1002674143_1b742ab4b8.jpg#2	A small girl in the grass plays with fingerpaints in front of a white canvas with a rainbow on it .
1002674143_1b742ab4b8.jpg#3	There is a girl with pigtails sitting in front of a rainbow painting .
1002674143_1b742ab4b8.jpg#4	Young girl with pigtails painting outside in the grass .
1003163366_44323f5815.jpg#0	A man lays on a bench while his dog sits by him .
1003163366_44323f5815.jpg#1	A man lays on the bench to which a white dog is also tied .
1003163366_44323f5815.jpg#2	a man sleeping on a bench outside with a white and black dog sitting next to him .
1003163366_44323f5815.jpg#3	A shirtless man lies on a park bench with his dog .
1003163366_44323f5815.jpg#4	man laying on bench holding leash of dog sitting on ground
1007129816_e794419615.jpg#0	A man in an orange hat starring at something .
1007129816_e794419615.jpg#1	A man wears an orange hat and glasses .
1007129816_e794419615.jpg#2	A man with gauges and glasses is wearing a Blitz hat .
1007129816_e794419615.jpg#3	A man with glasses is wearing a beer can crocheted hat .
1007129816_e794419615.jpg#4	The man with pierced ears is wearing glasses and an orange hat .
1007320043_627395c3d8.jpg#0	A child playing on a rope net .
1007320043_627395c3d8.jpg#1	A little girl climbing on red roping .
1007320043_627395c3d8.jpg#2	A little girl in pink climbs a rope bridge at the park .
1007320043_627395c3d8.jpg#3	A small child grips onto the red ropes at the playground .
1007320043_627395c3d8.jpg#4	The small child climbs on a red ropes on a playground .
1009434119_febe49276a.jpg#0	A black and white dog is running in a grassy garden surrounded by a white fence .
1009434119_febe49276a.jpg#1	A black and white dog is running through the grass .
1009434119_febe49276a.jpg#2	A Boston terrier is running in the grass .
1009434119_febe49276a.jpg#3	A Boston Terrier is running on lush green grass in front of a white fence .
1009434119_febe49276a.jpg#4	A dog runs on the green grass near a wooden fence .
1012212859_01547e3f17.jpg#0	A dog shakes its head near the shore , a red ball next to it .
1012212859_01547e3f17.jpg#1	A white dog shakes on the edge of a beach with an orange ball .
1012212859_01547e3f17.jpg#2	Dog with orange ball at feet , stands on shore shaking off water
1012212859_01547e3f17.jpg#3	White dog playing with a red ball on the shore near the water .
1012212859_01547e3f17.jpg#4	White dog with brown ears standing near water with head turned to one side .
1015118661_980735411b.jpg#0	A boy smiles in front of a stony wall in a city .
1015118661_980735411b.jpg#1	A little boy is standing on the street while a man in overalls is working on a stone wall .
1015118661_980735411b.jpg#2	A young boy runs aross the street .
1015118661_980735411b.jpg#3	A young child is walking on a stone paved street with a metal pole and a man behind him .
1015118661_980735411b.jpg#4	Smiling boy in white shirt and blue jeans in front of rock wall with man in overalls behind him .
1015584366_dfcec3c85a.jpg#0	A black dog leaps over a log .
1015584366_dfcec3c85a.jpg#1	A grey dog is leaping over a fallen tree .
1015584366_dfcec3c85a.jpg#2	A large black dog leaps a fallen log .
1015584366_dfcec3c85a.jpg#3	A mottled black and grey dog in a blue collar jumping over a fallen tree .
1015584366_dfcec3c85a.jpg#4	The black dog jumped the tree stump .
"""

# Model-like generated captions (cleaned words, as the `caption` stage writes them).
HYPOTHESES = {
    "1000268201_693b08cb0e.jpg": "little girl in pink dress is climbing the stairs",
    "1001773457_577c3a7d70.jpg": "two dogs are playing on the road",
    "1002674143_1b742ab4b8.jpg": "little girl is sitting in front of rainbow",
    "1003163366_44323f5815.jpg": "man is sleeping on bench with his dog",
    "1007129816_e794419615.jpg": "man in an orange hat and glasses",
    "1007320043_627395c3d8.jpg": "child is climbing on rope at the playground",
    "1009434119_febe49276a.jpg": "black and white dog is running through the grass",
    "1012212859_01547e3f17.jpg": "white dog is playing with red ball on the beach",
    "1015118661_980735411b.jpg": "boy in white shirt is standing on the street",
    "1015584366_dfcec3c85a.jpg": "black dog is jumping over log",
}

# Reference captions that exercise the PTB tokenizer (and the nltk cleaning).
TRICKY_REFERENCES = [
    "The dog's owner doesn't want it ; he can't \"see\" ( it ) here .",
    "A man in a grey t-shirt -- running , at 3.5 mph with 1,000 people & 1/2 the town ...",
    "Two dogs' toys aren't here ! Isn't it ? I'm gonna go , wanna come ? cannot",
    "A black-and-white dog is running in the U.S. at 5 p.m. with Mr. Smith .",
    "He said 'hello' to them . It's the dogs' ball",
    "A 3-year-old girl [ in blue ] jumps over a {red} rope at 10:30 , o'clock .",
    "A girl wearing a shirt that says \u201cI love NY\u201d smiles \u2014 it\u2019s sunny at the caf\u00e9.",
    "Kids play rock'n'roll in the '90s ; y'all know ma'am , they'd've liked it !!",
    "A dog at point b. and a sign that says a. B.",
    "The man (wearing a hat) is at St. Paul's Cathedral etc.",
]

# Captions only for the tokenizer check (never scored).
TOKENIZER_ONLY = TRICKY_REFERENCES + [
    "a group of people , e.g. tourists , walk along the U.S. coast .",
    "two kids share 2 1/2 cups of ice-cream ; one says \"yum !\"",
    "A man's hat. a dogs' park, the kids' toys",
    "gonna wanna gotta lemme gimme 'tis 'twas don't won't shouldn't",
    "Dr. Who at 5 ft. tall , with Jan. and Co. in the rain ... really .",
    "a woman holds a sign : \"www.flickr.com\" and a@b.com",
    "hello?! wow!! a_b #1 #hashtag @home 5% $5 \u00a35 x-----y",
    "<b> bold </b> and <a smal child > and a < b",
    "a dog named rex jumps :) at the park",
    "the end",
]


def parse_flickr(text):
    images = {}
    for line in text.strip().split("\n"):
        key, caption = line.split("\t", 1)
        images.setdefault(key.split("#")[0], []).append(caption)
    return images


def clean(caption):
    """The nltk convention's (classic Keras-tutorial) cleaning; src/data/clean.rs (`Cleaning::default()`) mirrors it."""
    words = (re.sub("[^a-z]", "", w) for w in caption.lower().split())
    return [w for w in words if len(w) > 1]


def ptb_tokenize(captions_by_key):
    """pycocoevalcap's PTBTokenizer, retried when the jar leaves a token upper-case.

    The 3.4.1 jar occasionally skips `-lowerCase` on the first token of a file (a race
    at start-up); a real evaluation would be hit by it at random, a fixture must not be.
    """
    for _ in range(10):
        out = PTBTokenizer().tokenize(
            {k: [{"caption": c} for c in v] for k, v in captions_by_key.items()}
        )
        if all(t == t.lower() for v in out.values() for t in v):
            return out
    raise RuntimeError("PTBTokenizer kept returning upper-case tokens")


def score_case(name, images):
    """images: list of (image, hypothesis, [references]), in the order scored."""
    gts_raw = {img: refs for img, _, refs in images}
    res_raw = {img: [hyp] for img, hyp, _ in images}
    gts, res = ptb_tokenize(gts_raw), ptb_tokenize(res_raw)
    coco_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    coco_cider, _ = Cider().compute_score(gts, res)

    hyps = [clean(hyp) for _, hyp, _ in images]
    refs = [[clean(r) for r in rs] for _, _, rs in images]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "The hypothesis contains 0 counts of 4-gram overlaps"
        nltk_bleu = [
            float(corpus_bleu(refs, hyps, weights=(1.0 / n,) * n)) for n in range(1, 5)
        ]
    nltk_cider, _ = Cider().compute_score(
        {img: [" ".join(r) for r in rs] for (img, _, _), rs in zip(images, refs)},
        {img: [" ".join(h)] for (img, _, _), h in zip(images, hyps)},
    )
    return {
        "name": name,
        "images": [
            {
                "image": img,
                "hypothesis": hyp,
                "references": rs,
                "coco_hypothesis": res[img][0],
                "coco_references": gts[img],
            }
            for img, hyp, rs in images
        ],
        "coco": {"bleu": [float(x) for x in coco_bleu], "cider_d": float(coco_cider)},
        "nltk": {"bleu": nltk_bleu, "cider_d": float(nltk_cider)},
    }


def build_cases(flickr):
    ids = list(flickr)
    normal = [(i, HYPOTHESES[i], flickr[i]) for i in ids]
    short = [(i, h, flickr[i]) for i, h in zip(ids, ["girl", "two dogs", "a little girl", "man on bench"])]
    empty = [(ids[0], "", flickr[ids[0]])] + normal[1:6]
    differing = [(i, HYPOTHESES[i], flickr[i][: k % 5 + 1]) for k, i in enumerate(ids)]
    tricky = [
        (f"tricky_{k}.jpg", hyp, [ref] + flickr[ids[k]][:2])
        for k, (hyp, ref) in enumerate(
            zip(
                [
                    "dog owner does not want it",
                    "man in grey tshirt is running",
                    "two dogs are playing with toys",
                    "black and white dog is running",
                    "he said hello to them",
                    "girl jumps over red rope",
                    "girl wearing shirt smiles",
                    "kids play rock and roll",
                    "dog at point and sign",
                    "man wearing hat at the cathedral",
                ],
                TRICKY_REFERENCES,
            )
        )
    ]
    no_match = [(i, "zebra xylophone quartz", flickr[i]) for i in ids[:3]]
    no_4gram = [(i, h, flickr[i]) for i, h in zip(ids[:3], ["little girl pink", "two dogs", "girl"])]
    swapped = [(i, HYPOTHESES[ids[(k + 1) % len(ids)]], flickr[i]) for k, i in enumerate(ids)]
    return [
        score_case("normal", normal),
        score_case("short_hypotheses", short),
        score_case("empty_hypothesis", empty),
        score_case("differing_reference_counts", differing),
        score_case("punctuation_contractions", tricky),
        score_case("no_unigram_match", no_match),
        score_case("no_higher_order_match", no_4gram),
        score_case("single_image", normal[:1]),
        score_case("mismatched_images", swapped),
    ]


def ptb_batch(captions):
    """Every caption, tokenized as one pycocoevalcap batch in this order."""
    out = ptb_tokenize({str(k): [c] for k, c in enumerate(captions)})
    return [{"caption": c, "tokens": out[str(k)][0]} for k, c in enumerate(captions)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flickr", type=Path, help="check the embedded lines against this file")
    args = parser.parse_args()
    if args.flickr:
        head = args.flickr.read_text(encoding="utf-8").split("\n")[:50]
        assert "\n".join(head) + "\n" == FLICKR, f"embedded lines differ from {args.flickr}"
    flickr = parse_flickr(FLICKR)
    cases = build_cases(flickr)
    captions = [c for case in cases for img in case["images"] for c in [img["hypothesis"], *img["references"]]]
    captions = list(dict.fromkeys(captions + TOKENIZER_ONLY))
    fixture = {
        "generator": "scripts/score_reference.py",
        "versions": {
            "pycocoevalcap": getattr(pycocoevalcap, "__version__", "1.2"),
            "nltk": nltk.__version__,
        },
        "cases": cases,
        "ptb": ptb_batch(captions),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} cases, {len(captions)} captions")


if __name__ == "__main__":
    main()
