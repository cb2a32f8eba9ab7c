"""File order: dependencies first, the files most relevant to the question last.

* Dependency order: a file comes after the files it uses (:attr:`RepoGraph.deps`).  Cycles
  are strongly connected components (Tarjan), emitted together, members sorted by path; among
  files whose dependencies are all placed, the smallest path goes first, so the order is a
  pure function of the graph.
* Relevance: personalised PageRank over the weighted reference graph, seeded by the files
  and definitions the question names (the ranking of aider's repo map, at file level).
  Without a question, plain PageRank: files many others use rank high.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ssa_code.context.graph import RepoGraph

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_PATHISH = re.compile(r"[\w./-]*[./][\w./-]*\w")
_STOP = frozenset("""a an and are as at be by can code does do for from function file files
functions how i in into is it its of on or repo repository that the this to use used uses
using what when where which who why with work works class method variable module called call
calls""".split())


def strongly_connected(nodes: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's SCCs, iterative (deep import chains must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(deps.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(deps.get(nxt, ()))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                comps.append(sorted(comp))
    return comps


def dependency_order(nodes: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes ordered so that each comes after everything it depends on (cycles grouped).

    Args:
        nodes: all nodes; edges to nodes outside this set are ignored.
        deps: ``node -> nodes it uses``.
    Returns:
        a permutation of ``nodes``; ties broken by the smallest path in a group.
    """
    node_set = set(nodes)
    clean = {n: [d for d in deps.get(n, ()) if d in node_set and d != n] for n in nodes}
    comps = strongly_connected(sorted(nodes), clean)
    comp_of = {n: i for i, c in enumerate(comps) for n in c}
    waiting = [0] * len(comps)
    users: list[set[int]] = [set() for _ in comps]
    for n in nodes:
        a = comp_of[n]
        for d in clean[n]:
            b = comp_of[d]
            if a != b and a not in users[b]:
                users[b].add(a)
                waiting[a] += 1
    ready = [(comps[i][0], i) for i in range(len(comps)) if waiting[i] == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.extend(comps[i])
        for u in sorted(users[i]):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (comps[u][0], u))
    assert len(out) == len(nodes), "every component is emitted once"
    return out


def pagerank(
    nodes: Sequence[str],
    weights: Mapping[tuple[str, str], float],
    personalization: Optional[Mapping[str, float]] = None,
    damping: float = 0.85,
    max_iter: int = 200,
    tol: float = 1e-12,
) -> dict[str, float]:
    """(Personalised) PageRank by power iteration over weighted edges ``src -> dst``.

    Args:
        nodes: all nodes.
        weights: ``(src, dst) -> weight > 0``; rank flows from a user to what it uses.
        personalization: teleport distribution (normalised here); uniform when ``None``.
    Returns:
        ``node -> score``, scores summing to 1.
    """
    n = len(nodes)
    if n == 0:
        return {}
    pos = {p: i for i, p in enumerate(nodes)}
    edges = [(pos[s], pos[d], w) for (s, d), w in weights.items() if s in pos and d in pos and w > 0]
    src = np.array([e[0] for e in edges], dtype=np.int64)
    dst = np.array([e[1] for e in edges], dtype=np.int64)
    w = np.array([e[2] for e in edges], dtype=np.float64)
    out_w = np.bincount(src, weights=w, minlength=n) if edges else np.zeros(n)
    norm = w / out_w[src] if edges else w
    dangling = out_w == 0
    if personalization:
        tele = np.zeros(n)
        for p, v in personalization.items():
            if p in pos:
                tele[pos[p]] += v
        if tele.sum() <= 0:
            tele[:] = 1.0
    else:
        tele = np.ones(n)
    tele /= tele.sum()
    r = tele.copy()
    for _ in range(max_iter):
        flow = np.bincount(dst, weights=r[src] * norm, minlength=n) if edges else np.zeros(n)
        new = damping * (flow + r[dangling].sum() * tele) + (1 - damping) * tele
        done = np.abs(new - r).sum() < tol
        r = new
        if done:
            break
    return {p: float(r[i]) for i, p in enumerate(nodes)}


def question_seeds(question: str, graph: RepoGraph) -> dict[str, float]:
    """Files the question names: by path or file name, or by a definition it mentions.

    Returns:
        ``path -> seed weight`` (empty when the question names nothing in the repository).
    """
    seeds: dict[str, float] = {}
    q = question.strip()
    if not q:
        return seeds
    lowered_paths = {p.lower(): p for p in graph.paths}
    for tok in _PATHISH.findall(q):
        t = tok.strip("./").lower()
        if len(t) < 3:
            continue
        for lp, p in lowered_paths.items():
            if lp == t or lp.endswith("/" + t):
                seeds[p] = seeds.get(p, 0.0) + 2.0
    stems: dict[str, list[str]] = {}
    for p in graph.paths:
        base = p.rsplit("/", 1)[-1]
        stems.setdefault(base.split(".", 1)[0].lower(), []).append(p)
    lower_defs: dict[str, list[str]] = {}
    for name in graph.defined_names():
        lower_defs.setdefault(name.lower(), []).append(name)
    for ident in dict.fromkeys(_IDENT.findall(q)):
        low = ident.lower()
        if len(ident) < 3 or low in _STOP:
            continue
        for p in stems.get(low, ()):
            seeds[p] = seeds.get(p, 0.0) + 1.0
        names = [ident] if graph.definitions(ident) else lower_defs.get(low, [])
        defs = [d for name in names for d in graph.definitions(name)]
        for d in defs:
            seeds[d.path] = seeds.get(d.path, 0.0) + 1.0 / len(defs)
    # Multi-word names: "stock total" names stock_total / stockTotal, and partly
    # StockTable; weight by the share of the name's words the question uses, squared.
    words = {w.lower() for w in _IDENT.findall(q) if len(w) >= 3 and w.lower() not in _STOP}
    if words:
        for name in graph.defined_names():
            parts = [x.lower() for x in _WORDS.findall(name)]
            if len(parts) < 2:
                continue
            share = sum(1 for x in parts if x in words) / len(parts)
            if share >= 0.5:
                defs = graph.definitions(name)
                for d in defs:
                    seeds[d.path] = seeds.get(d.path, 0.0) + share * share / len(defs)
    return dict(sorted(seeds.items()))


@dataclass
class Ordering:
    """Result of :func:`order_files`.

    Attributes:
        order: all paths in packed order.
        relevance: ``path -> score`` (PageRank, personalised when the question names something).
        focus: the paths moved to the end for the question, least relevant first.
        seeds: question seeds (see :func:`question_seeds`).
    """

    order: list[str]
    relevance: dict[str, float]
    focus: list[str]
    seeds: dict[str, float]


def order_files(graph: RepoGraph, question: Optional[str] = None, max_focus: int = 12) -> Ordering:
    """Dependency order, then the question's most relevant files moved to the end.

    Args:
        graph: the repository graph.
        question: the user's question, or ``None``.
        max_focus: at most this many files move to the end.
    """
    seeds = question_seeds(question, graph) if question else {}
    if seeds:
        # For a question both directions matter: what the named code uses and what uses it.
        weights: dict[tuple[str, str], float] = dict(graph.weights)
        for (src, dst), w in graph.weights.items():
            weights[(dst, src)] = weights.get((dst, src), 0.0) + 0.5 * w
        relevance = pagerank(graph.paths, dict(sorted(weights.items())), seeds)
    else:
        relevance = pagerank(graph.paths, graph.weights)
    base = dependency_order(graph.paths, graph.deps)
    focus: list[str] = []
    if seeds:
        # Every seed, then the files the ranking puts next to them, up to max_focus.
        k = min(max_focus, max(len(seeds), 1) + 3, len(graph.paths))
        # Files unreachable from the seeds score 0 and never join the focus.
        ranked = [p for p in sorted(graph.paths, key=lambda p: (-(p in seeds), -relevance[p], p))
                  if p in seeds or relevance[p] > 0]
        focus = sorted(ranked[:k], key=lambda p: (relevance[p] + (1.0 if p in seeds else 0.0), p))
        tail = set(focus)
        base = [p for p in base if p not in tail] + focus
    return Ordering(base, relevance, focus, seeds)
