"""Paraphrases of the SciFact fixture's queries by the bundled generator: do harder generated queries teach more?

Generated queries copy their source passage (``query_side_validation.md``: the base MiniLM already ranks the teacher's
top first on every training list), so this asks the same LLM (qwen-0.5b on llama.cpp, through ``specialize.llm``)
to rewrite each fixture query in other words, and writes ``benchmarks/data/scifact/paraphrases.jsonl``: the
fixture's rows with ``-para`` qids and the rewritten text (same type, same source passage). The pipeline's own
filters (the round trip in ``mine``, the teacher's source rule in ``label``) then drop the rewrites that lost their
passage. ``query_side_validation.py --recipes lr3e-5-with-paraphrases`` trains on the fixture plus these.

    python benchmarks/paraphrase_fixture.py            # resumes: rows already written are kept

Blocks of 32 rows, seeds = the row's position in the work left, temperature 0.7, at most 40 new tokens.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).parent / "data" / "scifact"
SYSTEM = (
    "You rewrite search queries. Given a query, write one query that asks for the same thing in other words: "
    "use synonyms, a more general or lay term, or the opposite phrasing, and keep at most two words of the original. "
    "Reply with the new query only, on one line."
)
SHOTS = [
    ("Short sleep in older adults is associated with a higher risk of dementia.",
     "Elderly people who sleep little are more likely to develop memory loss disorders."),
    ("Cas9 is directed to its target DNA sequence by an RNA molecule.", "A guide RNA steers the CRISPR nuclease to the gene it cuts."),
    ("What is the main cause of inflation after a central bank rate cut?", "why do prices rise when borrowing costs fall"),
    ("GDPR, personal data, non-EU companies, territorial scope", "does European privacy law apply to firms abroad"),
]
"""The project's own examples, one per kind of query (claim, question, keywords)."""
BLOCK = 32


def messages(query: str) -> list[dict[str, str]]:
    """The chat asking for one rewrite of ``query``, the examples as earlier turns."""
    chat = [{"role": "system", "content": SYSTEM}]
    for original, rewrite in SHOTS:
        chat += [{"role": "user", "content": f"Query: {original}"}, {"role": "assistant", "content": rewrite}]
    return chat + [{"role": "user", "content": f"Query: {query}"}]


def main() -> None:
    from specialize.llm import load_llm
    from specialize.progress import progress_bar

    rows = [json.loads(line) for line in (DATA / "queries.jsonl").read_text().splitlines()]
    out = DATA / "paraphrases.jsonl"
    done = {json.loads(line)["qid"] for line in out.read_text().splitlines()} if out.is_file() else set()
    todo = [row for row in rows if f"{row['qid']}-para" not in done]
    llm = load_llm("bundled:qwen-0.5b")
    started = time.perf_counter()
    with open(out, "a", encoding="utf-8") as sink, progress_bar("paraphrases", total=len(todo), unit="queries") as advance:
        for at in range(0, len(todo), BLOCK):
            block = todo[at:at + BLOCK]
            replies = llm.generate([messages(row["text"]) for row in block], temperature=0.7, max_new_tokens=40,
                                   seeds=list(range(at, at + len(block))))
            for row, reply in zip(block, replies):
                lines = reply.strip().splitlines()
                text = lines[0].strip() if lines else ""
                if len(text) >= 5:
                    sink.write(json.dumps({**row, "qid": f"{row['qid']}-para", "text": text}, ensure_ascii=False) + "\n")
            sink.flush()
            advance(len(block))
    print(f"{len(todo)} queries in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
