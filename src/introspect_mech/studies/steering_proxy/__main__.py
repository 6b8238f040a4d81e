"""`python -m introspect_mech.studies.steering_proxy` = `introspect-mech study steering-proxy`."""

from . import main

raise SystemExit(main())
