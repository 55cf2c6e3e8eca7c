#!/usr/bin/env python3
"""Rebuild tests/grading/demo_class/ (the submissions `make grade` grades on a fresh clone).

Each demo student starts from the student version in exercises/ and fills in the solution cells,
as a student would. Run after `python -m flowgrade generate` whenever problem set 1 changes:

    python tests/grading/make_demo_class.py

Expected scores (problem set 1, 12 points: parts of 1+2, 2+3 and 1+3 visible+hidden points):

    alice  12  the instructor's solution
    bob     0  the untouched student version
    carol   4  passes every visible test, fails every hidden one (typical mistakes)
    dave    5  part 2 right, part 1 wrong (fails its visible tests), part 3 not attempted
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
PS = "ps1_change_of_variables"
DEMO = Path(__file__).resolve().parent / "demo_class"
EXPECTED = {"alice": 12, "bob": 0, "carol": 4, "dave": 5}

CAROL = {
    # evaluates the derivative at x instead of z, and forgets its absolute value: both invisible
    # for an increasing affine map
    "part1_solution": '''
def pushforward_log_prob(x, f_inv, df, base_log_prob):
    z = f_inv(x)
    return base_log_prob(z) - torch.log(df(x))
''',
    # log of det (NaN when det < 0, -inf/inf when it under/overflows); naive tanh derivative
    "part2_solution": '''
def linear_logdet(W):
    return torch.log(torch.det(W))


def tanh_logdet(z):
    return torch.log(1 - torch.tanh(z) ** 2).sum(dim=-1)
''',
    # inverts the layers in forward order: invisible when the layers commute
    "part3_solution": '''
def chain_forward(z, layers):
    ladj = torch.zeros(z.shape[0])
    for layer in layers:
        z, l = layer.forward(z)
        ladj = ladj + l
    return z, ladj


def chain_log_prob(x, layers, base_log_prob):
    ladj = torch.zeros(x.shape[0])
    for layer in layers:
        x, l = layer.inverse(x)
        ladj = ladj + l
    return base_log_prob(x) + ladj
''',
}

DAVE = {
    # wrong sign: fails the visible tests of part 1
    "part1_solution": '''
def pushforward_log_prob(x, f_inv, df, base_log_prob):
    z = f_inv(x)
    return base_log_prob(z) + torch.log(torch.abs(df(z)))
''',
    # right, written differently from the solution
    "part2_solution": '''
def linear_logdet(W):
    sign, logabsdet = torch.linalg.slogdet(W)
    return logabsdet


def tanh_logdet(z):
    a = z.abs()
    return (2 * math.log(2) - 2 * a - 2 * torch.log1p(torch.exp(-2 * a))).sum(-1)
''',
}


def solution_sources() -> dict[str, str]:
    """The instructor's solution cells with the solution markers dropped."""
    nb = nbformat.read(REPO / "solutions" / PS / f"{PS}.ipynb", as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n", "", cell.source)
    return out


def write_student(student: str, answers: dict[str, str]) -> None:
    nb = nbformat.read(REPO / "exercises" / PS / f"{PS}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id].strip("\n")
    path = DEMO / student / PS / f"{PS}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    print(f"wrote {path.relative_to(REPO)} (expected score {EXPECTED[student]})")


def main() -> None:
    write_student("alice", solution_sources())
    write_student("bob", {})
    write_student("carol", CAROL)
    write_student("dave", DAVE)


if __name__ == "__main__":
    main()
