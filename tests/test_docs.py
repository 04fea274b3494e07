"""The README's snippets and commands run as written, its links resolve, and no file in src/,
docs/, the README or the changelog names a commit hash or a path outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from coupled_mamba.train import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SCANNED_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".txt", ".toml", ".cpp", ".h"}


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


# --- the README runs as written --------------------------------------------------------------

def test_readme_starts_with_the_two_commands():
    assert README.split("\n")[:6] == ["# coupled-mamba", "", "```", "make demo", "make test",
                                      "```"]


@pytest.mark.parametrize("index", range(len(_blocks(README, "python"))))
def test_readme_python_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets may write files (save_pretrained)
    code = _blocks(README, "python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def _readme_command_lines() -> list[list[str]]:
    """The coupled-mamba command lines of the README's sh blocks, as argv after the program."""
    lines = []
    for block in _blocks(README, "sh"):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["coupled-mamba"]:
                lines.append(words[1:])
            elif "-m" in words and words[words.index("-m") + 1] == "coupled_mamba":
                lines.append(words[words.index("-m") + 2:])  # python -m / torchrun -m
    return lines


@pytest.mark.parametrize("argv", _readme_command_lines(), ids=lambda a: " ".join(a[:2]))
def test_readme_command_parses(argv):
    """Every subcommand and option the README shows exists and takes the value it is given."""
    args = cli.build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_readme_shows_every_command_and_the_module_entry_point_runs():
    shown = {argv[0] for argv in _readme_command_lines()}
    assert {"train", "evaluate", "predict", "demo", "bench"} <= shown
    out = subprocess.run([sys.executable, "-m", "coupled_mamba", "train", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "--config" in out.stdout, out.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_and_paths_resolve():
    for target in re.findall(r"\]\(((?:docs|configs|src|benchmarks)/[^)\s]*)\)", README):
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.*)$", (ROOT / path).read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, target
    for path in re.findall(r"\b((?:docs|configs)/[\w./-]+\.(?:md|yaml))", README):
        assert (ROOT / path).exists(), path


# --- no commit hashes, no paths outside the repository ------------------------------------------

# A commit hash is 7-12 lowercase hex digits with at least one digit and one letter, standing
# alone (not part of a word or a 0x constant) and marked as a reference: after "commit(s)",
# "at", "of", "rev" or "hash"; in backticks or parentheses; between _ or - and a file suffix
# (result_912e4cc.md); or anywhere on a line that says "commit". Words that happen to be hex
# ("added", "deadbeef") have no digit; numbers have no letter.
_HEX = r"(?<![\w])(?<!0x)([0-9a-f]{7,12})(?![\w])"
_HASH_CONTEXTS = [
    re.compile(r"\b(?:commits?|at|of|rev|revision|hash)\s+[`(]?" + _HEX, re.I),
    re.compile(r"[`(]" + _HEX + r"[`)+]"),
    re.compile(r"[_-]([0-9a-f]{7,12})(?=[.*_-])"),
]
# Paths outside the repository, and citations of the specification the repository does not hold
# (docs/MATH.md replaces it); a placeholder such as NAME=SPEC is not a citation.
_OUTSIDE = re.compile(r"\.\./shared|(?<![\w.-])shared/(?:data|docs)\b|/work/|/root/"
                      r"|\bSPEC(?:\.md\b|'s\b|\s+(?:sections?\s+)?\d)")


def _is_hash(token: str) -> bool:
    return bool(re.search(r"\d", token) and re.search(r"[a-f]", token))


def find_commit_hashes(line: str) -> list[str]:
    """The commit-hash-looking tokens of one line (see the rule above)."""
    found = []
    for pattern in _HASH_CONTEXTS:
        found += [m.group(1) for m in pattern.finditer(line)]
    if re.search(r"\bcommit", line, re.I):
        found += re.findall(_HEX, line)
    return sorted({t for t in found if _is_hash(t)})


def test_hash_rule_catches_references_and_spares_constants():
    caught = ["the demo of commit e6b9458 took", "re-run at 912e4cc after", "records (912e4cc)",
              "commits 0af7173, dfd5aba found", "in `fusion_synthetic_rerun_912e4cc.md`",
              "say `a6826d5+60eaedd0`", "of 3bfdfc1 and", "hash 1327ffb"]
    for line in caught:
        assert find_commit_hashes(line), line
    spared = ["mask = 0x3f800000u;", "deadbeef cafebabe added", "12582912 bytes",
              "sha256 of the file", "at 1e-30 relative", "(B, L, d)", "coupling 0.5 at L = 1000"]
    for line in spared:
        assert not find_commit_hashes(line), line
    for line in ["see ../shared/data/ROSMAP", "(SPEC section 2)", "SPEC 4 head", "SPEC.md",
                 "SPEC's recurrence", "shared/docs/MMSA_FORMAT.md", "/work/main/src"]:
        assert _OUTSIDE.search(line), line
    for line in ["--space NAME=SPEC", "a SPEC is LOW:HIGH", "shared state", "docs/MATH.md"]:
        assert not _OUTSIDE.search(line), line


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for top in ("src", "docs"):
        files += [p for p in (ROOT / top).rglob("*") if p.suffix in SCANNED_SUFFIXES]
    return [p for p in files if p.is_file() and "egg-info" not in p.parts[-2]]


def test_no_commit_hashes_or_outside_paths_in_src_docs_and_readme():
    problems = []
    for path in _scanned_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            problems += [f"{where}: commit hash {h}" for h in find_commit_hashes(line)]
            problems += [f"{where}: outside path {m}" for m in _OUTSIDE.findall(line)]
    assert not problems, "\n".join(problems)
