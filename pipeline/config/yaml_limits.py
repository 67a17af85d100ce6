"""Bounds on what a YAML config may expand to (a "billion laughs" alias bomb).

YAML anchors and aliases (`&a`, `*a`) let a short file name the same value many times; nested,
nine lines of nine aliases stand for 9^9 = 387,420,489 values. PyYAML builds them as shared
objects, but everything that walks the config afterwards (validation, the duplicate-key check,
dataset.json) expands them, and a job once grew to 4 GB in two minutes. `alias_bomb` counts the
expanded values of the composed document in time linear in the file and refuses past a limit
no real config comes near.
"""

from __future__ import annotations

from typing import Optional

import yaml

from pixelbeam.pipeline.config.base import SECTIONS

MAX_EXPANDED_NODES = 1_000_000  # scalars, lists and mappings once every alias is expanded


def expanded_sizes(root: yaml.Node) -> dict[int, int]:
    """{id(node): how many nodes it stands for with aliases expanded}, for every node of the
    composed document (a node shared by aliases is counted once per use, but computed once)."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:  # post-order without recursion: deep nesting must not overflow the stack
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def alias_bomb(root: Optional[yaml.Node], limit: int = MAX_EXPANDED_NODES) -> Optional[str]:
    """'field: ...' naming the top-level key whose value expands past `limit` nodes (or the
    whole document), else None."""
    if root is None:
        return None
    sizes = expanded_sizes(root)
    total = sizes[id(root)]
    if total <= limit:
        return None
    where = "config"
    if isinstance(root, yaml.MappingNode) and root.value:
        key, value = max(root.value, key=lambda pair: (sizes[id(pair[1])], getattr(pair[0], "value", None) in SECTIONS))
        where = key.value if isinstance(key, yaml.ScalarNode) else where
    return (f"{where}: YAML aliases (*name) expand the config to {total:,} values, over the limit of {limit:,}; "
            "write the values out instead of nesting aliases")
