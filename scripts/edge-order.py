#!/usr/bin/env python3
"""Writes the edge daemon's function order (crates/outpost-cli/edged.order) from callgrind profiles of it.

Usage: edge-order.py EXECUTABLE CALLGRIND_OUT... > edged.order

Every function a profile saw run, and the executable defines, is listed once, by mangled name: first those that
more of the profiles ran (what every edge device runs: startup, the edge hub, the upstream link), then those of the
first profile given, of the second, and so on, so that a daemon's own functions lie together; within each group by
the instructions spent in them, most first. Statistics go to stderr. See scripts/edge-order.sh.
"""

import collections
import re
import subprocess
import sys

FN = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")


def defined_functions(executable):
    """The executable's function symbols and their sizes, from nm."""
    listing = subprocess.run(["nm", "-S", executable], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            sizes[fields[3]] = int(fields[1], 16)
    return sizes


def profile_costs(path):
    """Instructions per function in one callgrind output (written with --demangle=no)."""
    names, costs, current = {}, collections.Counter(), None
    with open(path, errors="replace") as lines:
        for line in lines:
            match = FN.match(line.rstrip("\n"))
            if match:
                kind, ident, name = match.groups()
                if name:
                    names[ident] = name
                if kind == "fn":
                    current = names.get(ident)
                    costs[current] += 0
                continue
            # Cost lines are "<position> <instructions>"; calls' inclusive costs follow "calls=" lines and are
            # counted again in the callee, which is what ranks a function by how hot its whole call tree is.
            if current and line[:1].isdigit():
                fields = line.split()
                if len(fields) >= 2:
                    costs[current] += int(fields[1])
    return costs


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sizes = defined_functions(sys.argv[1])
    profiles = [profile_costs(path) for path in sys.argv[2:]]
    runs, first, cost = collections.Counter(), {}, collections.Counter()
    for index, profile in enumerate(profiles):
        for name, instructions in profile.items():
            if name in sizes:
                runs[name] += 1
                first.setdefault(name, index)
                cost[name] += instructions
    order = sorted(runs, key=lambda name: (-runs[name], first[name], -cost[name], name))
    for name in order:
        print(name)
    total = sum(sizes[name] for name in order)
    print(f"edge-order: {len(order)} functions, {total / 1024:.0f} KiB of the executable's "
          f"{sum(sizes.values()) / 1024:.0f} KiB of code, from {len(profiles)} profiles", file=sys.stderr)


if __name__ == "__main__":
    main()
