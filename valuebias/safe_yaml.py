"""YAML without aliases, for every YAML file a user hands ValueBias (the registry config, prompt tables).

An alias (``*name``) re-uses a node; a few nested ones expand to billions of values (a "billion laughs"
bomb that took 3.2 GB and 36 s before it failed). Neither a config nor a prompt table needs them, so they
are refused when the document is composed, before anything expands, naming the line.
"""

from __future__ import annotations

import yaml

from valuebias.errors import InputError


class NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses aliases; ``source`` names the file in the error."""

    source = ""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise InputError(f"YAML aliases (*{event.anchor}) are not allowed here; write the value out in full",
                             source=self.source, row=event.start_mark.line + 1)
        return super().compose_node(parent, index)


def yaml_problem(err: yaml.YAMLError) -> tuple[str, int | None]:
    """(one line saying what is wrong, the 1-based line of the file or None) of a YAML parse error. PyYAML's
    own text spans several lines and names ``<unicode string>`` instead of the file."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    text = f"{context}: {problem}" if context else problem
    where = f" (column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"not valid YAML: {text}{where}".split()), mark.line + 1 if mark is not None else None
