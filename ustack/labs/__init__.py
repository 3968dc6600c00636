"""`ustack lab NAME`: the textbook's close-path scenarios on real connections between
ustack and the kernel, in a throwaway network namespace, drawn as a ladder with both
endpoints' own states (ustack's events, the kernel's sock_diag). See scenarios.py for
the labs, world.py for how a lab is wired and watched, runner.py for a run's report.

Nothing is imported here: `ustack --help` builds the `lab` subcommand (command.py)
without loading the stack or pytun, so the control-socket tools stay light.
"""
