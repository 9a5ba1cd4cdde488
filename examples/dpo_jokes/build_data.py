"""Build train.jsonl / heldout.jsonl (ModelMill's DPO format) from humor-mcp's Mallard pairs.

    pip install --no-deps humor-mcp==0.1.3
    python examples/dpo_jokes/build_data.py

The source has 57 pairs; each has a setup class (e.g. "animal_weirdness", "iv-" marks a
variant of the same class) and two one-liners, the "chosen" one picked as funnier by a
person. The prompt becomes a user message asking for such a line. A fixed shuffle
(seed 0) puts 45 pairs in train.jsonl and 12 in heldout.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_HELDOUT = 12


def source_pairs() -> list[dict]:
    spec = importlib.util.find_spec("humor_mcp")
    if spec is None:
        raise SystemExit("install the data first: pip install --no-deps humor-mcp==0.1.3")
    path = Path(spec.submodule_search_locations[0]) / "packs" / "mallard" / "pairs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_preference(row: dict) -> dict:
    setup = row["prompt"].removeprefix("iv-").replace("_", " ")
    return {"input": {"messages": [{"role": "user", "content": f"Give me a funny one-liner ({setup})."}]},
            "preferred_output": [{"role": "assistant", "content": row["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": row["rejected"]}]}


def main() -> None:
    rows = source_pairs()
    random.Random(0).shuffle(rows)
    lines = [json.dumps(to_preference(r), ensure_ascii=False) for r in rows]
    (HERE / "heldout.jsonl").write_text("\n".join(lines[:N_HELDOUT]) + "\n")
    (HERE / "train.jsonl").write_text("\n".join(lines[N_HELDOUT:]) + "\n")
    print(f"{len(lines) - N_HELDOUT} train pairs, {N_HELDOUT} held-out pairs")


if __name__ == "__main__":
    main()
