"""A chunked OS image: its files grouped by the Debian source package that owns them, one component per
layer or per bin, each layer kept stable from one build to the next (docs/chunking.md).

    label.py       the config label that carries the plan and the package list (read on devices too)
    components.py  which component each entry of a flat OS layer belongs to (dpkg, xattrs, rules)
    plan.py        components into layer slots, keeping the prior build's slots; patch layers
    write.py       the layers themselves, streamed out of the flat layer
"""
