"""Transfer evaluation of a US3L checkpoint at any width: export, linear probe, detection, report."""
__version__ = "0.1.0"
