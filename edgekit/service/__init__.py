"""Running edgekit unattended: the systemd unit, its installation, and sd_notify messages."""
