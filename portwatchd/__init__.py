"""portwatchd: watch listening TCP/UDP ports and log every change to the journal."""

__version__ = "0.3.0"
