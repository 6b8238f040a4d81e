"""Ground-truth model organisms: plant a mechanism, then check that locate -> intervene recovers it.

    python experiments/organisms.py                                  # embedded model, 2-core CPU (53 min when shared)
    python experiments/organisms.py --preset tiny --out runs/organisms_tiny
    python experiments/organisms.py --model Qwen/Qwen2.5-0.5B-Instruct --preset gpu
    python experiments/organisms.py --preset tiny --layer 0.25 --seeds 0 1 --alpha 6   # L at a quarter of the depth

Every `OrganismsConfig` field is an option (`--help`); lists are space-separated (`--seeds 0 1 2`);
`--layer` is a block index (`--layer 12`) or a relative depth in (0, 1) (`--layer 0.5`).
Prints the methods x organisms table and writes `<out>/dashboard.html`. The same command is
`introspect-mech study organisms ...`; the code is `introspect_mech.studies.organisms`; see docs/organisms.md.
"""

from introspect_mech.studies.organisms import main

if __name__ == "__main__":
    raise SystemExit(main())
