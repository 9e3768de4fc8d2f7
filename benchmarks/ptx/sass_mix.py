"""Instruction mix of each loop in a cuobjdump -sass listing: a loop is a backward branch and the code it jumps over.

    python3 benchmarks/ptx/sass_mix.py KERNEL.sass [...]

An inner loop's instructions are counted again in the loop around it (once, not times its trip count).
"""
import collections
import re
import sys


def instructions(path):
    out = []
    for line in open(path):
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def main(paths):
    for path in paths:
        code = instructions(path)
        index = {address: i for i, (address, _) in enumerate(code)}
        print(f"  {len(code)} instructions")
        for i, (address, text) in enumerate(code):
            m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
            if m and int(m.group(1), 16) < address and int(m.group(1), 16) in index:
                start = index[int(m.group(1), 16)]
                mix = collections.Counter(opcode(t) for _, t in code[start:i + 1])
                top = " ".join(f"{k}:{v}" for k, v in mix.most_common(10))
                print(f"  loop {code[start][0]:#x}-{address:#x}, {i - start + 1} instructions: {top}")


if __name__ == "__main__":
    main(sys.argv[1:])
