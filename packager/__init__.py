"""packager: turn a huge preservation archive into a phased public BitTorrent release."""

__version__ = "0.1.0"
