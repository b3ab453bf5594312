"""The score of a mutation run (tools/mutation.sh), with message-only and equivalent survivors set apart.

Run from a target's work dir (`.mutation/<target>/`, where mutmut keeps its results); tools/mutation.sh
calls it after each run (`tools/mutation.sh report` prints it again). It prints every survivor (and every
mutant no test reached) with its diff and one of three classes:

  * message: the mutant changes only the text of a message: an exception's, a `detail=` diagnostic, a
    warning or what a CLI prints to stderr (string contents changed, the string replaced by None or
    dropped). The issue's rule: log and message strings are excluded from the score. A mutant that changes
    anything else on the line (an exception's reason or type, a status code, an argument that is not the
    message) is never a message mutant.
  * equivalent: listed in tools/mutation_equivalent.txt with why no test can tell it from the original.
  * open: a missing assertion (or an equivalent mutant nobody has argued yet).

score = killed / (mutants run - message - equivalent), where a timeout counts as killed (the suite caught
an endless loop) and "no tests" counts as run and not killed.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from collections import Counter
from pathlib import Path

EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.txt")
MESSAGE_CONTEXT = re.compile(
    r"\braise\b|\bdetail=|\bprint\(|file=sys\.stderr|\bwarn\(|Error\(|^\s*[rbuf]*[\"']")
NONE_OR_NOTHING = {"None", ""}


def _tokens(line: str) -> list[tuple[int, str]] | None:
    """The tokens of one source line, which may be a fragment of a longer statement (an unbalanced
    bracket ends the tokenizer early: what came before it is kept)."""
    out: list[tuple[int, str]] = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline):
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT):
                out.append((t.type, t.string))
    except tokenize.TokenError:
        pass
    except (IndentationError, SyntaxError):
        return None
    return out


def _without_detail(tokens: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The tokens less any `detail=<expression>` keyword argument (a diagnostic message)."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(tokens):
        if tokens[i][1] == "detail" and i + 1 < len(tokens) and tokens[i + 1][1] == "=":
            depth, i = 0, i + 2
            while i < len(tokens) and not (depth == 0 and tokens[i][1] in (",", ")")):
                depth += tokens[i][1] in "([{"
                depth -= tokens[i][1] in ")]}"
                i += 1
            if i < len(tokens) and tokens[i][1] == ",":
                i += 1
            if out and out[-1][1] == ",":
                out.pop()
            continue
        out.append(tokens[i])
        i += 1
    # a trailing comma before a closing bracket is no difference ("f(a, )" is "f(a)")
    return [t for k, t in enumerate(out) if not (t[1] == "," and k + 1 < len(out) and out[k + 1][1] in ")]}")]


def _strings_only(old: list[tuple[int, str]], new: list[tuple[int, str]]) -> bool:
    """Same tokens but for the contents of string literals."""
    norm = [(t, "S" if t == tokenize.STRING else s) for t, s in old]
    return norm == [(t, "S" if t == tokenize.STRING else s) for t, s in new]


def _message_dropped(old: list[tuple[int, str]], new: list[tuple[int, str]]) -> bool:
    """A string argument replaced by None or removed, nothing else changed."""
    o = [s for _, s in old]
    n = [s for _, s in new]
    i = 0
    while i < min(len(o), len(n)) and o[i] == n[i]:
        i += 1
    j = 0
    while j < min(len(o), len(n)) - i and o[len(o) - 1 - j] == n[len(n) - 1 - j]:
        j += 1
    removed, added = old[i:len(o) - j], "".join(n[i:len(n) - j])
    if added not in NONE_OR_NOTHING:
        return False
    if removed and removed[-1][1] == ",":
        removed = removed[:-1]
    if removed and removed[0][1] == ",":
        removed = removed[1:]
    return bool(removed) and all(t == tokenize.STRING for t, _ in removed)


def is_message_only(diff: str) -> bool:
    minus = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if len(minus) != 1 or len(plus) != 1:
        return False
    old, new = _tokens(minus[0]), _tokens(plus[0])
    if old is None or new is None or not MESSAGE_CONTEXT.search(minus[0]):
        return False
    if "logger." in minus[0]:
        return True
    old, new = _without_detail(old), _without_detail(new)
    return _strings_only(old, new) or _message_dropped(old, new)


def equivalents() -> dict[str, str]:
    out: dict[str, str] = {}
    if EQUIVALENT_FILE.exists():
        for line in EQUIVALENT_FILE.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, why = line.partition(" ")
                out[name] = why.strip()
    return out


def main() -> int:
    from mutmut.configuration import config  # noqa: PLC0415 - mutmut's own, pinned (3.8.1)
    from mutmut.mutation.data import SourceFileMutationData  # noqa: PLC0415
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # noqa: PLC0415
    from mutmut.stats import status_by_exit_code  # noqa: PLC0415
    from mutmut.utils.file_utils import walk_mutatable_files  # noqa: PLC0415

    config()
    known = equivalents()
    counts: Counter[str] = Counter()
    rows: list[tuple[str, str, str]] = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            if status in ("killed", "timeout"):
                counts["killed"] += 1
                continue
            if status == "not checked":
                counts["not checked"] += 1
                continue
            diff = get_diff_for_mutant(name, path=path)
            cls = "equivalent" if name in known else "message" if is_message_only(diff) else "open"
            counts[cls] += 1
            rows.append((name, f"{status}, {cls}", diff))
    for name, what, diff in rows:
        print(f"== {name} ({what}){': ' + known[name] if name in known else ''}")
        print("\n".join(ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("---", "+++")))
    run = counts["killed"] + counts["open"] + counts["message"] + counts["equivalent"]
    scored = run - counts["message"] - counts["equivalent"]
    print(f"\nmutants: {run + counts['not checked']}, run: {run}, not checked: {counts['not checked']}")
    print(f"killed (timeouts included): {counts['killed']}; survived or reached by no test: "
          f"{counts['open'] + counts['message'] + counts['equivalent']} = message-only {counts['message']} "
          f"+ equivalent {counts['equivalent']} + open {counts['open']}")
    if scored:
        print(f"score: {counts['killed']}/{scored} = {100 * counts['killed'] / scored:.1f}% of the "
              f"non-equivalent, non-message mutants run ({100 * counts['killed'] / run:.1f}% raw)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
