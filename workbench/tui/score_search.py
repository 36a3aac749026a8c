"""Find scored nodes and edges by name: fnmatch-style patterns over canonical names.

Where it sits: the results pane's search box and the head grid's filter use it; no Textual here.
A query is one or more words (spaces or commas between them; a match of any word counts). A
word is a node pattern (`a3?.*`, `m1*`, `a*.3`, `a9.1<q>`, or a plain name/alias like `9.1`)
or an edge pattern `SRC->DST` (`a*.*->a9.1`, `input->*`); a receiver pattern matches the
receiver with its port (`a9.1<q>`) or without (`a9.1`). A node word on edge scores matches the
edges that start or end at a matching node.

Edge search never builds an `Edge` or a name per edge: patterns are matched against the
graph's 1,249 sources and 3,649 receivers (GPT-2 XL) and the per-edge mask comes from two
cached index vectors (each edge's source and receiver number), so it costs a few tensor
gathers over the 2.2M scores.

Invariant: `edge_ends(graph)` agrees with `graph.edges` order (tested), which is the order
score tensors use.
"""

from __future__ import annotations

import fnmatch
import re
from functools import cache

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.graph import Graph, parse_edge, parse_node

_WILD = re.compile(r"[*?\[]")


def words(query: str) -> list[str]:
    """The words of a query, lower-cased (spaces or commas separate them)."""
    return [w for w in re.split(r"[\s,]+", query.strip().lower()) if w]


def _canonical(word: str) -> str:
    """A plain name or alias in canonical form (`9.1` -> `a9.1`); patterns stay as given."""
    if _WILD.search(word):
        return word
    try:
        return str(parse_edge(word)) if "->" in word else str(parse_node(word))
    except WorkbenchError:
        return word


def matcher(pattern: str) -> re.Pattern[str]:
    """A compiled fnmatch pattern for one canonical-name pattern (case-insensitive)."""
    return re.compile(fnmatch.translate(_canonical(pattern.strip().lower())))


def match_names(names: list[str], pattern: str) -> list[bool]:
    rx = matcher(pattern)
    return [rx.match(n) is not None for n in names]


def node_matches(query: str, names: list[str]) -> list[bool]:
    """Which of `names` (node names) any word of `query` matches; edge words match none."""
    hit = [False] * len(names)
    for word in words(query):
        if "->" in word:
            continue
        hit = [h or m for h, m in zip(hit, match_names(names, word), strict=True)]
    return hit


@cache
def edge_ends(n_layers: int, n_heads: int) -> tuple[Tensor, Tensor]:
    """(source number, receiver number) of every edge, in score-tensor order (int32)."""
    graph = Graph.from_sizes(n_layers, n_heads)
    counts = torch.tensor(graph.upstream_counts, dtype=torch.long)
    receiver = torch.repeat_interleave(torch.arange(len(counts)), counts)
    starts = torch.cumsum(counts, 0) - counts
    source = torch.arange(int(counts.sum())) - starts[receiver]
    return source.to(torch.int32), receiver.to(torch.int32)


@cache
def _names(n_layers: int, n_heads: int) -> tuple[list[str], list[str], list[str]]:
    graph = Graph.from_sizes(n_layers, n_heads)
    return ([str(s) for s in graph.sources], [str(r) for r in graph.receivers],
            [str(r.base()) for r in graph.receivers])


def edge_mask(graph: Graph, query: str) -> Tensor:
    """A bool mask over `graph`'s edges: the edges any word of `query` matches."""
    sizes = (graph.n_layers, graph.n_heads)
    sources, receivers, bases = _names(*sizes)
    src_of, dst_of = (t.long() for t in edge_ends(*sizes))
    mask = torch.zeros(src_of.numel(), dtype=torch.bool)

    def src_hit(pattern: str) -> Tensor:
        return torch.tensor(match_names(sources, pattern), dtype=torch.bool)

    def dst_hit(pattern: str) -> Tensor:
        full, base = match_names(receivers, pattern), match_names(bases, pattern)
        return torch.tensor([a or b for a, b in zip(full, base, strict=True)], dtype=torch.bool)

    for word in words(query):
        if "->" in word:
            a, _, b = _canonical(word).partition("->")
            mask |= src_hit(a)[src_of] & dst_hit(b)[dst_of]
        else:
            mask |= src_hit(word)[src_of] | dst_hit(word)[dst_of]
    return mask
