"""The try-out around Casa Hub, not part of it: the one-command local facility (``python -m casa_demo.facility``,
run by ``scripts/facility.sh``) and the demo OIDC provider it and the tests log in with.

Lives in the repository only: the ``casa-hub`` wheel ships ``casa_hub`` and ``casa_hub_ext``, never this package.
"""
