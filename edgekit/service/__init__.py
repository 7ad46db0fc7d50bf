"""Running edgekit unattended: the systemd unit, its installation, and sd_notify messages."""

from __future__ import annotations
