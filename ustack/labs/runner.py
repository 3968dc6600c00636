"""One lab run and its report: the states each side went through, the notes, the
ladder, and what the lab should have shown but did not."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..tools import ladder as lad
from .scenarios import LABS, Lab, Outcome
from .world import LabError, World


@dataclass
class Report:
    lab: Lab
    outcome: Outcome
    ustack_states: list[str]
    kernel_states: list[str]
    ladder: lad.Ladder

    @property
    def missing(self) -> list[str]:
        """What the lab should have shown and did not (empty when it taught its lesson)."""
        out = []
        if tuple(self.ustack_states[1:]) != self.lab.ustack:
            out.append(f"ustack went {' -> '.join(self.ustack_states[1:]) or 'nowhere'}, "
                       f"expected {' -> '.join(self.lab.ustack)}")
        if tuple(self.kernel_states) != self.lab.kernel:
            out.append(f"the kernel reported {' -> '.join(self.kernel_states) or 'nothing'}, "
                       f"expected {' -> '.join(self.lab.kernel)}")
        return out

    def text(self) -> str:
        lab = self.lab
        lines = [f"lab {lab.name}: {lab.title}", "", f"Rule: {lab.rule}", "",
                 f"What happens: {lab.explain}", ""]
        lines += [f"  - {n}" for n in self.outcome.notes]
        lines += ["", f"ustack ({self.outcome.ustack_ep}): {' -> '.join(self.ustack_states)}",
                  f"kernel ({self.outcome.kernel_ep}, from sock_diag): "
                  f"{' -> '.join([self.outcome.kernel_initial, *self.kernel_states])}", ""]
        return "\n".join(lines)


async def run_lab(name: str) -> Report:
    try:
        lab = LABS[name]
    except KeyError:
        raise LabError(f"no lab {name!r} (ustack lab --list shows them)") from None
    async with World(settings=list(lab.settings)) as world:
        outcome = await asyncio.wait_for(lab.play(world), 30)
        u, k = outcome.ustack_ep, outcome.kernel_ep
        return Report(lab, outcome, world.ustack_states(u, k), world.kernel_seen(u, k),
                      world.ladder(u, k, outcome.kernel_initial))


__all__ = ["LABS", "Lab", "LabError", "Report", "run_lab"]
