"""The CiviCRM APIv4 simulator (:class:`CiviSim`), a package of its parts."""

from mcsync.sim.civicrm.sim import ApiUser, CiviSim

__all__ = ["ApiUser", "CiviSim"]
