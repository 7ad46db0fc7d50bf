"""Events out of the device: an on-disk spool, and MQTT and webhook senders that deliver from it.

Delivery is **at least once, in order, per destination**: an event leaves the spool for a
destination only once that destination acknowledged it (MQTT PUBACK at QoS 1, a webhook's 2xx); what
was sent but not acknowledged when a connection broke is sent again, so a receiver may see an event
twice and drops the repeat by its ``id``.
"""

from __future__ import annotations
